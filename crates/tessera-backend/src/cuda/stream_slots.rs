//! Weight streaming on CUDA (tessera-offload): device memory queries for the
//! `auto` budget, and the slot copier (pinned host store, a dedicated copy
//! stream, events ordering copy → compute and compute → slot reuse).

use super::{dev, probe};
use crate::{BackendError, Result};
use cudarc::driver::CudaContext;

/// `(free, total)` bytes of GPU `ordinal`'s memory.
pub fn memory_info(ordinal: usize) -> Result<(u64, u64)> {
    let count = probe()?;
    if ordinal >= count {
        return Err(BackendError::Unavailable(
            format!("CUDA device {ordinal}"),
            format!("this machine has {count} GPU(s)"),
        ));
    }
    let ctx = CudaContext::new(ordinal).map_err(dev("create context"))?;
    let (free, total) = ctx.mem_get_info().map_err(dev("cuMemGetInfo"))?;
    Ok((free as u64, total as u64))
}

use super::{CudaBackend, CudaLinear};
use crate::stream::{CopyTiming, HostBytes, HostLayers, SlotCopier, SlotRef};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream, DevicePtr, PinnedHostSlice};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Page-locked host memory (write-combined: written once by the CPU, read by
/// the copy engine at full link speed).
pub struct PinnedBytes {
    _buf: PinnedHostSlice<u8>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the allocation is owned by `_buf` and only reached through `&self` /
// `&mut self`; the copy engine reads it only while the store (an `Arc`) lives.
unsafe impl Send for PinnedBytes {}
unsafe impl Sync for PinnedBytes {}

impl HostBytes for PinnedBytes {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is the live pinned allocation.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// The device buffers of a weight, in image order: (pointer, bytes).
fn parts(w: &CudaLinear, stream: &CudaStream) -> Vec<(u64, usize)> {
    match w {
        CudaLinear::F32 { w, .. } => vec![(w.device_ptr(stream).0, w.len() * 4)],
        CudaLinear::Int8(w) => vec![
            (w.q.device_ptr(stream).0, w.q.len()),
            (w.scales.device_ptr(stream).0, w.scales.len() * 4),
        ],
        CudaLinear::Bf16(w) => vec![(w.w.device_ptr(stream).0, w.w.len() * 2)],
    }
}

impl CudaBackend {
    /// The weight's device bytes, downloaded: int8 values (padded rows) then scales.
    pub(crate) fn linear_image_impl(&self, w: &CudaLinear) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match w {
            CudaLinear::F32 { w, .. } => {
                let v = self.stream.clone_dtoh(w).map_err(dev("linear_image"))?;
                out.extend(v.iter().flat_map(|x| x.to_ne_bytes()));
            }
            CudaLinear::Int8(w) => {
                let q = self.stream.clone_dtoh(&w.q).map_err(dev("linear_image"))?;
                let s = self
                    .stream
                    .clone_dtoh(&w.scales)
                    .map_err(dev("linear_image"))?;
                out.extend(q.iter().map(|&b| b as u8));
                out.extend(s.iter().flat_map(|x| x.to_ne_bytes()));
            }
            CudaLinear::Bf16(w) => {
                let v = self.stream.clone_dtoh(&w.w).map_err(dev("linear_image"))?;
                out.extend(v.iter().flat_map(|x| x.to_ne_bytes()));
            }
        }
        Ok(out)
    }

    /// A host buffer for a layer's images: pinned when asked, else plain.
    pub(crate) fn host_buffer_impl(&self, len: usize, pinned: bool) -> Result<Box<dyn HostBytes>> {
        if !pinned {
            return Ok(Box::new(vec![0u8; len]));
        }
        // SAFETY: the memory is initialised right below, before any use.
        let mut buf = unsafe { self.ctx.alloc_pinned::<u8>(len.max(1)) }
            .map_err(dev("cuMemHostAlloc (pinned host store)"))?;
        let ptr = buf.as_mut_ptr().map_err(dev("pinned host store"))?;
        // SAFETY: `ptr` points at `len.max(1)` bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(Box::new(PinnedBytes {
            _buf: buf,
            ptr,
            len,
        }))
    }

    pub(crate) fn slot_copier_impl(
        &self,
        host: Arc<HostLayers>,
        slots: Vec<Vec<CudaLinear>>,
    ) -> Result<Box<dyn SlotCopier<CudaLinear>>> {
        let copy = self
            .ctx
            .new_stream()
            .map_err(dev("create the copy stream"))?;
        let n = slots.len();
        let mut compute_done = Vec::with_capacity(n);
        for _ in 0..n {
            compute_done.push(self.ctx.new_event(None).map_err(dev("cuEventCreate"))?);
        }
        Ok(Box::new(CudaSlotCopier {
            compute: self.stream.clone(),
            copy,
            host,
            slots,
            compute_done,
            current: (0..n).map(|_| None).collect(),
            finished: VecDeque::new(),
        }))
    }
}

