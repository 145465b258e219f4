/// Errors from a collective. Each names the peer or the rule that was broken.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// Buffers of the wrong length here, or of different lengths on different ranks.
    #[error("{op}: buffer length mismatch: {detail}")]
    Length { op: &'static str, detail: String },
    /// A rank (or root) outside `0..world`.
    #[error("invalid rank {rank} for world size {world}")]
    Rank { rank: usize, world: usize },
    /// A peer sent or accepted nothing for the whole timeout.
    #[error("{op}: peer rank {peer} ({addr}) did not respond within {timeout_ms} ms")]
    Timeout {
        op: &'static str,
        peer: usize,
        addr: String,
        timeout_ms: u64,
    },
    /// The connection to a peer broke (it exited, or reset the connection).
    #[error("{op}: connection to peer rank {peer} ({addr}) failed: {source}")]
    Peer {
        op: &'static str,
        peer: usize,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer is alive but called a different collective, or sent bytes that
    /// are not this protocol.
    #[error("{op}: peer rank {peer} ({addr}) is out of step with this rank: {detail}")]
    Mismatch {
        op: &'static str,
        peer: usize,
        addr: String,
        detail: String,
    },
    /// The peer failed first and passed its reason along the ring.
    #[error("{op}: peer rank {peer} ({addr}) aborted the collective: {reason}")]
    PeerAborted {
        op: &'static str,
        peer: usize,
        addr: String,
        reason: String,
    },
    /// A device collective did not finish within the timeout; the communicator
    /// was aborted (NCCL cannot tell which peer is missing).
    #[error("{op}: {transport} collective did not complete within {timeout_ms} ms; communicator aborted ({detail})")]
    Watchdog {
        op: &'static str,
        transport: &'static str,
        timeout_ms: u64,
        detail: String,
    },
    /// Joining the group failed (unreachable peer, refused handshake, bad arguments).
    #[error("rendezvous failed: {0}")]
    Rendezvous(String),
    /// The NCCL or CUDA libraries are missing, or NCCL/CUDA reported an error.
    #[error("NCCL: {0}")]
    Nccl(String),
    /// A call after the communicator failed; carries the first failure.
    #[error("the communicator was aborted by an earlier failure: {0}")]
    Aborted(String),
}

impl CommError {
    /// True for every "a peer did not answer in time" failure, whichever
    /// transport reported it ([`CommError::Timeout`] or [`CommError::Watchdog`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, CommError::Timeout { .. } | CommError::Watchdog { .. })
    }
}

/// `Result` with [`CommError`].
pub type Result<T, E = CommError> = std::result::Result<T, E>;
