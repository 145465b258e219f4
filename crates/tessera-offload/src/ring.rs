//! The streamer at run time: resident layers, a ring of slots, and the
//! prefetch schedule that keeps `prefetch_depth` copies ahead of compute.
//!
//! Streamed layers are consumed in a fixed cyclic order (pass after pass), so
//! position `p` of that endless sequence is layer `streamed[p % m]` in slot
//! `p % S`. Before compute uses position `p`, copies for `p+1 ..= p+depth`
//! have been issued; when compute releases `p`, the copy of `p+depth+1` is
//! issued into the slot `p` just freed (S = depth + 1), so copies for the next
//! pass start while the current one ends.

use crate::plan::ResidencyPlan;
use crate::{OffloadError, Result};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_backend::stream::{CopyTiming, SlotCopier};
use tessera_backend::Backend;
use tessera_engine::weights::{LayerWeights, StreamStepStats};

/// One recorded event of the schedule (kept when tracing is on, for tests).
#[derive(Debug, Clone, Copy)]
pub enum TraceEvent {
    /// A streamed layer ran: its position in the stream, its slot, and when.
    Compute {
        layer: usize,
        pos: u64,
        slot: usize,
        start: Instant,
        end: Instant,
    },
    /// A copy was issued for stream position `pos` (before compute reached it).
    Issue { pos: u64, layer: usize, at: Instant },
    /// A copy ran.
    Copy(CopyTiming),
}

struct Ring<L> {
    copier: Box<dyn SlotCopier<L>>,
    /// Next stream position to issue a copy for / to compute.
    next_issue: u64,
    next_consume: u64,
    step_start: Option<Instant>,
    step_wait: Duration,
    acc: StreamStepStats,
    trace: Vec<TraceEvent>,
}

/// Serves layers to the engine: resident ones directly, streamed ones from slots.
pub struct Streamer<B: Backend> {
    plan: ResidencyPlan,
    resident: Vec<Option<Vec<B::Linear>>>,
    /// Streamed layers in pass order, and each layer's index in it.
    streamed: Vec<usize>,
    index_of: Vec<Option<usize>>,
    ring: Option<Mutex<Ring<B::Linear>>>,
    record: bool,
}

impl<B: Backend> Streamer<B> {
    /// Start streaming: issues the first `depth + 1` copies at once.
    pub(crate) fn new(
        plan: ResidencyPlan,
        resident: Vec<Option<Vec<B::Linear>>>,
        copier: Option<Box<dyn SlotCopier<B::Linear>>>,
        record: bool,
    ) -> Result<Self> {
        let streamed = plan.streamed_layers();
        let mut index_of = vec![None; plan.num_layers()];
        for (i, &l) in streamed.iter().enumerate() {
            index_of[l] = Some(i);
        }
        let ring = copier.map(|copier| {
            Mutex::new(Ring {
                copier,
                next_issue: 0,
                next_consume: 0,
                step_start: None,
                step_wait: Duration::ZERO,
                acc: StreamStepStats::default(),
                trace: Vec::new(),
            })
        });
        let s = Streamer {
            plan,
            resident,
            streamed,
            index_of,
            ring,
            record,
        };
        if let Some(ring) = &s.ring {
            let mut r = ring.lock().map_err(|_| OffloadError::Poisoned)?;
            s.issue_ahead(&mut r)?;
        }
        Ok(s)
    }

    pub fn plan(&self) -> &ResidencyPlan {
        &self.plan
    }

    /// Issue copies up to `next_consume + depth`.
    fn issue_ahead(&self, r: &mut Ring<B::Linear>) -> Result<()> {
        let (m, slots) = (self.streamed.len() as u64, self.plan.slots as u64);
        while r.next_issue <= r.next_consume + self.plan.prefetch_depth as u64 {
            let p = r.next_issue;
            let layer = self.streamed[(p % m) as usize];
            r.copier.start((p % slots) as usize, layer)?;
            if self.record {
                r.trace.push(TraceEvent::Issue {
                    pos: p,
                    layer,
                    at: Instant::now(),
                });
            }
            r.next_issue += 1;
        }
        Ok(())
    }

    /// The engine asked for a layer out of order (a step failed half way):
    /// let every copy in flight land, then restart the ring at `index`.
    fn resync(&self, r: &mut Ring<B::Linear>, index: usize) -> Result<()> {
        let (m, slots) = (self.streamed.len() as u64, self.plan.slots as u64);
        for p in r.next_consume..r.next_issue {
            r.copier.wait((p % slots) as usize)?;
        }
        let base = r.next_issue;
        let p = base + (index as u64 + m - base % m) % m;
        r.next_issue = p;
        r.next_consume = p;
        self.issue_ahead(r)
    }

