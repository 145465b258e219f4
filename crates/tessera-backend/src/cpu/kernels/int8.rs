//! W8A8 int8 matmul: the packed weight layout, activation quantization and the
//! parallel driver shared by the scalar, AVX2 and AVX-512 VNNI tiles.
//!
//! Packed layout: output rows go in blocks of 16; within a block, each
//! 64-byte [`Line`] holds 4 consecutive inputs ("a quad") of all 16 rows,
//! `[row][input]`. One line is one `vpdpbusd` operand, and a broadcast quad of
//! activations multiplies it, giving the 16 rows' partial dots in 16 i32
//! lanes with no horizontal reduction. Each group is zero-padded to whole
//! quads (a ragged last group included) so group boundaries fall on lines;
//! missing rows of the last block are zero with zero scales. Bytes are stored
//! as `q ^ 0x80` (= `q + 128` as u8) because `vpdpbusd` wants its weight
//! operand unsigned; the +128 offset is undone per group with the activation
//! sum computed once at quantization time.

use super::{par_ranges, walk_tiles, SharedOut, TileSet};
use crate::cpu::features::{CpuFeatures, Int8Kernel};
use rayon::prelude::*;
use std::ops::Range;
use tessera_model::Int8Matrix;

/// Output rows per packed block: one 512-bit vector of i32 lanes.
pub(crate) const BLOCK_ROWS: usize = 16;
/// Inputs per packed step (the 4 bytes `vpdpbusd` sums per lane).
pub(crate) const QUAD: usize = 4;
/// Largest tile (rows x tokens) any ISA uses, for the stack buffer.
const MAX_TILE: usize = 16 * BLOCK_ROWS;
/// Activation bytes per token chunk the weights are swept for (fits L2).
const TOKEN_CHUNK_BYTES: usize = 512 << 10;
/// Quantize activation rows in parallel from this many tokens on.
const PAR_QUANT_MIN: usize = 8;

/// One packed step: inputs `4q..4q+4` of the block's 16 rows, offset by 128.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Line(pub [u8; BLOCK_ROWS * QUAD]);

/// Int8 weights in their run-time layout (see the module docs).
pub struct PackedInt8 {
    rows: usize,
    cols: usize,
    group: usize,
    /// Groups per row.
    groups: usize,
    /// Quads in a full (padded) group.
    group_quads: usize,
    /// Quads per row, all groups together.
    quads: usize,
    /// `[block][quad]`.
    lines: Vec<Line>,
    /// `[block][group][row in block]`.
    scales: Vec<f32>,
}

impl PackedInt8 {
    /// Repack a quantized matrix (parallel over blocks in the current pool).
    pub fn new(m: Int8Matrix) -> Self {
        let (rows, cols) = (m.rows, m.cols);
        let group = m.group.max(1);
        let groups = cols.div_ceil(group);
        assert_eq!(
            m.q.len(),
            rows * cols,
            "Int8Matrix values do not match its shape"
        );
        assert_eq!(
            m.scales.len(),
            rows * groups,
            "Int8Matrix scales do not match its shape"
        );
        let group_quads = group.div_ceil(QUAD);
        let last = cols - groups.saturating_sub(1) * group;
        let quads = groups.saturating_sub(1) * group_quads + last.div_ceil(QUAD);
        let blocks = rows.div_ceil(BLOCK_ROWS);
        // 0x80 is a zero weight: padding contributes nothing on every path.
        let mut lines = vec![Line([0x80; BLOCK_ROWS * QUAD]); blocks * quads];
        let mut scales = vec![0f32; blocks * groups * BLOCK_ROWS];
        if quads > 0 {
            let per_block = lines
                .par_chunks_mut(quads)
                .zip(scales.par_chunks_mut(groups * BLOCK_ROWS));
            per_block.enumerate().for_each(|(b, (bl, bs))| {
                for rr in 0..BLOCK_ROWS.min(rows - b * BLOCK_ROWS) {
                    let r = b * BLOCK_ROWS + rr;
                    for g in 0..groups {
                        let (c0, c1) = (g * group, ((g + 1) * group).min(cols));
                        let base = g * group_quads * QUAD;
                        for (i, &v) in m.q[r * cols + c0..r * cols + c1].iter().enumerate() {
                            bl[(base + i) / QUAD].0[rr * QUAD + (base + i) % QUAD] =
                                (v as u8) ^ 0x80;
                        }
                        bs[g * BLOCK_ROWS + rr] = m.scales[r * groups + g];
                    }
                }
            });
        }
        PackedInt8 {
            rows,
            cols,
            group,
            groups,
            group_quads,
            quads,
            lines,
            scales,
        }
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Inputs sharing one scale.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Row `r` back to f32 (`q * scale`, as `Int8Matrix::dequantize_row`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        let (b, rr) = (r / BLOCK_ROWS, r % BLOCK_ROWS);
        let (lines, scales) = (self.block_lines(b), self.block_scales(b));
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            let g = c / self.group;
            let p = g * self.group_quads * QUAD + c % self.group;
            let q = (lines[p / QUAD].0[rr * QUAD + p % QUAD] ^ 0x80) as i8;
            *o = q as f32 * scales[g * BLOCK_ROWS + rr];
        }
    }

