//! Kernel launches: arguments packed on the stack (no per-launch allocation,
//! no event bookkeeping unless a timeline is being taken), programmatic
//! dependent launch (PDL) on Hopper and later, and a launch counter for the
//! reports.
//!
//! PDL lets the next kernel in the stream start its blocks while the current
//! one drains; every kernel in `kernels/` waits (`griddepcontrol.wait`) before
//! it reads anything an earlier kernel wrote, so any launch may use it. GEMVs
//! use the head start to stream their first weights.

use super::{dev, CudaBackend};
use crate::{BackendError, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{sys, CudaEvent, CudaFunction};
use std::ffi::c_void;
use std::sync::atomic::Ordering;

/// One launch of a timeline (`CudaBackend::start_timeline`): the op's name,
/// its grid, and events recorded on the stream just before and after it.
pub(crate) struct TimedLaunch {
    op: &'static str,
    grid: u32,
    start: CudaEvent,
    end: CudaEvent,
}

/// A kernel's time on the GPU in a timeline.
#[derive(Debug, Clone)]
pub struct LaunchTime {
    /// The op that launched it (e.g. `gemv`, `attention`).
    pub op: &'static str,
    /// Its number of blocks, which tells apart the shapes of one op.
    pub grid: u32,
    /// From the event before the launch to the event after it.
    pub micros: f64,
}

impl CudaBackend {
    /// Start timing every kernel launch: an event is recorded on the stream
    /// before and after each one, until [`CudaBackend::take_timeline`]. The
    /// events serialise the launches (no overlap from programmatic dependent
    /// launch), so the times are each kernel alone; their sum against the
    /// untimed step's time shows what the overlap is worth. Not while a
    /// decode step is being recorded.
    pub fn start_timeline(&self) -> Result<()> {
        if self.capture.lock().map(|c| c.is_some()).unwrap_or(true) {
            return Err(BackendError::Device(
                "timeline: a decode step is being recorded".into(),
            ));
        }
        *self.timeline.lock().map_err(|_| poisoned())? = Some(Vec::new());
        self.timing.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stop timing launches, wait for the stream, and return each launch's
    /// time in launch order (empty without `start_timeline`).
    pub fn take_timeline(&self) -> Result<Vec<LaunchTime>> {
        self.timing.store(false, Ordering::Relaxed);
        let Some(list) = self.timeline.lock().map_err(|_| poisoned())?.take() else {
            return Ok(Vec::new());
        };
        self.synchronize()?;
        list.iter()
            .map(|t| {
                let ms = t.start.elapsed_ms(&t.end).map_err(dev("timeline"))?;
                Ok(LaunchTime {
                    op: t.op,
                    grid: t.grid,
                    micros: f64::from(ms) * 1e3,
                })
            })
            .collect()
    }

    fn timing_event(&self) -> Result<CudaEvent> {
        let e = self
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(dev("timeline"))?;
        e.record(&self.stream).map_err(dev("timeline"))?;
        Ok(e)
    }
}

fn poisoned() -> BackendError {
    BackendError::Device("timeline lock poisoned".into())
}

/// Most arguments any kernel takes.
const MAX_ARGS: usize = 32;

/// Kernel arguments, each in an 8-byte slot (a device pointer or a scalar in
/// its first bytes), in the kernel's parameter order.
#[derive(Clone, Copy)]
pub(crate) struct Args {
    slots: [[u8; 8]; MAX_ARGS],
    len: usize,
}

impl Args {
    pub(crate) fn new() -> Self {
        Args {
            slots: [[0; 8]; MAX_ARGS],
            len: 0,
        }
    }

    fn push(mut self, bytes: &[u8]) -> Self {
        assert!(self.len < MAX_ARGS, "kernel argument list too long");
        self.slots[self.len][..bytes.len()].copy_from_slice(bytes);
        self.len += 1;
        self
    }

    /// A device address (`T*` in the kernel); 0 is the null pointer.
    pub(crate) fn ptr(self, p: u64) -> Self {
        self.push(&p.to_ne_bytes())
    }

    /// An `int`. Panics (a bug, not an input error) if `v` does not fit: every
    /// caller has checked the shapes it derives `v` from.
    pub(crate) fn int(self, v: usize) -> Self {
        let v = i32::try_from(v).expect("kernel int argument out of range");
        self.push(&v.to_ne_bytes())
    }

    pub(crate) fn u32(self, v: u32) -> Self {
        self.push(&v.to_ne_bytes())
    }

    pub(crate) fn i64(self, v: usize) -> Self {
        self.push(&(v as i64).to_ne_bytes())
    }

    pub(crate) fn f32(self, v: f32) -> Self {
        self.push(&v.to_ne_bytes())
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub smem: u32,
}

impl Dims {
    /// `threads` threads in blocks of 256.
    pub(crate) fn flat(threads: usize) -> Self {
        Dims {
            grid: (threads.div_ceil(256).max(1) as u32, 1, 1),
            block: 256,
            smem: 0,
        }
    }

    /// `blocks` blocks of `block` threads.
    pub(crate) fn blocks(blocks: usize, block: u32) -> Self {
        Dims {
            grid: (blocks.max(1) as u32, 1, 1),
            block,
            smem: 0,
        }
    }
}

impl CudaBackend {
    /// Queue `f` on the stream.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters, and every buffer it names
    /// must hold what the kernel reads and writes for `dims`.
    pub(crate) unsafe fn launch(
        &self,
        op: &'static str,
        f: &CudaFunction,
        dims: Dims,
        args: Args,
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(dev(op))?;
        let mut slots = args.slots;
        let mut params: [*mut c_void; MAX_ARGS] = [std::ptr::null_mut(); MAX_ARGS];
        for (p, s) in params.iter_mut().zip(slots.iter_mut()).take(args.len) {
            *p = s.as_mut_ptr() as *mut c_void;
        }
        // SAFETY: zero is a valid bit pattern for this plain C struct.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: dims.grid.0,
            gridDimY: dims.grid.1,
            gridDimZ: dims.grid.2,
            blockDimX: dims.block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: dims.smem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        // Only while a timeline is taken: the lock and two events per launch.
        let mut timeline = if self.timing.load(Ordering::Relaxed) {
            Some(self.timeline.lock().map_err(|_| poisoned())?)
        } else {
            None
        };
        let start = match timeline.as_deref() {
            Some(Some(_)) => Some(self.timing_event()?),
            _ => None,
        };
        // SAFETY: the caller vouches for the arguments; `params` points into
        // `slots`, which outlives the call (the driver copies the values).
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(dev(op))?;
        if let (Some(Some(list)), Some(start)) = (timeline.as_deref_mut(), start) {
            let end = self.timing_event()?;
            list.push(TimedLaunch {
                op,
                grid: dims.grid.0 * dims.grid.1 * dims.grid.2,
                start,
                end,
            });
        }
        self.launches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Kernel launches queued so far (cuBLAS calls and copies not included).
    pub fn launch_count(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }
}
