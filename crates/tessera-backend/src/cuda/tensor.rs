//! Activations on the GPU, and the values the backend may leave uncomputed
//! until a consumer can absorb them into its own launch (see `Lazy`): a small
//! GEMV (its epilogue fuses residual adds and SwiGLU), an RMSNorm (fused into
//! the GEMV that reads it) and a column view with RoPE still to apply (the
//! Q/K/V pieces of the fused QKV product: the KV store and attention read
//! them in place). A decode layer is then 6 launches instead of 11.
//!
//! Invariant: a tensor's value never changes once another tensor may read it
//! later. Buffers are shared through `Arc`; an in-place op on a shared buffer
//! copies it first (copy-on-write), so a deferred value always sees the input
//! it was given.

use super::launch::{Args, Dims};
use super::linear::{GemvMode, GemvWeight};
use super::{dev, CudaBackend};
use crate::{BackendError, Result};
use cudarc::driver::CudaSlice;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Activations on the GPU: `rows x cols` f32, row-major, dense.
pub struct CudaTensor {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    data: OnceLock<Arc<CudaSlice<f32>>>,
    lazy: Mutex<Option<Lazy>>,
}

/// How to compute a tensor that has no values yet.
pub(crate) enum Lazy {
    /// `x @ w^T` (at most `GEMV_MAX_ROWS` rows, int8 or bf16 weight).
    Gemv(PendingGemv),
    /// An RMSNorm whose output buffer `out` is allocated but written only by
    /// whoever runs `job` first: a GEMV that fuses it, or `buf`.
    Norm {
        out: Arc<CudaSlice<f32>>,
        job: Arc<NormJob>,
    },
    /// Columns of another tensor, maybe with RoPE still to apply.
    Cols(ColView),
}

/// A deferred GEMV: its input and weight.
#[derive(Clone)]
pub(crate) struct PendingGemv {
    pub input: GemvInput,
    pub w: GemvWeight,
}

/// The activations of a GEMV: the values in `x`, or, while `norm` still holds
/// its source, the RMSNorm that will write `x` (the GEMV may compute it itself).
#[derive(Clone)]
pub(crate) struct GemvInput {
    pub x: Arc<CudaSlice<f32>>,
    pub norm: Option<Arc<NormJob>>,
}

/// An RMSNorm not yet run; `take` hands its source to exactly one runner.
pub(crate) struct NormJob(Mutex<Option<NormSrc>>);

/// `rms_norm(x, w, eps)` over `rows x cols`.
pub(crate) struct NormSrc {
    pub x: Arc<CudaSlice<f32>>,
    pub w: Arc<CudaSlice<f32>>,
    pub eps: f32,
    pub rows: usize,
    pub cols: usize,
}

impl NormJob {
    pub(crate) fn new(src: NormSrc) -> Arc<Self> {
        Arc::new(NormJob(Mutex::new(Some(src))))
    }

    /// The source, if nobody has run the norm yet (then the caller must).
    pub(crate) fn take(&self) -> Result<Option<NormSrc>> {
        Ok(self.0.lock().map_err(|_| poisoned())?.take())
    }

    /// The source's buffer address, while the norm is still pending.
    pub(crate) fn src_ptr(&self, b: &CudaBackend) -> Result<Option<u64>> {
        let g = self.0.lock().map_err(|_| poisoned())?;
        Ok(g.as_ref().map(|s| b.ptr(&s.x)))
    }
}

/// Columns `col0..col0+cols` of `parent` (rows `stride` floats apart); with
/// `rope`, RoPE is applied to them on the way out.
#[derive(Clone)]
pub(crate) struct ColView {
    pub parent: Arc<CudaSlice<f32>>,
    pub stride: usize,
    pub col0: usize,
    pub rope: Option<RopeJob>,
}

/// RoPE still to apply: heads of `head_dim`, row `i` at position `start + i`
/// (plus the recorded step's device position when `dpos` is set, see
/// `graph.rs`), frequencies at device address `table` (kept alive by the backend).
#[derive(Clone, Copy)]
pub(crate) struct RopeJob {
    pub table: u64,
    pub head_dim: usize,
    pub start: usize,
    pub dpos: u64,
}

/// Where a kernel that accepts strided input reads a tensor: address, row
/// stride in floats, and RoPE to apply as it reads (see `CudaBackend::strided`).
pub(crate) struct Strided {
    pub ptr: u64,
    pub stride: usize,
    pub rope: Option<RopeJob>,
}

