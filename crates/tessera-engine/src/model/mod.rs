//! The Llama-family forward pass, generic over `Backend`, on one shard of
//! the weights (the whole model when the world size is 1).
//!
//! Tensor parallelism follows `ShardPlan`: Q/K/V and gate/up are column
//! slices, o_proj and down_proj row slices whose partial products are summed
//! with one all-reduce each per layer; embedding, LM head and norms are
//! replicated, so every rank ends a step holding the full logits.

use crate::weights::{LayerSink, LayerWeights, ResidentLayers};
use crate::{EngineError, Result};
use recording::StepRecording;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

mod forward;
mod recording;
pub use forward::{BatchEntry, Logits};
pub use recording::RecordingStats;
use tessera_backend::{Backend, KvDType, WeightDType};
use tessera_comm::{Collective, Local};
use tessera_model::{HostTensor, ModelSpec, ShardPlan, Slice, TensorSource};

/// A layer's small tensors; its matrices come from the model's `LayerWeights`.
struct Layer<B: Backend> {
    attn_norm: B::Tensor,
    qkv_bias: Option<B::Tensor>,
    mlp_norm: B::Tensor,
}

/// A loaded model (or one rank's shard of it) on one backend.
pub struct Model<B: Backend> {
    backend: B,
    spec: ModelSpec,
    plan: ShardPlan,
    dtype: WeightDType,
    /// Element type of new sequences' KV caches (`set_kv_dtype`).
    kv_dtype: KvDType,
    inv_freq: Vec<f32>,
    embed: B::Linear,
    /// `None` when the LM head is tied to the embedding.
    lm_head: Option<B::Linear>,
    norm: B::Tensor,
    layers: Vec<Layer<B>>,
    /// Each layer's matrices, in the order of `weights::LAYER_LINEARS`: Q/K/V
    /// rows stacked (one activation quantization serves all three), o_proj
    /// (row-parallel: this rank's columns), gate and up rows stacked, down_proj
    /// (row-parallel). Resident, or streamed by `tessera-offload`.
    weights: Box<dyn LayerWeights<B>>,
    /// Sums the row-parallel partial products; `Local` when the world is 1.
    comm: Mutex<Box<dyn Collective>>,
    /// Tells this model's recorded steps from another model's (see `Sequence`).
    id: u64,
    /// Decode steps replayed from a recording, and why recording last failed.
    replayed: AtomicU64,
    /// Of those, steps run in device-side greedy groups, and the groups.
    greedy_steps: AtomicU64,
    greedy_groups: AtomicU64,
    recording_failure: Mutex<Option<String>>,
}

