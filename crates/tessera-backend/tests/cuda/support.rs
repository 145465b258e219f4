//! Helpers shared by the CUDA tests and benchmarks.

use tessera_backend::cuda::{CudaBackend, CudaLinear, CudaTensor};
use tessera_backend::{reference, AttentionShape, Backend, BackendError, WeightDType};
use tessera_model::{HostTensor, Int8Matrix, INT4_MAX, INT8_GROUP, INT8_MAX};

/// The backend, or `None` after printing why the test is skipped.
/// With `TESSERA_REQUIRE_CUDA=1` (the emulator run, `scripts/cuda-emu.sh
/// test`) a missing GPU fails the test instead.
pub fn backend(test: &str) -> Option<CudaBackend> {
    let required = std::env::var("TESSERA_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(BackendError::Unavailable(what, why)) if !required => {
            println!("{test}: skipped: no CUDA device ({what}: {why})");
            None
        }
        Err(e) => panic!("{test}: CUDA backend failed to start: {e}"),
    }
}

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn host(rows: usize, cols: usize, seed: u64) -> HostTensor {
    HostTensor::new(vec![rows, cols], values(rows * cols, seed))
}

/// Every element within `tol` relative error (`|g - w| / (1 + |w|)`).
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / (1.0 + w.abs());
        // NaN must count as the worst error.
        if err > worst.1 || err.is_nan() {
            worst = (i, err);
        }
    }
    assert!(
        worst.1 <= tol, // false for NaN
        "{what}: element {} is {} vs {} (rel err {})",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1
    );
}

/// The f32 values an int8 upload of `w` holds.
pub fn dequant_i8(w: &HostTensor) -> Vec<f32> {
    dequant(w, INT8_MAX)
}

/// The f32 values an int4 upload of `w` holds.
pub fn dequant_i4(w: &HostTensor) -> Vec<f32> {
    dequant(w, INT4_MAX)
}

/// `w` quantized by the host quantizer onto `-max..=max` (int4: `-8..=7`), as f32.
fn dequant(w: &HostTensor, max: i8) -> Vec<f32> {
    let q = Int8Matrix::quantize_to(w, INT8_GROUP, max);
    let (m, k) = w.dims2();
    let mut d = vec![0f32; m * k];
    for r in 0..m {
        q.dequantize_row(r, &mut d[r * k..(r + 1) * k]);
    }
    d
}

/// The f32 values a bf16 upload of `w` holds.
pub fn round_bf16(w: &HostTensor) -> Vec<f32> {
    w.data.iter().map(|&v| reference::round_bf16(v)).collect()
}

/// Download a tensor's values.
pub fn get(b: &CudaBackend, t: &<CudaBackend as Backend>::Tensor) -> Vec<f32> {
    b.download(t).expect("download").data
}

/// A Llama-shaped model for step tests and benchmarks.
#[derive(Clone, Copy)]
pub struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub vocab: usize,
    pub layers: usize,
}

/// llama2-7b.
pub const LLAMA2_7B: Shape = Shape {
    hidden: 4096,
    heads: 32,
    kv_heads: 32,
    head_dim: 128,
    inter: 11008,
    vocab: 32000,
    layers: 32,
};

/// One layer's weights (reused for every layer: each layer's matrices are
/// still streamed from memory, as a 7B layer is far larger than L2) plus the
/// LM head, an f32 embedding and one norm weight. `with_distinct_layers`
/// gives every layer its own copy (same values, other memory), as a real
/// model has: with one shared copy, part of a layer's matrices may still sit
/// in L2 when the next layer reads them.
pub struct Weights {
    pub qkv: CudaLinear,
    pub o: CudaLinear,
    pub gate_up: CudaLinear,
    pub down: CudaLinear,
    pub lm_head: CudaLinear,
    pub embed: CudaLinear,
    pub norm: CudaTensor,
    /// Layers 1.. own copies of [qkv, o, gate_up, down] (empty: shared).
    pub copies: Vec<[CudaLinear; 4]>,
}

/// A device copy of a quantized or bf16 weight (same values, its own memory).
pub fn copy_linear(w: &CudaLinear) -> CudaLinear {
    use std::sync::Arc;
    use tessera_backend::cuda::{Bf16Weight, Int8Weight};
    match w {
        CudaLinear::Int8(q) => CudaLinear::Int8(Arc::new(Int8Weight {
            bits: q.bits,
            rows: q.rows,
            cols: q.cols,
            kp: q.kp,
            gpr: q.gpr,
            q: q.q.try_clone().expect("copy"),
            scales: q.scales.try_clone().expect("copy"),
        })),
        CudaLinear::Bf16(q) => CudaLinear::Bf16(Arc::new(Bf16Weight {
            rows: q.rows,
            cols: q.cols,
            kp: q.kp,
            w: q.w.try_clone().expect("copy"),
        })),
        CudaLinear::F32 { .. } => panic!("copy_linear: f32 weights are not copied"),
    }
}

