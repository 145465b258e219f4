use tessera_backend::BackendError;
use tessera_model::ModelError;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    WeightShape {
        path: String,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(
        "prompt of {prompt} tokens plus {new} new tokens exceeds the context of {context} tokens"
    )]
    ContextExceeded {
        prompt: usize,
        new: usize,
        context: usize,
    },
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("invalid sampling parameter `{name}`: {reason}")]
    Sampling { name: &'static str, reason: String },
    #[error("shard plan is rank {} of {} but the collective is rank {} of {}", plan.0, plan.1, comm.0, comm.1)]
    ShardMismatch {
        plan: (usize, usize),
        comm: (usize, usize),
    },
    #[error("{0} is unusable after a panic in another thread")]
    Poisoned(&'static str),
    /// Weight streaming failed (see `tessera-offload`).
    #[error("weight streaming: {0}")]
    Streaming(String),
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
