//! Argument checks shared by every backend, so the CPU and CUDA
//! implementations reject the same calls with the same messages.

use crate::error::shape_err;
use crate::{AttentionShape, BackendError, Result};

/// Geometry of a KV cache, as the checks need it.
pub(crate) struct CacheGeometry {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

fn fits(cache: &CacheGeometry, start_pos: usize, rows: usize) -> Result<()> {
    if start_pos + rows > cache.capacity {
        return Err(BackendError::CacheFull {
            pos: start_pos + rows,
            capacity: cache.capacity,
        });
    }
    Ok(())
}

/// `x` is `[n, heads*head_dim]` and `inv_freq` has `head_dim/2` entries.
pub(crate) fn rope(cols: usize, heads: usize, head_dim: usize, inv_freq: &[f32]) -> Result<()> {
    if cols != heads * head_dim || inv_freq.len() != head_dim / 2 {
        return Err(shape_err(
            "rope",
            format!("cols {cols} vs {heads}x{head_dim}"),
        ));
    }
    Ok(())
}

/// `k` and `v` (`(rows, cols)`) fit the cache's heads, layer and capacity.
pub(crate) fn kv_store(
    cache: &CacheGeometry,
    layer: usize,
    start_pos: usize,
    k: (usize, usize),
    v: (usize, usize),
) -> Result<()> {
    let width = cache.kv_heads * cache.head_dim;
    if k.1 != width || v.1 != width || k.0 != v.0 || layer >= cache.layers {
        return Err(shape_err(
            "kv_store",
            format!(
                "k [{}, {}], v [{}, {}], cache {}x{}, layer {layer}",
                k.0, k.1, v.0, v.1, cache.kv_heads, cache.head_dim
            ),
        ));
    }
    fits(cache, start_pos, k.0)
}

/// `q` (`(rows, cols)`) matches the attention shape and the cache.
pub(crate) fn attention(
    cache: &CacheGeometry,
    layer: usize,
    start_pos: usize,
    q: (usize, usize),
    shape: AttentionShape,
) -> Result<()> {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    if q.1 != num_heads * head_dim
        || num_kv_heads != cache.kv_heads
        || head_dim != cache.head_dim
        || num_kv_heads == 0
        || !num_heads.is_multiple_of(num_kv_heads)
        || layer >= cache.layers
    {
        return Err(shape_err(
            "attention",
            format!("q cols {} for {num_heads}x{head_dim}, layer {layer}", q.1),
        ));
    }
    fits(cache, start_pos, q.0)
}

/// `concat_rows`: at least one part, all with the same column count. Returns `(rows, cols)`.
pub(crate) fn concat_rows(dims: &[(usize, usize)]) -> Result<(usize, usize)> {
    let Some(&(_, cols)) = dims.first() else {
        return Err(shape_err("concat_rows", "no tensors to concatenate"));
    };
    if let Some((i, d)) = dims.iter().enumerate().find(|(_, d)| d.1 != cols) {
        let detail = format!("part {i} has {} columns, part 0 has {cols}", d.1);
        return Err(shape_err("concat_rows", detail));
    }
    Ok((dims.iter().map(|d| d.0).sum(), cols))
}