    fn run_streamed(
        &self,
        ring: &Mutex<Ring<B::Linear>>,
        l: usize,
        index: usize,
        f: &mut dyn FnMut(&[B::Linear]) -> tessera_engine::Result<()>,
    ) -> tessera_engine::Result<()> {
        let mut r = ring.lock().map_err(|_| OffloadError::Poisoned)?;
        r.step_start.get_or_insert_with(Instant::now);
        let (m, slots) = (self.streamed.len() as u64, self.plan.slots as u64);
        if (r.next_consume % m) as usize != index {
            self.resync(&mut r, index)?;
        }
        let p = r.next_consume;
        let slot = (p % slots) as usize;
        let waited = r.copier.wait(slot).map_err(OffloadError::from)?;
        r.step_wait += waited;
        let start = Instant::now();
        let result = {
            let w = r.copier.weights(slot).map_err(OffloadError::from)?;
            f(&w)
        };
        let end = Instant::now();
        r.copier.release(slot).map_err(OffloadError::from)?;
        if self.record {
            r.trace.push(TraceEvent::Compute {
                layer: l,
                pos: p,
                slot,
                start,
                end,
            });
        }
        r.next_consume += 1;
        self.issue_ahead(&mut r)?;
        result
    }

    /// Events recorded since the last call (tracing must be on).
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        match &self.ring {
            Some(ring) => match ring.lock() {
                Ok(mut r) => {
                    if let Ok(t) = r.copier.drain_timings() {
                        self.account(&mut r, t);
                    }
                    std::mem::take(&mut r.trace)
                }
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    fn account(&self, r: &mut Ring<B::Linear>, timings: Vec<CopyTiming>) {
        for t in timings {
            r.acc.copies += 1;
            r.acc.bytes += t.bytes;
            r.acc.copy_time += t.finished.saturating_duration_since(t.started);
            r.acc.wait_time += t.compute_stall;
            if self.record {
                r.trace.push(TraceEvent::Copy(t));
            }
        }
    }
}

impl<B: Backend> LayerWeights<B> for Streamer<B> {
    fn num_layers(&self) -> usize {
        self.plan.num_layers()
    }

    fn with_layer(
        &self,
        l: usize,
        f: &mut dyn FnMut(&[B::Linear]) -> tessera_engine::Result<()>,
    ) -> tessera_engine::Result<()> {
        if let Some(Some(w)) = self.resident.get(l) {
            if let Some(ring) = &self.ring {
                if let Ok(mut r) = ring.lock() {
                    r.step_start.get_or_insert_with(Instant::now);
                }
            }
            return f(w);
        }
        match (&self.ring, self.index_of.get(l).copied().flatten()) {
            (Some(ring), Some(index)) => self.run_streamed(ring, l, index, f),
            _ => Err(tessera_engine::EngineError::Streaming(format!(
                "layer {l} is neither resident nor streamed (the model has {} layers)",
                self.num_layers()
            ))),
        }
    }

    fn end_step(&self) {
        let Some(ring) = &self.ring else { return };
        let Ok(mut r) = ring.lock() else { return };
        if let Ok(t) = r.copier.drain_timings() {
            self.account(&mut r, t);
        }
        if let Some(t0) = r.step_start.take() {
            r.acc.step_time += t0.elapsed();
        }
        let waited = std::mem::take(&mut r.step_wait);
        r.acc.wait_time += waited;
    }

    fn take_stats(&self) -> Option<StreamStepStats> {
        let ring = self.ring.as_ref()?;
        let mut r = ring.lock().ok()?;
        Some(std::mem::take(&mut r.acc))
    }

    fn describe(&self) -> String {
        format!(
            "streamed: {} of {} layers resident, {} slots, prefetch depth {}",
            self.plan.resident_count(),
            self.plan.num_layers(),
            self.plan.slots,
            self.plan.prefetch_depth
        )
    }
}

/// Shares a streamer between the model and a [`crate::StreamProbe`].
pub(crate) struct SharedStreamer<B: Backend>(pub std::sync::Arc<Streamer<B>>);

impl<B: Backend> LayerWeights<B> for SharedStreamer<B> {
    fn num_layers(&self) -> usize {
        self.0.num_layers()
    }
    fn with_layer(
        &self,
        l: usize,
        f: &mut dyn FnMut(&[B::Linear]) -> tessera_engine::Result<()>,
    ) -> tessera_engine::Result<()> {
        self.0.with_layer(l, f)
    }
    fn end_step(&self) {
        self.0.end_step()
    }
    fn take_stats(&self) -> Option<StreamStepStats> {
        self.0.take_stats()
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}
