//! Opening a checkpoint of any supported format.

use crate::gguf::GgufFile;
use crate::safetensors_dir::SafetensorsDir;
use crate::spec::token_id_list;
use crate::{ModelError, ModelSpec, Result, TensorSource, Tokenizer};
use std::path::{Path, PathBuf};

/// A checkpoint ready to load: its architecture, its tensors and its tokenizer.
pub struct Checkpoint {
    pub path: PathBuf,
    pub spec: ModelSpec,
    pub source: Box<dyn TensorSource>,
    pub tokenizer: Option<Tokenizer>,
}

impl Checkpoint {
    /// Open a Hugging Face directory or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
        if meta.is_dir() {
            Self::open_hf_dir(path)
        } else {
            let gguf = GgufFile::open(path)?;
            let spec = gguf.spec()?;
            let tokenizer = gguf.tokenizer()?;
            Ok(Checkpoint {
                path: path.to_path_buf(),
                spec,
                source: Box::new(gguf),
                tokenizer,
            })
        }
    }

    fn open_hf_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let mut spec = ModelSpec::from_hf_config(&cfg_path, &text)?;
        // generation_config.json's EOS list wins over config.json's.
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let text =
                std::fs::read_to_string(&gen_path).map_err(|e| ModelError::io(&gen_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&gen_path, format!("invalid JSON: {e}")))?;
            let eos = token_id_list(v.get("eos_token_id"));
            if !eos.is_empty() {
                spec.eos_token_ids = eos;
            }
        }
        let source = SafetensorsDir::open(dir)?;
        let tokenizer = Tokenizer::from_hf_dir(dir)?;
        Ok(Checkpoint {
            path: dir.to_path_buf(),
            spec,
            source: Box::new(source),
            tokenizer,
        })
    }
}
