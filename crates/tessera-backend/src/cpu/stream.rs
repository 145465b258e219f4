//! Weight streaming on the CPU: a copy thread fills slot weights from the host
//! store while the compute threads run other layers. The "device" is a bounded
//! arena of preallocated weights, so CI can check the streamer's invariants
//! (budget, overlap, bit-identical outputs) without a GPU.

use super::CpuLinear;
use crate::stream::{CopyTiming, HostLayers, SlotCopier, SlotRef};
use crate::{BackendError, Result};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of a weight's image (see [`CpuLinear::write_image`]).
pub fn image_len(w: &CpuLinear) -> usize {
    match w {
        CpuLinear::F32 { data, .. } => std::mem::size_of_val(data.as_slice()),
        CpuLinear::Int8(p) => p.image_len(),
    }
}

impl CpuLinear {
    /// The weight's bytes as they lie in memory.
    pub fn write_image(&self, out: &mut [u8]) {
        match self {
            CpuLinear::F32 { data, .. } => {
                for (o, v) in out.chunks_exact_mut(4).zip(data) {
                    o.copy_from_slice(&v.to_ne_bytes());
                }
            }
            CpuLinear::Int8(p) => p.write_image(out),
        }
    }

    /// Overwrite with an image of a weight of the same shape and dtype.
    pub fn load_image(&mut self, image: &[u8]) -> Result<()> {
        let want = image_len(self);
        let ok = match self {
            CpuLinear::F32 { data, .. } if image.len() == want => {
                for (v, b) in data.iter_mut().zip(image.chunks_exact(4)) {
                    *v = f32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                }
                true
            }
            CpuLinear::F32 { .. } => false,
            CpuLinear::Int8(p) => p.load_image(image),
        };
        if ok {
            Ok(())
        } else {
            Err(BackendError::Shape {
                op: "load_image",
                detail: format!("an image of {} bytes for a weight of {want}", image.len()),
            })
        }
    }
}

struct Job {
    slot: usize,
    layer: usize,
    issued: Instant,
}

type Done = std::result::Result<CopyTiming, String>;

/// The CPU [`SlotCopier`]: one copy thread, jobs in order.
pub struct CpuSlotCopier {
    host: Arc<HostLayers>,
    slots: Arc<Vec<RwLock<Vec<CpuLinear>>>>,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    /// Per slot: a copy was started and its completion not yet seen.
    pending: Vec<bool>,
    finished: Vec<CopyTiming>,
    thread: Option<JoinHandle<()>>,
}

impl CpuSlotCopier {
    /// Start the copy thread over `slots`.
    pub fn new(host: Arc<HostLayers>, slots: Vec<Vec<CpuLinear>>) -> Result<Self> {
        let n = slots.len();
        let slots = Arc::new(slots.into_iter().map(RwLock::new).collect::<Vec<_>>());
        let (jobs_tx, jobs_rx) = channel::<Job>();
        let (done_tx, done_rx) = channel::<Done>();
        let (h, s) = (host.clone(), slots.clone());
        let thread = std::thread::Builder::new()
            .name("tessera-copy".into())
            .spawn(move || copy_loop(&h, &s, jobs_rx, done_tx))
            .map_err(|e| BackendError::Device(format!("cannot start the copy thread: {e}")))?;
        Ok(CpuSlotCopier {
            host,
            slots,
            jobs: Some(jobs_tx),
            done: done_rx,
            pending: vec![false; n],
            finished: Vec::new(),
            thread: Some(thread),
        })
    }

    /// Receive one completion, recording it.
    fn receive(&mut self) -> Result<()> {
        let msg = self
            .done
            .recv()
            .map_err(|_| BackendError::Device("the copy thread stopped unexpectedly".into()))?;
        let t = msg.map_err(BackendError::Device)?;
        self.pending[t.slot] = false;
        self.finished.push(t);
        Ok(())
    }
}

fn copy_loop(
    host: &HostLayers,
    slots: &[RwLock<Vec<CpuLinear>>],
    jobs: Receiver<Job>,
    done: Sender<Done>,
) {
    while let Ok(job) = jobs.recv() {
        let started = Instant::now();
        let result = copy_one(host, slots, &job).map(|bytes| CopyTiming {
            layer: job.layer,
            slot: job.slot,
            bytes,
            issued: job.issued,
            started,
            finished: Instant::now(),
            compute_stall: Duration::ZERO,
        });
        if done.send(result).is_err() {
            return;
        }
    }
}

fn copy_one(
    host: &HostLayers,
    slots: &[RwLock<Vec<CpuLinear>>],
    job: &Job,
) -> std::result::Result<usize, String> {
    let buf = host
        .layers
        .get(job.layer)
        .and_then(|b| b.as_ref())
        .ok_or_else(|| format!("layer {} is not in the host store", job.layer))?;
    let bytes = buf.bytes();
    let mut slot = slots[job.slot]
        .write()
        .map_err(|_| format!("slot {} is poisoned", job.slot))?;
    for (w, range) in slot.iter_mut().zip(&host.parts) {
        w.load_image(&bytes[range.clone()])
            .map_err(|e| format!("layer {}: {e}", job.layer))?;
    }
    Ok(bytes.len())
}

impl SlotCopier<CpuLinear> for CpuSlotCopier {
    fn slots(&self) -> usize {
        self.pending.len()
    }

    fn start(&mut self, slot: usize, layer: usize) -> Result<()> {
        if self.pending[slot] {
            return Err(BackendError::Device(format!(
                "slot {slot} is still being filled"
            )));
        }
        self.pending[slot] = true;
        let job = Job {
            slot,
            layer,
            issued: Instant::now(),
        };
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| BackendError::Device("the copy thread stopped unexpectedly".into()))
    }

    fn wait(&mut self, slot: usize) -> Result<Duration> {
        let t0 = Instant::now();
        while self.pending[slot] {
            self.receive()?;
        }
        Ok(t0.elapsed())
    }

    fn weights(&self, slot: usize) -> Result<SlotRef<'_, CpuLinear>> {
        let guard = self.slots[slot]
            .read()
            .map_err(|_| BackendError::Device(format!("slot {slot} is poisoned")))?;
        Ok(Box::new(guard))
    }

    fn release(&mut self, _slot: usize) -> Result<()> {
        // Compute on the CPU is synchronous: once the engine returns, the slot is free.
        Ok(())
    }

    fn drain_timings(&mut self) -> Result<Vec<CopyTiming>> {
        while let Ok(msg) = self.done.try_recv() {
            let t = msg.map_err(BackendError::Device)?;
            self.pending[t.slot] = false;
            self.finished.push(t);
        }
        Ok(std::mem::take(&mut self.finished))
    }

    fn host(&self) -> &Arc<HostLayers> {
        &self.host
    }
}

impl Drop for CpuSlotCopier {
    fn drop(&mut self) {
        self.jobs = None; // ends the thread's loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
