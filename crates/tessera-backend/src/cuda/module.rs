//! Run-time compilation of `kernels.cu` with NVRTC, cached per process, and
//! the loaded kernel handles.

use crate::{BackendError, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The CUDA source of every kernel the backend launches.
pub const KERNELS_SRC: &str = include_str!("kernels.cu");

/// Folders searched for CUDA headers, in order: `TESSERA_CUDA_INCLUDE`,
/// `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include`.
/// The kernels include no header today, so a missing folder is not an error;
/// the path is passed so that future half-precision kernels find `cuda_fp16.h`.
pub fn include_paths() -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    if let Ok(d) = std::env::var("TESSERA_CUDA_INCLUDE") {
        dirs.extend(d.split(':').filter(|s| !s.is_empty()).map(String::from));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(d) = std::env::var(var) {
            dirs.push(format!("{d}/include"));
        }
    }
    dirs.push("/usr/local/cuda/include".into());
    dirs.retain(|d| std::path::Path::new(d).join("cuda_fp16.h").exists());
    dirs.dedup();
    dirs
}

/// Compile the kernels to PTX for a virtual architecture such as `compute_90`.
/// Needs only libnvrtc (no driver, no GPU), so tests run it on build machines.
pub fn compile_ptx(arch: &str) -> Result<String> {
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(BackendError::Unavailable(
            "NVRTC".into(),
            "libnvrtc.so.13 was not found; add the folder holding it (for example \
             site-packages/nvidia/cu13/lib) to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let opts = CompileOptions {
        // IEEE division and square root (the defaults, stated because the
        // int8 quantizer must match the host quantizer bit for bit).
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        include_paths: include_paths(),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("tessera_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(KERNELS_SRC, opts).map_err(|e| {
        let detail = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => other.to_string(),
        };
        BackendError::Device(format!(
            "NVRTC could not compile the kernels for {arch}: {detail}"
        ))
    })?;
    Ok(ptx.to_src())
}

/// PTX per architecture, compiled once per process (compiling takes ~1 s).
fn cached_ptx(arch: &str) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache
        .lock()
        .map_err(|_| BackendError::Device("PTX cache lock poisoned".into()))?;
    if let Some(p) = map.get(arch) {
        return Ok(p.clone());
    }
    let ptx = compile_ptx(arch)?;
    map.insert(arch.to_string(), ptx.clone());
    Ok(ptx)
}

/// Handles of every kernel, loaded into one context.
pub struct Kernels {
    pub embedding_f32: CudaFunction,
    pub embedding_i8: CudaFunction,
    pub rms_norm: CudaFunction,
    pub add_bias: CudaFunction,
    pub add_assign: CudaFunction,
    pub swiglu: CudaFunction,
    pub rope: CudaFunction,
    pub split_cols4: CudaFunction,
    pub quantize_i8: CudaFunction,
    pub dequantize_i8: CudaFunction,
    /// One activation row, 1 / 2 / 4 weight rows per warp.
    pub gemv_i8_1: [CudaFunction; 3],
    /// Up to 2 / 4 / 8 activation rows.
    pub gemv_i8_n: [CudaFunction; 3],
    pub kv_store: CudaFunction,
    /// Attention for head_dim <= 128 and <= 256.
    pub attention_d128: CudaFunction,
    pub attention_d256: CudaFunction,
}

impl Kernels {
    /// Compile (or reuse) the PTX for the context's device and load it.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| BackendError::Device(format!("cannot read compute capability: {e}")))?;
        let arch = format!("compute_{major}{minor}");
        let ptx = cached_ptx(&arch)?;
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(|e| {
            BackendError::Device(format!(
                "the driver rejected the kernels' PTX ({arch}): {e}"
            ))
        })?;
        let f = |name: &str| {
            module.load_function(name).map_err(|e| {
                BackendError::Device(format!("kernel `{name}` missing from the module: {e}"))
            })
        };
        Ok(Kernels {
            embedding_f32: f("embedding_f32")?,
            embedding_i8: f("embedding_i8")?,
            rms_norm: f("rms_norm")?,
            add_bias: f("add_bias")?,
            add_assign: f("add_assign")?,
            swiglu: f("swiglu")?,
            rope: f("rope")?,
            split_cols4: f("split_cols4")?,
            quantize_i8: f("quantize_i8")?,
            dequantize_i8: f("dequantize_i8")?,
            gemv_i8_1: [f("gemv_i8_1_r1")?, f("gemv_i8_1_r2")?, f("gemv_i8_1_r4")?],
            gemv_i8_n: [f("gemv_i8_2")?, f("gemv_i8_4")?, f("gemv_i8_8")?],
            kv_store: f("kv_store")?,
            attention_d128: f("attention_d128")?,
            attention_d256: f("attention_d256")?,
        })
    }
}
