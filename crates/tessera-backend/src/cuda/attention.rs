//! The KV store and attention on the GPU (kernels/attention.cu): position
//! splits for decode-sized attention launches, and KV stores deferred into
//! the attention launch that follows them.

use super::launch::{Args, Dims};
use super::tensor::{RopeJob, Strided};
use super::{CudaBackend, CudaKvCache, CudaTensor};
use crate::checks;
use crate::error::shape_err;
use crate::{AttentionShape, Result};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

impl CudaBackend {
    /// `Backend::kv_store`: checked now; run now, or (fusion on, at most
    /// ATT_TAIL_ROWS rows) left for the attention call that follows.
    pub(crate) fn kv_store_impl(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        start_pos: usize,
        k: &CudaTensor,
        v: &CudaTensor,
    ) -> Result<()> {
        checks::kv_store(
            &cache.geometry(),
            layer,
            start_pos,
            (k.rows, k.cols),
            (v.rows, v.cols),
        )?;
        let (start, dpos) = self.step_pos(start_pos)?;
        // K may carry RoPE of this head size; V never (it is computed first).
        let (ks, kbuf) = self.strided_kept(k, Some(cache.head_dim))?;
        let (vs, vbuf) = self.strided_kept(v, None)?;
        same_step(ks.rope, dpos)?;
        let job = KvJob {
            layer,
            start_pos,
            rows: k.rows,
            start,
            dpos,
            k: ks,
            v: vs,
            _keep: [kbuf, vbuf],
            capture: self.capture_id()?,
        };
        let earlier = cache.pending.get_mut().map_err(|_| kv_poisoned())?.take();
        if let Some(e) = earlier {
            self.flush_kv(cache, e)?;
        }
        if job.rows * cache.kv_heads * cache.head_dim == 0 {
            return Ok(());
        }
        if self.fuse && job.rows <= ATT_TAIL_ROWS {
            // Fused: the attention call that follows stores it (kernels/attention.cu).
            *cache.pending.get_mut().map_err(|_| kv_poisoned())? = Some(job);
            return Ok(());
        }
        self.run_kv_store(cache, &job)
    }