    /// Bytes of the packed lines plus the scales: the weight's image size.
    pub fn image_len(&self) -> usize {
        std::mem::size_of_val(self.lines.as_slice()) + std::mem::size_of_val(self.scales.as_slice())
    }

    /// The packed lines and then the scales, as bytes (see `load_image`).
    pub fn write_image(&self, out: &mut [u8]) {
        let (l, s) = self.image_parts();
        out[..l.len()].copy_from_slice(l);
        out[l.len()..l.len() + s.len()].copy_from_slice(s);
    }

    /// Overwrite the lines and scales with an image of a weight of the same
    /// shape; `false` (and nothing written) when the length does not match.
    pub fn load_image(&mut self, image: &[u8]) -> bool {
        if image.len() != self.image_len() {
            return false;
        }
        let nl = std::mem::size_of_val(self.lines.as_slice());
        // SAFETY: `Line` is `repr(C)` bytes and f32 has no invalid bit
        // patterns, so any bytes are valid values; the lengths match exactly.
        let lines =
            unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), nl) };
        lines.copy_from_slice(&image[..nl]);
        let ns = image.len() - nl;
        let scales =
            unsafe { std::slice::from_raw_parts_mut(self.scales.as_mut_ptr().cast::<u8>(), ns) };
        scales.copy_from_slice(&image[nl..]);
        true
    }

    fn image_parts(&self) -> (&[u8], &[u8]) {
        // SAFETY: reading plain-old-data as bytes, lengths from size_of_val.
        unsafe {
            (
                std::slice::from_raw_parts(
                    self.lines.as_ptr().cast::<u8>(),
                    std::mem::size_of_val(self.lines.as_slice()),
                ),
                std::slice::from_raw_parts(
                    self.scales.as_ptr().cast::<u8>(),
                    std::mem::size_of_val(self.scales.as_slice()),
                ),
            )
        }
    }

    /// Number of 16-row blocks.
    pub(crate) fn blocks(&self) -> usize {
        self.rows.div_ceil(BLOCK_ROWS)
    }

    /// Groups per row.
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }

    /// Padded inputs per row (a multiple of [`QUAD`]).
    pub(crate) fn padded_cols(&self) -> usize {
        self.quads * QUAD
    }

    /// The quads (line indices within a block) of group `g`.
    pub(crate) fn quad_range(&self, g: usize) -> Range<usize> {
        let start = g * self.group_quads;
        let end = if g + 1 == self.groups {
            self.quads
        } else {
            start + self.group_quads
        };
        start..end
    }

    /// The lines of block `b`, one per quad.
    pub(crate) fn block_lines(&self, b: usize) -> &[Line] {
        &self.lines[b * self.quads..(b + 1) * self.quads]
    }

    /// The scales of block `b`, `[group][row in block]`.
    pub(crate) fn block_scales(&self, b: usize) -> &[f32] {
        let len = self.groups * BLOCK_ROWS;
        &self.scales[b * len..(b + 1) * len]
    }
}

/// Activations quantized once per matmul, in the weight's padded layout.
pub(crate) struct QuantActs {
    padded: usize,
    groups: usize,
    /// `[token][padded input]`, zero in the padding.
    q: Vec<i8>,
    /// `[token][group]`: `max|x| / 127`.
    scales: Vec<f32>,
    /// `[token][group]`: `128 * sum(q)`, what the weight offset adds to a dot.
    offset_sums: Vec<i32>,
}

impl QuantActs {
    /// Quantize `n` rows of `x` like `reference::quantize_row` with `w`'s grouping.
    pub fn new(x: &[f32], n: usize, w: &PackedInt8) -> Self {
        let (k, groups, padded) = (w.cols, w.groups, w.padded_cols());
        let mut acts = QuantActs {
            padded,
            groups,
            q: vec![0; n * padded],
            scales: vec![0.0; n * groups],
            offset_sums: vec![0; n * groups],
        };
        let one_row = |xr: &[f32], qr: &mut [i8], sr: &mut [f32], ur: &mut [i32]| {
            for g in 0..groups {
                let (c0, c1) = (g * w.group, ((g + 1) * w.group).min(k));
                let at = g * w.group_quads * QUAD;
                let (scale, sum) = quantize_group(&xr[c0..c1], &mut qr[at..at + (c1 - c0)]);
                sr[g] = scale;
                ur[g] = 128 * sum;
            }
        };
        let QuantActs {
            q,
            scales,
            offset_sums,
            ..
        } = &mut acts;
        if n >= PAR_QUANT_MIN {
            let rows = x.par_chunks_exact(k).zip(q.par_chunks_exact_mut(padded));
            let meta = scales
                .par_chunks_exact_mut(groups)
                .zip(offset_sums.par_chunks_exact_mut(groups));
            rows.zip(meta)
                .for_each(|((xr, qr), (sr, ur))| one_row(xr, qr, sr, ur));
        } else {
            let rows = x.chunks_exact(k).zip(q.chunks_exact_mut(padded));
            let meta = scales
                .chunks_exact_mut(groups)
                .zip(offset_sums.chunks_exact_mut(groups));
            rows.zip(meta)
                .for_each(|((xr, qr), (sr, ur))| one_row(xr, qr, sr, ur));
        }
        acts
    }

