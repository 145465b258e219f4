//! AVX-512 and AVX2+FMA f32 matmul tiles: `R` weight rows x `T` tokens of
//! vector accumulators, each loaded weight vector feeding `T` FMAs, reduced
//! horizontally once per tile. A ragged end of `k` is copied into zeroed
//! stack vectors so the same loop body handles it.

use super::f32_matmul::F32TileFn;
use super::TileSet;
use std::arch::x86_64::*;

/// One token: 8 rows per tile = 8 independent FMA chains.
pub(crate) const AVX512_DECODE: TileSet<F32TileFn> = TileSet {
    r: 8,
    t: 1,
    full: tile512::<8, 1>,
    unit_tail: tile512::<1, 1>,
    token_tail: tile512::<8, 1>,
    single: tile512::<1, 1>,
};
/// Several tokens: 4 rows x 4 tokens = 16 accumulators of the 32 zmm.
pub(crate) const AVX512_PREFILL: TileSet<F32TileFn> = TileSet {
    r: 4,
    t: 4,
    full: tile512::<4, 4>,
    unit_tail: tile512::<1, 4>,
    token_tail: tile512::<4, 1>,
    single: tile512::<1, 1>,
};
/// One token: 8 rows per tile.
pub(crate) const AVX2_DECODE: TileSet<F32TileFn> = TileSet {
    r: 8,
    t: 1,
    full: tile256::<8, 1>,
    unit_tail: tile256::<1, 1>,
    token_tail: tile256::<8, 1>,
    single: tile256::<1, 1>,
};
/// Several tokens: 4 rows x 2 tokens = 8 accumulators of the 16 ymm.
pub(crate) const AVX2_PREFILL: TileSet<F32TileFn> = TileSet {
    r: 4,
    t: 2,
    full: tile256::<4, 2>,
    unit_tail: tile256::<1, 2>,
    token_tail: tile256::<4, 1>,
    single: tile256::<1, 1>,
};

/// # Safety
/// The CPU must have avx512f.
#[target_feature(enable = "avx512f")]
unsafe fn tile512<const R: usize, const T: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    row: usize,
    token: usize,
    out: &mut [f32],
) {
    const L: usize = 16;
    assert!((token + T) * k <= x.len() && (row + R) * k <= w.len() && out.len() == R * T);
    let full = k / L * L;
    let mut wtail = [[0f32; L]; R];
    let mut xtail = [[0f32; L]; T];
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    // Phase 0 walks the whole vectors in place, phase 1 the padded tail copies.
    for phase in 0..2 {
        let (wp, xp, len): ([*const f32; R], [*const f32; T], usize) = if phase == 0 {
            (
                std::array::from_fn(|r| w[(row + r) * k..].as_ptr()),
                std::array::from_fn(|t| x[(token + t) * k..].as_ptr()),
                full,
            )
        } else if full < k {
            for (d, r) in wtail.iter_mut().zip(row..) {
                d[..k - full].copy_from_slice(&w[r * k + full..(r + 1) * k]);
            }
            for (d, t) in xtail.iter_mut().zip(token..) {
                d[..k - full].copy_from_slice(&x[t * k + full..(t + 1) * k]);
            }
            (
                std::array::from_fn(|r| wtail[r].as_ptr()),
                std::array::from_fn(|t| xtail[t].as_ptr()),
                L,
            )
        } else {
            break;
        };
        let mut c = 0;
        while c < len {
            // Tokens' vectors stay in registers; each weight vector is
            // loaded once and feeds T FMAs.
            let mut xv = [_mm512_setzero_ps(); T];
            for (v, p) in xv.iter_mut().zip(&xp) {
                // SAFETY: c + 16 <= len, and each pointer has len elements.
                *v = unsafe { _mm512_loadu_ps(p.add(c)) };
            }
            for (r, p) in wp.iter().enumerate() {
                // SAFETY: as above.
                let wv = unsafe { _mm512_loadu_ps(p.add(c)) };
                for (acc_t, x) in acc.iter_mut().zip(&xv) {
                    acc_t[r] = _mm512_fmadd_ps(*x, wv, acc_t[r]);
                }
            }
            c += L;
        }
    }
    for (o, a) in out.iter_mut().zip(acc.iter().flatten()) {
        *o = _mm512_reduce_add_ps(*a);
    }
}

/// # Safety
/// The CPU must have avx2 and fma.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile256<const R: usize, const T: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    row: usize,
    token: usize,
    out: &mut [f32],
) {
    const L: usize = 8;
    assert!((token + T) * k <= x.len() && (row + R) * k <= w.len() && out.len() == R * T);
    let full = k / L * L;
    let mut wtail = [[0f32; L]; R];
    let mut xtail = [[0f32; L]; T];
    let mut acc = [[_mm256_setzero_ps(); R]; T];
    // Phase 0 walks the whole vectors in place, phase 1 the padded tail copies.
    for phase in 0..2 {
        let (wp, xp, len): ([*const f32; R], [*const f32; T], usize) = if phase == 0 {
            (
                std::array::from_fn(|r| w[(row + r) * k..].as_ptr()),
                std::array::from_fn(|t| x[(token + t) * k..].as_ptr()),
                full,
            )
        } else if full < k {
            for (d, r) in wtail.iter_mut().zip(row..) {
                d[..k - full].copy_from_slice(&w[r * k + full..(r + 1) * k]);
            }
            for (d, t) in xtail.iter_mut().zip(token..) {
                d[..k - full].copy_from_slice(&x[t * k + full..(t + 1) * k]);
            }
            (
                std::array::from_fn(|r| wtail[r].as_ptr()),
                std::array::from_fn(|t| xtail[t].as_ptr()),
                L,
            )
        } else {
            break;
        };
        let mut c = 0;
        while c < len {
            // Tokens' vectors stay in registers; each weight vector is
            // loaded once and feeds T FMAs.
            let mut xv = [_mm256_setzero_ps(); T];
            for (v, p) in xv.iter_mut().zip(&xp) {
                // SAFETY: c + 8 <= len, and each pointer has len elements.
                *v = unsafe { _mm256_loadu_ps(p.add(c)) };
            }
            for (r, p) in wp.iter().enumerate() {
                // SAFETY: as above.
                let wv = unsafe { _mm256_loadu_ps(p.add(c)) };
                for (acc_t, x) in acc.iter_mut().zip(&xv) {
                    acc_t[r] = _mm256_fmadd_ps(*x, wv, acc_t[r]);
                }
            }
            c += L;
        }
    }
    for (o, a) in out.iter_mut().zip(acc.iter().flatten()) {
        *o = hsum256(*a);
    }
}

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2")]
pub(crate) fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}
