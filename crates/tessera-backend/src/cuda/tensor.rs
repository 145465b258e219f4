//! Activations on the GPU, and the one deferred value the backend knows: a
//! small-batch int8 product whose epilogue can still be fused into its
//! consumer (`add_assign` adds it into the residual, `swiglu` gates it), which
//! saves a launch and a round trip through memory per fused op.
//!
//! Invariant: a tensor's value never changes once another tensor may read it
//! later. Buffers are shared through `Arc`; an in-place op on a shared buffer
//! copies it first (copy-on-write), so a deferred product always sees the
//! input it was given.

use super::linear::{GemvMode, Int8Weight};
use super::{dev, CudaBackend};
use crate::{BackendError, Result};
use cudarc::driver::CudaSlice;
use std::sync::{Arc, OnceLock};

/// Activations on the GPU: `rows x cols` f32, row-major, dense.
pub struct CudaTensor {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    data: OnceLock<Arc<CudaSlice<f32>>>,
    pending: Option<PendingGemv>,
}

/// `x @ w^T` not yet computed (int8 weight, at most `GEMV_MAX_ROWS` rows).
pub(crate) struct PendingGemv {
    /// The input activations, `[rows, w.cols]`.
    pub x: Arc<CudaSlice<f32>>,
    pub w: Arc<Int8Weight>,
}

impl CudaTensor {
    /// A tensor holding computed values.
    pub(crate) fn ready(rows: usize, cols: usize, buf: CudaSlice<f32>) -> Self {
        let data = OnceLock::new();
        let _ = data.set(Arc::new(buf));
        CudaTensor {
            rows,
            cols,
            data,
            pending: None,
        }
    }

    /// A product computed when first needed (or fused into its consumer).
    pub(crate) fn deferred(rows: usize, cols: usize, p: PendingGemv) -> Self {
        CudaTensor {
            rows,
            cols,
            data: OnceLock::new(),
            pending: Some(p),
        }
    }

    /// The deferred product, if the values have not been computed yet.
    pub(crate) fn pending(&self) -> Option<&PendingGemv> {
        match self.data.get() {
            Some(_) => None,
            None => self.pending.as_ref(),
        }
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

impl CudaBackend {
    /// The tensor's values, computing a deferred product first.
    pub(crate) fn buf<'a>(&self, t: &'a CudaTensor) -> Result<&'a CudaSlice<f32>> {
        if let Some(d) = t.data.get() {
            return Ok(&**d);
        }
        let p = t.pending.as_ref().ok_or_else(|| {
            BackendError::Device("internal: tensor has neither values nor a pending product".into())
        })?;
        let out = self.alloc::<f32>(t.rows * t.cols)?;
        self.launch_gemv(&p.w, &p.x, t.rows, self.ptr(&out), GemvMode::Store)?;
        let _ = t.data.set(Arc::new(out));
        t.data
            .get()
            .map(|a| &**a)
            .ok_or_else(|| BackendError::Device("internal: tensor values vanished".into()))
    }

    /// A shared handle on the tensor's values (for deferred products).
    pub(crate) fn shared(&self, t: &CudaTensor) -> Result<Arc<CudaSlice<f32>>> {
        self.buf(t)?;
        t.data
            .get()
            .cloned()
            .ok_or_else(|| BackendError::Device("internal: tensor values vanished".into()))
    }

    /// Exclusive access for an in-place op: compute a deferred product, and
    /// copy the buffer if a deferred product elsewhere still reads it.
    pub(crate) fn buf_mut<'a>(&self, t: &'a mut CudaTensor) -> Result<&'a mut CudaSlice<f32>> {
        self.buf(t)?;
        t.pending = None;
        let n = t.rows * t.cols;
        let arc = t
            .data
            .get_mut()
            .ok_or_else(|| BackendError::Device("internal: tensor values vanished".into()))?;
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
