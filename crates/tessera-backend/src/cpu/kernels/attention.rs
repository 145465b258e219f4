//! Attention of one query row over one KV head: scores, a max-shifted softmax
//! and the weighted sum of values, with SIMD dot / exp / weighted sum per ISA.
//!
//! The score buffer is a per-thread scratch `Vec` (the backend runs this on
//! its pool threads), so after warm-up the hot path never allocates.

use crate::cpu::features::{CpuFeatures, F32Kernel};
use std::cell::RefCell;

thread_local! {
    /// Scores of the current call; grows to the longest context seen.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One query row `q` against `len` cached positions of one KV head
/// (`keys`/`vals` laid out `[position][head_dim]`), written to `out`.
pub fn attend_one(
    features: CpuFeatures,
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    len: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    assert!(
        keys.len() >= len * head_dim && vals.len() >= len * head_dim,
        "attend_one: cache shorter than len"
    );
    let (k, v) = (&keys[..len * head_dim], &vals[..len * head_dim]);
    // One block holding every position: the same sums as any block size that
    // is a multiple of 4 (see `attend_blocks`).
    attend_blocks(features, q, &[k], &[v], len.max(1), len, head_dim, out);
}

/// As `attend_one`, over a paged cache: position `p` is row `p % block_rows`
/// of `keys[p / block_rows]` (each block `[block_rows][head_dim]`, the last
/// may be cut short after position `len - 1`). With `block_rows` a multiple
/// of 4 the result is bit-identical to `attend_one` over the same positions
/// laid out contiguously: every sum runs in the same order.
#[allow(clippy::too_many_arguments)] // the kernel's whole input, flat like attend_one's
pub fn attend_blocks(
    features: CpuFeatures,
    q: &[f32],
    keys: &[&[f32]],
    vals: &[&[f32]],
    block_rows: usize,
    len: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    assert!(
        q.len() == head_dim && out.len() == head_dim,
        "attend_one: q/out are not head_dim long"
    );
    assert!(block_rows > 0, "attend_blocks: blocks of 0 positions");
    let nblocks = len.div_ceil(block_rows);
    assert!(
        keys.len() >= nblocks && vals.len() >= nblocks,
        "attend_blocks: {} / {} blocks for {len} positions of {block_rows}",
        keys.len(),
        vals.len()
    );
    if len == 0 || head_dim == 0 {
        out.fill(0.0);
        return;
    }
    let rows_in = |b: usize| (len - b * block_rows).min(block_rows);
    for (b, (k, v)) in keys.iter().zip(vals).take(nblocks).enumerate() {
        let want = rows_in(b) * head_dim;
        assert!(
            k.len() >= want && v.len() >= want,
            "attend_blocks: block {b} shorter than its {} positions",
            rows_in(b)
        );
    }
    let job = Job {
        q,
        keys: &keys[..nblocks],
        vals: &vals[..nblocks],
        block_rows,
        len,
        head_dim,
    };
    let kernel = features.f32_kernel();
    SCORES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scores) => {
            scores.resize(len, 0.0);
            run(kernel, &job, out, &mut scores[..len]);
        }
        // Only reachable if a caller nests attention inside attention on one
        // thread; stay correct at the price of an allocation.
        Err(_) => run(kernel, &job, out, &mut vec![0.0; len]),
    });
}

/// The inputs of one call: `len` positions in blocks of `block_rows`
/// (exactly `len.div_ceil(block_rows)` blocks, each long enough).
struct Job<'a> {
    q: &'a [f32],
    keys: &'a [&'a [f32]],
    vals: &'a [&'a [f32]],
    block_rows: usize,
    len: usize,
    head_dim: usize,
}

impl Job<'_> {
    /// Positions held by block `b`.
    #[inline(always)]
    fn rows_in(&self, b: usize) -> usize {
        (self.len - b * self.block_rows).min(self.block_rows)
    }
}