impl Weights {
    /// Give every layer after the first its own copy of the layer matrices.
    pub fn with_distinct_layers(mut self, s: Shape) -> Weights {
        self.copies = (1..s.layers)
            .map(|_| {
                [
                    copy_linear(&self.qkv),
                    copy_linear(&self.o),
                    copy_linear(&self.gate_up),
                    copy_linear(&self.down),
                ]
            })
            .collect();
        self
    }

    /// Layer l's [qkv, o, gate_up, down].
    pub fn layer(&self, l: usize) -> [&CudaLinear; 4] {
        match l.checked_sub(1).and_then(|i| self.copies.get(i)) {
            Some([q, o, g, d]) => [q, o, g, d],
            None => [&self.qkv, &self.o, &self.gate_up, &self.down],
        }
    }

    pub fn new(b: &CudaBackend, s: Shape, dtype: WeightDType) -> Weights {
        let up = |m: usize, k: usize, seed: u64| {
            // Scaled like a real model, so activations stay O(1) over the layers.
            let mut t = host(m, k, seed);
            let scale = 1.0 / (k as f32).sqrt();
            t.data.iter_mut().for_each(|v| *v *= scale);
            b.upload_linear(&t, dtype).expect("upload")
        };
        let (h, q) = (s.hidden, s.heads * s.head_dim);
        let kv = s.kv_heads * s.head_dim;
        Weights {
            qkv: up(q + 2 * kv, h, 1),
            o: up(h, q, 2),
            gate_up: up(2 * s.inter, h, 3),
            down: up(h, s.inter, 4),
            lm_head: up(s.vocab, h, 5),
            embed: b
                .upload_linear(&host(s.vocab, h, 6), WeightDType::F32)
                .expect("upload"),
            norm: b
                .upload(&HostTensor::new(vec![h], vec![1.0; h]))
                .expect("upload"),
            copies: Vec::new(),
        }
    }

    /// Weight bytes one decode step streams.
    pub fn bytes_per_step(&self, s: Shape) -> usize {
        s.layers * (self.qkv.bytes() + self.o.bytes() + self.gate_up.bytes() + self.down.bytes())
            + self.lm_head.bytes()
    }
}

/// RoPE frequencies for `head_dim`.
pub fn inv_freq(head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32))
        .collect()
}

/// One decode step at `pos`, issued op by op exactly as the engine does;
/// returns the logits.
pub fn step(
    b: &CudaBackend,
    w: &Weights,
    s: Shape,
    cache: &mut <CudaBackend as Backend>::KvCache,
    pos: usize,
    inv: &[f32],
) -> Vec<f32> {
    get(b, &step_tensor(b, w, s, cache, pos, inv))
}

/// The token a test step at `pos` feeds in.
pub fn step_token(s: Shape, pos: usize) -> u32 {
    (pos % s.vocab) as u32
}

/// As [`step`], leaving the logits on the device (for recording a step).
pub fn step_tensor(
    b: &CudaBackend,
    w: &Weights,
    s: Shape,
    cache: &mut <CudaBackend as Backend>::KvCache,
    pos: usize,
    inv: &[f32],
) -> CudaTensor {
    rows_tensor(b, w, s, cache, pos, 1, inv)
}

/// A forward step over `n` tokens at positions `pos..pos + n` (prefill when
/// n > 1), in the engine's op order; the last row's logits, on the device.
pub fn rows_tensor(
    b: &CudaBackend,
    w: &Weights,
    s: Shape,
    cache: &mut <CudaBackend as Backend>::KvCache,
    pos: usize,
    n: usize,
    inv: &[f32],
) -> CudaTensor {
    let (hd, nh, nkv) = (s.head_dim, s.heads, s.kv_heads);
    let shape = AttentionShape {
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
    };
    let ids: Vec<u32> = (pos..pos + n).map(|p| step_token(s, p)).collect();
    let mut x = b.embedding(&w.embed, &ids).unwrap();
    for l in 0..s.layers {
        let [wqkv, wo, wgu, wdown] = w.layer(l);
        let hn = b.rms_norm(&x, &w.norm, 1e-5).unwrap();
        let t = b.matmul(&hn, wqkv).unwrap();
        let mut p = b
            .split_cols(&t, &[nh * hd, nkv * hd, nkv * hd])
            .unwrap()
            .into_iter();
        let (mut q, mut k, v) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        b.rope(&mut q, nh, hd, pos, inv).unwrap();
        b.rope(&mut k, nkv, hd, pos, inv).unwrap();
        b.kv_store(cache, l, pos, &k, &v).unwrap();
        let a = b.attention(&q, cache, l, pos, shape).unwrap();
        b.add_assign(&mut x, &b.matmul(&a, wo).unwrap()).unwrap();
        let hn = b.rms_norm(&x, &w.norm, 1e-5).unwrap();
        let m = b.swiglu(&b.matmul(&hn, wgu).unwrap()).unwrap();
        b.add_assign(&mut x, &b.matmul(&m, wdown).unwrap()).unwrap();
    }
    let last = b.slice_rows(&x, n - 1, 1).unwrap();
    let hn = b.rms_norm(&last, &w.norm, 1e-5).unwrap();
    b.matmul(&hn, &w.lm_head).unwrap()
}

