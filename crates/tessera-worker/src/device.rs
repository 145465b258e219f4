//! Choosing a backend at run time, and opening a checkpoint by name.

use crate::{Result, WorkerError};
use std::path::Path;
use tessera_backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, BackendError};
use tessera_model::Checkpoint;

/// A job that works on any backend.
pub trait BackendJob {
    type Output;
    fn run<B: Backend + 'static>(self, backend: B) -> Self::Output;
}

/// `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = WorkerError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(WorkerError::BadRequest(format!(
                    "device `{other}`: expected cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

/// Start the backend for `device` and run `job` on it. The CUDA backend fails
/// with a message naming what is missing (never panics) on a machine without
/// a GPU or without the CUDA 13 libraries.
pub fn run_on<J: BackendJob>(device: Device, threads: usize, job: J) -> Result<J::Output> {
    match device {
        Device::Cpu => Ok(job.run(CpuBackend::new(threads)?)),
        Device::Cuda(n) => {
            let backend = CudaBackend::new(n).map_err(|e| match e {
                BackendError::Unavailable(what, why) => WorkerError::BadRequest(format!(
                    "device cuda:{n}: {what} is not available: {why}. Use device cpu, \
                     or see docs/gpu.md for the libraries a GPU machine needs"
                )),
                BackendError::Setting(..) => {
                    WorkerError::BadRequest(format!("device cuda:{n}: {e}"))
                }
                other => WorkerError::BadRequest(format!(
                    "device cuda:{n}: starting the CUDA backend failed: {other}"
                )),
            })?;
            Ok(job.run(backend))
        }
    }
}

/// Open a checkpoint path (HF directory or `.gguf`), or `dummy:SHAPE[:SEED]`.
pub fn open_checkpoint(model: &str) -> Result<Checkpoint> {
    if let Some(rest) = model.strip_prefix("dummy:") {
        let (shape, seed) = match rest.split_once(':') {
            Some((s, seed)) => (
                s,
                seed.parse::<u64>().map_err(|_| {
                    WorkerError::BadRequest(format!("dummy seed `{seed}` is not a number"))
                })?,
            ),
            None => (rest, 0),
        };
        return Ok(tessera_model::dummy::open(shape, seed)?);
    }
    Ok(Checkpoint::open(Path::new(model))?)
}