/// Rows of `len` positions in blocks, in position order.
#[inline(always)]
fn rows<'a>(
    blocks: &'a [&'a [f32]],
    block_rows: usize,
    hd: usize,
) -> impl Iterator<Item = &'a [f32]> + 'a {
    blocks
        .iter()
        .flat_map(move |b| b.chunks_exact(hd).take(block_rows))
}

fn run(kernel: F32Kernel, job: &Job, out: &mut [f32], scores: &mut [f32]) {
    match kernel {
        // SAFETY: `f32_kernel()` only selects kernels the running CPU has.
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx512 => unsafe { simd::attend_avx512(job, out, scores) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx2Fma => unsafe { simd::attend_avx2(job, out, scores) },
        // SAFETY: the portable lanes need no CPU features.
        _ => unsafe { attend::<Portable>(job, out, scores) },
    }
}

/// The vector primitives attention is made of.
trait Lanes {
    /// `sum a[i] * b[i]` over equal-length slices.
    ///
    /// # Safety
    /// The CPU must have the implementation's target features.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `out = sum_p weights[p] * vals[p]`, position `p` being row
    /// `p % block_rows` of block `p / block_rows` (`[block_rows][out.len()]`),
    /// summed in the same order whatever the blocking (for `block_rows` a
    /// multiple of 4). `vals` holds exactly the blocks `weights` needs.
    ///
    /// # Safety
    /// As for `dot`.
    unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], vals: &[&[f32]], block_rows: usize);
    /// `s[i] = exp(s[i] - shift)`; returns the sum of the new values.
    ///
    /// # Safety
    /// As for `dot`.
    unsafe fn exp_shifted(s: &mut [f32], shift: f32) -> f32;
}

