//! Plain, obviously correct versions of every op, on host slices. Fast CPU
//! kernels and the CUDA backend are tested against these.

// Index loops are kept on purpose: the reference must read like the math.
#![allow(clippy::needless_range_loop)]

use tessera_model::{quantize_group, Int8Matrix};

/// Hugging Face's LlamaRMSNorm in f32: `w * (x / sqrt(mean(x^2) + eps))`.
pub fn rms_norm(x: &[f32], cols: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / cols as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(row).zip(w) {
            *o = g * (v * inv);
        }
    }
    out
}

/// `x [n, k] @ w[m, k]^T -> [n, m]`, f64 accumulation.
pub fn matmul_f32(x: &[f32], n: usize, k: usize, w: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let mut acc = 0f64;
            for t in 0..k {
                acc += x[i * k + t] as f64 * w[j * k + t] as f64;
            }
            out[i * m + j] = acc as f32;
        }
    }
    out
}

/// `v` rounded to bfloat16 (nearest even) and back: what a bf16 weight holds.
pub fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// Quantize one activation row to int8 with the weight's grouping
/// (`max|x| / 127` per group, round to nearest). Returns values and scales.
pub fn quantize_row(x: &[f32], group: usize) -> (Vec<i8>, Vec<f32>) {
    let groups = x.len().div_ceil(group);
    let mut q = vec![0i8; x.len()];
    let mut s = vec![0f32; groups];
    for g in 0..groups {
        let c0 = g * group;
        let c1 = (c0 + group).min(x.len());
        s[g] = quantize_group(&x[c0..c1], &mut q[c0..c1]);
    }
    (q, s)
}

/// W8A8 product: activations quantized per group like the weight, exact i32
/// dot products per group, then `sum_g dot_g * sx_g * sw_g`.
pub fn matmul_int8(x: &[f32], n: usize, w: &Int8Matrix) -> Vec<f32> {
    let (k, m) = (w.cols, w.rows);
    let gpr = w.groups_per_row();
    let mut out = vec![0f32; n * m];
    for i in 0..n {
        let (xq, xs) = quantize_row(&x[i * k..(i + 1) * k], w.group);
        for j in 0..m {
            let mut acc = 0f32;
            for g in 0..gpr {
                let c0 = g * w.group;
                let c1 = (c0 + w.group).min(k);
                let dot: i32 = (c0..c1).map(|c| xq[c] as i32 * w.q[j * k + c] as i32).sum();
                acc += dot as f32 * xs[g] * w.scales[j * gpr + g];
            }
            out[i * m + j] = acc;
        }
    }
    out
}

/// `silu(gate) * up` where each row is `[gate | up]`.
pub fn swiglu(gate_up: &[f32], cols2: usize) -> Vec<f32> {
    let m = cols2 / 2;
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(cols2) {
        for c in 0..m {
            let g = row[c];
            out.push(g / (1.0 + (-g).exp()) * row[m + c]);
        }
    }
    out
}

/// Rotate-half RoPE, row `i` at position `start_pos + i`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, start_pos: usize, inv_freq: &[f32]) {
    let half = head_dim / 2;
    let width = heads * head_dim;
    for (i, row) in x.chunks_exact_mut(width).enumerate() {
        let pos = (start_pos + i) as f32;
        for h in 0..heads {
            let v = &mut row[h * head_dim..(h + 1) * head_dim];
            for d in 0..half {
                let angle = pos * inv_freq[d];
                let (sin, cos) = angle.sin_cos();
                let (a, b) = (v[d], v[d + half]);
                v[d] = a * cos - b * sin;
                v[d + half] = b * cos + a * sin;
            }
        }
    }
}

/// Causal GQA attention. `k`, `v` hold positions `0..total` as
/// `[total, kv_heads*head_dim]`; `q` row `i` sits at position `start_pos + i`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start_pos: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let n = q.len() / (heads * head_dim);
    let group = heads / kv_heads;
    let kvw = kv_heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    for i in 0..n {
        let last = start_pos + i;
        for h in 0..heads {
            let kh = h / group;
            let qv = &q[(i * heads + h) * head_dim..][..head_dim];
            let scores: Vec<f64> = (0..=last)
                .map(|p| {
                    let kv = &k[p * kvw + kh * head_dim..][..head_dim];
                    qv.iter()
                        .zip(kv)
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let sum: f64 = exps.iter().sum();
            let o = &mut out[(i * heads + h) * head_dim..][..head_dim];
            for (p, e) in exps.iter().enumerate() {
                let vv = &v[p * kvw + kh * head_dim..][..head_dim];
                for d in 0..head_dim {
                    o[d] += (e / sum * vv[d] as f64) as f32;
                }
            }
        }
    }
    out
}
