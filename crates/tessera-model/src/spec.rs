//! Architecture description of a Llama-family model, read from `config.json`
//! or from GGUF metadata.

use crate::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

/// Architectures Tessera runs (Hugging Face `architectures` / GGUF `general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &str =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (GGUF: llama, mistral, qwen2)";

/// RoPE frequency scaling, as in Hugging Face's `rope_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1 style: long wavelengths scaled by `factor`, short ones kept,
    /// smooth blend in between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

/// The shape and hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Hugging Face architecture name, e.g. `LlamaForCausalLM`.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Q/K/V projections carry a bias (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelSpec {
    /// Check internal consistency; `origin` names the file for the error.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |key: &str, reason: String| ModelError::Config {
            path: origin.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(bad(key, "must be greater than 0".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!(
                    "{} is odd; RoPE needs an even head dimension",
                    self.head_dim
                ),
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(bad(
                "rms_norm_eps",
                format!("{} must be positive", self.rms_norm_eps),
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(bad(
                "rope_theta",
                format!("{} must be positive", self.rope_theta),
            ));
        }
        Ok(())
    }

    /// Inverse RoPE frequencies (`head_dim / 2` values), scaling applied,
    /// computed the way Hugging Face does (f32 powers of `rope_theta`).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0f32 / self.rope_theta.powf((2 * i) as f32 / dim as f32))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_config(path: &Path, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::format(path, format!("config.json is not valid JSON: {e}")))?;
        let cfg = HfConfig { path, v: &v };
        let architecture = match v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
        {
            Some(a) => a.to_string(),
            None => match v.get("model_type").and_then(Value::as_str) {
                Some("llama") => "LlamaForCausalLM".into(),
                Some("mistral") => "MistralForCausalLM".into(),
                Some("qwen2") => "Qwen2ForCausalLM".into(),
                Some(other) => other.to_string(),
                None => return Err(cfg.err("architectures", "missing (and no model_type)")),
            },
        };
        let attention_bias_default = match architecture.as_str() {
            "LlamaForCausalLM" | "MistralForCausalLM" => false,
            "Qwen2ForCausalLM" => true,
            other => {
                return Err(ModelError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    arch: other.to_string(),
                    supported: SUPPORTED_ARCHITECTURES,
                })
            }
        };
        let hidden_size = cfg.usize("hidden_size")?;
        let num_heads = cfg.usize("num_attention_heads")?;
        let num_kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match cfg.opt_usize("head_dim")? {
            Some(h) => h,
            None => {
                if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
                    return Err(cfg.err(
                        "num_attention_heads",
                        &format!("{num_heads} does not divide hidden_size {hidden_size}"),
                    ));
                }
                hidden_size / num_heads
            }
        };
        // transformers >= 5 writes `rope_parameters` (theta inside it) instead of
        // `rope_scaling` + `rope_theta`; accept both spellings.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_scaling = match v
            .get("rope_scaling")
            .filter(|r| !r.is_null())
            .or(rope_params)
        {
            None | Some(Value::Null) => RopeScaling::None,
            Some(rs) => {
                let kind = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let f = |k: &str| -> Result<f32> {
                    rs.get(k)
                        .and_then(Value::as_f64)
                        .map(|x| x as f32)
                        .ok_or_else(|| {
                            cfg.err(&format!("rope_scaling.{k}"), "missing or not a number")
                        })
                };
                match kind {
                    "linear" => RopeScaling::Linear {
                        factor: f("factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?
                            as usize,
                    },
                    "default" => RopeScaling::None,
                    other => {
                        return Err(cfg.err(
                            "rope_scaling.rope_type",
                            &format!("`{other}` is not supported (supported: linear, llama3)"),
                        ))
                    }
                }
            }
        };
        let spec = ModelSpec {
            architecture,
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_layers: cfg.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: cfg.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: match cfg.opt_f32("rope_theta")? {
                Some(t) => t,
                None => rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
                    .map(|t| t as f32)
                    .unwrap_or(10000.0),
            },
            rope_scaling,
            max_position_embeddings: cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(attention_bias_default),
            bos_token_id: cfg.opt_usize("bos_token_id")?.map(|x| x as u32),
            eos_token_ids: token_id_list(v.get("eos_token_id")),
        };
        spec.validate(path)?;
        Ok(spec)
    }
}

/// `eos_token_id` may be a number or a list of numbers.
pub(crate) fn token_id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

struct HfConfig<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl HfConfig<'_> {
    fn err(&self, key: &str, reason: &str) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(key, &format!("expected a non-negative integer, found {x}"))
            }),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.err(key, "missing"))
    }
    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(|n| Some(n as f32))
                .ok_or_else(|| self.err(key, &format!("expected a number, found {x}"))),
        }
    }
}
