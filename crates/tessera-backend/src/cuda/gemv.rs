//! The GEMV kernels (int8 and bf16 weights, 1..=16 activation rows): the
//! variants, their launch geometry, and which one runs for a given shape.
//!
//! Variants v1-v4 follow one summation order (see `kernels/gemv.cu`), so the
//! choice among them changes speed only, never a bit of the result. v5 (int8,
//! one activation row) and v6 (int8, 2..16 rows, tensor cores) compute with
//! fixed-point activations and differ in the last bits, so they are opt-in:
//! `TESSERA_INT8_DECODE=dp4a` (`set_int8_decode_dp4a`) adds them to the
//! timing, `TESSERA_GEMV=v5` or `v6` forces one; v6 for bf16 weights (bf16
//! tensor cores, exact activation split) likewise with
//! `TESSERA_BF16_DECODE=tc` (`set_bf16_decode_tc`). The choice is, in order:
//! `CudaBackend::set_gemv_variant`, `TESSERA_GEMV=v1|v2|v3|v4|v5|v6`, or
//! (the default, `auto`) a one-time timing
//! of every variant on the first product of each shape, with the weight
//! evicted from L2 before each run; a variant whose output disagrees with the
//! baseline's is never chosen.

use super::launch::{Args, Dims};
use super::linear::{GemvMode, GemvWeight, GEMV_MAX_ROWS};
use super::tensor::{NormSrc, PendingGemv};
use super::{dev, CudaBackend};
use crate::error::shape_err;
use crate::{BackendError, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaFunction, CudaSlice};
use tessera_model::INT8_GROUP;

/// A GEMV implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemvVariant {
    /// The first kernel (int8 only): warps stream 1-4 rows in bursts of
    /// registers, activations read through L1.
    V1,
    /// Warps stream row groups with the next step's loads issued before the
    /// current step is computed; activations (optionally RMS-normalized) staged
    /// in shared memory; first weights loaded before the previous kernel ends.
    V2,
    /// Blocks stream row tiles through a 6-stage cp.async ring in shared
    /// memory; activations staged as in v2; first 5 stages issued early.
    V3,
    /// v2 for one activation row with the per-step bookkeeping (row
    /// pointers, predicates, copies of the prefetched step) out of the inner
    /// loop. With more rows, or activations too long to stage in shared
    /// memory, v2 runs, which gives the same bits.
    V4,
    /// Int8 weights and one activation row only, opt-in: v4's loop with the
    /// activations staged as 22-bit fixed point per 16 elements (three
    /// signed bytes and a power-of-two scale each) and each 16-weight chunk
    /// computed as three exact integer dot products (`dp4a`), about 1.2
    /// instructions per weight instead of v4's 3.9. Not bit-identical to
    /// v1-v4 (|x - x~| <= max|x of its 16| * 2^-22); with activations too
    /// long to stage, v2 runs.
    V5,
    /// Int8 or int4 weights and 2..16 activation rows (batched decode; with
    /// dp4a also prefill, 64 rows per launch), opt-in with v5: the
    /// activations quantized once per product as 22-bit fixed point per 32
    /// elements (a small kernel, RMSNorm fused), then 16 weight rows x 8
    /// activation rows x 32 inputs at a time as three exact integer
    /// tensor-core products (`mma` m16n8k32, s8 x u8/s8), split over the
    /// inputs when the rows alone would not fill the GPU. Bf16 weights
    /// (opt-in, `TESSERA_BF16_DECODE=tc`): the activations split exactly into
    /// three bf16 and bf16 tensor-core products with f32 accumulation. Not
    /// bit-identical to v1-v5; with one row, v2 runs.
    V6,
}

impl GemvVariant {
    /// The variants that share one summation order (bit-identical results),
    /// baseline first. v5 is not among them.
    pub const ALL: [GemvVariant; 4] = [
        GemvVariant::V1,
        GemvVariant::V2,
        GemvVariant::V3,
        GemvVariant::V4,
    ];

