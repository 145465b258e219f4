//! GGUF v3 files. PLACEHOLDER: being written now (see issue 2); replaced wholesale.

use crate::{HostTensor, ModelError, ModelSpec, Result, Slice, TensorInfo, TensorSource, Tokenizer};
use std::path::{Path, PathBuf};

pub struct GgufFile {
    path: PathBuf,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        Err(ModelError::format(path, "GGUF reading is not implemented yet"))
    }
    pub fn spec(&self) -> Result<ModelSpec> {
        Err(ModelError::format(&self.path, "GGUF reading is not implemented yet"))
    }
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        Ok(None)
    }
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    fn info(&self, _name: &str) -> Option<TensorInfo> {
        None
    }
    fn read(&self, name: &str, _slice: &Slice) -> Result<HostTensor> {
        Err(ModelError::MissingTensor { path: self.path.clone(), tensor: name.into() })
    }
}
