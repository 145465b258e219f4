/// Errors from a collective. Each names the peer or the rule that was broken.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("{op}: buffer length mismatch: {detail}")]
    Length { op: &'static str, detail: String },
    #[error("invalid rank {rank} for world size {world}")]
    Rank { rank: usize, world: usize },
    #[error("{op}: peer rank {peer} ({addr}) did not respond within {timeout_ms} ms")]
    Timeout {
        op: &'static str,
        peer: usize,
        addr: String,
        timeout_ms: u64,
    },
    #[error("{op}: connection to peer rank {peer} ({addr}) failed: {source}")]
    Peer {
        op: &'static str,
        peer: usize,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rendezvous failed: {0}")]
    Rendezvous(String),
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error("the communicator was aborted by an earlier failure: {0}")]
    Aborted(String),
}

pub type Result<T, E = CommError> = std::result::Result<T, E>;