    /// Whether the variant runs products with weights of this dtype (bf16:
    /// not v1 or v5; int4: v2, v4 and v6).
    pub fn supports_dtype(self, dtype: crate::WeightDType) -> bool {
        match dtype {
            crate::WeightDType::Int4 => {
                matches!(self, GemvVariant::V2 | GemvVariant::V4 | GemvVariant::V6)
            }
            crate::WeightDType::BF16 => !matches!(self, GemvVariant::V1 | GemvVariant::V5),
            _ => true,
        }
    }

    /// Whether the variant runs this product (v4 and v5 take one activation
    /// row, v6 two or more).
    fn runs(self, w: &GemvWeight, n: usize) -> bool {
        self.supports_dtype(w.dtype())
            && match self {
                GemvVariant::V4 | GemvVariant::V5 => n == 1,
                GemvVariant::V6 => n >= 2,
                _ => true,
            }
    }
}

impl std::str::FromStr for GemvVariant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "v1" => Ok(GemvVariant::V1),
            "v2" => Ok(GemvVariant::V2),
            "v3" => Ok(GemvVariant::V3),
            "v4" => Ok(GemvVariant::V4),
            "v5" => Ok(GemvVariant::V5),
            "v6" => Ok(GemvVariant::V6),
            other => Err(format!(
                "unknown GEMV variant `{other}` (expected v1, v2, v3, v4, v5, v6 or auto)"
            )),
        }
    }
}

impl std::fmt::Display for GemvVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GemvVariant::V1 => "v1",
            GemvVariant::V2 => "v2",
            GemvVariant::V3 => "v3",
            GemvVariant::V4 => "v4",
            GemvVariant::V5 => "v5",
            GemvVariant::V6 => "v6",
        })
    }
}

/// The outcome of timing the variants on one shape.
#[derive(Debug, Clone)]
pub struct GemvTuning {
    /// E.g. `int8 22016x4096 n=1 swiglu`.
    pub shape: String,
    /// Weight bytes one product reads.
    pub bytes: usize,
    /// Best time in microseconds per variant; `None` when its output
    /// disagreed with the baseline's (it is then never chosen).
    pub micros: Vec<(GemvVariant, Option<f64>)>,
    pub chosen: GemvVariant,
}

impl std::fmt::Display for GemvTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GEMV {}:", self.shape)?;
        for (v, t) in &self.micros {
            match t {
                Some(us) => write!(
                    f,
                    " {v} {us:.1} us ({:.0} GB/s),",
                    self.bytes as f64 / us / 1e3
                )?,
                None => write!(f, " {v} WRONG RESULT,")?,
            }
        }
        write!(f, " -> {}", self.chosen)
    }
}

/// What one tuning decision is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct GemvKey {
    /// GemvWeight::format_index: int8, bf16 or int4.
    format: usize,
    m: usize,
    k: usize,
    /// Activation rows rounded up to the kernels' bucket (1, 2, 4, 8, 16).
    nb: usize,
    swiglu: bool,
    norm: bool,
}

// GEMV v4 computes scale offsets for groups of 32 inputs at compile time
// (V4_GSHIFT in kernels/gemv.cu).
const _: () = assert!(
    INT8_GROUP == 32,
    "GEMV v4 assumes scale groups of 32 inputs"
);

/// Activations of up to this many bytes are staged in shared memory (and
/// only then can RMSNorm be fused).
const X_SMEM_MAX: usize = 64 * 1024;
/// Timed runs per variant when tuning (after one warm-up).
const TUNE_REPS: usize = 3;

fn bucket(n: usize) -> usize {
    n.next_power_of_two()
}

impl CudaBackend {
    /// Run a GEMV (`n <= GEMV_MAX_ROWS` activation rows) writing to the device
    /// address `y` as `mode` says: `[n, m]` (store, accumulate) or `[n, m/2]`
    /// (SwiGLU). A pending RMSNorm of the input is fused when the variant can
    /// (it then also writes the normalized input), else run first.
    pub(crate) fn launch_gemv(
        &self,
        p: &PendingGemv,
        n: usize,
        y: u64,
        mode: GemvMode,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if n > GEMV_MAX_ROWS {
            return Err(shape_err(
                "matmul",
                format!("GEMV path called with {n} rows"),
            ));
        }
        let norm = match &p.input.norm {
            Some(job) => job.take()?,
            None => None,
        };
        let variant = self.gemv_variant_for(p, n, mode, norm.as_ref())?;
        self.run_variant(variant, p, n, y, mode, norm.as_ref())
    }

