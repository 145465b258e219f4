//! AVX-512 VNNI int8 tiles. `vpdpbusd` multiplies a packed line (16 rows x 4
//! inputs, stored +128 as u8) with a broadcast activation quad (i8) into 16
//! i32 row lanes; per group, `128 * sum(x)` undoes the storage offset, leaving
//! the exact i32 dot, which is scaled in f32 exactly as the reference does.

use super::int8::{Int8TileFn, PackedInt8, QuantActs, BLOCK_ROWS, QUAD};
use super::TileSet;
use std::arch::x86_64::*;

/// One token: 4 blocks (64 rows) per tile keeps 4 independent `vpdpbusd`
/// chains in flight while streaming 4 sequential weight runs.
pub(crate) const DECODE: TileSet<Int8TileFn> = TileSet {
    r: 4,
    t: 1,
    full: tile::<4, 1>,
    unit_tail: tile::<1, 1>,
    token_tail: tile::<4, 1>,
    single: tile::<1, 1>,
};

/// Several tokens: 2 blocks x 8 tokens = 16 accumulators, enough chains to
/// keep `vpdpbusd` issuing every cycle; each weight line loaded feeds 8
/// tokens. (Measured against 2x4, 3x4 and 4x4 on a Xeon: 2x8 was fastest.)
pub(crate) const PREFILL: TileSet<Int8TileFn> = TileSet {
    r: 2,
    t: 8,
    full: tile::<2, 8>,
    unit_tail: tile::<1, 8>,
    token_tail: tile::<2, 1>,
    single: tile::<1, 1>,
};

/// `R` blocks from `block` x `T` tokens from `token` into `out` (`[T][R][16]`).
///
/// # Safety
/// The CPU must have avx512f, avx512bw and avx512vnni.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
    let lines: [*const __m512i; R] =
        std::array::from_fn(|r| w.block_lines(block + r).as_ptr().cast());
    let scales: [&[f32]; R] = std::array::from_fn(|r| w.block_scales(block + r));
    let xq: [*const i8; T] = std::array::from_fn(|t| acts.token_q(token + t).as_ptr());
    let mut facc = [[_mm512_setzero_ps(); R]; T];
    for g in 0..w.groups() {
        let mut iacc = [[_mm512_setzero_si512(); R]; T];
        for q in w.quad_range(g) {
            let mut wv = [_mm512_setzero_si512(); R];
            for (v, p) in wv.iter_mut().zip(&lines) {
                // SAFETY: q < quads, the block's length in 64-byte aligned lines.
                *v = unsafe { _mm512_load_si512(p.add(q)) };
            }
            for (acc_t, x) in iacc.iter_mut().zip(&xq) {
                // SAFETY: a token row holds 4 * quads bytes; q < quads.
                let quad = unsafe { x.add(q * QUAD).cast::<i32>().read_unaligned() };
                let xb = _mm512_set1_epi32(quad);
                for (a, v) in acc_t.iter_mut().zip(&wv) {
                    *a = _mm512_dpbusd_epi32(*a, *v, xb);
                }
            }
        }
        for (t, (f_t, i_t)) in facc.iter_mut().zip(&iacc).enumerate() {
            let corr = _mm512_set1_epi32(acts.token_offset_sums(token + t)[g]);
            let sx = _mm512_set1_ps(acts.token_scales(token + t)[g]);
            for ((f, i), s) in f_t.iter_mut().zip(i_t).zip(&scales) {
                let s = &s[g * BLOCK_ROWS..(g + 1) * BLOCK_ROWS];
                // SAFETY: `s` holds exactly 16 f32.
                let sw = unsafe { _mm512_loadu_ps(s.as_ptr()) };
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(*i, corr));
                // (dot * sx) * sw, unfused, in group order: the reference's rounding.
                *f = _mm512_add_ps(*f, _mm512_mul_ps(_mm512_mul_ps(dot, sx), sw));
            }
        }
    }
    for (o, f) in out.chunks_exact_mut(BLOCK_ROWS).zip(facc.iter().flatten()) {
        // SAFETY: `o` holds exactly 16 f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *f) };
    }
}
