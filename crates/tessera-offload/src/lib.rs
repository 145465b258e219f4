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