    /// Launch one variant; runs the norm separately when it cannot fuse it.
    fn run_variant(
        &self,
        v: GemvVariant,
        p: &PendingGemv,
        n: usize,
        y: u64,
        mode: GemvMode,
        norm: Option<&NormSrc>,
    ) -> Result<()> {
        let x = self.ptr(&p.input.x);
        let norm = match norm {
            Some(src) if !self.fuses_norm(v, &p.w, n) => {
                self.rms_norm_into(src, x)?;
                None
            }
            other => other,
        };
        match v {
            GemvVariant::V1 => self.launch_v1(&p.w, x, n, y, mode),
            GemvVariant::V6 if n >= 2 => self.launch_v6(&p.w, x, norm, n, y, mode),
            _ => self.launch_v23(v, &p.w, x, norm, n, y, mode),
        }
    }

    /// The variant for this product: forced, or tuned once per shape.
    fn gemv_variant_for(
        &self,
        p: &PendingGemv,
        n: usize,
        mode: GemvMode,
        norm: Option<&NormSrc>,
    ) -> Result<GemvVariant> {
        if let Some(v) = self.gemv_select {
            return Ok(if v.runs(&p.w, n) { v } else { GemvVariant::V2 });
        }
        let (m, k) = p.w.dims();
        let key = GemvKey {
            format: p.w.format_index(),
            m,
            k,
            nb: bucket(n),
            swiglu: mode == GemvMode::SwiGlu,
            norm: norm.is_some(),
        };
        let lock = || {
            self.gemv_tuned
                .lock()
                .map_err(|_| BackendError::Device("GEMV tuning lock poisoned".into()))
        };
        if let Some(v) = lock()?.get(&key) {
            return Ok(*v);
        }
        let tuning = self.tune(key, p, n, norm)?;
        let v = tuning.chosen;
        if std::env::var("TESSERA_GEMV_LOG").is_ok_and(|s| !s.is_empty() && s != "0") {
            eprintln!("tessera: {tuning}");
        }
        lock()?.insert(key, v);
        self.gemv_log
            .lock()
            .map_err(|_| BackendError::Device("GEMV log lock poisoned".into()))?
            .push(tuning);
        Ok(v)
    }

