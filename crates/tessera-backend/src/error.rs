/// Errors from a backend. Shape mismatches name the op and both shapes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("KV cache full: position {pos} is beyond its capacity of {capacity} tokens")]
    CacheFull { pos: usize, capacity: usize },
    #[error(
        "KV block pool exhausted: {needed} more blocks of 16 positions needed, {free} of {total} free"
    )]
    KvPoolExhausted {
        needed: usize,
        free: usize,
        total: usize,
    },
    #[error("device error: {0}")]
    Device(String),
    #[error("collective failed: {0}")]
    Collective(#[from] tessera_comm::CommError),
    #[error("{0} is not available: {1}")]
    Unavailable(String, String),
    /// A setting (an environment variable) with a value the backend does not take.
    #[error("{0}={1:?} is not a valid setting: {2}")]
    Setting(&'static str, String, String),
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> BackendError {
    BackendError::Shape {
        op,
        detail: detail.into(),
    }
}
