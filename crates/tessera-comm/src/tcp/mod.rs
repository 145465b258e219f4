//! The TCP ring: collectives among CPU workers over plain `std::net` sockets,
//! on one host (loopback) or across hosts.
//!
//! See the crate documentation for the algorithm and the timeout rules;
//! [`TcpRing::bind`] and [`PendingRing::connect`] for the rendezvous.

mod link;
mod rendezvous;
mod wire;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::time::Duration;

use link::{Sink, Tag, Wire};
pub use rendezvous::PendingRing;
use wire::Op;

use crate::{Collective, CommError, Result};

/// A ring of `world` ranks connected by TCP; implements [`Collective`].
///
/// Each rank holds two sockets: one to its right neighbour `(rank + 1) % world`,
/// which it writes to, and one from its left neighbour, which it reads from.
/// After any failure the ring is poisoned: the right neighbour is told why and
/// its socket closed, and every later call returns [`CommError::Aborted`].
/// Drop a poisoned ring to close the other socket.
#[derive(Debug)]
pub struct TcpRing {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Number of collectives started, carried in every frame to catch ranks out of step.
    seq: u32,
    /// `None` for a world of one.
    wire: Option<Wire>,
    poisoned: Option<String>,
}

impl TcpRing {
    pub(crate) fn from_parts(
        rank: usize,
        world: usize,
        timeout: Duration,
        wire: Option<Wire>,
    ) -> TcpRing {
        TcpRing {
            rank,
            world,
            timeout,
            seq: 0,
            wire,
            poisoned: None,
        }
    }

    /// The longest any single wait on a peer may last.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The error that poisoned this ring, if any.
    pub fn aborted(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn begin(&mut self) -> Result<u32> {
        if let Some(why) = &self.poisoned {
            return Err(CommError::Aborted(why.clone()));
        }
        self.seq = self.seq.wrapping_add(1);
        Ok(self.seq)
    }

    /// Poisons the ring (when it has peers) and passes `err` through.
    fn fail(&mut self, op: Op, seq: u32, err: CommError) -> CommError {
        if let Some(wire) = &mut self.wire {
            let reason = match &err {
                CommError::PeerAborted { reason, .. } => reason.clone(),
                other => format!("rank {}: {other}", self.rank),
            };
            wire.abort(op, seq, &reason);
            self.poisoned = Some(err.to_string());
        }
        err
    }

    /// Test hook: shuts this rank's sockets from another thread, as a crash would.
    #[cfg(test)]
    pub(crate) fn kill_switch(&self) -> impl FnOnce() + Send + 'static {
        let streams: Vec<_> = self
            .wire
            .iter()
            .flat_map(|w| [w.left.stream.try_clone(), w.right.stream.try_clone()])
            .filter_map(|s| s.ok())
            .collect();
        move || {
            for s in streams {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Elements of chunk `c` when `n` elements are split over `world` chunks: the
/// first `n % world` chunks get one extra element.
fn chunk(n: usize, world: usize, c: usize) -> Range<usize> {
    let (base, rem) = (n / world, n % world);
    let start = c * base + c.min(rem);
    start..start + base + usize::from(c < rem)
}

/// Borrows two disjoint ranges of `buf`, the first shared and the second mutable.
fn split_pair(buf: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&[f32], &mut [f32]) {
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.len()])
    } else {
        debug_assert!(b.end <= a.start, "overlapping chunks {a:?} and {b:?}");
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.len()], &mut lo[b])
    }
}

/// Ring all-reduce: `world - 1` reduce-scatter steps, after which rank `r`
/// holds the full sum of chunk `r + 1`, then `world - 1` all-gather steps
/// that copy each finished chunk round the ring.
fn ring_all_reduce(
    wire: &mut Wire,
    seq: u32,
    buf: &mut [f32],
    rank: usize,
    world: usize,
) -> Result<()> {
    let n = buf.len();
    let tag = |arg: usize| Tag {
        op: Op::AllReduce,
        seq,
        arg: arg as u32,
        total: n as u64,
    };
    for s in 0..world - 1 {
        let send = chunk(n, world, (rank + world - s) % world);
        let recv = chunk(n, world, (rank + 2 * world - s - 1) % world);
        let (send, recv) = split_pair(buf, send, recv);
        wire.exchange(tag(s), send, Sink::Add(recv))?;
    }
    for s in 0..world - 1 {
        let send = chunk(n, world, (rank + 1 + world - s) % world);
        let recv = chunk(n, world, (rank + world - s) % world);
        let (send, recv) = split_pair(buf, send, recv);
        wire.exchange(tag(world - 1 + s), send, Sink::Store(recv))?;
    }
    Ok(())
}