/// One copy into a slot, with the events that time it.
struct SlotUse {
    layer: usize,
    slot: usize,
    bytes: usize,
    issued: Instant,
    start: CudaEvent,
    done: CudaEvent,
    /// Recorded on the compute stream right before it waits for `done`.
    ready: Option<CudaEvent>,
}

/// The CUDA [`SlotCopier`]: copies on a dedicated stream; the compute stream
/// waits for a slot's copy event, and the copy stream for the slot's
/// compute-done event before overwriting it. The host never blocks.
pub struct CudaSlotCopier {
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    host: Arc<HostLayers>,
    slots: Vec<Vec<CudaLinear>>,
    compute_done: Vec<CudaEvent>,
    current: Vec<Option<SlotUse>>,
    /// Released uses whose timings are not yet read.
    finished: VecDeque<SlotUse>,
}

fn timing_event(stream: &CudaStream) -> Result<CudaEvent> {
    stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(dev("cuEventRecord"))
}

impl SlotCopier<CudaLinear> for CudaSlotCopier {
    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn start(&mut self, slot: usize, layer: usize) -> Result<()> {
        let buf = self
            .host
            .layers
            .get(layer)
            .and_then(|b| b.as_ref())
            .ok_or_else(|| {
                BackendError::Device(format!("layer {layer} is not in the host store"))
            })?;
        let src = buf.bytes();
        // Compute → reuse: nothing lands before the slot's last reader finished.
        self.copy
            .wait(&self.compute_done[slot])
            .map_err(dev("cuStreamWaitEvent"))?;
        let start = timing_event(&self.copy)?;
        let mut at = 0;
        for w in &self.slots[slot] {
            for (dst, n) in parts(w, &self.copy) {
                let piece = src.get(at..at + n).ok_or_else(|| {
                    BackendError::Device(format!(
                        "layer {layer}: the host image has {} bytes, the slot needs more",
                        src.len()
                    ))
                })?;
                // SAFETY: `dst` is a live device buffer of `n` bytes owned by the
                // slot; `piece` lives in the host store, kept alive by `self.host`
                // until this copier (and its streams) are dropped.
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(dst, piece, self.copy.cu_stream())
                }
                .map_err(dev("cuMemcpyHtoDAsync"))?;
                at += n;
            }
        }
        let done = timing_event(&self.copy)?;
        self.current[slot] = Some(SlotUse {
            layer,
            slot,
            bytes: at,
            issued: Instant::now(),
            start,
            done,
            ready: None,
        });
        Ok(())
    }

    fn wait(&mut self, slot: usize) -> Result<Duration> {
        let u = self.current[slot]
            .as_mut()
            .ok_or_else(|| BackendError::Device(format!("slot {slot} was never filled")))?;
        // Copy → compute, on the device; the host goes on issuing work.
        u.ready = Some(timing_event(&self.compute)?);
        self.compute
            .wait(&u.done)
            .map_err(dev("cuStreamWaitEvent"))?;
        Ok(Duration::ZERO)
    }

    fn weights(&self, slot: usize) -> Result<SlotRef<'_, CudaLinear>> {
        Ok(Box::new(&self.slots[slot]))
    }

    fn release(&mut self, slot: usize) -> Result<()> {
        self.compute_done[slot]
            .record(&self.compute)
            .map_err(dev("cuEventRecord"))?;
        if let Some(u) = self.current[slot].take() {
            self.finished.push_back(u);
        }
        Ok(())
    }

    fn drain_timings(&mut self) -> Result<Vec<CopyTiming>> {
        let mut out = Vec::new();
        while let Some(u) = self.finished.front() {
            let ready = match &u.ready {
                Some(r) => r,
                None => {
                    self.finished.pop_front();
                    continue;
                }
            };
            if !(u.done.is_complete() && ready.is_complete()) {
                break;
            }
            let copy_ms = u
                .start
                .elapsed_ms(&u.done)
                .map_err(dev("cuEventElapsedTime"))?;
            let stall_ms = ready
                .elapsed_ms(&u.done)
                .map_err(dev("cuEventElapsedTime"))?;
            let copy = Duration::from_secs_f64(f64::from(copy_ms.max(0.0)) / 1e3);
            out.push(CopyTiming {
                layer: u.layer,
                slot: u.slot,
                bytes: u.bytes,
                issued: u.issued,
                // Device times are not on the host clock: the copy is placed at its issue.
                started: u.issued,
                finished: u.issued + copy,
                compute_stall: Duration::from_secs_f64(f64::from(stall_ms.max(0.0)) / 1e3),
            });
            self.finished.pop_front();
        }
        Ok(out)
    }

    fn host(&self) -> &Arc<HostLayers> {
        &self.host
    }
}

impl Drop for CudaSlotCopier {
    fn drop(&mut self) {
        // Copies may still read the host store: let them finish first.
        let _ = self.copy.synchronize();
    }
}
