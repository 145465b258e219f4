//! Weight matrices on the GPU and the products with them: cuBLAS SGEMM for
//! f32 weights, NVRTC kernels for int8 (W8A16-style: f32 activations, int8
//! weights dequantized in the kernel, f32 accumulation).

use super::tensor::PendingGemv;
use super::{dev, grid_for, CudaBackend, CudaTensor};
use crate::error::shape_err;
use crate::{BackendError, Result, WeightDType};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Arc;
use tessera_model::{HostTensor, INT8_GROUP};

/// Activation rows up to which int8 products use the streaming GEMV kernels;
/// above it the weight is dequantized into a scratch matrix for cuBLAS.
pub const GEMV_MAX_ROWS: usize = 8;

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
}

/// What the int8 GEMV kernel does with its product (see `gemv_i8` in kernels.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GemvMode {
    /// `y = x @ w^T`.
    Store = 0,
    /// `y += x @ w^T` (residual add fused in).
    Accumulate = 1,
    /// `y = silu(p[:, :m/2]) * p[:, m/2:]` with `p = x @ w^T` (SwiGLU fused in).
    SwiGlu = 2,
}

/// An int8 matrix: `q` is `[rows, kp]` (rows padded with zeros to a multiple of
/// 16 bytes so every row starts 16-byte aligned for vector loads), `scales` is
/// `[rows, gpr]`, one per [`INT8_GROUP`] inputs — the layout of
/// [`tessera_model::Int8Matrix`] apart from the padding.
pub struct Int8Weight {
    pub rows: usize,
    pub cols: usize,
    pub kp: usize,
    pub gpr: usize,
    pub q: CudaSlice<i8>,
    pub scales: CudaSlice<f32>,
}

impl CudaLinear {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            CudaLinear::F32 { rows, cols, .. } => (*rows, *cols),
            CudaLinear::Int8(w) => (w.rows, w.cols),
        }
    }

    /// Bytes a full pass over the weight reads (what a decode step streams).
    pub fn bytes(&self) -> usize {
        match self {
            CudaLinear::F32 { rows, cols, .. } => rows * cols * 4,
            CudaLinear::Int8(w) => w.rows * w.kp + w.rows * w.gpr * 4,
        }
    }
}

