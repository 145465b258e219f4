//! The `Backend` trait: device buffers plus the handful of ops a Llama-family
//! transformer needs, and its CPU implementation.
//!
//! Invariant: the engine only ever talks to a device through this trait, so the
//! CPU and CUDA implementations are interchangeable. Every op has a plain
//! reference implementation (`reference` module) that fast paths are tested against.

mod checks;
pub mod cpu;
pub mod cuda;
mod error;
pub mod reference;
pub mod stream;

pub use error::{BackendError, Result};
use std::sync::Arc;
use stream::{HostBytes, HostLayers, SlotCopier};
use tessera_comm::Collective;
use tessera_model::HostTensor;

/// Weight element type at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    /// Symmetric int8, one scale per group of at most 128 inputs per output row.
    Int8,
    /// bfloat16 (weights rounded to nearest even; products in f32).
    BF16,
    /// Int4 (`-8..=7`, llama.cpp Q4_0's rule), one f32 scale per group of 32
    /// inputs: the int8 format with 16 levels. Two per byte on CUDA (W4A16 GEMVs); on the
    /// CPU the rounded weights are kept as f32, so both compute one function.
    Int4,
}

impl std::str::FromStr for WeightDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(WeightDType::F32),
            "int8" => Ok(WeightDType::Int8),
            "bf16" => Ok(WeightDType::BF16),
            "int4" => Ok(WeightDType::Int4),
            other => Err(format!(
                "unknown weight dtype `{other}` (expected f32, int8, int4 or bf16)"
            )),
        }
    }
}

impl std::fmt::Display for WeightDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightDType::F32 => "f32",
            WeightDType::Int8 => "int8",
            WeightDType::BF16 => "bf16",
            WeightDType::Int4 => "int4",
        })
    }
}

/// Index of the largest value; ties go to the lowest index, like `torch.argmax`.
/// NaN never wins, except at index 0, which nothing then beats.
pub fn argmax(v: &[f32]) -> u32 {
    let Some(&first) = v.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    // The largest value, eight independent running maxima (no dependency
    // chain from one element to the next, so the loop vectorizes), then its
    // first index. `x > m` never takes a NaN.
    let mut lanes = [first; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let top = lanes
        .iter()
        .chain(rest)
        .fold(first, |m, &x| if x > m { x } else { m });
    v.iter().position(|&x| x == top).unwrap_or(0) as u32
}

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDType {
    /// Keys and values as computed (the default; what the reference compares).
    #[default]
    F32,
    /// Keys and values rounded to bfloat16 (nearest even) when stored: half the
    /// memory and half the bytes attention reads per position. On CUDA they are
    /// stored as bf16; on the CPU the rounded values are kept as f32, so both
    /// compute one function (as for bf16 weights).
    BF16,
}

impl KvDType {
    /// Bytes per cached element on a device that stores the type natively.
    pub fn bytes(self) -> usize {
        match self {
            KvDType::F32 => 4,
            KvDType::BF16 => 2,
        }
    }
}

impl std::str::FromStr for KvDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(KvDType::F32),
            "bf16" => Ok(KvDType::BF16),
            other => Err(format!(
                "unknown KV cache dtype `{other}` (expected f32 or bf16)"
            )),
        }
    }
}

impl std::fmt::Display for KvDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDType::F32 => "f32",
            KvDType::BF16 => "bf16",
        })
    }
}

/// Geometry of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// [`Backend::attention_batch`] one sequence at a time with the single-sequence
/// ops (slice the row, RoPE, KV store, attention, then stack the rows): the
/// default, and the fallback of backends whose one-launch path cannot take a
/// call.
#[allow(clippy::too_many_arguments)]
pub fn attention_per_sequence<B: Backend + ?Sized>(
    b: &B,
    q: &B::Tensor,
    k: &B::Tensor,
    v: &B::Tensor,
    caches: &mut [&mut B::KvCache],
    layer: usize,
    starts: &[usize],
    inv_freq: &[f32],
    shape: AttentionShape,
) -> Result<B::Tensor> {
    let spans: Vec<(usize, usize)> = starts.iter().map(|&s| (s, 1)).collect();
    attention_spans(b, q, k, v, caches, layer, &spans, inv_freq, shape)
}