    /// `Backend::attention`, taking a KV store deferred for exactly these
    /// rows into its launch.
    pub(crate) fn attention_impl(
        &self,
        q: &CudaTensor,
        cache: &CudaKvCache,
        layer: usize,
        start_pos: usize,
        shape: AttentionShape,
    ) -> Result<CudaTensor> {
        let AttentionShape {
            num_heads,
            num_kv_heads,
            head_dim,
        } = shape;
        checks::attention(&cache.geometry(), layer, start_pos, (q.rows, q.cols), shape)?;
        if head_dim > 256 {
            let detail = format!("head_dim {head_dim} > 256 is not supported on CUDA");
            return Err(shape_err("attention", detail));
        }
        let out = self.alloc::<f32>(q.rows * q.cols)?;
        if q.rows == 0 {
            return Ok(CudaTensor::ready(0, q.cols, out));
        }
        let cap = cache.capacity;
        let layer_off = cache.layer_offset(layer);
        let (start, dpos) = self.step_pos(start_pos)?;
        let qs = self.strided(q, Some(head_dim))?;
        same_step(qs.rope, dpos)?;
        // A KV store deferred for exactly these rows runs inside this launch;
        // any other is run first.
        let tail = q.rows <= ATT_TAIL_ROWS;
        let now = self.capture_id()?;
        let pending = cache.pending.lock().map_err(|_| kv_poisoned())?.take();
        let fused = match pending {
            Some(j)
                if tail
                    && j.layer == layer
                    && j.start_pos == start_pos
                    && j.rows == q.rows
                    && j.capture == now
                    && j.dpos == dpos =>
            {
                Some(j)
            }
            Some(j) => {
                self.flush_kv(cache, j)?;
                None
            }
            None => None,
        };
        let f = self.attention_kernel(head_dim, cache.dtype);
        // Split positions when rows x heads blocks would leave SMs idle (see
        // kernels/attention.cu): chosen from the cache's capacity, not the
        // current length, so a recorded step and the eager steps around it
        // split alike at every position.
        let mut splits = self.attention_splits(q.rows, num_heads, cap);
        if dpos == 0 {
            // Eager (positions known now): no more splits than the longest
            // row uses (kernels/attention.cu: row i uses min(S, (start+i+1) /
            // min_chunk), the same for any S at or above that), so short
            // contexts launch one block per (row, head) and need no partials.
            // Same splits per row, so the same bits as a recorded step.
            splits = splits.min(((start_pos + q.rows) / self.att_min_chunk).max(1));
        }
        let part = self.attention_partials(q.rows, num_heads, splits, head_dim)?;
        // RoPE still to apply to the deferred store's keys.
        let k_rope = fused.as_ref().and_then(|j| j.k.rope);
        let args = Args::new()
            .ptr(qs.ptr)
            .int(qs.stride)
            .ptr(self.ptr(&cache.k) + layer_off)
            .ptr(self.ptr(&cache.v) + layer_off)
            .ptr(self.ptr(&out))
            .int(num_heads)
            .int(num_kv_heads)
            .int(head_dim)
            .int(cap)
            .int(start)
            .f32(1.0f32 / (head_dim as f32).sqrt())
            .ptr(qs.rope.map(|r| r.table).unwrap_or(0))
            .int(qs.rope.map(|r| r.start).unwrap_or(0))
            .ptr(dpos)
            .ptr(part.as_ref().map(|p| self.ptr(p)).unwrap_or(0))
            .ptr(self.ptr(&self.att_counters))
            .int(usize::from(tail))
            .ptr(fused.as_ref().map(|j| j.k.ptr).unwrap_or(0))
            .int(fused.as_ref().map(|j| j.k.stride).unwrap_or(0))
            .ptr(fused.as_ref().map(|j| j.v.ptr).unwrap_or(0))
            .int(fused.as_ref().map(|j| j.v.stride).unwrap_or(0))
            .ptr(k_rope.map(|r| r.table).unwrap_or(0))
            .int(k_rope.map(|r| r.start).unwrap_or(0))
            .ptr(self.ptr(&cache.k) + layer_off)
            .ptr(self.ptr(&cache.v) + layer_off)
            .int(self.att_min_chunk)
            .ptr(0)
            .int(0);
        let dims = Dims {
            grid: (q.rows as u32, num_heads as u32, splits as u32),
            block: 256,
            smem: 0,
        };
        // SAFETY: q rows hold heads*hd f32 at its stride, out [rows, heads*hd];
        // the cache layer holds kvh*cap*hd f32 each and positions up to
        // start_pos+rows-1 < cap were stored, or are stored by this launch
        // from the fused job's k and v (rows * kvh*hd f32 at their strides,
        // kept alive by the job). With splits > 1, part holds
        // rows*heads*splits*(hd+2) f32 and the counters rows*heads <=
        // ATT_COUNTERS u32, all zero (every launch leaves them zero).
        unsafe { self.launch("attention", f, dims, args) }?;
        // The partials and the fused store's inputs are freed in stream
        // order, after the kernel.
        drop(part);
        drop(fused);
        Ok(CudaTensor::ready(q.rows, q.cols, out))
    }
}

