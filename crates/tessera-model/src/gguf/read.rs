//! Reading one slice of one tensor: only the rows (and, within a row, only the
//! blocks) the slice covers are decoded, with the Llama Q/K row permutation
//! undone on the way.

use super::{ggml, names, Entry};
use crate::{HostTensor, ModelError, Result, Slice};
use rayon::prelude::*;

/// Dequantize `slice` of the tensor `e`, whose data is `bytes`.
pub(super) fn read_slice(name: &str, e: &Entry, bytes: &[u8], slice: &Slice) -> Result<HostTensor> {
    let bad = || ModelError::BadSlice {
        tensor: name.to_string(),
        slice: slice.clone(),
        shape: e.shape.clone(),
    };
    let out_shape = slice.sliced_shape(&e.shape).ok_or_else(bad)?;
    // Work on a [rows, cols] view in which a row is a run of whole blocks:
    // a 1-D tensor is a single row, and `Rows` of it selects elements.
    let one_d = e.shape.len() == 1;
    let (rows, cols) = if one_d {
        (1, e.shape[0])
    } else {
        (e.shape[0], e.shape[1..].iter().product())
    };
    let (row_range, col_range) = match slice {
        Slice::Full => (0..rows, 0..cols),
        Slice::Rows(r) if one_d => (0..1, r.clone()),
        Slice::Rows(r) => (r.clone(), 0..cols),
        Slice::Cols(c) => (0..rows, c.clone()),
    };
    if let (Some(hd), Slice::Rows(r)) = (e.rope_head_dim, slice) {
        // A rank must get whole heads: a head's rows come from interleaved GGUF
        // rows, and splitting one would also split its RoPE pairs.
        if !r.start.is_multiple_of(hd) || !r.end.is_multiple_of(hd) {
            return Err(bad());
        }
    }
    let row_bytes = bytes.len() / rows;
    let out_cols = col_range.len();
    let mut data = vec![0f32; row_range.len() * out_cols];

    match e.rope_head_dim {
        // A permuted bias: tiny, so decode it whole and gather.
        Some(hd) if one_d => {
            let mut full = vec![0f32; cols];
            ggml::dequant_range(e.dtype, bytes, 0, cols, &mut full);
            for (i, out) in data.iter_mut().enumerate() {
                *out = full[names::gguf_row(col_range.start + i, hd)];
            }
        }
        rope => {
            data.par_chunks_mut(out_cols.max(1))
                .enumerate()
                .for_each(|(i, out)| {
                    let hf_row = row_range.start + i;
                    let src = rope.map_or(hf_row, |hd| names::gguf_row(hf_row, hd));
                    let row = &bytes[src * row_bytes..(src + 1) * row_bytes];
                    ggml::dequant_range(e.dtype, row, col_range.start, col_range.end, out);
                });
        }
    }
    Ok(HostTensor::new(out_shape, data))
}