/// Ring all-gather over the blocks of `recv`; this rank's block is already in place.
fn ring_all_gather(
    wire: &mut Wire,
    seq: u32,
    recv: &mut [f32],
    n: usize,
    rank: usize,
    world: usize,
) -> Result<()> {
    let block = |b: usize| b * n..(b + 1) * n;
    for s in 0..world - 1 {
        let tag = Tag {
            op: Op::AllGather,
            seq,
            arg: s as u32,
            total: n as u64,
        };
        let send = block((rank + world - s) % world);
        let got = block((rank + 2 * world - s - 1) % world);
        let (send, got) = split_pair(recv, send, got);
        wire.exchange(tag, send, Sink::Store(got))?;
    }
    Ok(())
}

/// Broadcast along the ring: the root sends, every other rank receives and
/// forwards frame by frame, and the root's left neighbour confirms to the root.
fn ring_broadcast(
    wire: &mut Wire,
    seq: u32,
    buf: &mut [u8],
    root: usize,
    rank: usize,
    world: usize,
) -> Result<()> {
    let tag = Tag {
        op: Op::Broadcast,
        seq,
        arg: root as u32,
        total: buf.len() as u64,
    };
    let done = Tag {
        op: Op::BroadcastDone,
        ..tag
    };
    if rank == root {
        wire.send_bytes(tag, buf)?;
        wire.recv_bytes(done, &mut [], false)
    } else {
        let right_is_root = (rank + 1) % world == root;
        wire.recv_bytes(tag, buf, !right_is_root)?;
        if right_is_root {
            wire.send_bytes(done, &[])?;
        }
        Ok(())
    }
}

/// Barrier: `world - 1` empty ring steps. After step `k` a rank knows the `k + 1`
/// ranks to its left have entered, so after `world - 1` steps all have.
fn ring_barrier(wire: &mut Wire, seq: u32, world: usize) -> Result<()> {
    for s in 0..world - 1 {
        let tag = Tag {
            op: Op::Barrier,
            seq,
            arg: s as u32,
            total: 0,
        };
        wire.exchange(tag, &[], Sink::Store(&mut []))?;
    }
    Ok(())
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let seq = self.begin()?;
        let (rank, world) = (self.rank, self.world);
        let Some(wire) = &mut self.wire else {
            return Ok(());
        };
        ring_all_reduce(wire, seq, buf, rank, world).map_err(|e| self.fail(Op::AllReduce, seq, e))
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        let seq = self.begin()?;
        let (rank, world, n) = (self.rank, self.world, send.len());
        if n.checked_mul(world) != Some(recv.len()) {
            let e = CommError::Length {
                op: "all_gather",
                detail: format!(
                    "rank {rank}: send {n} x world {world} != recv {}",
                    recv.len()
                ),
            };
            return Err(self.fail(Op::AllGather, seq, e));
        }
        recv[rank * n..(rank + 1) * n].copy_from_slice(send);
        let Some(wire) = &mut self.wire else {
            return Ok(());
        };
        ring_all_gather(wire, seq, recv, n, rank, world)
            .map_err(|e| self.fail(Op::AllGather, seq, e))
    }

    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<()> {
        let seq = self.begin()?;
        let (rank, world) = (self.rank, self.world);
        if root >= world {
            return Err(self.fail(Op::Broadcast, seq, CommError::Rank { rank: root, world }));
        }
        let Some(wire) = &mut self.wire else {
            return Ok(());
        };
        ring_broadcast(wire, seq, buf, root, rank, world)
            .map_err(|e| self.fail(Op::Broadcast, seq, e))
    }

    fn barrier(&mut self) -> Result<()> {
        let seq = self.begin()?;
        let world = self.world;
        let Some(wire) = &mut self.wire else {
            return Ok(());
        };
        ring_barrier(wire, seq, world).map_err(|e| self.fail(Op::Barrier, seq, e))
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
