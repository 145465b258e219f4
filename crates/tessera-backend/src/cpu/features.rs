//! Run-time CPU feature detection, done once per backend, and the choice of
//! kernel it implies.
//!
//! Kernel selection re-checks the running CPU, so a hand-built `CpuFeatures`
//! that claims more than the machine has can only ever select a slower kernel,
//! never one that would fault: this is what makes the `unsafe` calls into
//! `#[target_feature]` kernels sound.

/// SIMD capabilities that select kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vnni: bool,
    /// Set by `TESSERA_CPU_KERNEL=scalar` to force the portable path.
    pub force_scalar: bool,
}

/// The int8 (W8A8) matmul implementation a `CpuFeatures` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `vpdpbusd` on 512-bit vectors (avx512f + avx512bw + avx512vnni).
    Avx512Vnni,
    /// `vpmaddubsw` + `vpmaddwd` on 256-bit vectors with the sign trick.
    Avx2,
    /// Portable Rust.
    Scalar,
}

/// The f32 implementation (matmul, attention) a `CpuFeatures` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Kernel {
    /// 512-bit FMA (avx512f).
    Avx512,
    /// 256-bit FMA (avx2 + fma).
    Avx2Fma,
    /// Portable Rust.
    Scalar,
}

impl CpuFeatures {
    /// What this CPU supports, honouring `TESSERA_CPU_KERNEL=scalar`.
    pub fn detect() -> Self {
        let force_scalar = std::env::var("TESSERA_CPU_KERNEL").is_ok_and(|v| v == "scalar");
        CpuFeatures {
            force_scalar,
            ..host()
        }
    }

    /// The portable path only.
    pub fn scalar() -> Self {
        CpuFeatures {
            avx2: false,
            fma: false,
            avx512f: false,
            avx512bw: false,
            avx512vnni: false,
            force_scalar: true,
        }
    }

    /// The same features with AVX-512 masked off (selects the AVX2 kernels).
    pub fn without_avx512(self) -> Self {
        CpuFeatures {
            avx512f: false,
            avx512bw: false,
            avx512vnni: false,
            ..self
        }
    }

    /// One feature set per distinct kernel family this CPU can run, portable
    /// first: scalar, then AVX2, then AVX-512 where present. For tests and
    /// benchmarks that must cover every path.
    pub fn all_supported() -> Vec<CpuFeatures> {
        let h = CpuFeatures {
            force_scalar: false,
            ..host()
        };
        let mut v = vec![CpuFeatures::scalar()];
        let avx2 = h.without_avx512();
        if avx2.int8_kernel() == Int8Kernel::Avx2 || avx2.f32_kernel() == F32Kernel::Avx2Fma {
            v.push(avx2);
        }
        if h.int8_kernel() == Int8Kernel::Avx512Vnni || h.f32_kernel() == F32Kernel::Avx512 {
            v.push(h);
        }
        v
    }

    /// The int8 kernel these features select (never one the CPU lacks).
    pub fn int8_kernel(&self) -> Int8Kernel {
        let h = host();
        let on = |want: bool, have: bool| want && have && !self.force_scalar;
        if on(
            self.avx512f && self.avx512bw && self.avx512vnni,
            h.avx512f && h.avx512bw && h.avx512vnni,
        ) {
            Int8Kernel::Avx512Vnni
        } else if on(self.avx2, h.avx2) {
            Int8Kernel::Avx2
        } else {
            Int8Kernel::Scalar
        }
    }

    /// The f32 kernel these features select (never one the CPU lacks).
    pub fn f32_kernel(&self) -> F32Kernel {
        let h = host();
        let on = |want: bool, have: bool| want && have && !self.force_scalar;
        if on(self.avx512f, h.avx512f) {
            F32Kernel::Avx512
        } else if on(self.avx2 && self.fma, h.avx2 && h.fma) {
            F32Kernel::Avx2Fma
        } else {
            F32Kernel::Scalar
        }
    }

    /// Name of the int8 kernel these features select.
    pub fn int8_kernel_name(&self) -> &'static str {
        match self.int8_kernel() {
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Scalar => "scalar",
        }
    }

    /// Flags detected, for reports.
    pub fn describe(&self) -> String {
        let flags = [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vnni, "avx512vnni"),
        ];
        let v: Vec<&str> = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        }
    }
}

/// What the running CPU supports. `is_x86_feature_detected!` caches its
/// answer, so this is cheap enough to call per kernel launch.
fn host() -> CpuFeatures {
    #[cfg(target_arch = "x86_64")]
    {
        CpuFeatures {
            avx2: std::arch::is_x86_feature_detected!("avx2"),
            fma: std::arch::is_x86_feature_detected!("fma"),
            avx512f: std::arch::is_x86_feature_detected!("avx512f"),
            avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
            avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
            force_scalar: false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        CpuFeatures {
            avx2: false,
            fma: false,
            avx512f: false,
            avx512bw: false,
            avx512vnni: false,
            force_scalar: false,
        }
    }
}
