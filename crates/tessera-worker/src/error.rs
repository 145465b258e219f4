/// Errors of a worker. Each becomes one gRPC status for the launcher.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    #[error(transparent)]
    Backend(#[from] tessera_backend::BackendError),
    #[error("collective: {0}")]
    Comm(#[from] tessera_comm::CommError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    State(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<WorkerError> for tonic::Status {
    fn from(e: WorkerError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            WorkerError::BadRequest(_) | WorkerError::Model(_) => {
                tonic::Status::invalid_argument(msg)
            }
            WorkerError::Engine(tessera_engine::EngineError::ContextExceeded { .. })
            | WorkerError::Engine(tessera_engine::EngineError::TokenOutOfRange { .. })
            | WorkerError::Engine(tessera_engine::EngineError::EmptyPrompt) => {
                tonic::Status::invalid_argument(msg)
            }
            WorkerError::State(_) => tonic::Status::failed_precondition(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
