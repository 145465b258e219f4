//! CPU kernels. Each is tested against `crate::reference`.
//! Portable versions for now; SIMD variants are dispatched on `CpuFeatures`.

use super::features::CpuFeatures;
use rayon::prelude::*;
use tessera_model::Int8Matrix;

/// Int8 weights in their run-time layout.
pub struct PackedInt8 {
    m: Int8Matrix,
}

impl PackedInt8 {
    pub fn new(m: Int8Matrix) -> Self {
        PackedInt8 { m }
    }
    pub fn rows(&self) -> usize {
        self.m.rows
    }
    pub fn cols(&self) -> usize {
        self.m.cols
    }
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.m.dequantize_row(r, out)
    }
}

/// 8-lane f32 dot product the compiler vectorizes.
#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `out[n, m] = x[n, k] @ w[m, k]^T`, parallel over output columns.
pub fn matmul_f32(x: &[f32], n: usize, k: usize, w: &[f32], m: usize, out: &mut [f32]) {
    const BLOCK: usize = 16;
    let mut col_blocks: Vec<Vec<f32>> = (0..m.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let j0 = b * BLOCK;
            let j1 = (j0 + BLOCK).min(m);
            let mut part = vec![0f32; n * (j1 - j0)];
            for i in 0..n {
                let xr = &x[i * k..(i + 1) * k];
                for j in j0..j1 {
                    part[i * (j1 - j0) + (j - j0)] = dot_f32(xr, &w[j * k..(j + 1) * k]);
                }
            }
            part
        })
        .collect();
    for (b, part) in col_blocks.iter_mut().enumerate() {
        let j0 = b * BLOCK;
        let width = part.len() / n.max(1);
        for i in 0..n {
            out[i * m + j0..i * m + j0 + width].copy_from_slice(&part[i * width..(i + 1) * width]);
        }
    }
}

/// W8A8 product matching `reference::matmul_int8`.
pub fn matmul_int8(_features: CpuFeatures, x: &[f32], n: usize, w: &PackedInt8, out: &mut [f32]) {
    let r = crate::reference::matmul_int8(x, n, &w.m);
    out.copy_from_slice(&r);
}

/// One query row against `len` cached positions of one KV head
/// (`keys`/`vals` laid out `[position][head_dim]`).
pub fn attend_one(q: &[f32], keys: &[f32], vals: &[f32], len: usize, head_dim: usize, out: &mut [f32]) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut scores: Vec<f32> = (0..len)
        .map(|p| dot_f32(q, &keys[p * head_dim..(p + 1) * head_dim]) * scale)
        .collect();
    let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - mx).exp();
        sum += *s;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (p, s) in scores.iter().enumerate() {
        let wgt = s / sum;
        for (o, v) in out.iter_mut().zip(&vals[p * head_dim..(p + 1) * head_dim]) {
            *o += wgt * v;
        }
    }
}
