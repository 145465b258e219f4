//! Checkpoint formats (Hugging Face safetensors directories, GGUF), the
//! architecture spec, the tokenizer and the int8 quantizer.
//!
//! Invariant: every loader hands tensors out under Hugging Face names and in
//! Hugging Face layout (`[out_features, in_features]`, rotate-half RoPE order),
//! so nothing downstream knows which format a model came from.

mod checkpoint;
pub mod dummy;
mod error;
pub mod gguf;
mod quant;
mod safetensors_dir;
mod shard;
mod source;
mod spec;
mod tensor;
mod tokenizer;

pub use checkpoint::Checkpoint;
pub use error::{ModelError, Result};
pub use quant::{
    quantize_group, quantize_group_to, Int8Matrix, INT4_MAX, INT8_GROUP, INT8_MAX, MAX_INT8_GROUP,
};
pub use safetensors_dir::SafetensorsDir;
pub use shard::{Parallelism, RankParams, ShardPlan};
pub use source::TensorSource;
pub use spec::{ModelSpec, RopeScaling, SUPPORTED_ARCHITECTURES};
pub use tensor::{HostTensor, Slice, StorageDType, TensorInfo};
pub use tokenizer::Tokenizer;