/// Per-sequence state: the KV cache and how many positions it holds.
pub struct Sequence<B: Backend> {
    cache: B::KvCache,
    len: usize,
    capacity: usize,
    graph: StepRecording<B::StepGraph>,
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

/// This rank's slice of a tensor, checking the full tensor's shape first.
fn slice_of(
    src: &dyn TensorSource,
    plan: &ShardPlan,
    name: &str,
    expected: &[usize],
) -> Result<Slice> {
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
    Ok(if plan.world() == 1 {
        Slice::Full
    } else {
        plan.slice_for(name)
    })
}

/// Read this rank's slice of a tensor, checking the full tensor's shape first.
fn read(
    src: &dyn TensorSource,
    plan: &ShardPlan,
    name: &str,
    expected: &[usize],
) -> Result<HostTensor> {
    let slice = slice_of(src, plan, name, expected)?;
    Ok(src.read(name, &slice)?)
}

/// Read this rank's slices of the `[rows, cols]` matrices `parts`, stacked by
/// rows, into `buf` (resized to fit; the load reuses it layer after layer).
/// The tensor owns `buf` until the caller takes it back.
fn read_stacked(
    src: &dyn TensorSource,
    plan: &ShardPlan,
    parts: &[(String, [usize; 2])],
    mut buf: Vec<f32>,
) -> Result<HostTensor> {
    let mut slices = Vec::with_capacity(parts.len());
    let (mut rows, mut cols) = (0, None);
    for (name, shape) in parts {
        let slice = slice_of(src, plan, name, shape)?;
        let sliced =
            slice
                .sliced_shape(shape)
                .ok_or_else(|| tessera_model::ModelError::BadSlice {
                    tensor: name.clone(),
                    slice: slice.clone(),
                    shape: shape.to_vec(),
                })?;
        // Parts stack by rows, so this rank's slices must agree on columns.
        let c = *cols.get_or_insert(sliced[1]);
        if c != sliced[1] {
            return Err(EngineError::WeightShape {
                path: src.path().display().to_string(),
                tensor: name.clone(),
                expected: vec![sliced[0], c],
                found: sliced,
            });
        }
        rows += sliced[0];
        slices.push((name, slice, sliced[0] * sliced[1]));
    }
    let cols = cols.unwrap_or(0);
    buf.resize(rows * cols, 0.0);
    let mut at = 0;
    for (name, slice, n) in slices {
        src.read_into(name, &slice, &mut buf[at..at + n])?;
        at += n;
    }
    Ok(HostTensor::new(vec![rows, cols], buf))
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

impl<B: Backend + 'static> Model<B> {
    /// Load every weight from `src` onto `backend`, converting linear layers to `dtype`.
    /// `on_progress(done, total)` is called after each layer.
    pub fn load(
        backend: B,
        spec: &ModelSpec,
        src: &dyn TensorSource,
        dtype: WeightDType,
        on_progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let plan = ShardPlan::new(spec, 1, 0)?;
        Self::load_shard(
            backend,
            spec,
            src,
            dtype,
            plan,
            Box::new(Local),
            on_progress,
        )
    }

    /// Load the slices of `plan`'s rank only (see `ShardPlan::slice_for`);
    /// `comm` joins this rank to the others of its tensor-parallel group.
    pub fn load_shard(
        backend: B,
        spec: &ModelSpec,
        src: &dyn TensorSource,
        dtype: WeightDType,
        plan: ShardPlan,
        comm: Box<dyn Collective>,
        on_progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        Self::load_shard_into(
            backend,
            spec,
            src,
            dtype,
            plan,
            comm,
            Box::new(ResidentLayers::<B>::default()),
            on_progress,
        )
    }

    /// As [`Model::load_shard`], handing each layer's matrices to `sink`
    /// (e.g. a streamer that keeps some layers in host memory).
    #[allow(clippy::too_many_arguments)]
    pub fn load_shard_into(
        backend: B,
        spec: &ModelSpec,
        src: &dyn TensorSource,
        dtype: WeightDType,
        plan: ShardPlan,
        comm: Box<dyn Collective>,
        mut sink: Box<dyn LayerSink<B>>,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        if comm.world() != plan.world() || comm.rank() != plan.rank() {
            return Err(EngineError::ShardMismatch {
                plan: (plan.rank(), plan.world()),
                comm: (comm.rank(), comm.world()),
            });
        }
        let s = spec;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let (qn, kvn) = (s.num_heads * hd, s.num_kv_heads * hd);
        let read = |name: &str, shape: &[usize]| read(src, &plan, name, shape);
        let embed_t = read("model.embed_tokens.weight", &[s.vocab_size, h])?;
        let embed = backend.upload_linear(&embed_t, dtype)?;
        drop(embed_t);
        let lm_head = if src.info("lm_head.weight").is_some() && !s.tie_word_embeddings {
            let t = read("lm_head.weight", &[s.vocab_size, h])?;
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
        let norm = backend.upload(&read("model.norm.weight", &[h])?)?;
        let total = s.num_layers;
        let inter = s.intermediate_size;
        let mut layers = Vec::with_capacity(total);
        // One f32 buffer per matrix of a layer, reused layer after layer: its
        // pages are faulted in once per load, not once per layer (a 70B-wide
        // layer is 3.4 GB of f32, and fresh pages cost more than filling them).
        let mut bufs: [Vec<f32>; 4] = Default::default();
        for l in 0..total {
            let p = format!("model.layers.{l}");
            let w = |name: &str, shape: [usize; 2]| (format!("{p}.{name}.weight"), shape);
            // In the order of `weights::LAYER_LINEARS`.
            let matrices = [
                vec![
                    w("self_attn.q_proj", [qn, h]),
                    w("self_attn.k_proj", [kvn, h]),
                    w("self_attn.v_proj", [kvn, h]),
                ],
                vec![w("self_attn.o_proj", [h, qn])],
                vec![w("mlp.gate_proj", [inter, h]), w("mlp.up_proj", [inter, h])],
                vec![w("mlp.down_proj", [h, inter])],
            ];
            let mut linears = Vec::with_capacity(matrices.len());
            for (parts, buf) in matrices.iter().zip(bufs.iter_mut()) {
                let t = read_stacked(src, &plan, parts, std::mem::take(buf))?;
                linears.push(backend.upload_linear(&t, dtype)?);
                *buf = t.data;
            }
            let qkv_bias = if s.attention_bias {
                let b = stack_rows(vec![
                    read(&format!("{p}.self_attn.q_proj.bias"), &[qn])?,
                    read(&format!("{p}.self_attn.k_proj.bias"), &[kvn])?,
                    read(&format!("{p}.self_attn.v_proj.bias"), &[kvn])?,
                ]);
                Some(backend.upload(&b)?)
            } else {
                None
            };
            sink.push(&backend, l, linears)?;
            layers.push(Layer {
                attn_norm: backend.upload(&read(&format!("{p}.input_layernorm.weight"), &[h])?)?,
                qkv_bias,
                mlp_norm: backend.upload(&read(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                )?)?,
            });
            on_progress(l + 1, total);
        }
        let weights = sink.finish(&backend)?;
        Ok(Model {
            weights,
            inv_freq: spec.rope_inv_freq(),
            backend,
            spec: spec.clone(),
            plan,
            dtype,
            kv_dtype: KvDType::F32,
            embed,
            lm_head,
            norm,
            layers,
            comm: Mutex::new(comm),
            id: recording::next_model_id(),
            replayed: AtomicU64::new(0),
            greedy_steps: AtomicU64::new(0),
            greedy_groups: AtomicU64::new(0),
            recording_failure: Mutex::new(None),
        })
    }
}

impl<B: Backend> Model<B> {
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    /// The KV cache element type of sequences made from now on (default f32).
    /// Checked here, so a backend that cannot hold it fails at load time and
    /// not on the first request.
    pub fn set_kv_dtype(&mut self, dtype: KvDType) -> Result<()> {
        let layers = self.spec.num_layers;
        self.backend.kv_cache_typed(
            layers,
            self.plan.local_kv_heads(),
            self.spec.head_dim,
            1,
            dtype,
        )?;
        self.kv_dtype = dtype;
        Ok(())
    }
    pub fn kv_dtype(&self) -> KvDType {
        self.kv_dtype
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }
    /// Where the layers' matrices live (resident or streamed).
    pub fn layer_weights(&self) -> &dyn LayerWeights<B> {
        self.weights.as_ref()
    }

    /// Which part of the weights this model holds.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// One throwaway single-token step, when the backend wants it
    /// (`Backend::wants_warm_up`: on CUDA the first step of a shape times the
    /// GEMV variants, tens of milliseconds in all): call it right after
    /// loading, so the first request runs at full speed. Single-rank models
    /// only: a sharded model's step needs every rank at once, so its ranks
    /// warm up on their first request. Returns whether a step ran.
    pub fn warm_up(&self) -> Result<bool> {
        if !self.backend.wants_warm_up() || self.plan.world() != 1 {
            return Ok(false);
        }
        let mut seq = self.new_sequence(1)?;
        self.forward(&mut seq, &[0], false)?;
        Ok(true)
    }

    /// A new sequence with room for `capacity` positions (clamped to the model's context).
    pub fn new_sequence(&self, capacity: usize) -> Result<Sequence<B>> {
        let capacity = capacity.min(self.spec.max_position_embeddings).max(1);
        let cache = self.backend.kv_cache_typed(
            self.spec.num_layers,
            self.plan.local_kv_heads(),
            self.spec.head_dim,
            capacity,
            self.kv_dtype,
        )?;
        Ok(Sequence {
            cache,
            len: 0,
            capacity,
            graph: StepRecording::Eager(0),
        })
    }
}
