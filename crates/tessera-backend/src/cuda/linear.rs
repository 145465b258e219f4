//! Weight matrices on the GPU and the products with them: for int8 and bf16
//! weights the GEMV kernels (`gemv.rs`) up to `GEMV_MAX_ROWS` activation
//! rows; above that, and for f32 weights, cuBLAS (`gemm.rs`).

use super::launch::{Args, Dims};
use super::tensor::{Lazy, PendingGemv};
use super::{dev, CudaBackend, CudaTensor};
use crate::error::shape_err;
use crate::{BackendError, Result, WeightDType};
use cudarc::driver::CudaSlice;
use std::sync::Arc;
use tessera_model::{HostTensor, Int8Matrix, INT4_MAX, INT8_GROUP};

/// Activation rows up to which int8 and bf16 products use the streaming GEMV
/// kernels (decode and short prompts); above it they go to cuBLAS.
pub const GEMV_MAX_ROWS: usize = 16;

/// A weight matrix on the device.
pub enum CudaLinear {
    /// `[rows, cols]` row-major f32.
    F32 {
        rows: usize,
        cols: usize,
        w: CudaSlice<f32>,
    },
    /// Shared so that a deferred product can hold on to it.
    Int8(Arc<Int8Weight>),
    Bf16(Arc<Bf16Weight>),
}

/// What the GEMV kernels do with their product (the `mode` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GemvMode {
    /// `y = x @ w^T`.
    Store = 0,
    /// `y += x @ w^T` (residual add fused in).
    Accumulate = 1,
    /// `y = silu(p[:, :m/2]) * p[:, m/2:]` with `p = x @ w^T` (SwiGLU fused in).
    SwiGlu = 2,
}

/// An int8 or int4 matrix. Int8: `q` is `[rows, kp]` (rows padded with
/// zeros to a multiple of 16 bytes so every row starts 16-byte aligned for
/// vector loads). Int4 (`bits == 4`): two values per byte, element `2b` in
/// the low nibble of byte `b`, rows of `kp` elements padded to a multiple of
/// 32 (16 bytes). `scales` is `[rows, gpr]`, one per [`INT8_GROUP`] inputs,
/// rows padded with zero scales to a multiple of 4 (16 bytes) for the same
/// reason: the layout of [`tessera_model::Int8Matrix`] apart from the padding
/// (and the packing).
pub struct Int8Weight {
    pub rows: usize,
    pub cols: usize,
    /// Elements per padded row.
    pub kp: usize,
    pub gpr: usize,
    /// 8, or 4 for int4.
    pub bits: u32,
    pub q: CudaSlice<i8>,
    pub scales: CudaSlice<f32>,
}

impl Int8Weight {
    /// Bytes of one padded row of `q`.
    pub fn row_bytes(&self) -> usize {
        self.kp * self.bits as usize / 8
    }
}

/// A bf16 matrix: `[rows, kp]` bf16 bit patterns, rows padded with zeros to
/// a multiple of 8 elements (16 bytes). Values are `half::bf16::from_f32` of
/// the f32 weights (round to nearest even), the same as the CPU backend's.
pub struct Bf16Weight {
    pub rows: usize,
    pub cols: usize,
    pub kp: usize,
    pub w: CudaSlice<u16>,
}

/// A weight the GEMV kernels can stream.
#[derive(Clone)]
pub(crate) enum GemvWeight {
    Int8(Arc<Int8Weight>),
    Bf16(Arc<Bf16Weight>),
}

