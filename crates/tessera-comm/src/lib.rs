//! Collectives among the ranks of one tensor-parallel group.
//!
//! The engine calls [`Collective`] and never knows which transport is behind it:
//! [`Local`] (world size 1), the TCP ring [`TcpRing`] (CPU workers, also across
//! hosts) or NCCL [`NcclCollective`] (GPU workers). Every collective either
//! completes or fails within the transport's timeout with an error naming the
//! peer; none hangs.
//!
//! Buffers here are host `f32`/byte slices. Device transports (NCCL) also
//! offer device-pointer entry points, which a backend reaches by downcasting
//! through [`Collective::as_any_mut`].
//!
//! # The TCP ring
//!
//! Rank `r` writes to rank `r + 1` and reads from rank `r - 1` (mod world).
//! All-reduce splits the buffer into `world` chunks (the first `len % world`
//! one element longer, so any length works, including 0 and `len < world`):
//!
//! 1. reduce-scatter, `world - 1` steps: in step `s` rank `r` sends chunk
//!    `r - s` and adds the chunk `r - s - 1` it receives into its own copy.
//!    Afterwards rank `r` holds the finished sum of chunk `r + 1`;
//! 2. all-gather, `world - 1` steps: each finished chunk is copied round the ring.
//!
//! Each rank sends and receives `2 (world - 1) / world` of the buffer. The sum
//! of chunk `c` is always formed as `((x_c + x_{c+1}) + x_{c+2}) + ...` on
//! fixed ranks and then copied, so results are bitwise identical on every
//! rank and do not depend on timing. All-gather is step 2 alone; broadcast
//! passes frames from the root along the ring (the root's left neighbour
//! confirms to the root); barrier is `world - 1` empty ring steps.
//!
//! Messages are split into frames that carry the op, a per-call sequence
//! number, the step (or root) and the sender's buffer length, so ranks that
//! call different collectives or pass different lengths get an error at the
//! first frame, not a hang. Sends of more than a few KiB run on a helper
//! thread while the caller receives, so two neighbours never wait on each other.
//!
//! **Timeouts.** Every socket read and write has the ring's timeout: a peer
//! that sends nothing for that long is reported as [`CommError::Timeout`]
//! naming it (the timeout bounds silence, not the length of a large
//! transfer, and must exceed the longest compute skew between ranks). A peer
//! that dies closes its sockets, which its neighbours see at once. The first
//! rank to fail sends its reason to its right neighbour ([`CommError::PeerAborted`]
//! carries it on) and closes that socket, so the failure sweeps the ring
//! quickly and every rank's error names the first cause. A failed ring is
//! poisoned: later calls return [`CommError::Aborted`]; drop it to close
//! its remaining socket.
//!
//! **Rendezvous.** Each rank calls [`TcpRing::bind`] and reports
//! [`PendingRing::local_addr`] to the launcher; the launcher sends every rank
//! the list of all addresses (index = rank) and one run token, and each rank
//! calls [`PendingRing::connect`]. The handshake checks protocol version, run
//! token, world size and ranks, so a stale worker of an earlier run is refused.
//!
//! # NCCL
//!
//! See [`nccl`]: the communicator is non-blocking and every call is watched
//! until it completes; past the timeout it is aborted with [`CommError::Watchdog`].

mod error;
mod local;
pub mod nccl;
pub mod tcp;

pub use error::{CommError, Result};
pub use local::Local;
pub use nccl::NcclCollective;
pub use tcp::{PendingRing, TcpRing};

/// All-reduce, all-gather, broadcast and barrier among `world` ranks.
///
/// Every rank must call the same collectives in the same order with buffers
/// of the same length; a mismatch is reported as an error, not undefined behaviour.
pub trait Collective: Send {
    /// This rank, `0..world`.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn world(&self) -> usize;
    /// Short transport name for logs: `local`, `tcp`, `nccl`.
    fn transport(&self) -> &'static str;
    /// Element-wise sum over all ranks, result in `buf` on every rank.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Concatenate every rank's `send` (equal lengths) in rank order into `recv`
    /// (`recv.len() == world * send.len()`).
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Copy `buf` of rank `root` into `buf` on every rank.
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<()>;
    /// Return once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<()>;
    /// For transports with device entry points (NCCL), so a backend can reach them.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}