    /// Tokens held.
    pub fn tokens(&self) -> usize {
        self.q.len() / self.padded.max(1)
    }

    /// Token `t`'s quantized values (padded layout).
    pub fn token_q(&self, t: usize) -> &[i8] {
        &self.q[t * self.padded..(t + 1) * self.padded]
    }

    /// Token `t`'s per-group scales.
    pub fn token_scales(&self, t: usize) -> &[f32] {
        &self.scales[t * self.groups..(t + 1) * self.groups]
    }

    /// Token `t`'s per-group `128 * sum(q)`.
    pub fn token_offset_sums(&self, t: usize) -> &[i32] {
        &self.offset_sums[t * self.groups..(t + 1) * self.groups]
    }
}

/// Quantize one group exactly as `reference::quantize_row` does, in a form
/// the compiler vectorizes; returns the scale and the sum of the values.
#[inline]
fn quantize_group(src: &[f32], dst: &mut [i8]) -> (f32, i32) {
    let mut lanes = [0f32; 16];
    let mut chunks = src.chunks_exact(16);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let amax = chunks
        .remainder()
        .iter()
        .fold(lanes.iter().fold(0f32, |m, v| m.max(*v)), |m, v| {
            m.max(v.abs())
        });
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (d, v) in dst.iter_mut().zip(src) {
        let q = round_clamp(v * inv);
        *d = q as i8;
        sum += q;
    }
    (scale, sum)
}

/// `t.round().clamp(-127.0, 127.0) as i32` (half away from zero, NaN -> 0),
/// without the libm `roundf` call so that the loop vectorizes. Clamping
/// first is equivalent because 127 is an integer and rounding is monotone.
#[inline(always)]
fn round_clamp(t: f32) -> i32 {
    let t = t.clamp(-127.0, 127.0);
    let i = t as i32;
    // Exact: `t - trunc(t)` is representable for |t| <= 127.
    let frac = t - i as f32;
    i + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

/// A tile: `R` blocks from `block` x `T` tokens from `token` into `out`
/// (`[T][R][16]`). Implementations check their bounds; the only contract
/// left to the caller is that the CPU has the tile's target features.
pub(crate) type Int8TileFn =
    unsafe fn(w: &PackedInt8, block: usize, acts: &QuantActs, token: usize, out: &mut [f32]);

/// Tiles for a kernel; decode (one token) favours more rows per tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // `n` picks among SIMD tiles
fn tile_set(kernel: Int8Kernel, n: usize) -> TileSet<Int8TileFn> {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx512Vnni if n == 1 => super::int8_avx512::DECODE,
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx512Vnni => super::int8_avx512::PREFILL,
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 if n == 1 => super::int8_avx2::DECODE,
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 => super::int8_avx2::PREFILL,
        _ => super::int8_scalar::TILES,
    }
}

/// W8A8 product `out[n, m] = x[n, k] @ w^T` matching `reference::matmul_int8`:
/// each activation row is quantized once, dots are exact i32 per group and
/// combined as `sum_g (dot_g * sx_g) * sw_g` in f32, in group order.
pub fn matmul_int8(features: CpuFeatures, x: &[f32], n: usize, w: &PackedInt8, out: &mut [f32]) {
    let (m, k) = (w.rows, w.cols);
    assert_eq!(x.len(), n * k, "matmul_int8: x is not [{n}, {k}]");
    assert_eq!(out.len(), n * m, "matmul_int8: out is not [{n}, {m}]");
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let acts = QuantActs::new(x, n, w);
    let set = tile_set(features.int8_kernel(), n);
    let token_chunk = TOKEN_CHUNK_BYTES / acts.padded;
    let shared = SharedOut::new(out);
    let block_work = BLOCK_ROWS * acts.padded * n;
    par_ranges(w.blocks(), set.r, block_work, |range| {
        let mut buf = [0f32; MAX_TILE];
        walk_tiles(&set, range, n, token_chunk, |tile, b, r, t, tt| {
            let vals = &mut buf[..r * tt * BLOCK_ROWS];
            // SAFETY: `set` comes from `int8_kernel()`, which only selects
            // kernels whose target features the running CPU has.
            unsafe { tile(w, b, &acts, t, vals) };
            for ti in 0..tt {
                for ri in 0..r {
                    let row0 = (b + ri) * BLOCK_ROWS;
                    let count = m.saturating_sub(row0).min(BLOCK_ROWS);
                    let src = &vals[(ti * r + ri) * BLOCK_ROWS..][..count];
                    // SAFETY: each task owns the rows of its block range, for
                    // every token, so no two tasks write the same element.
                    unsafe { shared.write((t + ti) * m + row0, src) };
                }
            }
        });
    });
}