impl GemvWeight {
    /// `(rows, cols)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        match self {
            GemvWeight::Int8(w) => (w.rows, w.cols),
            GemvWeight::Bf16(w) => (w.rows, w.cols),
        }
    }

    pub(crate) fn is_bf16(&self) -> bool {
        matches!(self, GemvWeight::Bf16(_))
    }

    pub(crate) fn is_int4(&self) -> bool {
        self.dtype() == WeightDType::Int4
    }

    /// Int8, Int4 or BF16.
    pub(crate) fn dtype(&self) -> WeightDType {
        match self {
            GemvWeight::Int8(w) if w.bits == 4 => WeightDType::Int4,
            GemvWeight::Int8(_) => WeightDType::Int8,
            GemvWeight::Bf16(_) => WeightDType::BF16,
        }
    }

    /// Index of the weight format in the kernel tables (int8, bf16, int4).
    pub(crate) fn format_index(&self) -> usize {
        match self.dtype() {
            WeightDType::BF16 => 1,
            WeightDType::Int4 => 2,
            _ => 0,
        }
    }

    /// 16-byte chunks per row (the row stride the kernels use).
    pub(crate) fn chunks(&self) -> usize {
        match self {
            GemvWeight::Int8(w) => w.row_bytes() / 16,
            GemvWeight::Bf16(w) => w.kp / 8,
        }
    }

    /// Bytes one pass over the weight reads.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            GemvWeight::Int8(w) => w.rows * w.row_bytes() + w.rows * w.gpr * 4,
            GemvWeight::Bf16(w) => w.rows * w.kp * 2,
        }
    }
}

impl CudaLinear {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            CudaLinear::F32 { rows, cols, .. } => (*rows, *cols),
            CudaLinear::Int8(w) => (w.rows, w.cols),
            CudaLinear::Bf16(w) => (w.rows, w.cols),
        }
    }

    /// Bytes a full pass over the weight reads (what a decode step streams).
    pub fn bytes(&self) -> usize {
        match self {
            CudaLinear::F32 { rows, cols, .. } => rows * cols * 4,
            CudaLinear::Int8(w) => GemvWeight::Int8(w.clone()).bytes(),
            CudaLinear::Bf16(w) => GemvWeight::Bf16(w.clone()).bytes(),
        }
    }

    pub(crate) fn gemv_weight(&self) -> Option<GemvWeight> {
        match self {
            CudaLinear::F32 { .. } => None,
            CudaLinear::Int8(w) => Some(GemvWeight::Int8(w.clone())),
            CudaLinear::Bf16(w) => Some(GemvWeight::Bf16(w.clone())),
        }
    }
}

impl CudaBackend {
    /// Upload an f32 host matrix; int8 is quantized and bf16 rounded on the
    /// device, by kernels that reproduce `Int8Matrix::quantize` and
    /// `half::bf16::from_f32` bit for bit. Returns once the weight is in
    /// place: GEMVs read weights before waiting for earlier kernels (PDL).
    pub(crate) fn upload_linear_impl(
        &self,
        w: &HostTensor,
        dtype: WeightDType,
    ) -> Result<CudaLinear> {
        if w.shape.len() != 2 {
            return Err(shape_err(
                "upload_linear",
                format!("expected a 2-D weight, got {:?}", w.shape),
            ));
        }
        let (rows, cols) = w.dims2();
        if dtype == WeightDType::Int4 {
            let lin = CudaLinear::Int8(Arc::new(self.upload_int4(w)?));
            self.synchronize()?;
            return Ok(lin);
        }
        let f32_w = self
            .stream
            .clone_htod(&w.data)
            .map_err(dev("upload_linear"))?;
        let src = self.ptr(&f32_w);
        let lin = match dtype {
            WeightDType::F32 => {
                return Ok(CudaLinear::F32 {
                    rows,
                    cols,
                    w: f32_w,
                })
            }
            WeightDType::BF16 => {
                let kp = cols.div_ceil(8) * 8;
                let out = self
                    .stream
                    .alloc_zeros::<u16>((rows * kp).max(1))
                    .map_err(dev("upload_linear"))?;
                let args = Args::new()
                    .ptr(src)
                    .int(rows)
                    .int(cols)
                    .int(kp)
                    .ptr(self.ptr(&out));
                if rows * cols > 0 {
                    // SAFETY: src holds rows*cols f32, out rows*kp u16.
                    unsafe {
                        self.launch("to_bf16", &self.k.to_bf16, Dims::flat(rows * cols), args)
                    }?;
                }
                CudaLinear::Bf16(Arc::new(Bf16Weight {
                    rows,
                    cols,
                    kp,
                    w: out,
                }))
            }
            WeightDType::Int8 => CudaLinear::Int8(Arc::new(self.quantize(src, rows, cols)?)),
            WeightDType::Int4 => unreachable!("int4 is quantized on the host above"),
        };
        self.synchronize()?;
        drop(f32_w);
        Ok(lin)
    }

