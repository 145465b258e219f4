//! Building the streamer while the model loads: resident layers stay on the
//! device, streamed layers are imaged into the host store (one allocation per
//! layer) and dropped from the device, except the first few, whose device
//! weights become the streaming slots. Every device byte the streamer keeps is
//! reserved in a budgeted [`Arena`].

use crate::plan::{PlanInput, ResidencyPlan};
use crate::ring::{SharedStreamer, Streamer, TraceEvent};
use crate::{OffloadError, Result};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use tessera_backend::stream::{HostBytes, HostLayers};
use tessera_backend::{Backend, WeightDType};
use tessera_engine::weights::{LayerSink, LayerWeights};

/// Device bytes the streamer holds, against its budget. Reservations past the
/// budget fail, so the peak can never exceed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arena {
    pub budget: usize,
    pub used: usize,
    pub peak: usize,
}

impl Arena {
    /// Reserve `bytes` for `what`, or refuse.
    pub fn reserve(&mut self, bytes: usize, what: impl Into<String>) -> Result<()> {
        if self.used + bytes > self.budget {
            return Err(OffloadError::OverBudget {
                what: what.into(),
                bytes,
                used: self.used,
                budget: self.budget,
            });
        }
        self.used += bytes;
        self.peak = self.peak.max(self.used);
        Ok(())
    }
}

/// Options of a streaming load.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The planner's input; its `layer_bytes` is replaced by the real size of
    /// layer 0's matrices on this backend when it loads.
    pub plan: PlanInput,
    /// Page-locked host store (CUDA).
    pub pin_memory: bool,
    /// Keep a trace of every copy and compute (tests).
    pub record: bool,
    /// One slot, no prefetch: see [`ResidencyPlan::synchronous`]. Tests only.
    pub synchronous: bool,
    /// Weight type of the streamed layers: int8 or int4.
    pub dtype: WeightDType,
}

/// Looks into a streamer after the model owns it: plan, arena, trace.
pub struct StreamProbe<B: Backend> {
    streamer: Arc<OnceLock<Arc<Streamer<B>>>>,
    arena: Arc<Mutex<Arena>>,
}

impl<B: Backend> StreamProbe<B> {
    /// The plan in force (after the model loaded).
    pub fn plan(&self) -> Option<ResidencyPlan> {
        self.streamer.get().map(|s| s.plan().clone())
    }
    /// Budget, bytes in use and the peak of the device arena.
    pub fn arena(&self) -> Arena {
        self.arena.lock().map(|a| *a).unwrap_or_default()
    }
    /// Events since the last call (with `record`).
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        self.streamer
            .get()
            .map(|s| s.take_trace())
            .unwrap_or_default()
    }
}

/// The [`LayerSink`] that sets up streaming as the model loads.
pub struct OffloadSink<B: Backend> {
    opts: StreamOptions,
    fixed_bytes: usize,
    plan: Option<ResidencyPlan>,
    arena: Arc<Mutex<Arena>>,
    resident: Vec<Option<Vec<B::Linear>>>,
    host: Vec<Option<Box<dyn HostBytes>>>,
    parts: Vec<Range<usize>>,
    slots: Vec<Vec<B::Linear>>,
    out: Arc<OnceLock<Arc<Streamer<B>>>>,
}

