//! Collectives among the ranks of one tensor-parallel group.
//!
//! The engine calls [`Collective`] and never knows which transport is behind it:
//! [`Local`] (world size 1), the TCP ring (CPU workers, also across hosts) or
//! NCCL (GPU workers). Every collective either completes or fails within the
//! transport's timeout with an error naming the peer; none hangs.
//!
//! Buffers here are host `f32`/byte slices. Device transports (NCCL) also
//! offer device-pointer entry points, which a backend reaches by downcasting
//! through [`Collective::as_any_mut`].

mod error;
mod local;

pub use error::{CommError, Result};
pub use local::Local;

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
