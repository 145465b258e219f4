//! The worker process: holds one rank's shard of the weights and its KV
//! caches, and serves the control-plane service of `proto/worker.proto` to
//! its launcher.
//!
//! Invariants:
//! - The worker owns weights and KV cache and nothing else; requests,
//!   tokenization and sampling belong to the router (the launcher).
//! - A worker never outlives its launcher: a parent-death signal (Linux) and
//!   the `Attach` stream both end the process when the launcher is gone.
//! - One `Step` runs at a time; every rank receives the same batch, so the
//!   collectives inside the forward pass line up.

mod device;
mod error;
mod rss;
mod service;
mod shard;

pub use device::{open_checkpoint, run_on, BackendJob, Device};
pub use error::{Result, WorkerError};
pub use rss::peak_rss_bytes;
pub use service::{serve, Endpoint, WorkerOptions};
