//! Products through cuBLAS: f32 weights (SGEMM) and int8, int4 and bf16
//! weights above `GEMV_MAX_ROWS` activation rows (prefill), on bf16 tensor
//! cores with activations (and int8/int4 weights) split into bf16 `hi + lo`
//! (`gemm_bf16`, `gemm_int8_bf16x3`), or int8 through f32 SGEMM
//! (`TESSERA_INT8_PREFILL=f32`). With `TESSERA_INT8_DECODE=dp4a`, int8
//! products of any row count run on GEMV v6 instead (fixed-point
//! activations, integer tensor cores, 64 rows per launch).

use super::launch::{Args, Dims};
use super::linear::{Bf16Weight, CudaLinear, Int8Weight};
use super::CudaBackend;
use crate::error::shape_err;
use crate::{BackendError, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::CudaSlice;
use tessera_model::INT8_GROUP;

impl CudaBackend {
    /// `out[n, m] = x[n, k] @ w[m, k]^T` through cuBLAS (n, m > 0).
    pub(crate) fn gemm_impl(
        &self,
        x_buf: &CudaSlice<f32>,
        n: usize,
        k: usize,
        w: &CudaLinear,
        m: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        match w {
            CudaLinear::F32 { w, .. } => self.sgemm(x_buf, n, k, w, m, out)?,
            CudaLinear::Int8(wq)
                if self.int8_decode_dp4a && !self.int8_prefill_f32 && matches!(wq.bits, 4 | 8) =>
            {
                // Fixed-point activations on integer tensor cores (GEMV v6),
                // V6_MAX_ROWS rows per launch.
                let w = super::linear::GemvWeight::Int8(wq.clone());
                let (x0, y0) = (self.ptr(x_buf), self.ptr(out));
                for r0 in (0..n).step_by(super::gemv_v6::V6_MAX_ROWS) {
                    let rows = (n - r0).min(super::gemv_v6::V6_MAX_ROWS);
                    let (x, y) = (x0 + (r0 * k * 4) as u64, y0 + (r0 * m * 4) as u64);
                    self.launch_v6(&w, x, None, rows, y, super::linear::GemvMode::Store)?;
                }
            }
            CudaLinear::Int8(wq) if !self.int8_prefill_f32 => {
                self.gemm_int8_bf16x3(x_buf, n, k, wq, out)?
            }
            CudaLinear::Int8(wq) => {
                // Prefill in f32 (TESSERA_INT8_PREFILL=f32): one pass
                // dequantizing into scratch, then cuBLAS SGEMM.
                let scratch = self.alloc::<f32>(m * k)?;
                let args = self.dequantize_args(wq, k).ptr(self.ptr(&scratch));
                // SAFETY: scratch holds m*k f32; q is [m, kp] (int8) or [m, kp/2]
                // bytes (int4), scales [m, gpr].
                unsafe {
                    self.launch(
                        "dequantize",
                        if wq.bits == 4 {
                            &self.k.dequantize_i4
                        } else {
                            &self.k.dequantize_i8
                        },
                        Dims::flat(m * k),
                        args,
                    )
                }?;
                self.sgemm(x_buf, n, k, &scratch, m, out)?;
            }
            CudaLinear::Bf16(wb) => self.gemm_bf16(x_buf, n, wb, out)?,
        }
        Ok(())
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
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: blas_dim(m)?,
            n: blas_dim(n)?,
            k: blas_dim(k)?,
            alpha: 1.0f32,
            lda: blas_dim(k)?,
            ldb: blas_dim(k)?,
            beta: 0.0f32,
            ldc: blas_dim(m)?,
        };
        // SAFETY: w is [m, k], x is [n, k] and out is [n, m], all row-major and dense.
        unsafe { self.blas.gemm(cfg, w, x, out) }
            .map_err(|e| BackendError::Device(format!("cuBLAS sgemm [{n}x{k}]x[{m}x{k}]^T: {e}")))
    }

    /// `out[n, m] = x[n, k] @ w^T` for a bf16 weight on tensor cores. x is
    /// split into bf16 `hi + lo` (about 16 significant bits together, near
    /// f32 precision) and stacked as `[2n, k]`; one cuBLAS GemmEx (bf16
    /// inputs, f32 accumulation and output) reads the weight once for both
    /// halves, and a kernel adds the two products.
    fn gemm_bf16(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        w: &Bf16Weight,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (m, k) = (w.rows, w.cols);
        let split = self.split_bf16(x, n, k)?;
        let prod = self.alloc::<f32>(2 * n * m)?;
        // SAFETY: w is [m, kp] bf16, split [2n, k] bf16, prod [2n, m] f32.
        unsafe {
            self.gemm_bf16_raw(
                self.ptr(&w.w),
                w.kp,
                self.ptr(&split),
                2 * n,
                k,
                m,
                0.0,
                self.ptr(&prod),
            )
        }?;
        self.add_halves(&prod, n * m, out)
    }

    /// `out[n, m] = x[n, k] @ w^T` for an int8 or int4 weight on tensor
    /// cores (prefill): w is dequantized into bf16 `w_hi + w_lo` and x split
    /// as in `gemm_bf16`; `x_hi w_hi^T + x_hi w_lo^T + x_lo w_hi^T` (f32
    /// accumulation) leaves out only `x_lo w_lo^T`, a 2^-16 relative term, so
    /// the product keeps about 16 significant bits, like the bf16 path, at
    /// tensor-core speed instead of f32 SGEMM's.
    fn gemm_int8_bf16x3(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        k: usize,
        wq: &Int8Weight,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let m = wq.rows;
        let parts = self.alloc::<u16>(2 * m * k)?;
        let w_hi = self.ptr(&parts);
        let w_lo = w_hi + (m * k * 2) as u64;
        let args = self.dequantize_args(wq, k).ptr(w_hi).ptr(w_lo);
        let f = if wq.bits == 4 {
            &self.k.dequantize_i4_split
        } else {
            &self.k.dequantize_i8_split
        };
        // SAFETY: parts holds 2*m*k u16; q is [m, kp] (int8) or [m, kp/2]
        // bytes (int4), scales [m, gpr].
        unsafe { self.launch("dequantize", f, Dims::flat(m * k), args) }?;
        let split = self.split_bf16(x, n, k)?;
        let x_hi = self.ptr(&split);
        let prod = self.alloc::<f32>(2 * n * m)?;
        // SAFETY: w_hi and w_lo are [m, k] bf16, split [2n, k] bf16 (x_hi
        // its first n rows), prod [2n, m] f32: rows ..n get x_hi w_hi^T and
        // then, accumulated (beta 1), x_hi w_lo^T; rows n.. get x_lo w_hi^T.
        unsafe {
            self.gemm_bf16_raw(w_hi, k, x_hi, 2 * n, k, m, 0.0, self.ptr(&prod))?;
            self.gemm_bf16_raw(w_lo, k, x_hi, n, k, m, 1.0, self.ptr(&prod))?;
        }
        self.add_halves(&prod, n * m, out)
    }

    /// The arguments the dequantize kernels share (weight, scales, shape),
    /// before their outputs.
    fn dequantize_args(&self, wq: &Int8Weight, k: usize) -> Args {
        Args::new()
            .ptr(self.ptr(&wq.q))
            .ptr(self.ptr(&wq.scales))
            .int(wq.rows)
            .int(k)
            .int(wq.kp)
            .int(wq.gpr)
            .int(INT8_GROUP)
    }

    /// x [n, k] f32 as bf16 `[hi; lo]`, `[2n, k]` (kernels/elementwise.cu).
    fn split_bf16(&self, x: &CudaSlice<f32>, n: usize, k: usize) -> Result<CudaSlice<u16>> {
        let split = self.alloc::<u16>(2 * n * k)?;
        let hi = self.ptr(&split);
        let args = Args::new()
            .ptr(self.ptr(x))
            .i64(n * k)
            .ptr(hi)
            .ptr(hi + (n * k * 2) as u64);
        // SAFETY: x holds n*k f32, split 2*n*k u16.
        unsafe { self.launch("split_bf16", &self.k.split_bf16, Dims::flat(n * k), args) }?;
        Ok(split)
    }

    /// out = prod[..total] + prod[total..].
    fn add_halves(
        &self,
        prod: &CudaSlice<f32>,
        total: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let args = Args::new()
            .ptr(self.ptr(prod))
            .i64(total)
            .ptr(self.ptr(out));
        // SAFETY: prod holds 2*total f32, out total.
        unsafe { self.launch("add_halves", &self.k.add_halves, Dims::flat(total), args) }
    }

    /// `c[rows, m] = beta * c + b[rows, k] @ a[m, k]^T` with one cuBLAS
    /// GemmEx: a and b bf16, row-major (`lda` elements per row of a, k per
    /// row of b), c f32 `[rows, m]`, f32 accumulation.
    ///
    /// # Safety
    /// a, b and c must point at device memory of those shapes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_bf16_raw(
        &self,
        a: u64,
        lda: usize,
        b: u64,
        rows: usize,
        k: usize,
        m: usize,
        beta: f32,
        c: u64,
    ) -> Result<()> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
        let alpha = 1.0f32;
        // SAFETY: the caller vouches for the shapes (a is op T: lda x m
        // column-major); alpha and beta are host scalars (cuBLAS's default
        // pointer mode) that outlive the call.
        unsafe {
            cudarc::cublas::sys::cublasGemmEx(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                blas_dim(m)?,
                blas_dim(rows)?,
                blas_dim(k)?,
                &alpha as *const f32 as *const std::ffi::c_void,
                a as *const std::ffi::c_void,
                cudaDataType_t::CUDA_R_16BF,
                blas_dim(lda)?,
                b as *const std::ffi::c_void,
                cudaDataType_t::CUDA_R_16BF,
                blas_dim(k)?,
                &beta as *const f32 as *const std::ffi::c_void,
                c as *mut std::ffi::c_void,
                cudaDataType_t::CUDA_R_32F,
                blas_dim(m)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .result()
        .map_err(|e| {
            BackendError::Device(format!("cuBLAS GemmEx bf16 [{rows}x{k}]x[{m}x{k}]^T: {e}"))
        })
    }
}

/// A dimension as cuBLAS's `int`.
pub(crate) fn blas_dim(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        shape_err(
            "matmul",
            format!("dimension {v} exceeds cuBLAS's i32 range"),
        )
    })
}