impl CudaBackend {
    /// `Backend::attention_batch`: RoPE, the KV store and attention of every
    /// sequence in one launch (kernels/attention.cu, `seqs`); the
    /// per-sequence ops when that launch cannot take the call (fusion off,
    /// inside a recording, q or k with RoPE already pending, head_dim > 256,
    /// more rows x heads than the split counters) or when asked to
    /// (`TESSERA_BATCH_ATTENTION=per-sequence`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_batch_impl(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        caches: &mut [&mut CudaKvCache],
        layer: usize,
        starts: &[usize],
        inv_freq: &[f32],
        shape: AttentionShape,
    ) -> Result<CudaTensor> {
        let AttentionShape {
            num_heads,
            num_kv_heads,
            head_dim,
        } = shape;
        let n = caches.len();
        if starts.len() != n || q.rows != n || k.rows != n || v.rows != n {
            let detail = format!(
                "{n} caches, {} positions, q/k/v rows {}/{}/{}",
                starts.len(),
                q.rows,
                k.rows,
                v.rows
            );
            return Err(shape_err("attention_batch", detail));
        }
        let kv_cols = num_kv_heads * head_dim;
        for (cache, &start) in caches.iter().zip(starts) {
            let g = cache.geometry();
            checks::kv_store(&g, layer, start, (1, k.cols), (1, v.cols))?;
            checks::attention(&g, layer, start, (1, q.cols), shape)?;
        }
        if k.cols != kv_cols {
            let detail = format!("k has {} columns, expected {kv_cols}", k.cols);
            return Err(shape_err("attention_batch", detail));
        }
        checks::rope(q.cols, num_heads, head_dim, inv_freq)?;
        checks::rope(k.cols, num_kv_heads, head_dim, inv_freq)?;
        let qs = self.strided(q, Some(head_dim))?;
        let (ks, kbuf) = self.strided_kept(k, Some(head_dim))?;
        let (vs, vbuf) = self.strided_kept(v, None)?;
        if !self.fuse
            || self.batch_attention_per_sequence
            || n == 0
            || self.capture_id()?.is_some()
            || head_dim > 256
            || qs.rope.is_some()
            || ks.rope.is_some()
            || n * num_heads > ATT_COUNTERS
            || caches.iter().any(|c| c.dtype != caches[0].dtype)
        {
            return crate::attention_per_sequence(
                self, q, k, v, caches, layer, starts, inv_freq, shape,
            );
        }
        // Stores deferred on these caches by earlier calls run first.
        for cache in caches.iter_mut() {
            let earlier = cache.pending.get_mut().map_err(|_| kv_poisoned())?.take();
            if let Some(e) = earlier {
                self.flush_kv(cache, e)?;
            }
        }
        let table = self.rope_table(inv_freq)?;
        let mut host = Vec::with_capacity(4 * n);
        for (cache, &start) in caches.iter().zip(starts) {
            host.extend([
                self.ptr(&cache.k) as i64,
                self.ptr(&cache.v) as i64,
                cache.capacity as i64,
                start as i64,
            ]);
        }
        let mut seqs = self.att_seqs.lock().map_err(|_| {
            crate::BackendError::Device("internal: attention table lock poisoned".into())
        })?;
        if seqs.as_ref().map(|(h, _)| h != &host).unwrap_or(true) {
            let dev_table = self
                .stream
                .clone_htod(&host)
                .map_err(super::dev("attention_batch"))?;
            *seqs = Some((host, dev_table));
        }
        let seqs_ptr = seqs.as_ref().map(|(_, d)| self.ptr(d)).unwrap_or(0);
        let out = self.alloc::<f32>(n * q.cols)?;
        let f = self.attention_kernel(head_dim, caches[0].dtype);
        // Splits as for a launch of n rows over the largest capacity, cut to
        // what the longest context uses (rows use min(S, (pos + 1) / min_chunk)).
        let cap = caches.iter().map(|c| c.capacity).max().unwrap_or(1);
        let longest = starts.iter().max().copied().unwrap_or(0) + 1;
        let splits = self
            .attention_splits(n, num_heads, cap)
            .min((longest / self.att_min_chunk).max(1));
        let part = self.attention_partials(n, num_heads, splits, head_dim)?;
        let args = Args::new()
            .ptr(qs.ptr)
            .int(qs.stride)
            .ptr(0)
            .ptr(0)
            .ptr(self.ptr(&out))
            .int(num_heads)
            .int(num_kv_heads)
            .int(head_dim)
            .int(0)
            .int(0)
            .f32(1.0f32 / (head_dim as f32).sqrt())
            .ptr(table)
            .int(0)
            .ptr(0)
            .ptr(part.as_ref().map(|p| self.ptr(p)).unwrap_or(0))
            .ptr(self.ptr(&self.att_counters))
            .int(1)
            .ptr(ks.ptr)
            .int(ks.stride)
            .ptr(vs.ptr)
            .int(vs.stride)
            .ptr(table)
            .int(0)
            .ptr(0)
            .ptr(0)
            .int(self.att_min_chunk)
            .ptr(seqs_ptr)
            .int(layer);
        let dims = Dims {
            grid: (n as u32, num_heads as u32, splits as u32),
            block: 256,
            smem: 0,
        };
        // SAFETY: q, k, v rows hold heads*hd, kvh*hd, kvh*hd f32 at their
        // strides (k and v kept alive below until the launch is queued;
        // frees are stream-ordered); out [n, heads*hd]; seqs holds 4n i64: row
        // i's K and V cache bases (layers x kvh x cap x hd f32 each), its
        // capacity and its position, which the checks above saw below the
        // capacity for this layer. With splits > 1, part holds
        // n*heads*splits*(hd+2) f32 and the counters n*heads <= ATT_COUNTERS
        // u32, all zero (every launch leaves them zero).
        unsafe { self.launch("attention_batch", f, dims, args) }?;
        drop(seqs);
        drop(part);
        drop((kbuf, vbuf));
        Ok(CudaTensor::ready(n, q.cols, out))
    }
}