/// The shared algorithm; inlined into each `#[target_feature]` entry point so
/// the `Lanes` calls compile with that ISA.
///
/// # Safety
/// The CPU must have `L`'s target features.
#[inline(always)]
unsafe fn attend<L: Lanes>(job: &Job, out: &mut [f32], scores: &mut [f32]) {
    let hd = job.head_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut max = f32::NEG_INFINITY;
    let mut at = 0;
    for (b, block) in job.keys.iter().enumerate() {
        let rows = job.rows_in(b);
        let dst = &mut scores[at..at + rows];
        for (s, k) in dst.iter_mut().zip(block[..rows * hd].chunks_exact(hd)) {
            // SAFETY: forwarded from the caller.
            *s = unsafe { L::dot(job.q, k) } * scale;
            max = max.max(*s);
        }
        at += rows;
    }
    // Shifting by the max keeps every exponent <= 0: no overflow, and the
    // largest term is exactly 1 so the sum is >= 1.
    // SAFETY: forwarded from the caller.
    let sum = unsafe { L::exp_shifted(scores, max) };
    // SAFETY: forwarded from the caller.
    unsafe { L::weighted_sum(out, scores, job.vals, job.block_rows) };
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Plain Rust; the compiler vectorizes `dot` for the baseline ISA.
struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::f32_matmul::dot(a, b)
    }

    #[inline(always)]
    unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], vals: &[&[f32]], block_rows: usize) {
        out.fill(0.0);
        for (block, w) in vals.iter().zip(weights.chunks(block_rows)) {
            for (&a, v) in w.iter().zip(block.chunks_exact(out.len())) {
                out.iter_mut().zip(v).for_each(|(o, v)| *o += a * v);
            }
        }
    }

    #[inline(always)]
    unsafe fn exp_shifted(s: &mut [f32], shift: f32) -> f32 {
        s.iter_mut().fold(0.0, |sum, v| {
            *v = (*v - shift).exp();
            sum + *v
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! AVX-512 and AVX2+FMA lanes. `exp` is a Cephes-style range reduction
    //! (`x = n ln2 + r`, |r| <= ln2/2) with a degree-6 polynomial: about 1 ulp
    //! over the softmax range, checked against f64 `exp` in the tests below.

    use super::{attend, rows, Job, Lanes};
    use std::arch::x86_64::*;

    const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 split so `n * LN2_HI` is exact for the `n` that occur.
    const LN2_HI: f32 = 355.0 / 512.0;
    #[allow(clippy::excessive_precision)] // Cephes' published digits
    const LN2_LO: f32 = -2.121_944_40e-4;
    /// Cephes `expf` coefficients of `(exp(r) - 1 - r) / r^2`, highest first.
    #[allow(clippy::excessive_precision)] // Cephes' published digits
    const POLY: [f32; 6] = [
        1.987_569_150_0e-4,
        1.398_199_950_7e-3,
        8.333_451_907_3e-3,
        4.166_579_589_4e-2,
        1.666_666_545_9e-1,
        5.000_000_120_1e-1,
    ];

    /// # Safety
    /// The CPU must have avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_avx512(job: &Job, out: &mut [f32], scores: &mut [f32]) {
        // SAFETY: this function's features are `Avx512`'s.
        unsafe { attend::<Avx512>(job, out, scores) }
    }

    /// # Safety
    /// The CPU must have avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend_avx2(job: &Job, out: &mut [f32], scores: &mut [f32]) {
        // SAFETY: this function's features are `Avx2`'s.
        unsafe { attend::<Avx2>(job, out, scores) }
    }

    pub(super) struct Avx512;

    impl Lanes for Avx512 {
        #[inline(always)]
        unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: the caller guarantees avx512f.
            unsafe { dot512(a, b) }
        }
        #[inline(always)]
        unsafe fn weighted_sum(
            out: &mut [f32],
            weights: &[f32],
            vals: &[&[f32]],
            block_rows: usize,
        ) {
            // SAFETY: the caller guarantees avx512f.
            unsafe { weighted_sum512(out, weights, vals, block_rows) }
        }
        #[inline(always)]
        unsafe fn exp_shifted(s: &mut [f32], shift: f32) -> f32 {
            // SAFETY: the caller guarantees avx512f.
            unsafe { exp_shifted512(s, shift) }
        }
    }

    /// Mask of the first `n` (< 16) lanes.
    #[inline(always)]
    fn head_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn dot512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut c = 0;
        // SAFETY (all loads): c + 16 <= n, or the mask covers only c..n.
        while c + 32 <= n {
            acc0 = _mm512_fmadd_ps(
                unsafe { _mm512_loadu_ps(&a[c]) },
                unsafe { _mm512_loadu_ps(&b[c]) },
                acc0,
            );
            acc1 = _mm512_fmadd_ps(
                unsafe { _mm512_loadu_ps(&a[c + 16]) },
                unsafe { _mm512_loadu_ps(&b[c + 16]) },
                acc1,
            );
            c += 32;
        }
        if c + 16 <= n {
            acc0 = _mm512_fmadd_ps(
                unsafe { _mm512_loadu_ps(&a[c]) },
                unsafe { _mm512_loadu_ps(&b[c]) },
                acc0,
            );
            c += 16;
        }
        if c < n {
            let m = head_mask(n - c);
            let (va, vb) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m, a[c..].as_ptr()),
                    _mm512_maskz_loadu_ps(m, b[c..].as_ptr()),
                )
            };
            acc1 = _mm512_fmadd_ps(va, vb, acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// Column strips of 16 outer, positions inner: the strip's sum stays in
    /// registers (4 chains to cover FMA latency) instead of round-tripping
    /// through `out` once per position. Chain `u` takes positions `p % 4 == u`
    /// (blocks of a multiple of 4 positions keep that), the ragged end chains 0..
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn weighted_sum512(out: &mut [f32], weights: &[f32], vals: &[&[f32]], block_rows: usize) {
        let hd = out.len();
        let mut c = 0;
        while c < hd {
            let m = if c + 16 <= hd {
                0xffff
            } else {
                head_mask(hd - c)
            };
            let mut acc = [_mm512_setzero_ps(); 4];
            for (block, w) in vals.iter().zip(weights.chunks(block_rows)) {
                let rows = w.len();
                let block = &block[..rows * hd];
                // SAFETY: the mask keeps every load inside row p's columns c..hd,
                // and p < rows.
                let load =
                    |p: usize| unsafe { _mm512_maskz_loadu_ps(m, block.as_ptr().add(p * hd + c)) };
                let mut p = 0;
                if rows == 16 {
                    // A full pool block: a constant trip count, unrolled.
                    for g in 0..4 {
                        for (u, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(w[4 * g + u]), load(4 * g + u), *a);
                        }
                    }
                    p = 16;
                }
                while p + 4 <= rows {
                    for (u, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(w[p + u]), load(p + u), *a);
                    }
                    p += 4;
                }
                for (a, q) in acc.iter_mut().zip(p..rows) {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(w[q]), load(q), *a);
                }
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            // SAFETY: the mask keeps the store inside out[c..hd].
            unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), m, sum) };
            c += 16;
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp_shifted512(s: &mut [f32], shift: f32) -> f32 {
        let sh = _mm512_set1_ps(shift);
        let mut sum = _mm512_setzero_ps();
        let mut c = 0;
        while c < s.len() {
            let m = if c + 16 <= s.len() {
                0xffff
            } else {
                head_mask(s.len() - c)
            };
            // SAFETY: the mask covers only elements c..len.
            let v = unsafe { _mm512_maskz_loadu_ps(m, s[c..].as_ptr()) };
            let e = exp512(_mm512_sub_ps(v, sh));
            sum = _mm512_mask_add_ps(sum, m, sum, e);
            // SAFETY: as above.
            unsafe { _mm512_mask_storeu_ps(s[c..].as_mut_ptr(), m, e) };
            c += 16;
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `exp` of 16 lanes; `scalef` applies `2^n` and underflows gracefully.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn exp512(x: __m512) -> __m512 {
        // Below -104 the result is 0 in f32; the clamp keeps -inf from making NaN.
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
            _mm512_set1_ps(88.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let y = _mm512_add_ps(
            _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        _mm512_scalef_ps(y, n)
    }

    pub(super) struct Avx2;

    impl Lanes for Avx2 {
        #[inline(always)]
        unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: the caller guarantees avx2 and fma.
            unsafe { dot256(a, b) }
        }
        #[inline(always)]
        unsafe fn weighted_sum(
            out: &mut [f32],
            weights: &[f32],
            vals: &[&[f32]],
            block_rows: usize,
        ) {
            // SAFETY: the caller guarantees avx2 and fma.
            unsafe { weighted_sum256(out, weights, vals, block_rows) }
        }
        #[inline(always)]
        unsafe fn exp_shifted(s: &mut [f32], shift: f32) -> f32 {
            // SAFETY: the caller guarantees avx2 and fma.
            unsafe { exp_shifted256(s, shift) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn dot256(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut c = 0;
        // SAFETY (all loads): c + 8 <= n.
        while c + 16 <= n {
            acc0 = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(&a[c]) },
                unsafe { _mm256_loadu_ps(&b[c]) },
                acc0,
            );
            acc1 = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(&a[c + 8]) },
                unsafe { _mm256_loadu_ps(&b[c + 8]) },
                acc1,
            );
            c += 16;
        }
        if c + 8 <= n {
            acc0 = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(&a[c]) },
                unsafe { _mm256_loadu_ps(&b[c]) },
                acc0,
            );
            c += 8;
        }
        let tail: f32 = a[c..n].iter().zip(&b[c..n]).map(|(x, y)| x * y).sum();
        super::super::f32_simd::hsum256(_mm256_add_ps(acc0, acc1)) + tail
    }

    /// As `weighted_sum512`, in strips of 8; leftover columns go scalar.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn weighted_sum256(out: &mut [f32], weights: &[f32], vals: &[&[f32]], block_rows: usize) {
        let hd = out.len();
        let mut c = 0;
        while c + 8 <= hd {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (block, w) in vals.iter().zip(weights.chunks(block_rows)) {
                let rows = w.len();
                let block = &block[..rows * hd];
                // SAFETY: c + 8 <= hd and p < rows keep every load inside row p.
                let load = |p: usize| unsafe { _mm256_loadu_ps(block.as_ptr().add(p * hd + c)) };
                let mut p = 0;
                if rows == 16 {
                    // A full pool block: a constant trip count, unrolled.
                    for g in 0..4 {
                        for (u, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(_mm256_set1_ps(w[4 * g + u]), load(4 * g + u), *a);
                        }
                    }
                    p = 16;
                }
                while p + 4 <= rows {
                    for (u, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_set1_ps(w[p + u]), load(p + u), *a);
                    }
                    p += 4;
                }
                for (a, q) in acc.iter_mut().zip(p..rows) {
                    *a = _mm256_fmadd_ps(_mm256_set1_ps(w[q]), load(q), *a);
                }
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            // SAFETY: c + 8 <= hd.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), sum) };
            c += 8;
        }
        for (j, o) in out.iter_mut().enumerate().skip(c) {
            *o = weights
                .iter()
                .zip(rows(vals, block_rows, hd))
                .map(|(w, v)| w * v[j])
                .sum();
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp_shifted256(s: &mut [f32], shift: f32) -> f32 {
        let sh = _mm256_set1_ps(shift);
        let mut sum = _mm256_setzero_ps();
        let mut chunks = s.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly 8 f32.
            unsafe {
                let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), sh));
                sum = _mm256_add_ps(sum, e);
                _mm256_storeu_ps(c.as_mut_ptr(), e);
            }
        }
        // The ragged end goes through the same polynomial via a padded copy.
        let rest = chunks.into_remainder();
        let mut tail = [0f32; 8];
        tail[..rest.len()].copy_from_slice(rest);
        // SAFETY: `tail` holds exactly 8 f32.
        unsafe {
            _mm256_storeu_ps(
                tail.as_mut_ptr(),
                exp256(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), sh)),
            )
        };
        rest.copy_from_slice(&tail[..rest.len()]);
        super::super::f32_simd::hsum256(sum) + rest.iter().sum::<f32>()
    }

    /// `exp` of 8 lanes; `2^n` is built in the exponent bits, so inputs below
    /// the normal range (exp < 2^-126) return 0.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn exp256(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.33);
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(pow2)))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::simd::{exp256, exp512};
    use crate::cpu::features::{CpuFeatures, F32Kernel};
    use std::arch::x86_64::*;

    /// Relative error of the vector exps against f64 over the softmax range.
    fn check(exp: impl Fn(&[f32; 16]) -> [f32; 16]) {
        let mut worst = 0f64;
        for i in 0..20_000 {
            let xs: [f32; 16] =
                std::array::from_fn(|l| -90.0 + (i * 16 + l) as f32 * (95.0 / 320_000.0));
            for (x, y) in xs.iter().zip(exp(&xs)) {
                let want = (*x as f64).exp();
                if *x > -87.0 {
                    worst = worst.max(((y as f64) - want).abs() / want);
                } else {
                    assert!(y as f64 <= 2e-38, "exp({x}) = {y}");
                }
            }
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    #[test]
    fn vector_exp_is_accurate() {
        let f = CpuFeatures::detect();
        if f.f32_kernel() == F32Kernel::Avx512 {
            check(|xs| {
                let mut out = [0f32; 16];
                // SAFETY: avx512f is present (checked above); 16-lane arrays.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_loadu_ps(xs.as_ptr()))) };
                out
            });
        }
        if f.without_avx512().f32_kernel() == F32Kernel::Avx2Fma {
            check(|xs| {
                let mut out = [0f32; 16];
                for h in 0..2 {
                    // SAFETY: avx2+fma are present (checked above); 8-lane halves.
                    unsafe {
                        _mm256_storeu_ps(
                            out[8 * h..].as_mut_ptr(),
                            exp256(_mm256_loadu_ps(xs[8 * h..].as_ptr())),
                        )
                    };
                }
                out
            });
        }
    }
}
