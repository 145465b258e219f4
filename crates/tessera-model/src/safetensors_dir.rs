//! Hugging Face checkpoint directories: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; a read touches only
//! the bytes of the requested slice.

use crate::{HostTensor, ModelError, Result, Slice, StorageDType, TensorInfo, TensorSource};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

struct Entry {
    file: usize,
    dtype: StorageDType,
    shape: Vec<usize>,
    /// Absolute byte range of the tensor data within the mapped file.
    start: usize,
    end: usize,
}

/// A Hugging Face directory of safetensors files.
pub struct SafetensorsDir {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let file_names: Vec<String> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::format(&index, "no `weight_map` object"))?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let f = file.as_str().ok_or_else(|| {
                    ModelError::format(&index, format!("weight_map[{tensor}] is not a file name"))
                })?;
                if f.contains('/') || f.contains("..") {
                    return Err(ModelError::format(
                        &index,
                        format!("weight_map[{tensor}] = {f:?} points outside the directory"),
                    ));
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            names
        } else if single.exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(ModelError::format(
                dir,
                "neither model.safetensors nor model.safetensors.index.json found",
            ));
        };

        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (fi, name) in file_names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the map is read-only; a concurrent writer truncating the file
            // is outside what a checkpoint loader can defend against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| ModelError::format(&path, format!("bad safetensors header: {e}")))?;
            let data_start = 8 + header_len;
            for (tname, info) in meta.tensors() {
                let dtype = match info.dtype {
                    Dtype::F32 => StorageDType::F32,
                    Dtype::F16 => StorageDType::F16,
                    Dtype::BF16 => StorageDType::BF16,
                    other => {
                        return Err(ModelError::UnsupportedDType {
                            path: path.clone(),
                            tensor: tname.clone(),
                            dtype: format!("{other:?}"),
                            supported: "F32, F16, BF16",
                        })
                    }
                };
                let (s, e) = info.data_offsets;
                let numel: usize = info.shape.iter().product();
                let start = data_start + s;
                let end = data_start + e;
                if end > mmap.len() || e - s != numel * elem_size(dtype) {
                    return Err(ModelError::format(
                        &path,
                        format!(
                            "tensor `{tname}`: offsets {s}..{e} do not match shape {:?} or the file size",
                            info.shape
                        ),
                    ));
                }
                entries.insert(
                    tname.clone(),
                    Entry {
                        file: fi,
                        dtype,
                        shape: info.shape.clone(),
                        start,
                        end,
                    },
                );
            }
            files.push((path, mmap));
        }
        Ok(SafetensorsDir {
            dir: dir.to_path_buf(),
            files,
            entries,
        })
    }
}

fn elem_size(d: StorageDType) -> usize {
    match d {
        StorageDType::F32 => 4,
        StorageDType::F16 | StorageDType::BF16 => 2,
        _ => unreachable!("safetensors entries are only float types"),
    }
}

/// Convert little-endian elements to f32, appending to `out`.
fn decode_into(dtype: StorageDType, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        StorageDType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        StorageDType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        StorageDType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => unreachable!("safetensors entries are only float types"),
    }
}

impl TensorSource for SafetensorsDir {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn names(&self) -> Vec<String> {
        let sorted: BTreeMap<_, _> = self.entries.iter().collect();
        sorted.keys().map(|k| k.to_string()).collect()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|e| TensorInfo {
            shape: e.shape.clone(),
            dtype: e.dtype,
        })
    }
    fn read(&self, name: &str, slice: &Slice) -> Result<HostTensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.dir.clone(),
                tensor: name.to_string(),
            })?;
        let out_shape = slice
            .sliced_shape(&e.shape)
            .ok_or_else(|| ModelError::BadSlice {
                tensor: name.to_string(),
                slice: slice.clone(),
                shape: e.shape.clone(),
            })?;
        let bytes = &self.files[e.file].1[e.start..e.end];
        let es = elem_size(e.dtype);
        let row_elems: usize = e.shape.iter().skip(1).product();
        let mut data = Vec::with_capacity(out_shape.iter().product());
        match slice {
            Slice::Full => decode_into(e.dtype, bytes, &mut data),
            Slice::Rows(r) => decode_into(
                e.dtype,
                &bytes[r.start * row_elems * es..r.end * row_elems * es],
                &mut data,
            ),
            Slice::Cols(c) => {
                let cols = e.shape[1];
                for row in 0..e.shape[0] {
                    let base = row * cols;
                    decode_into(
                        e.dtype,
                        &bytes[(base + c.start) * es..(base + c.end) * es],
                        &mut data,
                    );
                }
            }
        }
        Ok(HostTensor::new(out_shape, data))
    }
}