    /// Time every variant on this product (output to scratch, L2 flushed
    /// before each run) and check each output against the baseline's.
    fn tune(
        &self,
        key: GemvKey,
        p: &PendingGemv,
        n: usize,
        norm: Option<&NormSrc>,
    ) -> Result<GemvTuning> {
        let opt_in: &[GemvVariant] = if p.w.is_bf16() {
            if self.bf16_decode_tc {
                &[GemvVariant::V6]
            } else {
                &[]
            }
        } else if self.int8_decode_dp4a {
            &[GemvVariant::V5, GemvVariant::V6]
        } else {
            &[]
        };
        let cands: Vec<GemvVariant> = GemvVariant::ALL
            .into_iter()
            .chain(opt_in.iter().copied())
            .filter(|v| v.runs(&p.w, n))
            .collect();
        let rows_out = if key.swiglu { key.m / 2 } else { key.m };
        let tune_mode = if key.swiglu {
            GemvMode::SwiGlu
        } else {
            GemvMode::Store
        };
        let l2 = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .unwrap_or(0)
            .max(0) as usize;
        // Evict the weight with clean lines: a memset would leave dirty lines
        // whose write-back the timed kernel would pay for.
        let flush = self
            .stream
            .alloc_zeros::<u8>((2 * l2).max(64 << 20))
            .map_err(dev("GEMV tuning"))?;
        let sink = self.alloc::<i32>(1)?;
        let flush_args = Args::new()
            .ptr(self.ptr(&flush))
            .i64(flush.len() / 16)
            .ptr(self.ptr(&sink));
        let flush_dims = Dims::blocks(self.sm_count * 8, 256);
        let event = || {
            self.ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(dev("GEMV tuning"))
        };
        let mut outs: Vec<CudaSlice<f32>> = Vec::new();
        let mut marks = Vec::new();
        for &v in &cands {
            let out = self.alloc::<f32>(n * rows_out)?;
            for rep in 0..=TUNE_REPS {
                // SAFETY: flush holds len/16 int4s; sink one int.
                unsafe { self.launch("l2_flush", &self.k.l2_flush, flush_dims, flush_args) }?;
                let (start, end) = (event()?, event()?);
                start.record(&self.stream).map_err(dev("GEMV tuning"))?;
                // A variant that cannot run this shape (e.g. too little shared
                // memory on this GPU) is skipped, not an error.
                if self
                    .run_variant(v, p, n, self.ptr(&out), tune_mode, norm)
                    .is_err()
                {
                    break;
                }
                end.record(&self.stream).map_err(dev("GEMV tuning"))?;
                if rep > 0 {
                    marks.push((v, start, end));
                }
            }
            outs.push(out);
        }
        self.synchronize()?;
        let mut host: Vec<Vec<f32>> = Vec::new();
        for o in &outs {
            host.push(self.stream.clone_dtoh(o).map_err(dev("GEMV tuning"))?);
        }
        let mut micros = Vec::new();
        for (i, &v) in cands.iter().enumerate() {
            let agrees = host[i].iter().zip(&host[0]).all(|(a, b)| {
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()) || (a.is_nan() && b.is_nan())
            });
            let mut best = f64::INFINITY;
            for (_, s, e) in marks.iter().filter(|(w, _, _)| *w == v) {
                best = best.min(f64::from(s.elapsed_ms(e).map_err(dev("GEMV tuning"))?) * 1e3);
            }
            micros.push((v, (agrees && best.is_finite()).then_some(best)));
        }
        let chosen = micros
            .iter()
            .filter_map(|(v, t)| t.map(|t| (*v, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(v, _)| v)
            .unwrap_or(cands[0]);
        let shape = format!(
            "{} {}x{} n={n}{}{}",
            p.w.dtype(),
            key.m,
            key.k,
            if key.swiglu { " swiglu" } else { "" },
            if key.norm { " +rmsnorm" } else { "" },
        );
        Ok(GemvTuning {
            shape,
            bytes: p.w.bytes(),
            micros,
            chosen,
        })
    }

    /// Whether variant `v` stages the activations in shared memory (and so
    /// can fuse RMSNorm) for `n` rows of this weight.
    fn fuses_norm(&self, v: GemvVariant, w: &GemvWeight, n: usize) -> bool {
        match v {
            GemvVariant::V1 => false,
            // Its quantizer normalizes (when v6 runs; with one row v2 does).
            GemvVariant::V6 if n >= 2 => true,
            _ => self.v23_smem(v, w, n).1,
        }
    }

    /// Dynamic shared memory of a v2/v3 launch and whether x is staged in it.
    fn v23_smem(&self, v: GemvVariant, w: &GemvWeight, n: usize) -> (usize, bool) {
        let (_, k) = w.dims();
        // Staged rows are padded to whole chunks (kernels/gemv.cu, KX).
        let pad = if w.is_int4() { 32 } else { 16 };
        let x_bytes = match v {
            // Three limb bytes and a quarter of a scale per element (kernels/gemv.cu, v5).
            GemvVariant::V5 if n == 1 => w.chunks() * (3 * 16 + 4),
            _ => n * k.div_ceil(pad) * pad * 4,
        };
        let fixed = match v {
            GemvVariant::V3 => {
                let (r, s) = v3_shape(n);
                let rows = 8 * r;
                let scales = if w.is_bf16() {
                    0
                } else {
                    s * rows * (512 / INT8_GROUP) * 4
                };
                s * rows * 512 + scales
            }
            _ => 0,
        };
        if x_bytes <= X_SMEM_MAX && fixed + x_bytes <= self.k.max_dyn_smem {
            (fixed + x_bytes, true)
        } else {
            (fixed, false)
        }
    }

    /// v1 (int8 only; no fused norm).
    fn launch_v1(&self, w: &GemvWeight, x: u64, n: usize, y: u64, mode: GemvMode) -> Result<()> {
        let GemvWeight::Int8(w) = w else {
            return Err(BackendError::Device(
                "internal: GEMV v1 called with a bf16 weight".into(),
            ));
        };
        if w.bits != 8 {
            return Err(BackendError::Device(
                "internal: GEMV v1 called with an int4 weight".into(),
            ));
        }
        let rows_out = if mode == GemvMode::SwiGlu {
            w.rows / 2
        } else {
            w.rows
        };
        let (f, rows_per_warp) = match n {
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
                    4 => (&self.k.gemv_v1_1[2], 4),
                    2 => (&self.k.gemv_v1_1[1], 2),
                    _ => (&self.k.gemv_v1_1[0], 1),
                }
            }
            2 => (&self.k.gemv_v1_n[0], 1),
            3..=4 => (&self.k.gemv_v1_n[1], 1),
            5..=8 => (&self.k.gemv_v1_n[2], 1),
            _ => (&self.k.gemv_v1_n[3], 1),
        };
        let groups = rows_out.div_ceil(rows_per_warp);
        let blocks = groups.div_ceil(8).clamp(1, self.sm_count * 8);
        let args = Args::new()
            .ptr(self.ptr(&w.q))
            .ptr(self.ptr(&w.scales))
            .ptr(x)
            .ptr(y)
            .int(w.rows)
            .int(w.cols)
            .int(w.kp)
            .int(w.gpr)
            .int(INT8_GROUP.trailing_zeros() as usize)
            .int(n)
            .int(mode as usize);
        // SAFETY: q is [m, kp], scales [m, gpr], x [n, k]; y holds n rows of
        // the mode's output width; n <= the variant's row count.
        unsafe { self.launch("gemv v1", f, Dims::blocks(blocks, 256), args) }
    }

    /// v2 or v3, with RMSNorm fused when `norm` is set (then `x` is where the
    /// normalized input is written, and `norm.x` is read).
    #[allow(clippy::too_many_arguments)]
    fn launch_v23(
        &self,
        v: GemvVariant,
        w: &GemvWeight,
        x: u64,
        norm: Option<&NormSrc>,
        n: usize,
        y: u64,
        mode: GemvMode,
    ) -> Result<()> {
        let (m, k) = w.dims();
        let rows_out = if mode == GemvMode::SwiGlu { m / 2 } else { m };
        let wi = w.format_index();
        let (smem, x_smem) = self.v23_smem(v, w, n);
        if norm.is_some() && !x_smem {
            return Err(BackendError::Device(
                "internal: fused RMSNorm without staged activations".into(),
            ));
        }
        let (f, per_block) = match v {
            GemvVariant::V3 => {
                if w.is_int4() {
                    return Err(BackendError::Device(
                        "internal: GEMV v3 called with an int4 weight".into(),
                    ));
                }
                let (r, _) = v3_shape(n);
                let idx = bucket(n).trailing_zeros() as usize;
                (&self.k.gemv_v3[wi][idx], 8 * r)
            }
            GemvVariant::V4 if n == 1 && x_smem => {
                let (idx, r) = if rows_out >= 8192 || self.gemv_rows == Some(4) {
                    (0, 4)
                } else {
                    (1, 2)
                };
                (&self.k.gemv_v4[wi][idx], 8 * r)
            }
            GemvVariant::V5 if n == 1 && x_smem => {
                if !matches!(w, GemvWeight::Int8(q) if q.bits == 8) {
                    return Err(BackendError::Device(
                        "internal: GEMV v5 called with a weight that is not int8".into(),
                    ));
                }
                let (idx, r) = if rows_out >= 8192 || self.gemv_rows == Some(4) {
                    (0, 4)
                } else {
                    (1, 2)
                };
                (&self.k.gemv_v5[idx], 8 * r)
            }
            _ => {
                let (idx, r) = match n {
                    1 if rows_out >= 8192 || self.gemv_rows == Some(4) => (0, 4),
                    1 => (1, 2),
                    _ => (bucket(n).trailing_zeros() as usize + 1, 2),
                };
                (&self.k.gemv_v2[wi][idx], 8 * r)
            }
        };
        // Rows per unit of work (a warp group for v2, a tile for v3).
        let per = if mode == GemvMode::SwiGlu {
            per_block / 2
        } else {
            per_block
        };
        self.check_gemv_smem(v, smem)?;
        let resident = self.occupancy(f, smem)?;
        let blocks = rows_out.div_ceil(per).clamp(1, self.sm_count * resident);
        let (wp, sp) = match w {
            GemvWeight::Int8(q) => (self.ptr(&q.q), self.ptr(&q.scales)),
            GemvWeight::Bf16(b) => (self.ptr(&b.w), 0),
        };
        let gpr = match w {
            GemvWeight::Int8(q) => q.gpr,
            GemvWeight::Bf16(_) => 0,
        };
        let args = Args::new()
            .ptr(wp)
            .ptr(sp)
            .ptr(norm.map(|s| self.ptr(&s.x)).unwrap_or(x))
            .ptr(norm.map(|s| self.ptr(&s.w)).unwrap_or(0))
            .f32(norm.map(|s| s.eps).unwrap_or(0.0))
            .ptr(if norm.is_some() { x } else { 0 })
            .ptr(y)
            .int(m)
            .int(k)
            .int(w.chunks())
            .int(gpr)
            .int(INT8_GROUP.trailing_zeros() as usize)
            .int(n)
            .int(mode as usize)
            .int(usize::from(x_smem));
        let dims = Dims {
            grid: (blocks as u32, 1, 1),
            block: 256,
            smem: smem as u32,
        };
        // SAFETY: the weight is [m, chunks*16 bytes] (+ scales [m, gpr]), x
        // (and the norm source and weight) hold n rows of k, y n rows of the
        // mode's output width; smem is what the kernel lays out for n, k.
        unsafe { self.launch("gemv", f, dims, args) }
    }

    /// A launch of variant `v` asking for `smem` bytes of dynamic shared
    /// memory fits this GPU.
    pub(crate) fn check_gemv_smem(&self, v: GemvVariant, smem: usize) -> Result<()> {
        if smem > self.k.max_dyn_smem {
            return Err(BackendError::Device(format!(
                "GEMV {v} needs {smem} bytes of shared memory; this GPU allows {}",
                self.k.max_dyn_smem
            )));
        }
        Ok(())
    }

    /// Resident 256-thread blocks per SM of `f` with `smem` dynamic bytes.
    fn occupancy(&self, f: &CudaFunction, smem: usize) -> Result<usize> {
        let key = (f.cu_function() as usize, smem);
        let mut cache = self
            .occupancy_cache
            .lock()
            .map_err(|_| BackendError::Device("occupancy cache lock poisoned".into()))?;
        if let Some(&b) = cache.get(&key) {
            return Ok(b);
        }
        let b = f
            .occupancy_max_active_blocks_per_multiprocessor(256, smem, None)
            .map_err(dev("occupancy"))?
            .max(1) as usize;
        cache.insert(key, b);
        Ok(b)
    }

    /// Force a GEMV variant (`None`: the per-shape timing, the default).
    /// bf16 products have no v1 and run v2 when v1 is forced.
    pub fn set_gemv_variant(&mut self, v: Option<GemvVariant>) {
        self.gemv_select = v;
    }

    /// The forced GEMV variant, if any.
    pub fn gemv_variant(&self) -> Option<GemvVariant> {
        self.gemv_select
    }

    /// Every per-shape timing made so far, oldest first.
    pub fn gemv_tunings(&self) -> Vec<GemvTuning> {
        self.gemv_log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Weight rows per warp and ring stages of the v3 kernel for `n` activation
/// rows (kernels/gemv.cu, GEMV_V3_ENTRY).
fn v3_shape(n: usize) -> (usize, usize) {
    if n > 8 {
        (4, 4)
    } else {
        (2, 6)
    }
}
