//! The int8 weight format: symmetric, one f32 scale per group of consecutive
//! input values of one output row. Tessera quantizes with [`INT8_GROUP`]
//! (see docs/int8.md); the format allows any group up to [`MAX_INT8_GROUP`].
//!
//! Int4 weights are the same format with the values limited to `-8..=7`
//! (see [`quantize_group_int4`]), held in an [`Int8Matrix`] on the host;
//! devices that stream them pack two per byte (docs/int8.md).

use crate::HostTensor;
use rayon::prelude::*;

/// Group size Tessera quantizes with: one scale per 32 input values (docs/int8.md).
pub const INT8_GROUP: usize = 32;

/// Largest group the format (and every kernel) accepts.
pub const MAX_INT8_GROUP: usize = 128;

/// Largest int8 magnitude (`scale = max|w| / INT8_MAX`).
pub const INT8_MAX: i8 = 127;

/// Largest positive int4 value; passed to [`Int8Matrix::quantize_to`] it
/// selects int4 quantization (16 levels, `-8..=7`, [`quantize_group_int4`]).
pub const INT4_MAX: i8 = 7;

/// A `[rows, cols]` matrix quantized to int8 with per-row, per-group scales.
/// Row `r`, group `g` covers columns `g*group .. min((g+1)*group, cols)`; the
/// last group of a row may be shorter.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Matrix {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    /// `rows * cols` values, row-major.
    pub q: Vec<i8>,
    /// `rows * groups_per_row()` scales, row-major.
    pub scales: Vec<f32>,
}

/// Quantize one group: `scale = max|x| / 127`, values rounded to nearest.
/// Returns the scale. The single definition of int8 rounding, for weights and
/// (in the reference kernels) activations alike.
pub fn quantize_group(src: &[f32], dst: &mut [i8]) -> f32 {
    quantize_group_to(src, dst, INT8_MAX)
}

/// [`quantize_group`] onto `-max..=max` (`scale = max|x| / max`); for
/// `max == INT4_MAX` all 16 int4 levels (see [`quantize_group_int4`]).
pub fn quantize_group_to(src: &[f32], dst: &mut [i8], max: i8) -> f32 {
    if max == INT4_MAX {
        return quantize_group_int4(src, dst);
    }
    let levels = f32::from(max);
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / levels;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (d, v) in dst.iter_mut().zip(src) {
        *d = (v * inv).round().clamp(-levels, levels) as i8;
    }
    scale
}

/// Int4 with all 16 levels, `-8..=7` (llama.cpp's Q4_0 rule): the value of
/// largest magnitude, `v`, gets `scale = v / -8` and lands on -8 exactly;
/// the others round to nearest and clamp to `-8..=7`. The scale may be
/// negative.
pub fn quantize_group_int4(src: &[f32], dst: &mut [i8]) -> f32 {
    let v = src
        .iter()
        .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
    let scale = v / -8.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for (d, x) in dst.iter_mut().zip(src) {
        *d = (x * inv).round().clamp(-8.0, 7.0) as i8;
    }
    scale
}

impl Int8Matrix {
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group)
    }

    /// Quantize a 2-D f32 tensor: each group's scale is `max|w| / 127`, values
    /// are rounded to nearest. This is the reference quantizer.
    pub fn quantize(t: &HostTensor, group: usize) -> Int8Matrix {
        Self::quantize_to(t, group, INT8_MAX)
    }

    /// [`Int8Matrix::quantize`] onto `-max..=max`: `INT4_MAX` gives int4 weights.
    pub fn quantize_to(t: &HostTensor, group: usize, max: i8) -> Int8Matrix {
        let (rows, cols) = t.dims2();
        let group = group.clamp(1, MAX_INT8_GROUP);
        let gpr = cols.div_ceil(group);
        let mut q = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * gpr];
        if cols > 0 {
            // Rows are independent: quantize them in parallel (in the caller's
            // rayon pool), which a model load does for every weight.
            let rows_out = q.par_chunks_mut(cols).zip(scales.par_chunks_mut(gpr));
            rows_out
                .zip(t.data.par_chunks(cols))
                .for_each(|((q_row, s_row), x_row)| {
                    for (g, s) in s_row.iter_mut().enumerate() {
                        let (c0, c1) = (g * group, ((g + 1) * group).min(cols));
                        *s = quantize_group_to(&x_row[c0..c1], &mut q_row[c0..c1], max);
                    }
                });
        }
        Int8Matrix {
            rows,
            cols,
            group,
            q,
            scales,
        }
    }

    /// Back to f32 (for tests and for embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let gpr = self.groups_per_row();
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            *o = self.q[r * self.cols + c] as f32 * self.scales[r * gpr + c / self.group];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_roundtrip_error_is_within_half_a_step() {
        let cols = 300; // two full groups and a ragged one
        let data: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let t = HostTensor::new(vec![2, cols], data.clone());
        let m = Int8Matrix::quantize(&t, 128);
        assert_eq!(m.groups_per_row(), 3);
        let mut row = vec![0f32; cols];
        for r in 0..2 {
            m.dequantize_row(r, &mut row);
            for c in 0..cols {
                let step = m.scales[r * 3 + c / 128];
                assert!((row[c] - data[r * cols + c]).abs() <= step * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn int4_uses_sixteen_levels_and_rounds_to_the_nearest() {
        let cols = 70; // two full groups of 32 and a ragged one
        let data: Vec<f32> = (0..cols)
            .map(|i| ((i * 29 % 61) as f32 - 30.0) / 9.0)
            .collect();
        let t = HostTensor::new(vec![1, cols], data.clone());
        let m = Int8Matrix::quantize_to(&t, 32, INT4_MAX);
        assert!(m.q.iter().all(|&v| (-8..=7).contains(&v)));
        for g in 0..3 {
            let (c0, c1) = (g * 32, ((g + 1) * 32).min(cols));
            let grp = &data[c0..c1];
            let i = (0..grp.len()).fold(0, |b, i| if grp[i].abs() > grp[b].abs() { i } else { b });
            // The value of largest magnitude lands on -8 exactly (scale may be negative).
            assert_eq!(m.scales[g], grp[i] / -8.0);
            assert_eq!(m.q[c0 + i], -8);
        }
        let mut row = vec![0f32; cols];
        m.dequantize_row(0, &mut row);
        for c in 0..cols {
            let (err, step) = ((row[c] - data[c]).abs(), m.scales[c / 32].abs());
            // Half a step, or (clamped at +7, opposite the extreme) one step.
            let bound = if m.q[c] == 7 { step } else { step * 0.5 };
            assert!(err <= bound + 1e-6, "column {c}");
        }
        // int8 is the same quantizer with 127 levels.
        assert_eq!(
            Int8Matrix::quantize_to(&t, 32, INT8_MAX),
            Int8Matrix::quantize(&t, 32)
        );
    }

    #[test]
    fn zero_group_quantizes_to_zero() {
        let t = HostTensor::new(vec![1, 4], vec![0.0; 4]);
        let m = Int8Matrix::quantize(&t, 128);
        assert_eq!(m.q, vec![0; 4]);
        assert_eq!(m.scales, vec![0.0]);
    }
}
