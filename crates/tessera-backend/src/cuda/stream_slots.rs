//! Weight streaming on CUDA (tessera-offload): device memory queries for the
//! `auto` budget, and the slot copier (pinned host store, a dedicated copy
//! stream, events ordering copy → compute and compute → slot reuse).

use super::{dev, probe};
use crate::{BackendError, Result};
use cudarc::driver::CudaContext;

/// `(free, total)` bytes of GPU `ordinal`'s memory.
pub fn memory_info(ordinal: usize) -> Result<(u64, u64)> {
    let count = probe()?;
    if ordinal >= count {
        return Err(BackendError::Unavailable(
            format!("CUDA device {ordinal}"),
            format!("this machine has {count} GPU(s)"),
        ));
    }
    let ctx = CudaContext::new(ordinal).map_err(dev("create context"))?;
    let (free, total) = ctx.mem_get_info().map_err(dev("cuMemGetInfo"))?;
    Ok((free as u64, total as u64))
}
