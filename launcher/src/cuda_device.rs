//! Opening the CUDA backend for `--device cuda[:N]`, with an error that says
//! what is missing and how to fix it.

use anyhow::{anyhow, Result};
use tessera_backend::cuda::CudaBackend;
use tessera_backend::BackendError;

/// Open GPU `ordinal`. Fails (never panics) when this machine has no NVIDIA
/// driver, no such GPU, or the CUDA 13 libraries (cuBLAS, NVRTC) cannot be
/// found on `LD_LIBRARY_PATH`.
pub fn cuda_backend(ordinal: usize) -> Result<CudaBackend> {
    CudaBackend::new(ordinal).map_err(|e| match e {
        BackendError::Unavailable(what, why) => anyhow!(
            "--device cuda:{ordinal}: {what} is not available: {why}. \
             Use --device cpu, or see docs/gpu.md for the libraries a GPU machine needs"
        ),
        other => anyhow!("--device cuda:{ordinal}: starting the CUDA backend failed: {other}"),
    })
}
