//! AVX2 int8 tiles. `vpmaddubsw` needs an unsigned operand and saturates at
//! i16, so the sign trick is used: `|w|` (u8, at most 128) times `x` with
//! `w`'s sign moved onto it (i8, |x| <= 127), which cannot saturate
//! (2 * 128 * 127 < 32767); `vpmaddwd` by 1 then widens pairs to i32.
//! A line is two 256-bit halves: rows 0..8 and rows 8..16.

use super::int8::{Int8TileFn, PackedInt8, QuantActs, BLOCK_ROWS, QUAD};
use super::TileSet;
use std::arch::x86_64::*;

/// One token: 2 blocks per tile (4 accumulator chains).
pub(crate) const DECODE: TileSet<Int8TileFn> = TileSet {
    r: 2,
    t: 1,
    full: tile::<2, 1>,
    unit_tail: tile::<1, 1>,
    token_tail: tile::<2, 1>,
    single: tile::<1, 1>,
};

/// Several tokens: 1 block x 3 tokens fits the 16 ymm registers.
pub(crate) const PREFILL: TileSet<Int8TileFn> = TileSet {
    r: 1,
    t: 3,
    full: tile::<1, 3>,
    unit_tail: tile::<1, 3>,
    token_tail: tile::<1, 1>,
    single: tile::<1, 1>,
};

/// `R` blocks from `block` x `T` tokens from `token` into `out` (`[T][R][16]`).
///
/// # Safety
/// The CPU must have avx2.
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)] // [t][r][half] tiles read clearest indexed
unsafe fn tile<const R: usize, const T: usize>(
    w: &PackedInt8,
    block: usize,
    acts: &QuantActs,
    token: usize,
    out: &mut [f32],
) {
    assert!(
        block + R <= w.blocks() && token + T <= acts.tokens() && out.len() == R * T * BLOCK_ROWS
    );
    let lines: [*const __m256i; R] =
        std::array::from_fn(|r| w.block_lines(block + r).as_ptr().cast());
    let scales: [&[f32]; R] = std::array::from_fn(|r| w.block_scales(block + r));
    let xq: [*const i8; T] = std::array::from_fn(|t| acts.token_q(token + t).as_ptr());
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let mut facc = [[[_mm256_setzero_ps(); 2]; R]; T];
    for g in 0..w.groups() {
        let mut iacc = [[[_mm256_setzero_si256(); 2]; R]; T];
        for q in w.quad_range(g) {
            let mut xb = [_mm256_setzero_si256(); T];
            for t in 0..T {
                // SAFETY: a token row holds 4 * quads bytes; q < quads.
                xb[t] = _mm256_set1_epi32(unsafe {
                    xq[t].add(q * QUAD).cast::<i32>().read_unaligned()
                });
            }
            for r in 0..R {
                for h in 0..2 {
                    // SAFETY: q < quads and each 64-byte aligned line is two halves.
                    let raw = unsafe { _mm256_load_si256(lines[r].add(2 * q + h)) };
                    let wv = _mm256_xor_si256(raw, flip);
                    let aw = _mm256_abs_epi8(wv);
                    for t in 0..T {
                        let sx = _mm256_sign_epi8(xb[t], wv);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
                        iacc[t][r][h] = _mm256_add_epi32(iacc[t][r][h], p);
                    }
                }
            }
        }
        for t in 0..T {
            let sx = _mm256_set1_ps(acts.token_scales(token + t)[g]);
            for r in 0..R {
                for h in 0..2 {
                    let s = &scales[r][g * BLOCK_ROWS + 8 * h..g * BLOCK_ROWS + 8 * h + 8];
                    // SAFETY: `s` holds exactly 8 f32.
                    let sw = unsafe { _mm256_loadu_ps(s.as_ptr()) };
                    let dot = _mm256_cvtepi32_ps(iacc[t][r][h]);
                    // (dot * sx) * sw, unfused, in group order: the reference's rounding.
                    facc[t][r][h] =
                        _mm256_add_ps(facc[t][r][h], _mm256_mul_ps(_mm256_mul_ps(dot, sx), sw));
                }
            }
        }
    }
    for (o, f) in out.chunks_exact_mut(8).zip(facc.iter().flatten().flatten()) {
        // SAFETY: `o` holds exactly 8 f32.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *f) };
    }
}
