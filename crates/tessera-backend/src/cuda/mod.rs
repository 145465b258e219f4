//! The CUDA backend: f32 activations in device memory, f32, int8 or bf16
//! weights, kernels compiled at run time by NVRTC, cuBLAS for large products.
//!
//! Invariants:
//! - Nothing here calls into CUDA before [`CudaBackend::new`] has checked that
//!   the driver library can be opened (cudarc panics otherwise), so a binary
//!   built without CUDA runs everywhere and reports `Unavailable` cleanly.
//! - All work goes to one stream, in order; the only host synchronisations
//!   are `download`, weight uploads and the one-time GEMV timing. Temporaries
//!   come from the driver's stream-ordered pool (`cuMemAllocAsync`), kept warm
//!   by a release threshold, so the per-op allocations of a decode step cost
//!   no `cudaMalloc` and no sync.
//! - Every kernel waits for its predecessors before reading their output
//!   (`launch.rs`), and weights never change after `upload_linear` returns,
//!   so kernels may start early (PDL) and read weights before that wait.
//! - Split-position attention launches share one array of arrival counters;
//!   that is safe because they run on the one stream, each after its
//!   predecessors have finished (`attention.rs`).

mod attention;
mod gemm;
mod gemv;
mod gemv_v6;
mod graph;
mod launch;
mod linear;
pub mod module;
mod ops;
pub mod stream_slots;
mod tensor;

pub use gemv::{GemvTuning, GemvVariant};
pub use graph::CudaStepGraph;
pub use launch::LaunchTime;
pub use linear::{Bf16Weight, CudaLinear, Int8Weight, GEMV_MAX_ROWS};
pub use stream_slots::memory_info;
pub use tensor::CudaTensor;

use crate::{BackendError, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError};
use module::Kernels;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

/// Keys and values of every layer: `[layer][kv_head][position][head_dim]`,
/// so one head's keys are contiguous for the attention kernel.
pub struct CudaKvCache {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    /// Element type of `k` and `v`: f32, or bf16 bits (`kernels/attention.cu`, `kv_load`).
    dtype: crate::KvDType,
    /// `[layers][kv_heads][capacity][head_dim]` elements of `dtype`, as bytes.
    k: CudaSlice<u8>,
    v: CudaSlice<u8>,
    /// A KV store deferred into the next attention call on this cache (`attention.rs`).
    pending: Mutex<Option<attention::KvJob>>,
}

impl CudaKvCache {
    /// Byte offset of `layer` in `k` and `v`.
    fn layer_offset(&self, layer: usize) -> u64 {
        (layer * self.kv_heads * self.capacity * self.head_dim * self.dtype.bytes()) as u64
    }

    fn geometry(&self) -> crate::checks::CacheGeometry {
        crate::checks::CacheGeometry {
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            capacity: self.capacity,
        }
    }
}

