//! GGUF files (llama.cpp's single-file checkpoints), versions 2 and 3.
//!
//! The file is memory-mapped; opening it parses only the header, metadata and
//! tensor table, checking every count, length and offset against the file
//! size. Tensors are handed out under Hugging Face names and layout
//! (`[out_features, in_features]`, rotate-half RoPE order), dequantized to f32
//! exactly as gguf-py / transformers do, and a slice touches only the bytes it
//! covers.

mod ggml;
mod layout;
mod meta;
mod names;
mod parse;
mod read;
mod spec;
mod tokenizer;

#[cfg(test)]
mod test_writer;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_read;

pub use meta::{MetaArray, MetaValue, Metadata};

use crate::{
    HostTensor, ModelError, ModelSpec, Result, Slice, StorageDType, TensorInfo, TensorSource,
    Tokenizer,
};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor lives and how to present it.
#[derive(Debug)]
struct Entry {
    /// The name in the file, for messages.
    gguf_name: String,
    dtype: StorageDType,
    /// Hugging Face order (ggml dims reversed).
    shape: Vec<usize>,
    /// Absolute byte range in the mapped file.
    start: usize,
    len: usize,
    /// Set for Llama Q/K tensors whose rows llama.cpp interleaved: the row count of one head.
    rope_head_dim: Option<usize>,
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: Metadata,
    /// `general.architecture`, empty when absent.
    arch: String,
    /// Keyed by Hugging Face name.
    tensors: HashMap<String, Entry>,
}

impl GgufFile {
    /// Map `path` and parse its header, metadata and tensor table.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        // Fixed header: magic, version, tensor count, metadata count.
        if size < 24 {
            return Err(ModelError::format(
                path,
                format!("file is {size} bytes, too small to be a GGUF file (the header alone is 24 bytes)"),
            ));
        }
        // SAFETY: the map is read-only; a concurrent writer truncating the file
        // is outside what a checkpoint loader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let header =
            parse::parse_header(&mmap).map_err(|reason| ModelError::format(path, reason))?;
        let arch = header
            .metadata
            .str("general.architecture")
            .map_err(|reason| ModelError::format(path, reason))?
            .unwrap_or("")
            .to_string();
        let tensors = layout::entries(path, &header, &arch, mmap.len() as u64)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: header.version,
            metadata: header.metadata,
            arch,
            tensors,
        })
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The name a tensor has in the file, given its Hugging Face name.
    pub fn gguf_name(&self, hf_name: &str) -> Option<&str> {
        self.tensors.get(hf_name).map(|e| e.gguf_name.as_str())
    }

    /// The model's architecture and hyper-parameters, from the metadata.
    pub fn spec(&self) -> Result<ModelSpec> {
        spec::spec_from_metadata(self)
    }

    /// The tokenizer described by `tokenizer.ggml.*`, or `None` when the file has none.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        tokenizer::build(&self.path, &self.metadata)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        let sorted: BTreeMap<_, _> = self.tensors.iter().collect();
        sorted.keys().map(|k| k.to_string()).collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors.get(name).map(|e| TensorInfo {
            shape: e.shape.clone(),
            dtype: e.dtype,
        })
    }

    fn read(&self, name: &str, slice: &Slice) -> Result<HostTensor> {
        let e = self.entry(name)?;
        let bytes = &self.mmap[e.start..e.start + e.len];
        read::read_slice(name, e, bytes, slice)
    }
}