impl<B: Backend + 'static> OffloadSink<B> {
    /// A sink for a model of `opts.plan.num_layers` layers, and a probe into
    /// the streamer it will build.
    pub fn new(opts: StreamOptions) -> (Self, StreamProbe<B>) {
        let arena = Arc::new(Mutex::new(Arena {
            budget: opts.plan.budget,
            ..Arena::default()
        }));
        let out = Arc::new(OnceLock::new());
        let probe = StreamProbe {
            streamer: out.clone(),
            arena: arena.clone(),
        };
        let sink = OffloadSink {
            fixed_bytes: opts.plan.fixed_bytes,
            opts,
            plan: None,
            arena,
            resident: Vec::new(),
            host: Vec::new(),
            parts: Vec::new(),
            slots: Vec::new(),
            out,
        };
        (sink, probe)
    }

    fn reserve(&self, bytes: usize, what: String) -> Result<()> {
        self.arena
            .lock()
            .map_err(|_| OffloadError::Poisoned)?
            .reserve(bytes, what)
    }

    /// Plan with layer 0's real size; reserve the fixed weights.
    fn first_layer(&mut self, sizes: &[usize]) -> Result<ResidencyPlan> {
        let layer_bytes = sizes.iter().sum();
        let mut input = self.opts.plan.clone();
        input.layer_bytes = layer_bytes;
        let plan = if self.opts.synchronous {
            let r = input.resident_layers.unwrap_or(0);
            let mut p =
                ResidencyPlan::synchronous(input.num_layers, r, layer_bytes, input.fixed_bytes);
            p.budget = input.budget;
            p
        } else {
            ResidencyPlan::new(&input)?
        };
        self.reserve(self.fixed_bytes, "embedding, LM head and norms".into())?;
        let mut at = 0;
        self.parts = sizes
            .iter()
            .map(|&n| {
                at += n;
                at - n..at
            })
            .collect();
        Ok(plan)
    }

    fn push_layer(&mut self, backend: &B, l: usize, linears: Vec<B::Linear>) -> Result<()> {
        let images = linears
            .iter()
            .map(|w| backend.linear_image(w))
            .collect::<tessera_backend::Result<Vec<_>>>()?;
        let sizes: Vec<usize> = images.iter().map(Vec::len).collect();
        if self.plan.is_none() {
            self.plan = Some(self.first_layer(&sizes)?);
        }
        for (index, (&found, range)) in sizes.iter().zip(&self.parts).enumerate() {
            if found != range.len() {
                return Err(OffloadError::UnevenLayers {
                    layer: l,
                    index,
                    found,
                    expected: range.len(),
                });
            }
        }
        let plan = self.plan.as_ref().ok_or(OffloadError::Poisoned)?;
        let layer_bytes = plan.layer_bytes;
        let (is_resident, slots) = (plan.resident[l], plan.slots);
        if is_resident {
            self.reserve(layer_bytes, format!("resident layer {l}"))?;
            self.resident.push(Some(linears));
            self.host.push(None);
            return Ok(());
        }
        let mut buf = backend.host_buffer(layer_bytes, self.opts.pin_memory)?;
        let dst = buf.bytes_mut();
        for (img, range) in images.iter().zip(&self.parts) {
            dst[range.clone()].copy_from_slice(img);
        }
        self.host.push(Some(buf));
        self.resident.push(None);
        if self.slots.len() < slots {
            self.reserve(layer_bytes, format!("streaming slot {}", self.slots.len()))?;
            self.slots.push(linears);
        }
        Ok(())
    }
}

impl<B: Backend + 'static> LayerSink<B> for OffloadSink<B> {
    fn push(
        &mut self,
        backend: &B,
        l: usize,
        linears: Vec<B::Linear>,
    ) -> tessera_engine::Result<()> {
        Ok(self.push_layer(backend, l, linears)?)
    }

    fn finish(self: Box<Self>, backend: &B) -> tessera_engine::Result<Box<dyn LayerWeights<B>>> {
        let me = *self;
        let plan = me.plan.ok_or_else(|| {
            tessera_engine::EngineError::Streaming("the model has no layers to stream".into())
        })?;
        let copier = if plan.slots > 0 {
            let host = Arc::new(HostLayers {
                layers: me.host,
                parts: me.parts,
            });
            Some(backend.slot_copier(host, me.slots)?)
        } else {
            None
        };
        let streamer = Arc::new(Streamer::new(plan, me.resident, copier, me.opts.record)?);
        let _ = me.out.set(streamer.clone());
        Ok(Box::new(SharedStreamer(streamer)))
    }
}
