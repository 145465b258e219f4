//! Run-time compilation of the kernels (`kernels/*.cu`) with NVRTC, cached in
//! the process and on disk, and the loaded kernel handles.

use crate::{BackendError, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The CUDA source of every kernel the backend launches: the files under
/// `kernels/`, concatenated into one translation unit (common helpers first).
pub const KERNELS_SRC: &str = concat!(
    include_str!("kernels/common.cuh"),
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/gemv_v1.cu"),
    include_str!("kernels/gemv.cu"),
    include_str!("kernels/attention.cu"),
);

/// Folders searched for CUDA headers, in order: `TESSERA_CUDA_INCLUDE`,
/// `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include`.
/// The kernels include no header, so a missing folder is not an error.
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

fn nvrtc_missing() -> BackendError {
    BackendError::Unavailable(
        "NVRTC".into(),
        "libnvrtc.so.13 was not found; add the folder holding it (for example \
         site-packages/nvidia/cu13/lib) to LD_LIBRARY_PATH"
            .into(),
    )
}

/// Compile the kernels to PTX for a virtual architecture such as `compute_90`.
/// Needs only libnvrtc (no driver, no GPU), so tests run it on build machines.
pub fn compile_ptx(arch: &str) -> Result<String> {
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(nvrtc_missing());
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

/// Where compiled PTX is kept between processes (compiling takes several
/// seconds): `TESSERA_CACHE_DIR` (`none` turns the disk cache off), else
/// `$XDG_CACHE_HOME/tessera`, else `$HOME/.cache/tessera`.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var("TESSERA_CACHE_DIR") {
        Ok(d) if d == "none" => None,
        Ok(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => std::env::var("XDG_CACHE_HOME")
            .ok()
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("tessera"))
            .or_else(|| {
                std::env::var("HOME")
                    .ok()
                    .map(|h| PathBuf::from(h).join(".cache/tessera"))
            }),
    }
}

/// The cache file for `arch`: named by a hash of the source, the options that
/// change the output and the NVRTC version, so a stale file is never used.
/// `None` when the disk cache is off.
pub fn cache_file(arch: &str) -> Option<PathBuf> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain query of the loaded library's version.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (KERNELS_SRC, arch, include_paths(), major, minor).hash(&mut h);
    Some(cache_dir()?.join(format!("kernels-{arch}-{:016x}.ptx", h.finish())))
}

/// The kernels' PTX for `arch`, from the process cache, the disk cache
/// ([`cache_file`]) or NVRTC, in that order (NVRTC's output is written to the
/// disk cache when the folder is writable).
pub fn ptx(arch: &str) -> Result<String> {
    cached_ptx(arch).map(|(p, _)| p)
}