impl CudaBackend {
    /// The attention kernel for heads of `head_dim` (at most 256) over a
    /// cache of element type `kv`.
    fn attention_kernel(
        &self,
        head_dim: usize,
        kv: crate::KvDType,
    ) -> &cudarc::driver::CudaFunction {
        match (kv, head_dim <= 128) {
            (crate::KvDType::F32, true) => &self.k.attention_d128,
            (crate::KvDType::F32, false) => &self.k.attention_d256,
            (crate::KvDType::BF16, true) => &self.k.attention_bf16_d128,
            (crate::KvDType::BF16, false) => &self.k.attention_bf16_d256,
        }
    }

    /// Scratch for the partial results of a launch split `splits` ways over
    /// positions (kernels/attention.cu, `part`); none without splits.
    fn attention_partials(
        &self,
        rows: usize,
        heads: usize,
        splits: usize,
        head_dim: usize,
    ) -> Result<Option<CudaSlice<f32>>> {
        if splits > 1 {
            Ok(Some(
                self.alloc::<f32>(rows * heads * splits * (head_dim + 2))?,
            ))
        } else {
            Ok(None)
        }
    }
}

/// Attention launches of at most this many query rows (decode) fold the
/// positions of their own rows in after the cached ones, and take a deferred
/// KV store (kernels/attention.cu).
const ATT_TAIL_ROWS: usize = 16;

/// One KV store: what it reads (k with its pending RoPE, v) and where it
/// writes. Run at once, or deferred into the next attention call on the
/// cache (`CudaKvCache::pending`).
pub(crate) struct KvJob {
    layer: usize,
    /// As the caller gave it.
    start_pos: usize,
    rows: usize,
    /// As the kernels take it (relative to the recorded step's position while recording).
    start: usize,
    dpos: u64,
    k: Strided,
    v: Strided,
    /// The buffers k and v point into, alive until the store has run.
    _keep: [Arc<CudaSlice<f32>>; 2],
    /// The recording the job was made in; `None` outside recordings.
    capture: Option<u64>,
}

fn kv_poisoned() -> crate::BackendError {
    crate::BackendError::Device("internal: KV cache lock poisoned".into())
}

