//! Weight streaming, the device half: copying layer images from host memory
//! into preallocated device weights ("slots"), asynchronously, with the two
//! orderings the streamer needs (copy → compute, compute → slot reuse).
//!
//! The policy (which layers stay resident, how far ahead to copy, statistics)
//! lives in `tessera-offload`; a backend only provides the mechanism through
//! [`Backend::linear_image`](crate::Backend::linear_image) and
//! [`Backend::slot_copier`](crate::Backend::slot_copier).
//!
//! An *image* is the exact bytes a weight occupies on the device, so writing
//! it back into a weight of the same shape restores it bit for bit.

use crate::Result;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

/// One host allocation holding a layer's weight images back to back
/// (page-locked on CUDA so the copy engine reads it directly).
pub trait HostBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl HostBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// The host store as the copier sees it: one buffer per layer, and where in it
/// each of the layer's weights starts (`parts[j]` = byte range of weight `j`).
pub struct HostLayers {
    pub layers: Vec<Option<Box<dyn HostBytes>>>,
    pub parts: Vec<std::ops::Range<usize>>,
}

/// When one copy ran, on the host clock. On a device whose copies are
/// asynchronous the times are those of the device events, mapped onto the
/// host clock after the copy completed.
#[derive(Debug, Clone, Copy)]
pub struct CopyTiming {
    /// The layer copied.
    pub layer: usize,
    /// The slot it went into.
    pub slot: usize,
    pub bytes: usize,
    /// When the copy was handed to the copy engine.
    pub issued: Instant,
    /// When the bytes started and finished moving.
    pub started: Instant,
    pub finished: Instant,
    /// Time compute stood still waiting for this copy, measured on the
    /// device (zero where `wait` blocks the host and returns the wait itself).
    pub compute_stall: std::time::Duration,
}

/// A slot's weights while compute uses them.
pub type SlotRef<'a, L> = Box<dyn Deref<Target = Vec<L>> + 'a>;

/// The copy engine of one streamer: `slots` sets of preallocated weights, and
/// copies of host layers into them that run while compute proceeds.
///
/// Protocol, per slot: `start` → `wait` → (compute reads `slot`) → `release`
/// → `start` ... A backend must make the copy of `start` land only after the
/// compute issued before the slot's last `release` has finished reading it,
/// and compute issued after `wait` must see the copied bytes.
pub trait SlotCopier<L>: Send {
    /// Number of slots.
    fn slots(&self) -> usize;
    /// Begin copying host layer `layer` into `slot`; returns without waiting.
    fn start(&mut self, slot: usize, layer: usize) -> Result<()>;
    /// Order compute after the copy into `slot` (on CPU: block until it is
    /// done). Returns the host time spent blocked here.
    fn wait(&mut self, slot: usize) -> Result<std::time::Duration>;
    /// The slot's weights, valid for compute issued until `release`.
    fn weights(&self, slot: usize) -> Result<SlotRef<'_, L>>;
    /// All compute reading `slot` has been issued; a later copy may overwrite it.
    fn release(&mut self, slot: usize) -> Result<()>;
    /// Timings of the copies that completed since the last call; never blocks
    /// (a copy still in flight is reported by a later call).
    fn drain_timings(&mut self) -> Result<Vec<CopyTiming>>;
    /// Host buffers are read through this store; kept alive by the copier.
    fn host(&self) -> &Arc<HostLayers>;
}
