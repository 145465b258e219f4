//! The Llama-family forward pass, generic over `Backend`.

use crate::{EngineError, Result};
use tessera_backend::{AttentionShape, Backend, WeightDType};
use tessera_model::{HostTensor, ModelSpec, Slice, TensorSource};

struct Layer<B: Backend> {
    attn_norm: B::Tensor,
    /// Q, K and V stacked by rows, so one activation quantization serves all three.
    qkv: B::Linear,
    qkv_bias: Option<B::Tensor>,
    o: B::Linear,
    mlp_norm: B::Tensor,
    /// gate and up stacked by rows: `[2*intermediate, hidden]`.
    gate_up: B::Linear,
    down: B::Linear,
}

/// A loaded model on one backend.
pub struct Model<B: Backend> {
    backend: B,
    spec: ModelSpec,
    dtype: WeightDType,
    inv_freq: Vec<f32>,
    embed: B::Linear,
    /// `None` when the LM head is tied to the embedding.
    lm_head: Option<B::Linear>,
    norm: B::Tensor,
    layers: Vec<Layer<B>>,
}

/// Per-sequence state: the KV cache and how many positions it holds.
pub struct Sequence<B: Backend> {
    cache: B::KvCache,
    len: usize,
    capacity: usize,
}

impl<B: Backend> Sequence<B> {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Read a tensor, checking its shape.
fn read(src: &dyn TensorSource, name: &str, expected: &[usize]) -> Result<HostTensor> {
    let info = src
        .info(name)
        .ok_or_else(|| tessera_model::ModelError::MissingTensor {
            path: src.path().to_path_buf(),
            tensor: name.to_string(),
        })?;
    if info.shape != expected {
        return Err(EngineError::WeightShape {
            path: src.path().display().to_string(),
            tensor: name.to_string(),
            found: info.shape,
            expected: expected.to_vec(),
        });
    }
    Ok(src.read(name, &Slice::Full)?)
}

/// Stack 2-D tensors with equal column counts by rows (or 1-D ones end to end).
fn stack_rows(parts: Vec<HostTensor>) -> HostTensor {
    let cols = parts[0].shape.get(1).copied();
    let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for p in parts {
        data.extend_from_slice(&p.data);
    }
    match cols {
        Some(c) => HostTensor::new(vec![rows, c], data),
        None => HostTensor::new(vec![rows], data),
    }
}

impl<B: Backend> Model<B> {
    /// Load every weight from `src` onto `backend`, converting linear layers to `dtype`.
    /// `on_progress(done, total)` is called after each layer.
    pub fn load(
        backend: B,
        spec: &ModelSpec,
        src: &dyn TensorSource,
        dtype: WeightDType,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let s = spec;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let (qn, kvn) = (s.num_heads * hd, s.num_kv_heads * hd);
        let embed_t = read(src, "model.embed_tokens.weight", &[s.vocab_size, h])?;
        let embed = backend.upload_linear(&embed_t, dtype)?;
        drop(embed_t);
        let lm_head = if src.info("lm_head.weight").is_some() && !s.tie_word_embeddings {
            let t = read(src, "lm_head.weight", &[s.vocab_size, h])?;
            Some(backend.upload_linear(&t, dtype)?)
        } else if s.tie_word_embeddings {
            None
        } else {
            return Err(tessera_model::ModelError::MissingTensor {
                path: src.path().to_path_buf(),
                tensor: "lm_head.weight".into(),
            }
            .into());
        };
        let norm = backend.upload(&read(src, "model.norm.weight", &[h])?)?;
        let total = s.num_layers;
        let mut layers = Vec::with_capacity(total);
        for l in 0..total {
            let p = format!("model.layers.{l}");
            let qkv = stack_rows(vec![
                read(src, &format!("{p}.self_attn.q_proj.weight"), &[qn, h])?,
                read(src, &format!("{p}.self_attn.k_proj.weight"), &[kvn, h])?,
                read(src, &format!("{p}.self_attn.v_proj.weight"), &[kvn, h])?,
            ]);
            let qkv_bias = if s.attention_bias {
                let b = stack_rows(vec![
                    read(src, &format!("{p}.self_attn.q_proj.bias"), &[qn])?,
                    read(src, &format!("{p}.self_attn.k_proj.bias"), &[kvn])?,
                    read(src, &format!("{p}.self_attn.v_proj.bias"), &[kvn])?,
                ]);
                Some(backend.upload(&b)?)
            } else {
                None
            };
            let gate_up = stack_rows(vec![
                read(
                    src,
                    &format!("{p}.mlp.gate_proj.weight"),
                    &[s.intermediate_size, h],
                )?,
                read(
                    src,
                    &format!("{p}.mlp.up_proj.weight"),
                    &[s.intermediate_size, h],
                )?,
            ]);
            layers.push(Layer {
                attn_norm: backend.upload(&read(
                    src,
                    &format!("{p}.input_layernorm.weight"),
                    &[h],
                )?)?,
                qkv: backend.upload_linear(&qkv, dtype)?,
                qkv_bias,
                o: backend.upload_linear(
                    &read(src, &format!("{p}.self_attn.o_proj.weight"), &[h, qn])?,
                    dtype,
                )?,
                mlp_norm: backend.upload(&read(
                    src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                )?)?,
                gate_up: backend.upload_linear(&gate_up, dtype)?,
                down: backend.upload_linear(
                    &read(
                        src,
                        &format!("{p}.mlp.down_proj.weight"),
                        &[h, s.intermediate_size],
                    )?,
                    dtype,
                )?,
            });
            on_progress(l + 1, total);
        }
        Ok(Model {
            inv_freq: spec.rope_inv_freq(),
            backend,
            spec: spec.clone(),
            dtype,
            embed,
            lm_head,
            norm,
            layers,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// A new sequence with room for `capacity` positions (clamped to the model's context).
    pub fn new_sequence(&self, capacity: usize) -> Result<Sequence<B>> {
        let capacity = capacity.min(self.spec.max_position_embeddings).max(1);
        let cache = self.backend.kv_cache(
            self.spec.num_layers,
            self.spec.num_kv_heads,
            self.spec.head_dim,
            capacity,
        )?;
        Ok(Sequence {
            cache,
            len: 0,
            capacity,
        })
    }

    /// Run `ids` through the model after the positions already in `seq`, and
    /// return the logits of the last position (`all_logits == false`) or of
    /// every new position, as a host tensor `[rows, vocab]`.
    pub fn forward(
        &self,
        seq: &mut Sequence<B>,
        ids: &[u32],
        all_logits: bool,
    ) -> Result<HostTensor> {
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if seq.len + ids.len() > seq.capacity {
            return Err(EngineError::ContextExceeded {
                prompt: seq.len,
                new: ids.len(),
                context: seq.capacity,
            });
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.spec.vocab_size) {
            return Err(EngineError::TokenOutOfRange {
                id: bad,
                vocab: self.spec.vocab_size,
            });
        }
        let b = &self.backend;
        let s = &self.spec;
        let (hd, nh, nkv) = (s.head_dim, s.num_heads, s.num_kv_heads);
        let shape = AttentionShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        };
        let start = seq.len;
        let mut x = b.embedding(&self.embed, ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let hn = b.rms_norm(&x, &layer.attn_norm, s.rms_norm_eps)?;
            let mut qkv = b.matmul(&hn, &layer.qkv)?;
            if let Some(bias) = &layer.qkv_bias {
                b.add_bias(&mut qkv, bias)?;
            }
            let mut parts = b
                .split_cols(&qkv, &[nh * hd, nkv * hd, nkv * hd])?
                .into_iter();
            let (mut q, mut k, v) = match (parts.next(), parts.next(), parts.next()) {
                (Some(q), Some(k), Some(v)) => (q, k, v),
                _ => unreachable!("split_cols returns one tensor per width"),
            };
            b.rope(&mut q, nh, hd, start, &self.inv_freq)?;
            b.rope(&mut k, nkv, hd, start, &self.inv_freq)?;
            b.kv_store(&mut seq.cache, l, start, &k, &v)?;
            let attn = b.attention(&q, &seq.cache, l, start, shape)?;
            let o = b.matmul(&attn, &layer.o)?;
            b.add_assign(&mut x, &o)?;
            let hn = b.rms_norm(&x, &layer.mlp_norm, s.rms_norm_eps)?;
            let gu = b.matmul(&hn, &layer.gate_up)?;
            let m = b.swiglu(&gu)?;
            let d = b.matmul(&m, &layer.down)?;
            b.add_assign(&mut x, &d)?;
        }
        seq.len += ids.len();
        let rows = if all_logits {
            x
        } else {
            b.slice_rows(&x, ids.len() - 1, 1)?
        };
        let hn = b.rms_norm(&rows, &self.norm, s.rms_norm_eps)?;
        let logits = b.matmul(&hn, self.lm_head.as_ref().unwrap_or(&self.embed))?;
        Ok(b.download(&logits)?)
    }
}