    /// Quantize the f32 `[rows, cols]` matrix at `src` on the device.
    fn quantize(&self, src: u64, rows: usize, cols: usize) -> Result<Int8Weight> {
        // The GEMVs read 16 weights per load and apply one scale to them.
        if !(INT8_GROUP.is_power_of_two() && INT8_GROUP >= 16) {
            return Err(BackendError::Unavailable(
                "CUDA int8".into(),
                format!("the int8 group size {INT8_GROUP} must be a power of two >= 16"),
            ));
        }
        let kp = cols.div_ceil(16) * 16;
        let gpr = cols.div_ceil(INT8_GROUP).div_ceil(4) * 4;
        let q = self
            .stream
            .alloc_zeros::<i8>((rows * kp).max(1))
            .map_err(dev("upload_linear"))?;
        let scales = self
            .stream
            .alloc_zeros::<f32>((rows * gpr).max(1))
            .map_err(dev("upload_linear"))?;
        let threads = rows * gpr * 32;
        if threads > 0 {
            let args = Args::new()
                .ptr(src)
                .int(rows)
                .int(cols)
                .int(kp)
                .int(gpr)
                .int(INT8_GROUP)
                .ptr(self.ptr(&q))
                .ptr(self.ptr(&scales));
            // SAFETY: src holds rows*cols f32, q rows*kp i8, scales rows*gpr f32.
            unsafe {
                self.launch(
                    "quantize_i8",
                    &self.k.quantize_i8,
                    Dims::flat(threads),
                    args,
                )
            }?;
        }
        Ok(Int8Weight {
            rows,
            cols,
            kp,
            gpr,
            bits: 8,
            q,
            scales,
        })
    }

    /// Quantize to int4 on the host (the reference quantizer, so the CPU
    /// backend's int4 weights are the same values), pack two per byte and
    /// upload.
    fn upload_int4(&self, w: &HostTensor) -> Result<Int8Weight> {
        use rayon::prelude::*;
        // A 16-byte chunk (32 values) must fall in one scale group.
        if !(INT8_GROUP.is_power_of_two() && INT8_GROUP >= 32) {
            return Err(BackendError::Unavailable(
                "CUDA int4".into(),
                format!("the group size {INT8_GROUP} must be a power of two >= 32"),
            ));
        }
        let m = Int8Matrix::quantize_to(w, INT8_GROUP, INT4_MAX);
        let (rows, cols) = (m.rows, m.cols);
        let kp = cols.div_ceil(32) * 32;
        let (groups, gpr) = (m.groups_per_row(), m.groups_per_row().div_ceil(4) * 4);
        let row_bytes = (kp / 2).max(1);
        // Two values per byte, element 2b in the low nibble of byte b.
        let mut q = vec![0i8; rows * row_bytes];
        if cols > 0 {
            q.par_chunks_mut(row_bytes)
                .zip(m.q.par_chunks(cols))
                .for_each(|(packed, vals)| {
                    for (c, &v) in vals.iter().enumerate() {
                        packed[c / 2] |= (((v as u8) & 0x0f) << (4 * (c % 2))) as i8;
                    }
                });
        }
        // Scale rows padded to gpr (16 bytes).
        let mut scales = vec![0f32; rows * gpr.max(1)];
        for (dst, src) in scales
            .chunks_mut(gpr.max(1))
            .zip(m.scales.chunks(groups.max(1)))
        {
            dst[..src.len()].copy_from_slice(src);
        }
        Ok(Int8Weight {
            rows,
            cols,
            kp,
            gpr,
            bits: 4,
            q: self.stream.clone_htod(&q).map_err(dev("upload_linear"))?,
            scales: self
                .stream
                .clone_htod(&scales)
                .map_err(dev("upload_linear"))?,
        })
    }