/// One GPU, one stream, one cuBLAS handle and the compiled kernels.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    /// RoPE frequency tables already on the device (the engine passes the same one every call).
    rope_tables: Mutex<Vec<(Vec<f32>, CudaSlice<f32>)>>,
    /// The per-sequence table of the last batched attention launch (cache
    /// addresses, capacities, positions) and its device copy: every layer of a
    /// step passes the same one.
    att_seqs: Mutex<Option<(Vec<i64>, CudaSlice<i64>)>>,
    name: String,
    /// Defer small products, RMSNorms and Q/K/V splits so their consumers
    /// absorb them (fused epilogues, fused norm, RoPE on load).
    fuse: bool,
    /// Launch kernels with programmatic dependent launch (Hopper and later).
    pdl: bool,
    /// Streaming multiprocessors, for sizing GEMV grids.
    sm_count: usize,
    /// Forced weight rows per warp of the one-row v1/v2 GEMV; `None` = by size.
    gemv_rows: Option<usize>,
    /// Forced GEMV variant; `None` = timed per shape.
    gemv_select: Option<gemv::GemvVariant>,
    gemv_tuned: Mutex<HashMap<gemv::GemvKey, gemv::GemvVariant>>,
    gemv_log: Mutex<Vec<gemv::GemvTuning>>,
    /// Resident blocks per SM by (kernel, dynamic shared memory).
    occupancy_cache: Mutex<HashMap<(usize, usize), usize>>,
    /// Kernel launches so far.
    launches: AtomicU64,
    /// Record decode steps as CUDA graphs when the engine asks (`graph.rs`).
    graphs: bool,
    /// The recording in progress, if any.
    capture: Mutex<Option<graph::Capture>>,
    /// Recordings begun so far (each recording's id).
    capture_serial: AtomicU64,
    /// Per-launch timing events while a timeline is being taken (`launch.rs`).
    timeline: Mutex<Option<Vec<launch::TimedLaunch>>>,
    /// Split-position attention: one arrival counter per (query row, head),
    /// zero between launches (`attention.rs`, kernels/attention.cu).
    att_counters: CudaSlice<u32>,
    /// Arrival counters of split-K GEMV v6 launches, one per row tile (all
    /// zero between launches).
    gemv_counters: CudaSlice<u32>,
    /// Forced number of position splits for attention; `None` = by shape.
    att_splits: Option<usize>,
    /// Fewest positions per attention split (`attention.rs`); 1 splits any context.
    att_min_chunk: usize,
    /// Int8/int4 prefill products in f32 (dequantize + SGEMM) instead of on
    /// tensor cores in split bf16 (`gemm.rs`, `gemm_int8_bf16x3`).
    int8_prefill_f32: bool,
    /// Int8 one-row products may run GEMV v5 (fixed-point activations on
    /// integer dot products, `gemv.rs`): the per-shape timing then includes
    /// it. Off by default: v5's results differ from v1-v4 in the last bits.
    int8_decode_dp4a: bool,
    /// Offer GEMV v6 (tensor cores, activations split into three bf16) to
    /// the timing of bf16 products of 2..16 rows (`TESSERA_BF16_DECODE=tc`).
    bf16_decode_tc: bool,
    /// `attention_batch` through the single-sequence ops instead of one
    /// launch (`TESSERA_BATCH_ATTENTION=per-sequence`; A/B and fallback).
    batch_attention_per_sequence: bool,
    /// Whether a timeline is being taken: launches check this, not the lock.
    timing: AtomicBool,
}

/// A two-way setting: unset, empty or `default` is false, `on` is true,
/// anything else a `BackendError::Setting` naming both values.
fn env_switch(var: &'static str, default: &str, on: &str) -> Result<bool> {
    match std::env::var(var) {
        Err(_) => Ok(false),
        Ok(v) if v.is_empty() || v == default => Ok(false),
        Ok(v) if v == on => Ok(true),
        Ok(v) => Err(BackendError::Setting(
            var,
            v,
            format!("expected {default} (the default) or {on}"),
        )),
    }
}

/// Map a driver error to a `BackendError` naming the op.
pub(crate) fn dev(op: &'static str) -> impl Fn(DriverError) -> BackendError {
    move |e| BackendError::Device(format!("{op}: {e}"))
}

/// Whether a CUDA driver and at least one GPU are present, without panicking.
/// `Err` says what is missing.
pub fn probe() -> Result<usize> {
    let unavailable = |why: String| BackendError::Unavailable("CUDA".into(), why);
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(unavailable(
            "the NVIDIA driver library (libcuda.so) was not found on this machine".into(),
        ));
    }
    let count = CudaContext::device_count()
        .map_err(|e| unavailable(format!("the CUDA driver failed to start: {e}")))?;
    if count <= 0 {
        return Err(unavailable("the CUDA driver reports no GPU".into()));
    }
    Ok(count as usize)
}

