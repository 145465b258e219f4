//! The reader interface every checkpoint format implements.

use crate::{HostTensor, ModelError, Result, Slice, TensorInfo};
use std::path::Path;

/// A checkpoint's tensors under their Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`, ...), whatever the file format.
///
/// `read` returns only the requested slice, dequantized to f32, and touches
/// only the bytes that slice covers (memory-mapped files, no whole-file reads).
pub trait TensorSource: Send + Sync {
    /// The file or directory this source reads, for error messages.
    fn path(&self) -> &Path;
    /// Tensor names present in the checkpoint.
    fn names(&self) -> Vec<String>;
    /// Shape and storage type of a tensor, or `None` if absent.
    fn info(&self, name: &str) -> Option<TensorInfo>;
    /// Read a slice of a tensor as f32.
    fn read(&self, name: &str, slice: &Slice) -> Result<HostTensor>;

    /// Read a slice of a tensor as f32 into `out`, which must hold exactly
    /// the slice's elements: one part of a fused matrix, or a buffer reused
    /// layer after layer (a fresh multi-GB buffer per layer costs more in
    /// page faults than the copy). The default reads, then copies.
    fn read_into(&self, name: &str, slice: &Slice, out: &mut [f32]) -> Result<()> {
        let t = self.read(name, slice)?;
        if t.data.len() != out.len() {
            return Err(ModelError::OutputSize {
                tensor: name.to_string(),
                slice: slice.clone(),
                found: t.data.len(),
                expected: out.len(),
            });
        }
        out.copy_from_slice(&t.data);
        Ok(())
    }
}
