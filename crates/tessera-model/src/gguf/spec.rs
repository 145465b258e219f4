//! `ModelSpec` from GGUF metadata (`{arch}.*` keys, as llama.cpp writes them).

use super::GgufFile;
use crate::{ModelError, ModelSpec, Result, RopeScaling, SUPPORTED_ARCHITECTURES};

/// Build and validate the spec of `f`.
pub(super) fn spec_from_metadata(f: &GgufFile) -> Result<ModelSpec> {
    let path = &f.path;
    let meta = &f.metadata;
    let cfg_err = |key: &str, reason: String| ModelError::Config {
        path: path.clone(),
        key: key.to_string(),
        reason,
    };
    // Type errors from the metadata helpers already name the key.
    let meta_err = |reason: String| ModelError::format(path, reason);

    let arch = f.arch.as_str();
    let architecture = match arch {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "" => return Err(cfg_err("general.architecture", "missing".into())),
        other => {
            return Err(ModelError::UnknownArchitecture {
                path: path.clone(),
                arch: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES,
            })
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let opt_usize = |k: &str| meta.usize(&key(k)).map_err(meta_err);
    let req_usize = |k: &str| opt_usize(k)?.ok_or_else(|| cfg_err(&key(k), "missing".into()));
    let opt_f32 = |k: &str| {
        meta.f64(&key(k))
            .map(|v| v.map(|x| x as f32))
            .map_err(meta_err)
    };

    let hidden_size = req_usize("embedding_length")?;
    let num_heads = req_usize("attention.head_count")?;
    let num_kv_heads = opt_usize("attention.head_count_kv")?.unwrap_or(num_heads);
    let head_dim = match opt_usize("attention.key_length")? {
        Some(h) => h,
        None if num_heads > 0 && hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
        None => {
            return Err(cfg_err(
                &key("attention.head_count"),
                format!("{num_heads} does not divide embedding_length {hidden_size}"),
            ))
        }
    };

    let rope_scaling = match meta.str(&key("rope.scaling.type")).map_err(meta_err)? {
        None | Some("none") => match opt_f32("rope.scale_linear")? {
            // Older files state linear scaling with this key alone.
            Some(factor) if factor != 1.0 => RopeScaling::Linear { factor },
            _ => RopeScaling::None,
        },
        Some("linear") => {
            let factor = opt_f32("rope.scaling.factor")?.ok_or_else(|| {
                cfg_err(
                    &key("rope.scaling.factor"),
                    "missing for linear RoPE scaling".into(),
                )
            })?;
            RopeScaling::Linear { factor }
        }
        Some(other) => {
            return Err(cfg_err(
                &key("rope.scaling.type"),
                format!("`{other}` is not supported (supported: none, linear)"),
            ))
        }
    };

    // The embedding matrix decides the vocabulary the weights expect; the
    // token list is the fallback for files whose embedding has another name.
    let vocab_size = match f.tensors.get("model.embed_tokens.weight") {
        Some(e) => e.shape[0],
        None => match meta.strs("tokenizer.ggml.tokens").map_err(meta_err)? {
            Some(tokens) => tokens.len(),
            None => opt_usize("vocab_size")?.ok_or_else(|| cfg_err(&key("vocab_size"), "missing, and the file has neither `token_embd.weight` nor `tokenizer.ggml.tokens`".into()))?,
        },
    };

    let token_id = |k: &str| -> Result<Option<u32>> {
        match meta.token_id(k).map_err(meta_err)? {
            None => Ok(None),
            Some(id) => u32::try_from(id)
                .map(Some)
                .map_err(|_| cfg_err(k, format!("token id {id} is out of range"))),
        }
    };
    let mut eos_token_ids: Vec<u32> = token_id("tokenizer.ggml.eos_token_id")?
        .into_iter()
        .collect();
    // End-of-turn ends generation too for chat models (llama.cpp treats it as end-of-generation).
    if let Some(eot) = token_id("tokenizer.ggml.eot_token_id")? {
        if !eos_token_ids.contains(&eot) {
            eos_token_ids.push(eot);
        }
    }

    let spec = ModelSpec {
        architecture: architecture.to_string(),
        vocab_size,
        hidden_size,
        intermediate_size: req_usize("feed_forward_length")?,
        num_layers: req_usize("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        // llama.cpp's default for Llama-family models.
        rms_norm_eps: opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: opt_f32("rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: opt_usize("context_length")?.unwrap_or(2048),
        tie_word_embeddings: !f.tensors.contains_key("lm_head.weight"),
        attention_bias: f
            .tensors
            .values()
            .any(|e| e.gguf_name.ends_with(".attn_q.bias")),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
    };
    spec.validate(path)?;
    Ok(spec)
}