/// y = x w^T in f64 (`x` is `[n, k]`, `w` is `[m, k]`).
pub fn matmul_f64(x: &[f32], n: usize, k: usize, w: &[f32], m: usize) -> Vec<f64> {
    let mut y = vec![0f64; n * m];
    for i in 0..n {
        for o in 0..m {
            y[i * m + o] = (0..k)
                .map(|j| x[i * k + j] as f64 * w[o * k + j] as f64)
                .sum();
        }
    }
    y
}

/// Largest `|got - want| / scale` over the elements.
pub fn worst_error(got: &[f32], want: &[f64], scale: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((g, w), s)| (*g as f64 - w).abs() / s.max(f64::MIN_POSITIVE))
        .fold(0f64, f64::max)
}

/// With `forced` chosen, `x @ w` gives v2's bits: the product is one `forced`
/// does not run (it falls back to v2). Leaves `forced` chosen.
pub fn assert_falls_back_to_v2(
    b: &mut CudaBackend,
    forced: tessera_backend::cuda::GemvVariant,
    x: &<CudaBackend as Backend>::Tensor,
    w: &<CudaBackend as Backend>::Linear,
    what: &str,
) {
    b.set_gemv_variant(Some(forced));
    let got = get(b, &b.matmul(x, w).unwrap());
    b.set_gemv_variant(Some(tessera_backend::cuda::GemvVariant::V2));
    let v2 = get(b, &b.matmul(x, w).unwrap());
    b.set_gemv_variant(Some(forced));
    assert!(got == v2, "{what} under {forced}: not v2's bits");
}

/// The fused paths of one layer with the backend's current settings, checked
/// against the reference: RMSNorm + gate/up product + SwiGLU, and RMSNorm +
/// o_proj product + residual add into the product's own input (copy-on-write
/// must keep that input intact). `dgu`/`dwo` are the values the device
/// weights hold. Returns the SwiGLU output, the norm and the residual, for
/// comparisons of bits between settings.
#[allow(clippy::too_many_arguments)]
pub fn fused_layer_products(
    b: &CudaBackend,
    wgu: &HostTensor,
    wo: &HostTensor,
    nw: &HostTensor,
    x: &HostTensor,
    (dgu, dwo): (&[f32], &[f32]),
    dtype: WeightDType,
    what: &str,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, k) = (x.shape[0], x.shape[1]);
    let inter2 = wgu.shape[0];
    let gu = b.upload_linear(wgu, dtype).unwrap();
    let o = b.upload_linear(wo, dtype).unwrap();
    let dn = b.upload(nw).unwrap();
    let xn = reference::rms_norm(&x.data, k, &nw.data, 1e-5);
    let dx = b.upload(x).unwrap();
    // RMSNorm and SwiGLU fused into the gate/up product.
    let hn = b.rms_norm(&dx, &dn, 1e-5).unwrap();
    let m = get(b, &b.swiglu(&b.matmul(&hn, &gu).unwrap()).unwrap());
    let want = reference::swiglu(&reference::matmul_f32(&xn, n, k, dgu, inter2), inter2);
    assert_close(&m, &want, 1e-4, &format!("swiglu {what}"));
    // The norm a GEMV fused is still readable, and equal.
    let hn_vals = get(b, &hn);
    assert_close(&hn_vals, &xn, 1e-5, &format!("norm {what}"));
    // Residual add fused into a product of the residual's own norm.
    let mut r = b.upload(x).unwrap();
    let y = b.matmul(&b.rms_norm(&r, &dn, 1e-5).unwrap(), &o).unwrap();
    b.add_assign(&mut r, &y).unwrap();
    let prod = reference::matmul_f32(&xn, n, k, dwo, k);
    let want: Vec<f32> = x.data.iter().zip(&prod).map(|(a, p)| a + p).collect();
    let got = get(b, &r);
    assert_close(&got, &want, 1e-4, &format!("fused add {what}"));
    // The deferred product is still readable on its own.
    assert_close(&get(b, &y), &prod, 1e-4, &format!("deferred {what}"));
    (m, hn_vals, got)
}
