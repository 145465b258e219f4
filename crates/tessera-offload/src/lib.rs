//! Stage-3 weight streaming: a model bigger than the device's memory runs by
//! keeping its int8 layers in host memory and copying each to the device just
//! before it runs, while earlier layers compute.
//!
//! - [`plan`]: the residency planner. Given a device budget for weights, as
//!   many layers as fit stay resident; the rest stream through `prefetch + 1`
//!   slots. Refuses budgets that cannot work, saying what would fit.
//! - [`store`]: builds the streamer while the model loads ([`OffloadSink`]):
//!   one host allocation per streamed layer (pinned on CUDA), resident layers
//!   and slots reserved in a budgeted device [`Arena`].
//! - [`ring`]: the prefetch schedule over the slot ring, and the statistics.
//!
//! The engine sees only `tessera_engine::weights::LayerWeights`; the copy
//! mechanism (a copy thread on CPU, a copy stream and events on CUDA) is the
//! backend's `SlotCopier`.

mod error;
pub mod plan;
pub mod ring;
pub mod store;

pub use error::{OffloadError, Result};
pub use plan::{PlanInput, ResidencyPlan, DEFAULT_LINK_GBPS};
pub use ring::{Streamer, TraceEvent};
pub use store::{Arena, OffloadSink, StreamOptions, StreamProbe};

use tessera_backend::{Backend, WeightDType};
use tessera_comm::Collective;
use tessera_engine::Model;
use tessera_model::{ModelSpec, ShardPlan, TensorSource};

impl PlanInput {
    /// The planner's input for `shard` of a model whose layers are `dtype`
    /// (int8 or int4 stream), with estimated sizes.
    pub fn for_model(
        spec: &ModelSpec,
        shard: &ShardPlan,
        dtype: WeightDType,
        budget: usize,
        prefetch_depth: usize,
        resident_layers: Option<usize>,
        link_gbps: f64,
    ) -> Self {
        PlanInput {
            num_layers: spec.num_layers,
            layer_bytes: plan::layer_bytes(spec, shard, dtype),
            fixed_bytes: plan::fixed_bytes(spec, shard, dtype),
            budget,
            prefetch_depth,
            resident_layers,
            link_gbps,
        }
    }
}

/// Load `shard` of a model as `opts.dtype` (int8 or int4) with its layers
/// streamed per `opts`. Returns the model and a probe into its streamer.
pub fn load_streamed<B: Backend + 'static>(
    backend: B,
    spec: &ModelSpec,
    src: &dyn TensorSource,
    shard: ShardPlan,
    comm: Box<dyn Collective>,
    opts: StreamOptions,
    on_progress: impl FnMut(usize, usize),
) -> tessera_engine::Result<(Model<B>, StreamProbe<B>)> {
    if !matches!(opts.dtype, WeightDType::Int8 | WeightDType::Int4) {
        return Err(tessera_engine::EngineError::Streaming(format!(
            "streaming moves int8 or int4 weights, not {}",
            opts.dtype
        )));
    }
    let dtype = opts.dtype;
    let (sink, probe) = OffloadSink::new(opts);
    let model = Model::load_shard_into(
        backend,
        spec,
        src,
        dtype,
        shard,
        comm,
        Box::new(sink),
        on_progress,
    )?;
    Ok((model, probe))
}
