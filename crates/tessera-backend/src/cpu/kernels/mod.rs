//! CPU kernels. Each is tested against `crate::reference` (tests/kernels.rs).
//!
//! Every kernel family has a portable version and SIMD versions picked at run
//! time from `CpuFeatures` (which never selects what the CPU lacks):
//!
//! | op            | AVX-512                       | AVX2                            | fallback |
//! |---------------|-------------------------------|---------------------------------|----------|
//! | `matmul_int8` | avx512f+bw+vnni `vpdpbusd`,   | avx2 `vpmaddubsw`+`vpmaddwd`,   | scalar,  |
//! |               | tiles 64x1 (n=1), 32x8        | tiles 32x1 (n=1), 16x3          | 16x1     |
//! | `matmul_f32`  | avx512f FMA, 8x1 / 4x4        | avx2+fma FMA, 8x1 / 4x2         | scalar   |
//! | `attend_one`  | avx512f dot / exp / wsum      | avx2+fma dot / exp / wsum       | scalar   |
//!
//! (Tiles are output rows x tokens per register block.) `attend_blocks` is
//! `attend_one` over a paged cache, with the same sums in the same order.
//!
//! The matmuls split the weight rows into ranges, one rayon task each (run in
//! the backend's pool), and walk each range in register tiles of a few weight
//! rows x a few tokens so that every weight load feeds several tokens.

mod attention;
mod f32_matmul;
#[cfg(target_arch = "x86_64")]
mod f32_simd;
mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_avx2;
#[cfg(target_arch = "x86_64")]
mod int8_avx512;
mod int8_scalar;

pub use attention::{attend_blocks, attend_one};
pub use f32_matmul::matmul_f32;
pub use int8::{matmul_int8, PackedInt8};

use rayon::prelude::*;
use std::marker::PhantomData;
use std::ops::Range;

/// One ISA's tile functions: `full` covers `r` units (weight rows or row
/// blocks) x `t` tokens; the others cover what is left at the end of a range.
pub(crate) struct TileSet<F> {
    pub r: usize,
    pub t: usize,
    pub full: F,
    /// 1 unit x `t` tokens.
    pub unit_tail: F,
    /// `r` units x 1 token.
    pub token_tail: F,
    /// 1 unit x 1 token.
    pub single: F,
}

/// Calls `visit(f, unit, r, token, t)` for tiles covering `units` x `0..n`.
/// Tokens go in chunks of `token_chunk` so one chunk's activations stay in
/// cache while the range's weights are swept once per chunk.
pub(crate) fn walk_tiles<F: Copy>(
    set: &TileSet<F>,
    units: Range<usize>,
    n: usize,
    token_chunk: usize,
    mut visit: impl FnMut(F, usize, usize, usize, usize),
) {
    // Whole tiles per chunk, so chunking adds no token tails.
    let chunk = token_chunk.max(set.t) / set.t * set.t;
    let mut c0 = 0;
    while c0 < n {
        let c1 = (c0 + chunk).min(n);
        let mut u = units.start;
        while u < units.end {
            let r = if u + set.r <= units.end { set.r } else { 1 };
            let mut t = c0;
            while t < c1 {
                let tt = if t + set.t <= c1 { set.t } else { 1 };
                let f = match (r == set.r, tt == set.t) {
                    (true, true) => set.full,
                    (false, true) => set.unit_tail,
                    (true, false) => set.token_tail,
                    (false, false) => set.single,
                };
                visit(f, u, r, t, tt);
                t += tt;
            }
            u += r;
        }
        c0 = c1;
    }
}

/// Weight bytes x tokens below which a task is not worth a rayon hand-off.
pub(crate) const MIN_TASK_WORK: usize = 64 << 10;

/// Runs `f` on consecutive sub-ranges of `0..units` in parallel, about four
/// per pool thread so work stealing can even out the load, but none smaller
/// than `MIN_TASK_WORK` (`unit_work` is one unit's share). Range boundaries
/// are multiples of `align` (except the end) so most tiles are full ones.
pub(crate) fn par_ranges(
    units: usize,
    align: usize,
    unit_work: usize,
    f: impl Fn(Range<usize>) + Sync + Send,
) {
    let align = align.max(1);
    let groups = units.div_ceil(align);
    let worth = (units * unit_work / MIN_TASK_WORK).max(1);
    let tasks = (rayon::current_num_threads() * 4).min(groups).min(worth);
    if tasks == 1 {
        f(0..units);
        return;
    }
    (0..tasks).into_par_iter().for_each(|i| {
        let (g0, g1) = (i * groups / tasks, (i + 1) * groups / tasks);
        f(g0 * align..(g1 * align).min(units));
    });
}

/// An output buffer that parallel tasks fill in disjoint pieces which are not
/// contiguous (each task owns a column range of every token's row).
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: `SharedOut` is a `&mut [f32]` whose writers promise (see `write`)
// to touch disjoint elements, so sharing it between threads cannot race.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub fn new(out: &'a mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// Copies `vals` to elements `at..at + vals.len()`.
    ///
    /// # Safety
    /// No other thread may read or write those elements while this runs.
    pub unsafe fn write(&self, at: usize, vals: &[f32]) {
        assert!(
            at + vals.len() <= self.len,
            "SharedOut::write out of bounds"
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(at), vals.len()) }
    }
}