fn poisoned() -> BackendError {
    BackendError::Device("internal: tensor lock poisoned".into())
}

fn vanished() -> BackendError {
    BackendError::Device("internal: tensor values vanished".into())
}

impl CudaTensor {
    /// A tensor holding computed values.
    pub(crate) fn ready(rows: usize, cols: usize, buf: CudaSlice<f32>) -> Self {
        Self::shared_ready(rows, cols, Arc::new(buf))
    }

    /// A tensor holding computed values in a shared buffer.
    pub(crate) fn shared_ready(rows: usize, cols: usize, buf: Arc<CudaSlice<f32>>) -> Self {
        let data = OnceLock::new();
        let _ = data.set(buf);
        CudaTensor {
            rows,
            cols,
            data,
            lazy: Mutex::new(None),
        }
    }

    /// A tensor computed when first needed (or absorbed by its consumer).
    pub(crate) fn lazy(rows: usize, cols: usize, l: Lazy) -> Self {
        CudaTensor {
            rows,
            cols,
            data: OnceLock::new(),
            lazy: Mutex::new(Some(l)),
        }
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn lazy_lock(&self) -> Result<MutexGuard<'_, Option<Lazy>>> {
        self.lazy.lock().map_err(|_| poisoned())
    }

    /// The deferred GEMV, if the values have not been computed yet.
    pub(crate) fn pending_gemv(&self) -> Result<Option<PendingGemv>> {
        let g = self.lazy_lock()?;
        Ok(match (self.data.get(), g.as_ref()) {
            (None, Some(Lazy::Gemv(p))) => Some(p.clone()),
            _ => None,
        })
    }

    /// An unmaterialized column view, for consumers that read views in place.
    pub(crate) fn col_view(&self) -> Result<Option<ColView>> {
        let g = self.lazy_lock()?;
        Ok(match (self.data.get(), g.as_ref()) {
            (None, Some(Lazy::Cols(v))) => Some(v.clone()),
            _ => None,
        })
    }

