//! Where each tensor's bytes are: the data section's alignment, each tensor's
//! type, size and offset checked against the file, overlaps rejected, and the
//! Hugging Face name and RoPE permutation each tensor is presented with.

use super::ggml::{self, GgmlType};
use super::meta::{MetaValue, Metadata};
use super::names::{self, QkKind};
use super::parse::{RawHeader, RawTensor};
use super::Entry;
use crate::{ModelError, Result};
use std::collections::HashMap;
use std::path::Path;

/// Data-section alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// What every tensor's placement is checked against.
struct Bounds {
    data_start: u64,
    alignment: u64,
    file_len: u64,
}

/// The tensors of `header`, keyed by Hugging Face name.
pub(super) fn entries(
    path: &Path,
    header: &RawHeader,
    arch: &str,
    file_len: u64,
) -> Result<HashMap<String, Entry>> {
    let fmt = |reason: String| ModelError::format(path, reason);
    let alignment = match header.metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(fmt(format!(
                "metadata `general.alignment` must be a power-of-two uint32, found {v:?}"
            )))
        }
    };
    let data_start = (header.table_end as u64).div_ceil(alignment) * alignment;
    let bounds = Bounds {
        data_start,
        alignment,
        file_len,
    };

    let mut tensors = HashMap::with_capacity(header.tensors.len());
    // (start, end, name) of every tensor, to find overlaps.
    let mut extents: Vec<(u64, u64, &str)> = Vec::with_capacity(header.tensors.len());
    for raw in &header.tensors {
        let entry = entry(path, raw, &bounds, &header.metadata, arch)?;
        extents.push((
            entry.start as u64,
            (entry.start + entry.len) as u64,
            &raw.name,
        ));
        let hf = names::hf_name(&raw.name).unwrap_or_else(|| raw.name.clone());
        if let Some(prev) = tensors.insert(hf.clone(), entry) {
            return Err(fmt(format!(
                "tensor `{}` appears twice (as `{hf}`)",
                prev.gguf_name
            )));
        }
    }
    extents.sort();
    for w in extents.windows(2) {
        let ((s0, e0, n0), (s1, _, n1)) = (w[0], w[1]);
        if s1 < e0 {
            return Err(fmt(format!(
                "tensors `{n0}` (0x{s0:x}..0x{e0:x}) and `{n1}` (from 0x{s1:x}) overlap"
            )));
        }
    }
    Ok(tensors)
}

/// Check one tensor-info row and place it in the file.
fn entry(path: &Path, raw: &RawTensor, b: &Bounds, meta: &Metadata, arch: &str) -> Result<Entry> {
    let name = &raw.name;
    let fmt = |reason: String| ModelError::format(path, format!("tensor `{name}`: {reason}"));
    let dtype = match GgmlType::from_id(raw.type_id) {
        Some(GgmlType::Supported(d)) => d,
        Some(GgmlType::Unsupported(ggml_name)) => {
            return Err(ModelError::UnsupportedDType {
                path: path.to_path_buf(),
                tensor: name.clone(),
                dtype: ggml_name.to_string(),
                supported: ggml::SUPPORTED,
            })
        }
        None => return Err(fmt(format!("unknown ggml type {}", raw.type_id))),
    };
    if let Some(d) = raw.dims.iter().position(|&n| n == 0) {
        return Err(fmt(format!("dimension {d} is zero (dims {:?})", raw.dims)));
    }
    // Rows are whole blocks: ggml requires the fastest dimension to be a multiple of the block.
    let block = ggml::block_elems(dtype) as u64;
    if !raw.dims[0].is_multiple_of(block) {
        return Err(fmt(format!(
            "first dimension {} is not a multiple of the {dtype} block size {block}",
            raw.dims[0]
        )));
    }
    let nbytes = (raw.dims[0] / block)
        .checked_mul(ggml::block_bytes(dtype) as u64)
        .and_then(|row| {
            raw.dims[1..]
                .iter()
                .try_fold(row, |acc, &d| acc.checked_mul(d))
        })
        .ok_or_else(|| fmt(format!("dimensions {:?} overflow", raw.dims)))?;
    if !raw.offset.is_multiple_of(b.alignment) {
        return Err(fmt(format!(
            "data offset 0x{:x} is not a multiple of the alignment {}",
            raw.offset, b.alignment
        )));
    }
    let start = b.data_start.checked_add(raw.offset);
    let (start, end) = match (start, start.and_then(|s| s.checked_add(nbytes))) {
        (Some(s), Some(e)) if e <= b.file_len => (s, e),
        _ => {
            return Err(fmt(format!(
                "data 0x{:x}+{nbytes} bytes runs past the end of the file (size {})",
                b.data_start.saturating_add(raw.offset),
                b.file_len
            )))
        }
    };
    // Every dimension is >= 1 and the data fits in the file, so each fits in usize.
    let shape: Vec<usize> = raw.dims.iter().rev().map(|&d| d as usize).collect();
    let rope_head_dim =
        rope_head_dim(meta, arch, name, &shape).map_err(|r| ModelError::format(path, r))?;
    Ok(Entry {
        gguf_name: name.clone(),
        dtype,
        shape,
        start: start as usize,
        len: (end - start) as usize,
        rope_head_dim,
    })
}

/// For a Q/K tensor that llama.cpp permuted, the rows per head, checked
/// against the head counts in the metadata.
fn rope_head_dim(
    meta: &Metadata,
    arch: &str,
    gguf: &str,
    shape: &[usize],
) -> Result<Option<usize>, String> {
    let Some(kind) = names::qk_kind(arch, gguf) else {
        return Ok(None);
    };
    let heads_key = format!("{arch}.attention.head_count");
    let n_head = meta.usize(&heads_key)?;
    let n_kv = meta.usize(&format!("{arch}.attention.head_count_kv"))?;
    let heads = match (kind, n_head, n_kv) {
        (_, None, _) => {
            return Err(format!(
                "tensor `{gguf}` needs `{heads_key}` to undo its RoPE permutation"
            ))
        }
        (QkKind::Q, Some(h), _) => h,
        // llama.cpp defaults the KV head count to the head count.
        (QkKind::K, Some(h), kv) => kv.unwrap_or(h),
    };
    let rows = shape[0];
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(format!(
            "tensor `{gguf}`: {rows} rows do not split into {heads} heads of even size, so its RoPE permutation cannot be undone"
        ));
    }
    Ok(Some(rows / heads))
}
