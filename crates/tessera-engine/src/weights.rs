//! Where a layer's matrices are when the forward pass needs them.
//!
//! The forward pass asks a [`LayerWeights`] provider for layer `l`'s four
//! matrices right before running it and hands them back right after, so the
//! engine stays the same whether every layer is resident on the device
//! ([`ResidentLayers`], the default) or streamed from host memory a few layers
//! ahead of use (`tessera-offload`). Norms and biases are small and always
//! stay with the engine.

use crate::Result;
use std::time::Duration;
use tessera_backend::Backend;

/// The matrices of one layer, in this order (fused as the engine runs them).
pub const LAYER_LINEARS: [&str; 4] = ["qkv", "o_proj", "gate_up", "down_proj"];
/// Index of the fused Q/K/V matrix in a layer's matrices.
pub const QKV: usize = 0;
/// Index of o_proj.
pub const O_PROJ: usize = 1;
/// Index of the fused gate/up matrix.
pub const GATE_UP: usize = 2;
/// Index of down_proj.
pub const DOWN_PROJ: usize = 3;

/// What streaming did during one forward step (all zero for resident weights).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamStepStats {
    /// Layers copied to the device and their bytes.
    pub copies: usize,
    pub bytes: usize,
    /// Sum of the copies' durations (the copy engine's busy time).
    pub copy_time: Duration,
    /// Time compute waited for a copy to land.
    pub wait_time: Duration,
    /// Wall time of the step, from its first layer to its end.
    pub step_time: Duration,
}

impl StreamStepStats {
    /// Achieved host-to-device rate while copying, in GB/s (10^9 bytes).
    pub fn copy_gbps(&self) -> f64 {
        let s = self.copy_time.as_secs_f64();
        if s > 0.0 {
            self.bytes as f64 / s / 1e9
        } else {
            0.0
        }
    }

    /// Add another step's figures.
    pub fn add(&mut self, o: &StreamStepStats) {
        self.copies += o.copies;
        self.bytes += o.bytes;
        self.copy_time += o.copy_time;
        self.wait_time += o.wait_time;
        self.step_time += o.step_time;
    }
}

/// Provides each layer's matrices to the forward pass.
pub trait LayerWeights<B: Backend>: Send + Sync {
    /// Number of layers.
    fn num_layers(&self) -> usize;

    /// Run `f` with layer `l`'s matrices (indexed by [`QKV`], [`O_PROJ`], ...):
    /// acquire them (waiting for a copy if needed), run, release them.
    /// Layers are normally asked for in order `0..num_layers` every step.
    fn with_layer(&self, l: usize, f: &mut dyn FnMut(&[B::Linear]) -> Result<()>) -> Result<()>;

    /// A forward step ended (the provider may account its statistics).
    fn end_step(&self) {}

    /// Statistics of the steps since the last call, summed; `None` when the
    /// weights are not streamed.
    fn take_stats(&self) -> Option<StreamStepStats> {
        None
    }

    /// A one-line description, e.g. `resident` or `streamed: 12 of 32 resident, 3 slots`.
    fn describe(&self) -> String;

    /// Whether a step may be recorded once and replayed (a CUDA graph): true
    /// only when every layer's matrices stay at the same place for the life
    /// of the model and `with_layer` does nothing but hand them over.
    fn recordable(&self) -> bool {
        false
    }
}

/// Receives each layer's matrices as the model loads, and then builds the provider.
pub trait LayerSink<B: Backend> {
    /// Layer `l`'s matrices, in order `0, 1, ...`.
    fn push(&mut self, backend: &B, l: usize, linears: Vec<B::Linear>) -> Result<()>;
    /// All layers were pushed.
    fn finish(self: Box<Self>, backend: &B) -> Result<Box<dyn LayerWeights<B>>>;
}

/// Every layer resident on the device: the default provider.
pub struct ResidentLayers<B: Backend> {
    layers: Vec<Vec<B::Linear>>,
}

impl<B: Backend> Default for ResidentLayers<B> {
    fn default() -> Self {
        ResidentLayers { layers: Vec::new() }
    }
}

impl<B: Backend> LayerWeights<B> for ResidentLayers<B> {
    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn with_layer(&self, l: usize, f: &mut dyn FnMut(&[B::Linear]) -> Result<()>) -> Result<()> {
        f(&self.layers[l])
    }

    fn describe(&self) -> String {
        "resident".into()
    }

    fn recordable(&self) -> bool {
        true
    }
}

impl<B: Backend + 'static> LayerSink<B> for ResidentLayers<B> {
    fn push(&mut self, _backend: &B, _l: usize, linears: Vec<B::Linear>) -> Result<()> {
        self.layers.push(linears);
        Ok(())
    }

    fn finish(self: Box<Self>, _backend: &B) -> Result<Box<dyn LayerWeights<B>>> {
        Ok(self)
    }
}
