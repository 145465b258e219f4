//! Choosing a backend at run time: the worker crate's `run_on`, with errors
//! turned into the binary's `anyhow` errors.

use anyhow::Result;
pub use tessera_worker::{BackendJob, Device};

/// Run `job` on the backend for `device`; `--device` errors name the flag.
pub fn run_on<T, J: BackendJob<Output = Result<T>>>(
    device: Device,
    threads: usize,
    job: J,
) -> Result<T> {
    tessera_worker::run_on(device, threads, job).map_err(|e| {
        // The worker names the device ("device cuda:0: ..."); here it came from the flag.
        let msg = e.to_string();
        match msg.strip_prefix("device ") {
            Some(rest) => anyhow::anyhow!("--device {rest}"),
            None => anyhow::anyhow!("--device: {msg}"),
        }
    })?
}
