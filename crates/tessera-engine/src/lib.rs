//! The forward pass generic over `Backend`, the KV-cached sequence, the
//! sampler and the generation loop.
//!
//! Invariant: the engine never names a device; it calls `Backend` ops only.

mod error;
mod generate;
mod model;
mod sampler;
pub mod weights;

pub use error::{EngineError, Result};
pub use generate::{
    generate, generate_steps, perplexity, FinishReason, GenerateRequest, Generation, StepOut,
    TextStream, GREEDY_AHEAD,
};
pub use model::{BatchEntry, Logits, Model, RecordingStats, Sequence};
pub use sampler::{argmax, Sampler, SamplingParams};