    /// `x [n, k] @ w[m, k]^T -> [n, m]`.
    pub(crate) fn matmul_impl(&self, x: &CudaTensor, w: &CudaLinear) -> Result<CudaTensor> {
        let (m, k) = w.dims();
        if x.cols != k {
            return Err(shape_err(
                "matmul",
                format!("x is [{}, {}], weight is [{m}, {k}]", x.rows, x.cols),
            ));
        }
        let n = x.rows;
        if let Some(gw) = w.gemv_weight() {
            if (1..=GEMV_MAX_ROWS).contains(&n) && m > 0 {
                let p = PendingGemv {
                    input: self.gemv_input(x)?,
                    w: gw,
                };
                if self.fuse {
                    // Defer, so add_assign / swiglu can fuse their work into
                    // this product's epilogue.
                    return Ok(CudaTensor::lazy(n, m, Lazy::Gemv(p)));
                }
                let out = self.alloc::<f32>(n * m)?;
                self.launch_gemv(&p, n, self.ptr(&out), GemvMode::Store)?;
                return Ok(CudaTensor::ready(n, m, out));
            }
        }
        let mut out = self.alloc::<f32>(n * m)?;
        if n == 0 || m == 0 {
            return Ok(CudaTensor::ready(n, m, out));
        }
        self.gemm_impl(self.buf(x)?, n, k, w, m, &mut out)?;
        Ok(CudaTensor::ready(n, m, out))
    }

    /// Gather rows of an embedding table (int8 and bf16 rows are converted).
    pub(crate) fn embedding_impl(&self, table: &CudaLinear, ids: &[u32]) -> Result<CudaTensor> {
        let (vocab, hidden) = table.dims();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(shape_err(
                "embedding",
                format!("token id {bad} >= vocabulary size {vocab}"),
            ));
        }
        let n = ids.len();
        let out = self.alloc::<f32>(n * hidden)?;
        if n == 0 || hidden == 0 {
            return Ok(CudaTensor::ready(n, hidden, out));
        }
        // One id travels as a kernel argument (no copy), or, in a recorded
        // step, is read from the step's device scalar; more go up in one copy.
        let step_token = if n == 1 { self.step_token_ptr()? } else { None };
        let id_buf = if n > 1 {
            Some(self.stream.clone_htod(ids).map_err(dev("embedding"))?)
        } else {
            None
        };
        let ids_ptr: u64 = id_buf
            .as_ref()
            .map(|b| self.ptr(b))
            .or(step_token)
            .unwrap_or(0);
        // Block (row, column chunk of 256): one element per thread.
        let dims = Dims {
            grid: (n as u32, hidden.div_ceil(256).min(65535) as u32, 1),
            block: 256,
            smem: 0,
        };
        let (f, args) = match table {
            CudaLinear::F32 { w, .. } => (&self.k.embedding_f32, Args::new().ptr(self.ptr(w))),
            CudaLinear::Int8(wq) => (
                if wq.bits == 4 {
                    &self.k.embedding_i4
                } else {
                    &self.k.embedding_i8
                },
                Args::new().ptr(self.ptr(&wq.q)).ptr(self.ptr(&wq.scales)),
            ),
            CudaLinear::Bf16(wb) => (&self.k.embedding_bf16, Args::new().ptr(self.ptr(&wb.w))),
        };
        let mut args = args.ptr(ids_ptr).u32(ids[0]).int(hidden);
        match table {
            CudaLinear::F32 { .. } => {}
            CudaLinear::Int8(wq) => args = args.int(wq.kp).int(wq.gpr).int(INT8_GROUP),
            CudaLinear::Bf16(wb) => args = args.int(wb.kp),
        }
        args = args.ptr(self.ptr(&out));
        // SAFETY: ids are checked < vocab; the table is [vocab, row stride]
        // in its format, out is [n, hidden].
        unsafe { self.launch("embedding", f, dims, args) }?;
        // The id buffer may only be freed once the kernel has read it; the
        // free is stream-ordered (async allocator), so dropping here is safe.
        drop(id_buf);
        Ok(CudaTensor::ready(n, hidden, out))
    }
}