impl CudaBackend {
    /// Launch the KV store kernel for `job`.
    fn run_kv_store(&self, cache: &CudaKvCache, job: &KvJob) -> Result<()> {
        let (hd, kvh, cap) = (cache.head_dim, cache.kv_heads, cache.capacity);
        let layer_off = cache.layer_offset(job.layer);
        let args = Args::new()
            .ptr(job.k.ptr)
            .int(job.k.stride)
            .ptr(job.v.ptr)
            .int(job.v.stride)
            .ptr(self.ptr(&cache.k) + layer_off)
            .ptr(self.ptr(&cache.v) + layer_off)
            .int(job.rows)
            .int(kvh)
            .int(hd)
            .int(cap)
            .int(job.start)
            .ptr(job.k.rope.map(|r| r.table).unwrap_or(0))
            .int(job.k.rope.map(|r| r.start).unwrap_or(0))
            .ptr(job.dpos);
        // SAFETY: k and v rows hold kvh*hd f32 at their strides (kept alive
        // by the job); the cache layer holds kvh x cap x hd f32 each, and
        // checks::kv_store saw start_pos + rows <= cap.
        unsafe {
            self.launch(
                "kv_store",
                match cache.dtype {
                    crate::KvDType::F32 => &self.k.kv_store,
                    crate::KvDType::BF16 => &self.k.kv_store_bf16,
                },
                Dims::flat(job.rows * kvh * hd),
                args,
            )
        }
    }

    /// Run a deferred KV store that no attention call took.
    fn flush_kv(&self, cache: &CudaKvCache, job: KvJob) -> Result<()> {
        let now = self.capture_id()?;
        match job.capture {
            c if c == now => self.run_kv_store(cache, &job),
            // Deferred inside a recording that was abandoned: that step never
            // ran (it runs again eagerly, storing again). Its inputs were
            // allocations of the discarded graph; freeing them now would
            // leave an error for the next driver call, so they are leaked
            // (two handles; the graph's memory went with the graph).
            Some(_) => {
                std::mem::forget(job);
                Ok(())
            }
            // Left over from an eager step that failed between its store and
            // its attention call, now inside a recording, which cannot take
            // it: keep it for the eager rerun of this step (the recording fails).
            None => {
                *cache.pending.lock().map_err(|_| kv_poisoned())? = Some(job);
                Err(crate::BackendError::Device(
                    "a KV store deferred outside a recording is still pending".into(),
                ))
            }
        }
    }
}

/// Arrival counters for split-position attention: the split path runs only
/// while rows x heads fits them.
pub(crate) const ATT_COUNTERS: usize = 4096;
/// The most position splits of one (row, head).
pub(crate) const ATT_MAX_SPLITS: usize = 32;
/// Fewest positions of the cache's capacity per split.
const ATT_MIN_SPLIT_POSITIONS: usize = 32;
/// Fewest positions of the current context per split (the kernel's
/// `min_chunk`): one block per (row, head) up to 255 positions, since at
/// short contexts the merge costs more than the split saves. On an H200
/// (docs/gpu.md, run 7), a recorded 7B int8 decode step at 128..176
/// positions ran at 329.2 tok/s with every context split and 336.1 with
/// this minimum; one decode attention call at 8192 positions takes 68 us
/// split and 237 us with one block per head.
pub(crate) const ATT_MIN_CHUNK: usize = 128;

impl CudaBackend {
    /// Position splits for an attention launch of `rows` query rows over
    /// `heads` heads in a cache of `capacity` positions: enough blocks for
    /// about two per SM, at least ATT_MIN_SPLIT_POSITIONS positions of the
    /// capacity each; 1 (one block per row and head) for prefill-sized work.
    fn attention_splits(&self, rows: usize, heads: usize, capacity: usize) -> usize {
        let blocks = rows * heads;
        if blocks == 0 || blocks > ATT_COUNTERS {
            return 1;
        }
        if let Some(n) = self.att_splits {
            return n;
        }
        // Whole waves: two resident blocks per SM (attention takes ~128 registers).
        let fill = (2 * self.sm_count / blocks).max(1);
        let by_len = capacity.div_ceil(ATT_MIN_SPLIT_POSITIONS);
        fill.min(by_len).clamp(1, ATT_MAX_SPLITS)
    }
}

/// A kernel adds one device position to both its own positions and those of
/// the RoPE it applies on load, so both must come from the same step.
fn same_step(rope: Option<RopeJob>, dpos: u64) -> Result<()> {
    match rope {
        Some(r) if r.dpos != dpos => Err(crate::BackendError::Device(
            "internal: RoPE recorded in another step than its consumer".into(),
        )),
        _ => Ok(()),
    }
}
