//! The NCCL transport: collectives among GPU workers, one process per GPU.
//!
//! Always compiled (cudarc with `dynamic-loading`); libcuda and libnccl are
//! opened on first use, after [`probe`] has checked they exist, so a machine
//! without them gets [`CommError::Nccl`] instead of a panic.
//!
//! The communicator is created non-blocking, so initialisation and every
//! collective can be abandoned: after enqueueing work this module polls a CUDA
//! event and `ncclCommGetAsyncError` until the work is done, an error shows, or
//! the timeout passes; then it calls `ncclCommAbort` and returns
//! [`CommError::Watchdog`]. The price is that every call waits for its
//! collective to finish on the device before returning.

mod library;
#[cfg(test)]
mod tests;

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::result as dres;
use cudarc::driver::sys as dsys;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};
use cudarc::nccl::sys as nsys;
use nsys::ncclResult_t as R;

use library::{cuda_err, describe, require_version, Backoff, ConfigPrefix};
pub use library::{probe, version};
use library::{CONFIG_MAGIC, CONFIG_PREFIX_BYTES, CONFIG_VERSION};

use crate::{Collective, CommError, Result};

/// Bytes of an NCCL unique id (`ncclUniqueId`).
pub const UNIQUE_ID_BYTES: usize = 128;

/// One rank of an NCCL communicator; implements [`Collective`].
///
/// Host-slice collectives copy through a device scratch buffer on this
/// communicator's own stream. Backends with data already on the device use
/// the `*_device` entry points (reach them through [`Collective::as_any_mut`]).
/// After a failure or timeout the communicator is aborted and every later
/// call returns [`CommError::Aborted`]. Dropping it finalizes the
/// communicator, which may take up to the timeout when a peer is gone.
pub struct NcclCollective {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    event: CudaEvent,
    /// Null once aborted or destroyed.
    comm: nsys::ncclComm_t,
    rank: usize,
    world: usize,
    timeout: Duration,
    scratch: dsys::CUdeviceptr,
    scratch_bytes: usize,
    poisoned: Option<String>,
}

// SAFETY: the communicator and the scratch buffer are only touched through
// `&mut self`, never from two threads at once, and every call binds the CUDA
// context to the calling thread first; NCCL allows a communicator to move
// between threads on those terms.
unsafe impl Send for NcclCollective {}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.ctx.ordinal())
            .field("timeout", &self.timeout)
            .field("aborted", &self.poisoned)
            .finish()
    }
}

impl NcclCollective {
    /// Creates a fresh unique id. Rank 0 calls this and the launcher relays
    /// the bytes to every other rank before they call [`NcclCollective::new`].
    pub fn unique_id() -> Result<[u8; UNIQUE_ID_BYTES]> {
        require_version()?;
        let id = cudarc::nccl::result::get_uniqueid()
            .map_err(|e| CommError::Nccl(format!("ncclGetUniqueId: {}", describe(e.0, None))))?;
        Ok(id.internal.map(|b| b as u8))
    }

