//! Finding the CUDA driver and NCCL libraries, and describing their errors.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use cudarc::driver::sys as dsys;
use cudarc::driver::DriverError;
use cudarc::nccl::sys as nsys;
use nsys::ncclResult_t as R;

use crate::{CommError, Result};

/// Oldest NCCL with non-blocking communicators and `ncclCommFinalize`.
const MIN_VERSION: (u32, u32, u32) = (2, 14, 0);

/// The leading fields of `ncclConfig_t`, as of NCCL 2.14. NCCL copies only
/// `size` bytes and gives every later field its default, so this prefix is
/// understood by every NCCL from 2.14 on, whatever layout cudarc was built for.
#[repr(C)]
pub(super) struct ConfigPrefix {
    pub size: usize,
    pub magic: u32,
    pub version: u32,
    pub blocking: i32,
}

/// `size` covers the fields above without the struct's tail padding.
pub(super) const CONFIG_PREFIX_BYTES: usize = std::mem::size_of::<usize>() + 12;
pub(super) const CONFIG_MAGIC: u32 = 0xcafe_beef;
pub(super) const CONFIG_VERSION: u32 = 21400;

/// Checks that the CUDA driver and NCCL libraries can be loaded, without
/// calling into either. Every entry point of this module calls it first.
pub fn probe() -> Result<()> {
    // SAFETY: only tries to open the libraries by name.
    if !unsafe { dsys::is_culib_present() } {
        return Err(CommError::Nccl(
            "the CUDA driver library (libcuda.so) was not found: NCCL needs an NVIDIA GPU and driver".into(),
        ));
    }
    // SAFETY: as above.
    if !unsafe { nsys::is_culib_present() } {
        return Err(CommError::Nccl(
            "libnccl was not found: cudarc opens `libnccl.so` (not `libnccl.so.2`); \
             put a symlink named libnccl.so pointing to libnccl.so.2 in a folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    Ok(())
}

/// The loaded NCCL's version as (major, minor, patch).
pub fn version() -> Result<(u32, u32, u32)> {
    probe()?;
    let mut code = 0;
    // SAFETY: the library is present; the out-pointer is valid.
    let r = unsafe { nsys::ncclGetVersion(&mut code) };
    if r != R::ncclSuccess {
        return Err(CommError::Nccl(format!(
            "ncclGetVersion: {}",
            describe(r, None)
        )));
    }
    let code = code.max(0) as u32;
    // NCCL 2.9 moved from major*1000 + minor*100 + patch to major*10000 + minor*100 + patch.
    Ok(if code >= 10000 {
        (code / 10000, code / 100 % 100, code % 100)
    } else {
        (code / 1000, code / 100 % 10, code % 100)
    })
}

pub(super) fn require_version() -> Result<()> {
    let v = version()?;
    if v < MIN_VERSION {
        return Err(CommError::Nccl(format!(
            "NCCL {}.{}.{} is too old: non-blocking communicators need {}.{}.{} or newer",
            v.0, v.1, v.2, MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
        )));
    }
    Ok(())
}

/// NCCL's name and text for `r`, plus the communicator's last error when known.
pub(super) fn describe(r: R, comm: Option<nsys::ncclComm_t>) -> String {
    // SAFETY: NCCL returns static NUL-terminated strings (or null).
    let text = |p: *const std::ffi::c_char| {
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    let mut s = format!("{r:?}");
    if let Some(t) = text(unsafe { nsys::ncclGetErrorString(r) }) {
        s.push_str(&format!(" ({t})"));
    }
    if let Some(c) = comm.filter(|c| !c.is_null()) {
        if let Some(t) = text(unsafe { nsys::ncclGetLastError(c) }).filter(|t| !t.is_empty()) {
            s.push_str(&format!(": {t}"));
        }
    }
    s
}

pub(super) fn cuda_err(what: &str, e: DriverError) -> CommError {
    CommError::Nccl(format!("{what}: CUDA error {e}"))
}

/// Polls fast at first (small collectives finish in microseconds), then backs off.
pub(super) struct Backoff(pub Instant);

impl Backoff {
    pub fn pause(&self) {
        let waited = self.0.elapsed();
        if waited < Duration::from_micros(200) {
            std::hint::spin_loop();
        } else if waited < Duration::from_millis(5) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}