    /// Record RoPE on an unmaterialized view that has none yet; false if the
    /// tensor is anything else (then the caller applies RoPE itself).
    pub(crate) fn defer_rope(&self, rope: RopeJob) -> Result<bool> {
        let mut g = self.lazy_lock()?;
        if self.data.get().is_some() {
            return Ok(false);
        }
        match g.as_mut() {
            Some(Lazy::Cols(v)) if v.rope.is_none() => {
                v.rope = Some(rope);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl CudaBackend {
    /// The tensor's values, computing a deferred value first.
    pub(crate) fn buf<'a>(&self, t: &'a CudaTensor) -> Result<&'a CudaSlice<f32>> {
        if let Some(d) = t.data.get() {
            return Ok(d);
        }
        let mut guard = t.lazy_lock()?;
        if let Some(d) = t.data.get() {
            return Ok(d);
        }
        let lazy = guard.take().ok_or_else(|| {
            BackendError::Device("internal: tensor has neither values nor a recipe".into())
        })?;
        let out = match lazy {
            Lazy::Gemv(p) => {
                let out = self.alloc::<f32>(t.rows * t.cols)?;
                self.launch_gemv(&p, t.rows, self.ptr(&out), GemvMode::Store)?;
                Arc::new(out)
            }
            Lazy::Norm { out, job } => {
                if let Some(src) = job.take()? {
                    self.rms_norm_into(&src, self.ptr(&out))?;
                }
                out
            }
            Lazy::Cols(v) => {
                let out = self.alloc::<f32>(t.rows * t.cols)?;
                self.gather_cols(&v, t.rows, t.cols, self.ptr(&out))?;
                Arc::new(out)
            }
        };
        let _ = t.data.set(out);
        drop(guard);
        t.data.get().map(|a| &**a).ok_or_else(vanished)
    }

    /// A shared handle on the tensor's values (for deferred values).
    pub(crate) fn shared(&self, t: &CudaTensor) -> Result<Arc<CudaSlice<f32>>> {
        self.buf(t)?;
        t.data.get().cloned().ok_or_else(vanished)
    }

    /// What a GEMV reads for input `x`: a pending RMSNorm stays pending (the
    /// GEMV may fuse it); anything else is computed.
    pub(crate) fn gemv_input(&self, x: &CudaTensor) -> Result<GemvInput> {
        if x.data.get().is_none() {
            let g = x.lazy_lock()?;
            if let Some(Lazy::Norm { out, job }) = g.as_ref() {
                return Ok(GemvInput {
                    x: out.clone(),
                    norm: Some(job.clone()),
                });
            }
        }
        Ok(GemvInput {
            x: self.shared(x)?,
            norm: None,
        })
    }

    /// Address, row stride and pending RoPE of a tensor for kernels that read
    /// column views in place (KV store, attention) and can apply RoPE with
    /// heads of `rope_head_dim`; other tensors are computed first.
    pub(crate) fn strided(&self, t: &CudaTensor, rope_head_dim: Option<usize>) -> Result<Strided> {
        Ok(self.strided_kept(t, rope_head_dim)?.0)
    }

    /// As [`CudaBackend::strided`], with the buffer the address points into,
    /// for work deferred past the tensor's lifetime (it keeps the buffer alive).
    pub(crate) fn strided_kept(
        &self,
        t: &CudaTensor,
        rope_head_dim: Option<usize>,
    ) -> Result<(Strided, Arc<CudaSlice<f32>>)> {
        if let Some(v) = t.col_view()? {
            let rope_ok = match v.rope {
                None => true,
                Some(r) => rope_head_dim == Some(r.head_dim),
            };
            if rope_ok {
                let s = Strided {
                    ptr: self.ptr(&*v.parent) + (v.col0 * 4) as u64,
                    stride: v.stride,
                    rope: v.rope,
                };
                return Ok((s, v.parent));
            }
        }
        let buf = self.shared(t)?;
        let s = Strided {
            ptr: self.ptr(&*buf),
            stride: t.cols,
            rope: None,
        };
        Ok((s, buf))
    }

    /// Exclusive access for an in-place op: compute a deferred value, and
    /// copy the buffer if a deferred value elsewhere still reads it.
    pub(crate) fn buf_mut<'a>(&self, t: &'a mut CudaTensor) -> Result<&'a mut CudaSlice<f32>> {
        self.buf(t)?;
        *t.lazy.get_mut().map_err(|_| poisoned())? = None;
        let n = t.rows * t.cols;
        let arc = t.data.get_mut().ok_or_else(vanished)?;
        if Arc::get_mut(arc).is_none() {
            let mut copy = self.alloc::<f32>(n)?;
            if n > 0 {
                self.stream
                    .memcpy_dtod(&arc.slice(..n), &mut copy.slice_mut(..n))
                    .map_err(dev("copy-on-write"))?;
            }
            *arc = Arc::new(copy);
        }
        Arc::get_mut(arc).ok_or_else(|| {
            BackendError::Device("internal: buffer still shared after a copy".into())
        })
    }
}

impl CudaBackend {
    /// Run the RMSNorm `src` into the device address `out` (`[rows, cols]`).
    pub(crate) fn rms_norm_into(&self, src: &NormSrc, out: u64) -> Result<()> {
        if src.rows == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(self.ptr(&src.x))
            .ptr(self.ptr(&src.w))
            .int(src.cols)
            .f32(src.eps)
            .ptr(out);
        // SAFETY: x and out hold rows x cols f32, w holds cols; one
        // 256-thread block per row, as the kernel expects.
        unsafe {
            self.launch(
                "rms_norm",
                &self.k.rms_norm,
                Dims::blocks(src.rows, 256),
                args,
            )
        }
    }

    /// Copy a column view (applying its pending RoPE) to the device address
    /// `out` (`[rows, cols]`, dense).
    pub(crate) fn gather_cols(
        &self,
        v: &ColView,
        rows: usize,
        cols: usize,
        out: u64,
    ) -> Result<()> {
        if rows * cols == 0 {
            return Ok(());
        }
        let (table, head_dim, start, dpos) = v
            .rope
            .map(|r| (r.table, r.head_dim, r.start, r.dpos))
            .unwrap_or((0, 1, 0, 0));
        let args = Args::new()
            .ptr(self.ptr(&*v.parent))
            .int(v.stride)
            .int(v.col0)
            .int(rows)
            .int(cols)
            .ptr(out)
            .ptr(table)
            .int(head_dim)
            .int(start)
            .ptr(dpos);
        // SAFETY: the parent holds rows x stride f32 with col0 + cols <= stride
        // (checked by split_cols); out holds rows x cols.
        unsafe {
            self.launch(
                "gather_cols",
                &self.k.gather_cols,
                Dims::flat(rows * cols),
                args,
            )
        }
    }
}