/// PTX per architecture, compiled once per process and, when a cache folder
/// is writable, once per machine. Returns the PTX and the cache file it came
/// from (so a file the driver rejects can be removed).
fn cached_ptx(arch: &str) -> Result<(String, Option<PathBuf>)> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache
        .lock()
        .map_err(|_| BackendError::Device("PTX cache lock poisoned".into()))?;
    if let Some(p) = map.get(arch) {
        return Ok((p.clone(), None));
    }
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(nvrtc_missing());
    }
    let file = cache_file(arch);
    if let Some(ptx) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        map.insert(arch.to_string(), ptx.clone());
        return Ok((ptx, file));
    }
    let ptx = compile_ptx(arch)?;
    if let Some(f) = &file {
        // Best effort: write a temporary file and rename it into place, so a
        // concurrent reader never sees half a file.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let written = f
            .parent()
            .map(|d| std::fs::create_dir_all(d).is_ok())
            .unwrap_or(false)
            && std::fs::write(&tmp, &ptx).is_ok()
            && std::fs::rename(&tmp, f).is_ok();
        if !written {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    map.insert(arch.to_string(), ptx.clone());
    Ok((ptx, None))
}

/// Handles of every kernel, loaded into one context.
pub struct Kernels {
    pub embedding_f32: CudaFunction,
    pub embedding_i8: CudaFunction,
    pub embedding_i4: CudaFunction,
    pub embedding_bf16: CudaFunction,
    pub rms_norm: CudaFunction,
    pub add_bias: CudaFunction,
    pub add_assign: CudaFunction,
    pub swiglu: CudaFunction,
    pub rope: CudaFunction,
    pub gather_cols: CudaFunction,
    pub quantize_i8: CudaFunction,
    pub dequantize_i8: CudaFunction,
    pub dequantize_i4: CudaFunction,
    pub dequantize_i8_split: CudaFunction,
    pub dequantize_i4_split: CudaFunction,
    pub to_bf16: CudaFunction,
    pub split_bf16: CudaFunction,
    pub add_halves: CudaFunction,
    pub l2_flush: CudaFunction,
    pub argmax_step: CudaFunction,
    pub argmax_rows: CudaFunction,
    /// v1, one activation row: 1 / 2 / 4 weight rows per warp.
    pub gemv_v1_1: [CudaFunction; 3],
    /// v1, up to 2 / 4 / 8 / 16 activation rows.
    pub gemv_v1_n: [CudaFunction; 4],
    /// v2 per weight format (int8, bf16, int4): one activation row with 4
    /// and with 2 weight rows per warp, then up to 2 / 4 / 8 / 16 activation rows.
    pub gemv_v2: [[CudaFunction; 6]; 3],
    /// v4 (v2, twice the loads in flight; one activation row) per weight
    /// format (int8, bf16, int4): 4 and 2 weight rows per warp.
    pub gemv_v4: [[CudaFunction; 2]; 3],
    /// v5 (int8 weights, fixed-point activations, dp4a; one activation
    /// row): 4 and 2 weight rows per warp.
    pub gemv_v5: [CudaFunction; 2],
    /// v6 (tensor cores, 2..64 activation rows): the activation quantizer,
    /// then 1, 2, 4 and 8 tiles of 8 activation rows for int8, int4 and bf16
    /// weights.
    pub gemv_v6: [CudaFunction; 13],
    /// v3 per weight format (int8, bf16): up to 1 / 2 / 4 / 8 / 16 rows.
    pub gemv_v3: [[CudaFunction; 5]; 2],
    pub kv_store: CudaFunction,
    pub kv_store_bf16: CudaFunction,
    /// Attention for head_dim <= 128 and <= 256.
    pub attention_d128: CudaFunction,
    pub attention_d256: CudaFunction,
    pub attention_bf16_d128: CudaFunction,
    pub attention_bf16_d256: CudaFunction,
    /// Largest dynamic shared memory a v2/v3 GEMV block may use.
    pub max_dyn_smem: usize,
}

impl Kernels {
    /// Compile (or reuse) the PTX for the context's device and load it.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| BackendError::Device(format!("cannot read compute capability: {e}")))?;
        let arch = format!("compute_{major}{minor}");
        let (ptx, from_file) = cached_ptx(&arch)?;
        let module = match ctx.load_module(Ptx::from_src(ptx)) {
            Ok(m) => m,
            Err(e) => match from_file {
                // A cached file the driver rejects: drop it and compile afresh.
                Some(f) => {
                    let _ = std::fs::remove_file(&f);
                    let ptx = compile_ptx(&arch)?;
                    ctx.load_module(Ptx::from_src(ptx))
                        .map_err(|e| rejected(&arch, e))?
                }
                None => return Err(rejected(&arch, e)),
            },
        };
        Self::from_module(ctx, &module)
    }

    fn from_module(ctx: &Arc<CudaContext>, module: &Arc<CudaModule>) -> Result<Self> {
        let f = |name: &str| {
            module.load_function(name).map_err(|e| {
                BackendError::Device(format!("kernel `{name}` missing from the module: {e}"))
            })
        };
        let fs = |names: &[&str]| names.iter().map(|n| f(n)).collect::<Result<Vec<_>>>();
        let named = |prefix: &str, suffixes: &[&str]| {
            let names: Vec<String> = suffixes.iter().map(|s| format!("{prefix}_{s}")).collect();
            fs(&names.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let v2 = |w: &str| {
            table(named(
                &format!("gemv_v2_{w}"),
                &["n1_r4", "n1_r2", "n2", "n4", "n8", "n16"],
            )?)
        };
        let v4 = |w: &str| table(named(&format!("gemv_v4_{w}"), &["n1_r4", "n1_r2"])?);
        let v3 = |w: &str| {
            table(named(
                &format!("gemv_v3_{w}"),
                &["n1", "n2", "n4", "n8", "n16"],
            )?)
        };
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .unwrap_or(48 * 1024)
            .max(48 * 1024) as usize;
        // Room for the kernels' static shared memory (a few bytes) below the limit.
        let max_dyn_smem = optin - 1024;
        let k = Kernels {
            embedding_f32: f("embedding_f32")?,
            embedding_i8: f("embedding_i8")?,
            embedding_i4: f("embedding_i4")?,
            embedding_bf16: f("embedding_bf16")?,
            rms_norm: f("rms_norm")?,
            add_bias: f("add_bias")?,
            add_assign: f("add_assign")?,
            swiglu: f("swiglu")?,
            rope: f("rope")?,
            gather_cols: f("gather_cols")?,
            quantize_i8: f("quantize_i8")?,
            dequantize_i8: f("dequantize_i8")?,
            dequantize_i4: f("dequantize_i4")?,
            dequantize_i8_split: f("dequantize_i8_split")?,
            dequantize_i4_split: f("dequantize_i4_split")?,
            to_bf16: f("to_bf16")?,
            split_bf16: f("split_bf16")?,
            add_halves: f("add_halves")?,
            l2_flush: f("l2_flush")?,
            argmax_step: f("argmax_step")?,
            argmax_rows: f("argmax_rows")?,
            gemv_v1_1: table(fs(&["gemv_i8_1_r1", "gemv_i8_1_r2", "gemv_i8_1_r4"])?)?,
            gemv_v1_n: table(fs(&["gemv_i8_2", "gemv_i8_4", "gemv_i8_8", "gemv_i8_16"])?)?,
            gemv_v2: [v2("i8")?, v2("bf16")?, v2("i4")?],
            gemv_v3: [v3("i8")?, v3("bf16")?],
            gemv_v4: [v4("i8")?, v4("bf16")?, v4("i4")?],
            gemv_v5: table(named("gemv_v5_i8", &["n1_r4", "n1_r2"])?)?,
            gemv_v6: table(fs(&[
                "gemv_v6_quantize",
                "gemv_v6_i8_t1",
                "gemv_v6_i8_t2",
                "gemv_v6_i8_t4",
                "gemv_v6_i8_t8",
                "gemv_v6_i4_t1",
                "gemv_v6_i4_t2",
                "gemv_v6_i4_t4",
                "gemv_v6_i4_t8",
                "gemv_v6_bf16_t1",
                "gemv_v6_bf16_t2",
                "gemv_v6_bf16_t4",
                "gemv_v6_bf16_t8",
            ])?)?,
            kv_store: f("kv_store")?,
            kv_store_bf16: f("kv_store_bf16")?,
            attention_d128: f("attention_d128")?,
            attention_d256: f("attention_d256")?,
            attention_bf16_d128: f("attention_bf16_d128")?,
            attention_bf16_d256: f("attention_bf16_d256")?,
            max_dyn_smem,
        };
        for g in k
            .gemv_v2
            .iter()
            .flatten()
            .chain(k.gemv_v3.iter().flatten())
            .chain(k.gemv_v4.iter().flatten())
            .chain(k.gemv_v5.iter())
            .chain(k.gemv_v6[1..].iter())
        {
            g.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                max_dyn_smem as i32,
            )
            .map_err(|e| BackendError::Device(format!("GEMV shared memory limit: {e}")))?;
        }
        Ok(k)
    }
}

/// A fixed-size kernel table from a list.
fn table<const N: usize>(v: Vec<CudaFunction>) -> Result<[CudaFunction; N]> {
    v.try_into()
        .map_err(|_| BackendError::Device("internal: kernel table size".into()))
}

fn rejected(arch: &str, e: cudarc::driver::DriverError) -> BackendError {
    BackendError::Device(format!(
        "the driver rejected the kernels' PTX ({arch}): {e}"
    ))
}