impl CudaBackend {
    /// Upload an f32 host matrix; int8 is quantized on the device by a kernel
    /// that reproduces `Int8Matrix::quantize` bit for bit (and is much faster
    /// than the host quantizer for 7B-class models).
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
        let f32_w = self
            .stream
            .clone_htod(&w.data)
            .map_err(dev("upload_linear"))?;
        if dtype == WeightDType::F32 {
            return Ok(CudaLinear::F32 {
                rows,
                cols,
                w: f32_w,
            });
        }
        // The GEMV reads 16 weights per load and applies one scale to them.
        if !(INT8_GROUP.is_power_of_two() && INT8_GROUP >= 16) {
            return Err(BackendError::Unavailable(
                "CUDA int8".into(),
                format!("the int8 group size {INT8_GROUP} must be a power of two >= 16"),
            ));
        }
        let kp = cols.div_ceil(16) * 16;
        let gpr = cols.div_ceil(INT8_GROUP);
        let group = INT8_GROUP as i32;
        let mut q = self
            .stream
            .alloc_zeros::<i8>((rows * kp).max(1))
            .map_err(dev("upload_linear"))?;
        let mut scales = self.alloc::<f32>(rows * gpr)?;
        let threads = rows * gpr * 32;
        let (r, c, kp_i, gpr_i) = (rows as i32, cols as i32, kp as i32, gpr as i32);
        if threads > 0 {
            let mut b = self.stream.launch_builder(&self.k.quantize_i8);
            b.arg(&f32_w)
                .arg(&r)
                .arg(&c)
                .arg(&kp_i)
                .arg(&gpr_i)
                .arg(&group)
                .arg(&mut q)
                .arg(&mut scales);
            // SAFETY: buffers hold rows*cols f32, rows*kp i8 and rows*gpr f32 as the kernel expects.
            unsafe { b.launch(grid_for(threads, 256)) }.map_err(dev("quantize_i8"))?;
        }
        Ok(CudaLinear::Int8(Arc::new(Int8Weight {
            rows,
            cols,
            kp,
            gpr,
            q,
            scales,
        })))
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
        if let CudaLinear::Int8(wq) = w {
            if n <= GEMV_MAX_ROWS && n > 0 && m > 0 {
                let x_buf = self.shared(x)?;
                if self.fuse {
                    // Decode: defer, so add_assign / swiglu can fuse their work
                    // into this product's epilogue.
                    let p = PendingGemv {
                        x: x_buf,
                        w: wq.clone(),
                    };
                    return Ok(CudaTensor::deferred(n, m, p));
                }
                let out = self.alloc::<f32>(n * m)?;
                self.launch_gemv(wq, &x_buf, n, self.ptr(&out), GemvMode::Store)?;
                return Ok(CudaTensor::ready(n, m, out));
            }
        }
        let mut out = self.alloc::<f32>(n * m)?;
        if n == 0 || m == 0 {
            return Ok(CudaTensor::ready(n, m, out));
        }
        let x_buf = self.buf(x)?;
        match w {
            CudaLinear::F32 { w, .. } => self.sgemm(x_buf, n, k, w, m, &mut out)?,
            CudaLinear::Int8(wq) => {
                // Prefill: the product is compute-bound, so spend one pass
                // dequantizing into scratch and let cuBLAS do the math in f32.
                let mut scratch = self.alloc::<f32>(m * k)?;
                let (m_i, k_i, kp_i, gpr_i) = (m as i32, k as i32, wq.kp as i32, wq.gpr as i32);
                let mut b = self.stream.launch_builder(&self.k.dequantize_i8);
                let group = INT8_GROUP as i32;
                b.arg(&wq.q)
                    .arg(&wq.scales)
                    .arg(&m_i)
                    .arg(&k_i)
                    .arg(&kp_i)
                    .arg(&gpr_i)
                    .arg(&group);
                b.arg(&mut scratch);
                // SAFETY: scratch holds m*k f32; q is [m, kp] and scales [m, gpr].
                unsafe { b.launch(grid_for(m * k, 256)) }.map_err(dev("dequantize_i8"))?;
                self.sgemm(x_buf, n, k, &scratch, m, &mut out)?;
            }
        }
        Ok(CudaTensor::ready(n, m, out))
    }

    /// The int8 GEMV for `n <= GEMV_MAX_ROWS` activation rows, writing to the
    /// device address `y` as `mode` says: `[n, m]` (store, accumulate) or
    /// `[n, m/2]` (SwiGLU).
    pub(crate) fn launch_gemv(
        &self,
        w: &Int8Weight,
        x: &CudaSlice<f32>,
        n: usize,
        y: u64,
        mode: GemvMode,
    ) -> Result<()> {
        let rows_out = if mode == GemvMode::SwiGlu {
            w.rows / 2
        } else {
            w.rows
        };
        let (f, rows_per_warp) = match n {
            0 => return Ok(()),
            1 => {
                // More weight rows per warp cut L1 traffic for x and put more
                // loads in flight; measured on an H100 (docs/gpu.md): 4 rows
                // are best from ~8k rows up, 2 rows at 4096 rows (7B's o/down).
                let r = self.gemv_rows.unwrap_or(if rows_out >= 8192 {
                    4
                } else if rows_out >= 2048 {
                    2
                } else {
                    1
                });
                match r {
                    4 => (&self.k.gemv_i8_1[2], 4),
                    2 => (&self.k.gemv_i8_1[1], 2),
                    _ => (&self.k.gemv_i8_1[0], 1),
                }
            }
            2 => (&self.k.gemv_i8_n[0], 1),
            3..=4 => (&self.k.gemv_i8_n[1], 1),
            5..=GEMV_MAX_ROWS => (&self.k.gemv_i8_n[2], 1),
            _ => {
                return Err(shape_err(
                    "matmul",
                    format!("GEMV path called with {n} rows"),
                ))
            }
        };
        let groups = rows_out.div_ceil(rows_per_warp);
        let blocks = groups.div_ceil(8).clamp(1, self.sm_count * 8);
        let (m_i, k_i, kp_i, gpr_i) = (w.rows as i32, w.cols as i32, w.kp as i32, w.gpr as i32);
        let (n_i, mode_i) = (n as i32, mode as i32);
        let mut b = self.stream.launch_builder(f);
        b.arg(&w.q).arg(&w.scales).arg(x).arg(&y);
        let gshift = INT8_GROUP.trailing_zeros() as i32;
        b.arg(&m_i)
            .arg(&k_i)
            .arg(&kp_i)
            .arg(&gpr_i)
            .arg(&gshift)
            .arg(&n_i)
            .arg(&mode_i);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: q is [m, kp], scales [m, gpr], x [n, k]; y holds n rows of
        // the mode's output width; n <= the variant's row count.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(dev("gemv_i8"))
    }

    /// Row-major `out[n, m] = x[n, k] @ w[m, k]^T` with column-major cuBLAS:
    /// it is `out^T = w * x^T`, i.e. `op(A) = A^T` on `w` seen as `[k, m]`.
    fn sgemm(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        k: usize,
        w: &CudaSlice<f32>,
        m: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let to_i32 = |v: usize| {
            i32::try_from(v).map_err(|_| {
                shape_err(
                    "matmul",
                    format!("dimension {v} exceeds cuBLAS's i32 range"),
                )
            })
        };
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: to_i32(m)?,
            n: to_i32(n)?,
            k: to_i32(k)?,
            alpha: 1.0f32,
            lda: to_i32(k)?,
            ldb: to_i32(k)?,
            beta: 0.0f32,
            ldc: to_i32(m)?,
        };
        // SAFETY: w is [m, k], x is [n, k] and out is [n, m], all row-major and dense.
        unsafe { self.blas.gemm(cfg, w, x, out) }
            .map_err(|e| BackendError::Device(format!("cuBLAS sgemm [{n}x{k}]x[{m}x{k}]^T: {e}")))
    }

    /// Gather rows of an embedding table (int8 rows are dequantized).
    pub(crate) fn embedding_impl(&self, table: &CudaLinear, ids: &[u32]) -> Result<CudaTensor> {
        let (vocab, hidden) = table.dims();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(shape_err(
                "embedding",
                format!("token id {bad} >= vocabulary size {vocab}"),
            ));
        }
        let n = ids.len();
        let mut out = self.alloc::<f32>(n * hidden)?;
        if n == 0 || hidden == 0 {
            return Ok(CudaTensor::ready(n, hidden, out));
        }
        // One id travels as a kernel argument (no copy); more go up in one copy.
        let id_buf = if n > 1 {
            Some(self.stream.clone_htod(ids).map_err(dev("embedding"))?)
        } else {
            None
        };
        let ids_ptr: u64 = id_buf.as_ref().map(|b| self.ptr(b)).unwrap_or(0);
        let id0 = ids[0];
        let hid = hidden as i32;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        match table {
            CudaLinear::F32 { w, .. } => {
                let mut b = self.stream.launch_builder(&self.k.embedding_f32);
                b.arg(w).arg(&ids_ptr).arg(&id0).arg(&hid).arg(&mut out);
                // SAFETY: ids are checked < vocab; table is [vocab, hidden], out [n, hidden].
                unsafe { b.launch(cfg) }.map_err(dev("embedding"))?;
            }
            CudaLinear::Int8(wq) => {
                let (kp, gpr, group) = (wq.kp as i32, wq.gpr as i32, INT8_GROUP as i32);
                let mut b = self.stream.launch_builder(&self.k.embedding_i8);
                b.arg(&wq.q)
                    .arg(&wq.scales)
                    .arg(&ids_ptr)
                    .arg(&id0)
                    .arg(&hid)
                    .arg(&kp)
                    .arg(&gpr)
                    .arg(&group)
                    .arg(&mut out);
                // SAFETY: as above, with q [vocab, kp] and scales [vocab, gpr].
                unsafe { b.launch(cfg) }.map_err(dev("embedding"))?;
            }
        }
        // The id buffer may only be freed once the kernel has read it; the
        // free is stream-ordered (async allocator), so dropping here is safe.
        drop(id_buf);
        Ok(CudaTensor::ready(n, hidden, out))
    }
}