    /// Joins the communicator as `rank` of `world` on CUDA device `ordinal`
    /// (its primary context, shared with a backend on the same device).
    ///
    /// Every rank must pass the same `id`. `timeout` bounds initialisation
    /// (which waits for all ranks) and then every collective.
    pub fn new(
        ordinal: usize,
        rank: usize,
        world: usize,
        id: [u8; UNIQUE_ID_BYTES],
        timeout: Duration,
    ) -> Result<Self> {
        require_version()?;
        let count = CudaContext::device_count().map_err(|e| cuda_err("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(CommError::Nccl(format!(
                "CUDA device {ordinal} does not exist ({count} devices)"
            )));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| cuda_err("creating the CUDA context", e))?;
        Self::with_context(ctx, rank, world, id, timeout)
    }

    /// Like [`NcclCollective::new`], on a context the caller already holds.
    pub fn with_context(
        ctx: Arc<CudaContext>,
        rank: usize,
        world: usize,
        id: [u8; UNIQUE_ID_BYTES],
        timeout: Duration,
    ) -> Result<Self> {
        require_version()?;
        if world == 0 || rank >= world || world > i32::MAX as usize {
            return Err(CommError::Rank { rank, world });
        }
        if timeout.is_zero() {
            return Err(CommError::Nccl("the timeout must be positive".into()));
        }
        ctx.bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating a stream", e))?;
        let event = ctx
            .new_event(None)
            .map_err(|e| cuda_err("creating an event", e))?;
        let uid = nsys::ncclUniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let mut config = ConfigPrefix {
            size: CONFIG_PREFIX_BYTES,
            magic: CONFIG_MAGIC,
            version: CONFIG_VERSION,
            blocking: 0,
        };
        let mut comm: nsys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer; `config` starts with the fields NCCL reads
        // (it copies `size` bytes) and outlives the polling below.
        let r = unsafe {
            nsys::ncclCommInitRankConfig(
                &mut comm,
                world as i32,
                uid,
                rank as i32,
                (&mut config as *mut ConfigPrefix).cast(),
            )
        };
        if !matches!(r, R::ncclSuccess | R::ncclInProgress) || comm.is_null() {
            let detail = describe(r, Some(comm));
            if !comm.is_null() {
                // SAFETY: a communicator NCCL handed back; never used again.
                let _ = unsafe { nsys::ncclCommAbort(comm) };
            }
            return Err(CommError::Nccl(format!(
                "ncclCommInitRankConfig (rank {rank} of {world}, device {}): {}",
                ctx.ordinal(),
                detail
            )));
        }
        let mut me = NcclCollective {
            ctx,
            stream,
            event,
            comm,
            rank,
            world,
            timeout,
            scratch: 0,
            scratch_bytes: 0,
            poisoned: None,
        };
        // `config` stays in scope (alive) until initialisation has settled.
        me.settle("init")?;
        Ok(me)
    }

    /// The CUDA context this communicator runs in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream the host-slice collectives use.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The watchdog timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// In-place sum of `len` `f32` values at device address `ptr` over all
    /// ranks, enqueued on `stream`; returns once it has completed.
    ///
    /// # Safety
    /// `ptr` must point to `len` valid `f32`s in this communicator's context,
    /// `stream` must belong to the same context, and nothing may use the
    /// memory until this returns.
    pub unsafe fn all_reduce_sum_device(
        &mut self,
        ptr: dsys::CUdeviceptr,
        len: usize,
        stream: dsys::CUstream,
    ) -> Result<()> {
        const OP: &str = "all_reduce_sum";
        self.ready()?;
        if len == 0 {
            return Ok(());
        }
        self.enqueue(OP, |comm| unsafe {
            nsys::ncclAllReduce(
                ptr as *const c_void,
                ptr as *mut c_void,
                len,
                nsys::ncclDataType_t::ncclFloat32,
                nsys::ncclRedOp_t::ncclSum,
                comm,
                stream as nsys::cudaStream_t,
            )
        })?;
        self.wait(OP, stream)
    }

    /// Gathers `len` `f32`s from `send` on every rank into `recv`
    /// (`world * len` values, rank order); returns once complete. In place
    /// when `send == recv + rank * len * 4`.
    ///
    /// # Safety
    /// As for [`NcclCollective::all_reduce_sum_device`], for both buffers.
    pub unsafe fn all_gather_device(
        &mut self,
        send: dsys::CUdeviceptr,
        recv: dsys::CUdeviceptr,
        len: usize,
        stream: dsys::CUstream,
    ) -> Result<()> {
        const OP: &str = "all_gather";
        self.ready()?;
        if len == 0 {
            return Ok(());
        }
        self.enqueue(OP, |comm| unsafe {
            nsys::ncclAllGather(
                send as *const c_void,
                recv as *mut c_void,
                len,
                nsys::ncclDataType_t::ncclFloat32,
                comm,
                stream as nsys::cudaStream_t,
            )
        })?;
        self.wait(OP, stream)
    }

    /// Copies `bytes` bytes at `ptr` on rank `root` to `ptr` on every rank;
    /// returns once complete.
    ///
    /// # Safety
    /// As for [`NcclCollective::all_reduce_sum_device`].
    pub unsafe fn broadcast_device(
        &mut self,
        ptr: dsys::CUdeviceptr,
        bytes: usize,
        root: usize,
        stream: dsys::CUstream,
    ) -> Result<()> {
        const OP: &str = "broadcast";
        self.ready()?;
        if root >= self.world {
            return Err(CommError::Rank {
                rank: root,
                world: self.world,
            });
        }
        if bytes == 0 {
            return Ok(());
        }
        self.enqueue(OP, |comm| unsafe {
            nsys::ncclBroadcast(
                ptr as *const c_void,
                ptr as *mut c_void,
                bytes,
                nsys::ncclDataType_t::ncclUint8,
                root as i32,
                comm,
                stream as nsys::cudaStream_t,
            )
        })?;
        self.wait(OP, stream)
    }

    /// Fails if aborted; binds the context to this thread.
    fn ready(&mut self) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(CommError::Aborted(why.clone()));
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", e))
    }

    /// Aborts the communicator (frees it; kernels of this communicator stop).
    fn kill(&mut self) {
        if !self.comm.is_null() {
            let _ = self.ctx.bind_to_thread();
            // SAFETY: a live communicator, never used again.
            let _ = unsafe { nsys::ncclCommAbort(self.comm) };
            self.comm = std::ptr::null_mut();
        }
    }

    fn poison(&mut self, e: CommError) -> CommError {
        self.kill();
        self.poisoned = Some(e.to_string());
        e
    }

    fn watchdog(&mut self, op: &'static str, detail: &str) -> CommError {
        let e = CommError::Watchdog {
            op,
            transport: "nccl",
            timeout_ms: self.timeout.as_millis() as u64,
            detail: format!("rank {} of {}: {detail}", self.rank, self.world),
        };
        self.poison(e)
    }

    /// The communicator's pending error state: `Ok(true)` once idle,
    /// `Ok(false)` while an operation is still in progress.
    fn async_state(&mut self, op: &'static str) -> Result<bool> {
        let mut state = R::ncclSuccess;
        // SAFETY: live communicator, valid out-pointer.
        let r = unsafe { nsys::ncclCommGetAsyncError(self.comm, &mut state) };
        let bad = if r != R::ncclSuccess { r } else { state };
        match bad {
            R::ncclSuccess => Ok(true),
            R::ncclInProgress => Ok(false),
            e => {
                let detail = describe(e, Some(self.comm));
                Err(self.poison(CommError::Nccl(format!(
                    "{op} on rank {} of {}: {detail}; communicator aborted",
                    self.rank, self.world
                ))))
            }
        }
    }

    /// Waits (bounded by the timeout) until a non-blocking call has finished.
    fn settle(&mut self, op: &'static str) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let backoff = Backoff(Instant::now());
        while !self.async_state(op)? {
            if Instant::now() >= deadline {
                return Err(self.watchdog(op, "still in progress (a peer is missing or stuck)"));
            }
            backoff.pause();
        }
        Ok(())
    }

    /// Calls one NCCL enqueue function and settles it if it returned in progress.
    fn enqueue(
        &mut self,
        op: &'static str,
        call: impl FnOnce(nsys::ncclComm_t) -> R,
    ) -> Result<()> {
        match call(self.comm) {
            R::ncclSuccess => Ok(()),
            R::ncclInProgress => self.settle(op),
            e => {
                let detail = describe(e, Some(self.comm));
                Err(self.poison(CommError::Nccl(format!(
                    "{op} on rank {} of {}: {detail}; communicator aborted",
                    self.rank, self.world
                ))))
            }
        }
    }

    /// Waits until all work enqueued on `stream` so far has finished, watching
    /// the communicator's error state and the timeout.
    fn wait(&mut self, op: &'static str, stream: dsys::CUstream) -> Result<()> {
        let ev = self.event.cu_event();
        // SAFETY: our event; the caller's stream is in the same context.
        unsafe { dres::event::record(ev, stream) }.map_err(|e| cuda_err("cuEventRecord", e))?;
        let deadline = Instant::now() + self.timeout;
        let backoff = Backoff(Instant::now());
        loop {
            // SAFETY: a valid, recorded event.
            match unsafe { dres::event::query(ev) } {
                Ok(()) => return Ok(()),
                Err(DriverError(dsys::CUresult::CUDA_ERROR_NOT_READY)) => {}
                Err(e) => {
                    let e = CommError::Nccl(format!(
                        "{op}: CUDA error {e} while waiting; communicator aborted"
                    ));
                    return Err(self.poison(e));
                }
            }
            self.async_state(op)?;
            if Instant::now() >= deadline {
                return Err(self.watchdog(op, "the collective did not finish on the device"));
            }
            backoff.pause();
        }
    }

    /// Makes the scratch buffer at least `bytes` long (the stream is idle here).
    fn scratch(&mut self, bytes: usize) -> Result<dsys::CUdeviceptr> {
        if self.scratch_bytes < bytes {
            if self.scratch != 0 {
                // SAFETY: our allocation; no work uses it (every call waits for completion).
                let _ = unsafe { dres::free_sync(self.scratch) };
                self.scratch = 0;
                self.scratch_bytes = 0;
            }
            let want = bytes.next_power_of_two().max(4096);
            // SAFETY: the context is bound.
            self.scratch = unsafe { dres::malloc_sync(want) }
                .map_err(|e| cuda_err("allocating the scratch buffer", e))?;
            self.scratch_bytes = want;
        }
        Ok(self.scratch)
    }

    fn host_in<T>(&mut self, dst: dsys::CUdeviceptr, src: &[T]) -> Result<()> {
        // SAFETY: `dst` has room (sized by `scratch`); pageable source is staged before return.
        unsafe { dres::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| cuda_err("copy to device", e))
    }

    fn host_out<T>(
        &mut self,
        op: &'static str,
        dst: &mut [T],
        src: dsys::CUdeviceptr,
    ) -> Result<()> {
        let s = self.stream.cu_stream();
        // SAFETY: `src` holds `dst.len()` values; the collective before it has completed.
        unsafe { dres::memcpy_dtoh_async(dst, src, s) }.map_err(|e| cuda_err("copy to host", e))?;
        self.wait(op, s)
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn transport(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.ready()?;
        if buf.is_empty() {
            return Ok(());
        }
        let d = self.scratch(std::mem::size_of_val(buf))?;
        self.host_in(d, buf)?;
        let s = self.stream.cu_stream();
        // SAFETY: `d` holds `buf.len()` floats in our context; `s` is our stream.
        unsafe { self.all_reduce_sum_device(d, buf.len(), s) }?;
        self.host_out("all_reduce_sum", buf, d)
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.ready()?;
        let n = send.len();
        if n.checked_mul(self.world) != Some(recv.len()) {
            return Err(CommError::Length {
                op: "all_gather",
                detail: format!(
                    "rank {}: send {n} x world {} != recv {}",
                    self.rank,
                    self.world,
                    recv.len()
                ),
            });
        }
        if n == 0 {
            return Ok(());
        }
        let d = self.scratch(std::mem::size_of_val(recv))?;
        let mine = d + (self.rank * n * 4) as u64;
        self.host_in(mine, send)?;
        let s = self.stream.cu_stream();
        // SAFETY: `d` holds `world * n` floats; `mine` is this rank's block of it.
        unsafe { self.all_gather_device(mine, d, n, s) }?;
        self.host_out("all_gather", recv, d)
    }

    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<()> {
        self.ready()?;
        if root >= self.world {
            return Err(CommError::Rank {
                rank: root,
                world: self.world,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let d = self.scratch(buf.len())?;
        if self.rank == root {
            self.host_in(d, buf)?;
        }
        let s = self.stream.cu_stream();
        // SAFETY: `d` holds `buf.len()` bytes.
        unsafe { self.broadcast_device(d, buf.len(), root, s) }?;
        self.host_out("broadcast", buf, d)
    }

    fn barrier(&mut self) -> Result<()> {
        self.ready()?;
        let d = self.scratch(4)?;
        let s = self.stream.cu_stream();
        // SAFETY: one float of scratch; its value does not matter.
        unsafe { self.all_reduce_sum_device(d, 1, s) }
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        if !self.comm.is_null() {
            // Finalize flushes this rank's work; bounded like everything else.
            // SAFETY: a live communicator.
            let finalized = match unsafe { nsys::ncclCommFinalize(self.comm) } {
                R::ncclSuccess => true,
                R::ncclInProgress => self.settle("finalize").is_ok(),
                _ => false,
            };
            if finalized && !self.comm.is_null() {
                // SAFETY: finalized and never used again.
                let _ = unsafe { nsys::ncclCommDestroy(self.comm) };
                self.comm = std::ptr::null_mut();
            }
            self.kill();
        }
        if self.scratch != 0 {
            // SAFETY: our allocation; all work on it has finished or was aborted.
            let _ = unsafe { dres::free_sync(self.scratch) };
        }
    }
}
