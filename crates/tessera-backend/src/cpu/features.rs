//! Run-time CPU feature detection, done once per backend.

/// SIMD capabilities that select kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub avx512bw: bool,
    pub avx512vnni: bool,
    /// Set by `TESSERA_CPU_KERNEL=scalar` to force the portable path.
    pub force_scalar: bool,
}

impl CpuFeatures {
    pub fn detect() -> Self {
        let force_scalar = std::env::var("TESSERA_CPU_KERNEL").is_ok_and(|v| v == "scalar");
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
                avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
                force_scalar,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures { avx2: false, fma: false, avx512bw: false, avx512vnni: false, force_scalar }
        }
    }

    /// The portable path only.
    pub fn scalar() -> Self {
        CpuFeatures { avx2: false, fma: false, avx512bw: false, avx512vnni: false, force_scalar: true }
    }

    /// Name of the int8 kernel these features select.
    pub fn int8_kernel_name(&self) -> &'static str {
        if self.force_scalar {
            "scalar"
        } else if self.avx512vnni && self.avx512bw {
            "avx512-vnni"
        } else if self.avx2 {
            "avx2"
        } else {
            "scalar"
        }
    }

    /// Flags detected, for reports.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        for (on, name) in [(self.avx2, "avx2"), (self.fma, "fma"), (self.avx512bw, "avx512bw"), (self.avx512vnni, "avx512vnni")] {
            if on {
                v.push(name);
            }
        }
        if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        }
    }
}
