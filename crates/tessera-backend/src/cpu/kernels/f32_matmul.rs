//! f32 matmul `out[n, m] = x[n, k] @ w[m, k]^T`: the parallel driver and the
//! portable tile. Accumulation stays f32 (several lanes, FMA on the SIMD
//! paths), which keeps results within ~1e-6 relative of an f64 reference.

use super::{par_ranges, walk_tiles, SharedOut, TileSet};
use crate::cpu::features::{CpuFeatures, F32Kernel};

/// Largest tile (rows x tokens) any ISA uses, for the stack buffer.
const MAX_TILE: usize = 16;
/// Activation bytes per token chunk the weights are swept for (fits L2).
const TOKEN_CHUNK_BYTES: usize = 512 << 10;

/// A tile: `R` weight rows from `row` x `T` tokens from `token`, dots of
/// length `k`, into `out` (`[T][R]`). Implementations check their bounds;
/// the only contract left to the caller is that the CPU has the tile's
/// target features.
pub(crate) type F32TileFn =
    unsafe fn(x: &[f32], k: usize, w: &[f32], row: usize, token: usize, out: &mut [f32]);

/// The portable kernel only has the 1 x 1 tile.
const SCALAR: TileSet<F32TileFn> = TileSet {
    r: 1,
    t: 1,
    full: scalar_tile,
    unit_tail: scalar_tile,
    token_tail: scalar_tile,
    single: scalar_tile,
};

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // `n` picks among SIMD tiles
fn tile_set(kernel: F32Kernel, n: usize) -> TileSet<F32TileFn> {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx512 if n == 1 => super::f32_simd::AVX512_DECODE,
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx512 => super::f32_simd::AVX512_PREFILL,
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx2Fma if n == 1 => super::f32_simd::AVX2_DECODE,
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx2Fma => super::f32_simd::AVX2_PREFILL,
        _ => SCALAR,
    }
}

/// `out[n, m] = x[n, k] @ w[m, k]^T`, parallel over ranges of weight rows.
pub fn matmul_f32(
    features: CpuFeatures,
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), n * k, "matmul_f32: x is not [{n}, {k}]");
    assert_eq!(w.len(), m * k, "matmul_f32: w is not [{m}, {k}]");
    assert_eq!(out.len(), n * m, "matmul_f32: out is not [{n}, {m}]");
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let set = tile_set(features.f32_kernel(), n);
    let token_chunk = TOKEN_CHUNK_BYTES / (4 * k);
    let shared = SharedOut::new(out);
    par_ranges(m, set.r, 4 * k * n, |range| {
        let mut buf = [0f32; MAX_TILE];
        walk_tiles(&set, range, n, token_chunk, |tile, j, r, t, tt| {
            let vals = &mut buf[..r * tt];
            // SAFETY: `set` comes from `f32_kernel()`, which only selects
            // kernels whose target features the running CPU has.
            unsafe { tile(x, k, w, j, t, vals) };
            for ti in 0..tt {
                // SAFETY: each task owns the columns of its row range, for
                // every token, so no two tasks write the same element.
                unsafe { shared.write((t + ti) * m + j, &vals[ti * r..(ti + 1) * r]) };
            }
        });
    });
}

fn scalar_tile(x: &[f32], k: usize, w: &[f32], row: usize, token: usize, out: &mut [f32]) {
    out[0] = dot(&x[token * k..(token + 1) * k], &w[row * k..(row + 1) * k]);
}

/// 8-lane f32 dot product the compiler vectorizes.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
