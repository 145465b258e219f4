//! llama.cpp tensor names -> Hugging Face names, and the RoPE row permutation
//! llama.cpp's converter applies to Llama Q/K projections.

/// Which attention projection a tensor is, when its rows need un-permuting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QkKind {
    Q,
    K,
}

/// The Hugging Face name of a GGUF tensor, or `None` for names outside the
/// Llama-family vocabulary (those are exposed under their GGUF name).
pub(super) fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    // Only plain decimal layer numbers: "01" or "+1" would alias another layer's name.
    if layer.is_empty()
        || !layer.bytes().all(|b| b.is_ascii_digit())
        || (layer.len() > 1 && layer.starts_with('0'))
    {
        return None;
    }
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf_part = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_part}.{suffix}"))
}

/// Whether a GGUF tensor of architecture `arch` has its rows permuted for
/// interleaved RoPE. llama.cpp's Llama converter does this to Q and K (weights
/// and biases); transformers' GGUF loader undoes it for `llama` files only,
/// and Tessera also for `mistral`, which llama.cpp converts the same way.
/// Qwen2 files are written in rotate-half order and left alone.
pub(super) fn qk_kind(arch: &str, gguf: &str) -> Option<QkKind> {
    if arch != "llama" && arch != "mistral" {
        return None;
    }
    // Only tensors that get a Hugging Face name (plain layer numbers).
    hf_name(gguf)?;
    let rest = gguf.strip_prefix("blk.")?;
    let (_, rest) = rest.split_once('.')?;
    match rest {
        "attn_q.weight" | "attn_q.bias" => Some(QkKind::Q),
        "attn_k.weight" | "attn_k.bias" => Some(QkKind::K),
        _ => None,
    }
}

/// The GGUF row holding Hugging Face row `hf_row` of a permuted Q/K tensor
/// with heads of `head_dim` rows.
///
/// llama.cpp stores each head's rows interleaved: GGUF row `2i + j` of a head
/// is HF row `j * head_dim/2 + i` (j = 0 for the first rotate-half half, 1 for
/// the second). This is transformers' `reshape(n_head, head_dim/2, 2, ...)`
/// followed by `swapaxes(1, 2)`, applied row by row.
pub(super) fn gguf_row(hf_row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let head = hf_row / head_dim;
    let local = hf_row % head_dim;
    let (j, i) = (local / half, local % half);
    head * head_dim + 2 * i + j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_names() {
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(
            hf_name("output_norm.weight").as_deref(),
            Some("model.norm.weight")
        );
        assert_eq!(
            hf_name("blk.12.attn_q.bias").as_deref(),
            Some("model.layers.12.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.3.ffn_down.weight").as_deref(),
            Some("model.layers.3.mlp.down_proj.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.01.attn_q.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.1.attn_q.scale"), None);
    }

    #[test]
    fn permutation_only_for_llama_q_and_k() {
        assert_eq!(qk_kind("llama", "blk.0.attn_q.weight"), Some(QkKind::Q));
        assert_eq!(qk_kind("mistral", "blk.7.attn_k.bias"), Some(QkKind::K));
        assert_eq!(qk_kind("llama", "blk.0.attn_v.weight"), None);
        assert_eq!(qk_kind("qwen2", "blk.0.attn_q.weight"), None);
    }

    #[test]
    fn gguf_row_matches_reshape_swapaxes() {
        // head_dim 8: HF rows 0..4 are GGUF rows 0,2,4,6 and HF rows 4..8 are 1,3,5,7.
        let rows: Vec<usize> = (0..16).map(|r| gguf_row(r, 8)).collect();
        assert_eq!(
            rows,
            vec![0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]
        );
    }
}
