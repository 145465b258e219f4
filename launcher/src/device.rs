//! Choosing a backend at run time and running a generic job on it.

use anyhow::{bail, Context, Result};
use tessera_backend::{cpu::CpuBackend, Backend};

/// A job that works on any backend.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, backend: B) -> Result<Self::Output>;
}

/// Parsed `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => bail!("--device `{other}`: expected cpu, cuda or cuda:N"),
            },
        }
    }
}

pub fn run_on<J: BackendJob>(device: Device, threads: usize, job: J) -> Result<J::Output> {
    match device {
        Device::Cpu => job.run(CpuBackend::new(threads).context("starting the CPU backend")?),
        Device::Cuda(n) => job.run(crate::cuda_device::cuda_backend(n)?),
    }
}
