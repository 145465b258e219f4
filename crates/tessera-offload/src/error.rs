use tessera_backend::BackendError;

/// Errors from planning or running weight streaming.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The configuration cannot work; the message says what would fit.
    #[error("offload plan refused: {0}")]
    Plan(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A weight would push the device arena past its budget.
    #[error("device arena over budget: {what} needs {bytes} bytes, {used} of {budget} are in use")]
    OverBudget {
        what: String,
        bytes: usize,
        used: usize,
        budget: usize,
    },
    /// Layers of one model whose matrices differ in size cannot share slots.
    #[error(
        "layer {layer}: matrix {index} has an image of {found} bytes, the slots hold {expected}"
    )]
    UnevenLayers {
        layer: usize,
        index: usize,
        found: usize,
        expected: usize,
    },
    #[error("the streamer is unusable after a panic in another thread")]
    Poisoned,
}

pub type Result<T, E = OffloadError> = std::result::Result<T, E>;

impl From<OffloadError> for tessera_engine::EngineError {
    fn from(e: OffloadError) -> Self {
        match e {
            OffloadError::Backend(b) => tessera_engine::EngineError::Backend(b),
            other => tessera_engine::EngineError::Streaming(other.to_string()),
        }
    }
}