impl CudaBackend {
    /// Open GPU `ordinal`. Returns `BackendError::Unavailable` (never panics)
    /// when there is no driver, no such GPU, or cuBLAS / NVRTC cannot be loaded.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = probe()?;
        if ordinal >= count {
            return Err(BackendError::Unavailable(
                format!("CUDA device {ordinal}"),
                format!("this machine has {count} GPU(s), numbered 0..{}", count - 1),
            ));
        }
        for (lib, present) in [
            // SAFETY: each only tries to open a shared library.
            ("cuBLAS (libcublas.so.13)", unsafe {
                cudarc::cublas::sys::is_culib_present()
            }),
            ("NVRTC (libnvrtc.so.13)", unsafe {
                cudarc::nvrtc::sys::is_culib_present()
            }),
        ] {
            if !present {
                return Err(BackendError::Unavailable(
                    lib.into(),
                    "not found; add its folder (e.g. site-packages/nvidia/cu13/lib) to LD_LIBRARY_PATH".into(),
                ));
            }
        }
        let ctx = CudaContext::new(ordinal).map_err(dev("create context"))?;
        // One stream and stream-ordered frees: per-buffer events would only add work to every launch.
        // SAFETY: called before any buffer or second stream exists.
        unsafe { ctx.disable_event_tracking() };
        keep_pool_warm(&ctx);
        let stream = ctx.new_stream().map_err(dev("create stream"))?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| BackendError::Device(format!("cannot create a cuBLAS handle: {e}")))?;
        let k = Kernels::load(&ctx)?;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (maj, min) = ctx.compute_capability().unwrap_or((0, 0));
        let mem = ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        let name = format!("cuda:{ordinal} ({gpu}, sm_{maj}{min}, {mem:.0} GiB)");
        // TESSERA_CUDA_FUSE=0 turns the fusion off, TESSERA_PDL=0 early
        // launches, TESSERA_CUDA_GRAPH=0 recorded decode steps,
        // TESSERA_GEMV=v1|v2|v3|v4|v5 forces a GEMV variant (A/B timing).
        let env_on = |var: &str| std::env::var(var).map(|v| v != "0").unwrap_or(true);
        let fuse = env_on("TESSERA_CUDA_FUSE");
        let pdl = env_on("TESSERA_PDL") && maj >= 9;
        let graphs = env_on("TESSERA_CUDA_GRAPH");
        let gemv_select = match std::env::var("TESSERA_GEMV") {
            Ok(v) if !v.is_empty() && v != "auto" => Some(
                v.parse()
                    .map_err(|e: String| BackendError::Setting("TESSERA_GEMV", v.clone(), e))?,
            ),
            _ => None,
        };
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map(|n| n.max(1) as usize)
            .unwrap_or(108);
        let att_counters = stream
            .alloc_zeros::<u32>(attention::ATT_COUNTERS)
            .map_err(dev("attention counters"))?;
        let gemv_counters = stream
            .alloc_zeros::<u32>(gemv_v6::V6_COUNTERS)
            .map_err(dev("GEMV counters"))?;
        // TESSERA_ATT_SPLITS=N forces N position splits (1 = one block per row and head).
        let att_splits = match std::env::var("TESSERA_ATT_SPLITS") {
            Ok(v) if !v.is_empty() && v != "auto" => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|&n| (1..=attention::ATT_MAX_SPLITS).contains(&n))
                    .ok_or_else(|| {
                        BackendError::Setting(
                            "TESSERA_ATT_SPLITS",
                            v.clone(),
                            format!("expected auto or 1..={}", attention::ATT_MAX_SPLITS),
                        )
                    })?,
            ),
            _ => None,
        };
        // TESSERA_ATT_MIN_CHUNK=N: fewest positions per attention split.
        let att_min_chunk = match std::env::var("TESSERA_ATT_MIN_CHUNK") {
            Ok(v) if !v.is_empty() => v
                .parse::<usize>()
                .ok()
                .filter(|&n| (1..=1 << 20).contains(&n))
                .ok_or_else(|| {
                    BackendError::Setting(
                        "TESSERA_ATT_MIN_CHUNK",
                        v.clone(),
                        "expected a number of positions, 1..=1048576".into(),
                    )
                })?,
            _ => attention::ATT_MIN_CHUNK,
        };
        // TESSERA_INT8_PREFILL=f32: int8/int4 prefill products through f32 SGEMM.
        let int8_prefill_f32 = env_switch("TESSERA_INT8_PREFILL", "bf16x3", "f32")?;
        // TESSERA_INT8_DECODE=dp4a: GEMV v5 joins the per-shape timing.
        let int8_decode_dp4a = env_switch("TESSERA_INT8_DECODE", "f32", "dp4a")?;
        let bf16_decode_tc = env_switch("TESSERA_BF16_DECODE", "f32", "tc")?;
        let batch_attention_per_sequence =
            env_switch("TESSERA_BATCH_ATTENTION", "one-launch", "per-sequence")?;
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            k,
            rope_tables: Mutex::new(Vec::new()),
            att_seqs: Mutex::new(None),
            name,
            fuse,
            pdl,
            sm_count,
            gemv_rows: None,
            gemv_select,
            gemv_tuned: Mutex::new(HashMap::new()),
            gemv_log: Mutex::new(Vec::new()),
            occupancy_cache: Mutex::new(HashMap::new()),
            launches: AtomicU64::new(0),
            graphs,
            capture: Mutex::new(None),
            capture_serial: AtomicU64::new(0),
            timeline: Mutex::new(None),
            timing: AtomicBool::new(false),
            att_counters,
            gemv_counters,
            att_splits,
            att_min_chunk,
            int8_prefill_f32,
            int8_decode_dp4a,
            bf16_decode_tc,
            batch_attention_per_sequence,
        })
    }

    /// Turn fusion on or off: residual adds and SwiGLU into GEMV epilogues,
    /// RMSNorm into the following GEMV, RoPE and the Q/K/V split into the KV
    /// store and attention. Results are bit-identical either way; only the
    /// number of launches differs.
    pub fn set_fusion(&mut self, on: bool) {
        self.fuse = on;
    }

    /// Turn programmatic dependent launch on or off (it is on by default on
    /// Hopper and later GPUs; older GPUs ignore this).
    pub fn set_pdl(&mut self, on: bool) {
        let major = self.ctx.compute_capability().map(|c| c.0).unwrap_or(0);
        self.pdl = on && major >= 9;
    }

    /// Turn recorded decode steps (CUDA graphs) on or off; on by default.
    /// Results are bit-identical either way.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    /// Force the number of position splits of attention (1..=32; 1 = one
    /// block per query row and head) instead of choosing by shape; `None`
    /// chooses. Results differ only in summation order.
    pub fn set_attention_splits(&mut self, splits: Option<usize>) {
        self.att_splits = splits.map(|n| n.clamp(1, attention::ATT_MAX_SPLITS));
    }

    /// Fewest cached positions per attention split (default
    /// `ATT_MIN_CHUNK`, 128; 1 splits any context as finely as the launch
    /// allows). Results differ only in summation order.
    pub fn set_attention_min_chunk(&mut self, positions: usize) {
        self.att_min_chunk = positions.max(1);
    }

    /// Int8/int4 products of more than GEMV_MAX_ROWS rows (prefill) in f32
    /// (dequantize, then SGEMM) instead of the default split-bf16 tensor-core
    /// products; results differ in the last bits.
    pub fn set_int8_prefill_f32(&mut self, on: bool) {
        self.int8_prefill_f32 = on;
    }

    /// Let int8 products run on fixed-point activations when the per-shape
    /// timing finds it fastest: GEMV v5 for one activation row (22-bit fixed
    /// point per 16 elements, integer dot products; see `GemvVariant::V5`),
    /// v6 for 2..16 rows (per 32 elements, integer tensor cores; see
    /// `GemvVariant::V6`), and v6 for every int8 product of more rows
    /// (prefill, 64 rows per launch) instead of the split-bf16 cuBLAS path.
    /// Results differ from the default path in the last bits. Shapes timed
    /// before the change keep their choice.
    pub fn set_int8_decode_dp4a(&mut self, on: bool) {
        self.int8_decode_dp4a = on;
    }

    /// Let bf16 products of 2..16 rows run GEMV v6 when the per-shape timing
    /// finds it fastest: bf16 tensor-core products with each activation split
    /// into three bf16 (exactly) and f32 accumulation in the tensor cores, so
    /// the result differs from the f32 FMA chains only in summation order.
    pub fn set_bf16_decode_tc(&mut self, on: bool) {
        self.bf16_decode_tc = on;
    }

    /// Run `attention_batch` one sequence at a time with the single-sequence
    /// ops (the engine's path before the one-launch kernel) instead of one
    /// launch for all sequences; for A/B runs.
    pub fn set_batch_attention_per_sequence(&mut self, on: bool) {
        self.batch_attention_per_sequence = on;
    }

    /// Force the weight rows per warp of the one-activation-row v1 GEMV (1, 2
    /// or 4; v2 takes 4 or else 2) instead of choosing by matrix size.
    pub fn set_gemv_rows(&mut self, rows: Option<usize>) {
        self.gemv_rows = rows;
    }

    /// The context, for callers that need driver-level access (streams, events).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait until every queued op has finished (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev("synchronize"))
    }

    /// Uninitialised device memory for `n` elements (at least one, so the
    /// pointer is valid even for empty tensors).
    fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller writes the buffer (by kernel or copy) before reading it.
        unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(dev("allocate"))
    }

    /// The raw device address of a buffer, for kernels taking offsets.
    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }

    fn rope_table(&self, inv_freq: &[f32]) -> Result<u64> {
        let mut tables = self
            .rope_tables
            .lock()
            .map_err(|_| BackendError::Device("rope table lock poisoned".into()))?;
        if let Some((_, t)) = tables.iter().find(|(h, _)| h.as_slice() == inv_freq) {
            return Ok(self.ptr(t));
        }
        let t = self.stream.clone_htod(inv_freq).map_err(dev("rope"))?;
        let p = self.ptr(&t);
        tables.push((inv_freq.to_vec(), t));
        Ok(p)
    }
}

/// Let the default memory pool keep freed memory instead of returning it to
/// the driver at every sync, so steady-state allocations are pool hits.
fn keep_pool_warm(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: plain driver queries on a valid device; failure only costs speed.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS
        {
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}