/// Attention of several sequences' consecutive rows of `q`, `k`, `v`
/// (without RoPE), sequence i taking `spans[i].1` rows from position
/// `spans[i].0`, one sequence at a time with the single-sequence ops (slice
/// its rows, RoPE, KV store into `caches[i]`, attention), the results stacked
/// in order. [`attention_per_sequence`] is the case of one row each.
#[allow(clippy::too_many_arguments)]
pub fn attention_spans<B: Backend + ?Sized>(
    b: &B,
    q: &B::Tensor,
    k: &B::Tensor,
    v: &B::Tensor,
    caches: &mut [&mut B::KvCache],
    layer: usize,
    spans: &[(usize, usize)],
    inv_freq: &[f32],
    shape: AttentionShape,
) -> Result<B::Tensor> {
    if caches.len() != spans.len() {
        return Err(error::shape_err(
            "attention_batch",
            format!("{} caches for {} positions", caches.len(), spans.len()),
        ));
    }
    let (nh, nkv, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let mut outs = Vec::with_capacity(caches.len());
    let mut r0 = 0;
    for (cache, &(start, n)) in caches.iter_mut().zip(spans) {
        let mut qi = b.slice_rows(q, r0, n)?;
        let mut ki = b.slice_rows(k, r0, n)?;
        let vi = b.slice_rows(v, r0, n)?;
        b.rope(&mut qi, nh, hd, start, inv_freq)?;
        b.rope(&mut ki, nkv, hd, start, inv_freq)?;
        b.kv_store(cache, layer, start, &ki, &vi)?;
        outs.push(b.attention(&qi, cache, layer, start, shape)?);
        r0 += n;
    }
    b.concat_rows(&outs.iter().collect::<Vec<_>>())
}

/// A compute device. Activations are 2-D `[rows, cols]` f32-semantics tensors
/// (one row per token); weights are `[out, in]` matrices in the chosen dtype.
pub trait Backend: Send + Sync {
    /// Activations living on the device.
    type Tensor: Send + Sync;
    /// A weight matrix prepared for `matmul` (and row lookup for embeddings).
    type Linear: Send + Sync;
    /// Keys and values of every layer for one sequence.
    type KvCache: Send;
    /// A recorded single-token decode step of one sequence, replayed at later
    /// positions (a CUDA graph). `()` for backends that record nothing.
    type StepGraph: Send;

    /// Human-readable name, e.g. `cpu (avx512-vnni, 2 threads)`.
    fn name(&self) -> String;

    // ---- buffers ----
    fn upload(&self, t: &HostTensor) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<HostTensor>;
    /// `(rows, cols)` of a tensor.
    fn dims(&self, t: &Self::Tensor) -> (usize, usize);
    /// Prepare a `[out, in]` f32 host matrix as a weight of the given dtype.
    fn upload_linear(&self, w: &HostTensor, dtype: WeightDType) -> Result<Self::Linear>;
    /// `(out, in)` of a weight.
    fn linear_dims(&self, w: &Self::Linear) -> (usize, usize);
    /// Rows `start..start+count` of a tensor, as a new tensor.
    fn slice_rows(&self, x: &Self::Tensor, start: usize, count: usize) -> Result<Self::Tensor>;
    /// Split columns into consecutive pieces of the given widths.
    fn split_cols(&self, x: &Self::Tensor, widths: &[usize]) -> Result<Vec<Self::Tensor>>;
    /// Stack tensors with equal column counts by rows (the inverse of `slice_rows`).
    fn concat_rows(&self, parts: &[&Self::Tensor]) -> Result<Self::Tensor>;

    // ---- ops ----
    /// Gather rows `ids` of an `[vocab, hidden]` weight (dequantized) -> `[ids.len(), hidden]`.
    fn embedding(&self, table: &Self::Linear, ids: &[u32]) -> Result<Self::Tensor>;
    /// `x / rms(x) * weight` per row; `weight` is `[1, cols]`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// `x @ w^T`: `[n, in] x [out, in] -> [n, out]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Linear) -> Result<Self::Tensor>;
    /// `x += bias` broadcast over rows; `bias` is `[1, cols]`.
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Tensor) -> Result<()>;
    /// `x += y` elementwise.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// `silu(gate) * up` where `gate_up = [gate | up]` (`[n, 2m] -> [n, m]`).
    fn swiglu(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Rotate-half RoPE in place on `[n, heads*head_dim]`; row `i` is at
    /// position `start_pos + i`; `inv_freq` has `head_dim/2` entries.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        heads: usize,
        head_dim: usize,
        start_pos: usize,
        inv_freq: &[f32],
    ) -> Result<()>;

    // ---- attention ----
    fn kv_cache(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<Self::KvCache>;
    /// A KV cache of element type `dtype` ([`KvDType`]); `kv_cache` is its f32
    /// case. Backends without bf16 caches refuse it by name.
    fn kv_cache_typed(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: KvDType,
    ) -> Result<Self::KvCache> {
        match dtype {
            KvDType::F32 => self.kv_cache(layers, kv_heads, head_dim, capacity),
            other => Err(BackendError::Unavailable(
                format!("a {other} KV cache"),
                format!("the {} backend keeps its KV cache in f32", self.name()),
            )),
        }
    }
    /// Store `k`, `v` (`[n, kv_heads*head_dim]`) at positions `start_pos..start_pos+n`.
    fn kv_store(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        start_pos: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<()>;
    /// Causal grouped-query attention of `q` (`[n, heads*head_dim]`, row `i` at
    /// position `start_pos + i`) over cached positions `0..=start_pos+i`.
    fn attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        start_pos: usize,
        shape: AttentionShape,
    ) -> Result<Self::Tensor>;

    /// One decode step of attention for several sequences, one query row
    /// each (the server's batched decode): row `i` of `q`, `k`, `v`
    /// (`[n, heads*head_dim]`, `[n, kv_heads*head_dim]` twice, without RoPE)
    /// is the token of the sequence whose cache is `caches[i]`, at position
    /// `starts[i]`. RoPE is applied to `q` and `k`, `k` and `v` are stored
    /// into `caches[i]` at `starts[i]`, and row `i` of the result attends over
    /// that cache's positions `0..=starts[i]`. The default runs those ops one
    /// sequence at a time; a backend may do it in one launch.
    #[allow(clippy::too_many_arguments)]
    fn attention_batch(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        caches: &mut [&mut Self::KvCache],
        layer: usize,
        starts: &[usize],
        inv_freq: &[f32],
        shape: AttentionShape,
    ) -> Result<Self::Tensor> {
        attention_per_sequence(self, q, k, v, caches, layer, starts, inv_freq, shape)
    }

    // ---- tensor parallelism ----
    /// Sum `x` element-wise over the ranks of `comm`, in place: the all-reduce
    /// after a row-parallel product. This default goes through host memory;
    /// a backend with a device transport (NCCL) overrides it.
    fn all_reduce_sum(&self, x: &mut Self::Tensor, comm: &mut dyn Collective) -> Result<()> {
        if comm.world() == 1 {
            return Ok(());
        }
        let mut host = self.download(x)?;
        comm.all_reduce_sum(&mut host.data)?;
        *x = self.upload(&host)?;
        Ok(())
    }

    /// Whether the first step of a shape pays one-time costs (timing kernel
    /// variants, uploading tables) that a throwaway step right after loading
    /// should absorb (`Model::warm_up` in tessera-engine), so that the
    /// first request does not. `false`, the default: nothing to warm.
    fn wants_warm_up(&self) -> bool {
        false
    }

    // ---- recorded decode steps (see `cuda/graph.rs`) ----
    /// Start recording a single-token decode step of one sequence at position
    /// `pos` for `token`, whose logits row has `cols` values: the ops that
    /// follow are recorded, not run, until [`Backend::end_step_graph`] (or
    /// [`Backend::abort_step_graph`] after an error). `Ok(false)`, the
    /// default: this backend does not record; run the step as usual.
    fn begin_step_graph(&self, pos: usize, token: u32, cols: usize) -> Result<bool> {
        let _ = (pos, token, cols);
        Ok(false)
    }

    /// Finish the recording with the step's logits (`[1, cols]`). Nothing has
    /// run yet: replay the graph to run the step.
    fn end_step_graph(&self, logits: Self::Tensor) -> Result<Self::StepGraph> {
        let _ = logits;
        Err(BackendError::Unavailable(
            format!("recorded steps on {}", self.name()),
            "this backend does not record".into(),
        ))
    }

    /// Abandon a recording (after an op failed while recording); a no-op
    /// when nothing is being recorded.
    fn abort_step_graph(&self) {}

    /// Run a recorded step at position `pos` for `token`: what the recorded
    /// ops would do there. Returns the logits row `[1, cols]`.
    fn replay_step_graph(
        &self,
        graph: &Self::StepGraph,
        pos: usize,
        token: u32,
    ) -> Result<HostTensor> {
        let _ = (graph, pos, token);
        Err(BackendError::Unavailable(
            format!("recorded steps on {}", self.name()),
            "this backend does not record".into(),
        ))
    }

    /// Run `n` greedy steps from a recorded step without the host in
    /// between: step i runs the recording at `pos + i`, step 0 for `token`
    /// and every later one for the previous step's choice, each choosing
    /// the id of its largest logit (ties to the lowest id; a NaN never wins
    /// except at id 0, as [`argmax`]). Returns the n
    /// choices, or `Ok(None)`, the default, when the backend cannot.
    fn replay_step_graph_greedy(
        &self,
        graph: &Self::StepGraph,
        pos: usize,
        token: u32,
        n: usize,
    ) -> Result<Option<Vec<u32>>> {
        let _ = (graph, pos, token, n);
        Ok(None)
    }

    /// The greedy choice ([`argmax`]) of every row of `x` (`[rows, vocab]`
    /// logits). The default downloads the rows and picks on the host; a
    /// device picks where the logits are and copies back only the ids.
    fn argmax_rows(&self, x: &Self::Tensor) -> Result<Vec<u32>> {
        let h = self.download(x)?;
        let cols = self.dims(x).1;
        if cols == 0 {
            return Err(BackendError::Shape {
                op: "argmax_rows",
                detail: "rows of 0 logits".into(),
            });
        }
        Ok(h.data.chunks_exact(cols).map(argmax).collect())
    }

    // ---- weight streaming (tessera-offload; see `stream`) ----
    /// The bytes `w` occupies on the device (its image). Writing the image back
    /// into a weight of the same shape restores it bit for bit.
    fn linear_image(&self, w: &Self::Linear) -> Result<Vec<u8>> {
        let _ = w;
        Err(BackendError::Unavailable(
            format!("weight streaming on {}", self.name()),
            "this backend has no slot copier".into(),
        ))
    }

    /// A host buffer of `len` zero bytes for a layer's images: page-locked
    /// where the device copies from it directly, plain memory otherwise.
    fn host_buffer(&self, len: usize, pinned: bool) -> Result<Box<dyn HostBytes>> {
        let _ = pinned;
        Ok(Box::new(vec![0u8; len]))
    }

    /// A copy engine over `slots` (each a set of preallocated weights whose
    /// images have the sizes of `host.parts`) filling them from `host`.
    fn slot_copier(
        &self,
        host: Arc<HostLayers>,
        slots: Vec<Vec<Self::Linear>>,
    ) -> Result<Box<dyn SlotCopier<Self::Linear>>> {
        let _ = (host, slots);
        Err(BackendError::Unavailable(
            format!("weight streaming on {}", self.name()),
            "this backend has no slot copier".into(),
        ))
    }
}
