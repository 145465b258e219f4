//! Fast CPU kernels against `tessera_backend::reference`, on every kernel path
//! this machine supports (scalar always, then AVX2 and AVX-512 where present),
//! on shapes that are not multiples of the SIMD width, the packing block or
//! the quantization group; then the whole `CpuBackend` through `Backend`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_backend::cpu::features::{CpuFeatures, F32Kernel, Int8Kernel};
use tessera_backend::cpu::kernels::{attend_one, matmul_f32, matmul_int8, PackedInt8};
use tessera_backend::cpu::{CpuBackend, CpuTensor};
use tessera_backend::{reference, AttentionShape, Backend, WeightDType};
use tessera_model::{HostTensor, Int8Matrix, INT8_GROUP};

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn random(r: &mut StdRng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| r.random_range(-scale..scale)).collect()
}

/// Every kernel family the machine runs, each labelled by what it selects.
fn paths() -> Vec<(String, CpuFeatures)> {
    CpuFeatures::all_supported()
        .into_iter()
        .map(|f| (format!("{:?}/{:?}", f.int8_kernel(), f.f32_kernel()), f))
        .collect()
}

/// Asserts `got ~ want` elementwise: `rel * |want| + abs * mag[i]`, where
/// `mag[i]` bounds the size of the terms summed into element `i`.
fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = rel * w.abs() + abs * m + 1e-30;
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

/// `sum_c |x[i, c] * w[j, c]|`: the scale of the rounding error of out[i, j].
fn magnitudes(x: &[f32], n: usize, k: usize, w: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k).map(|c| (x[i * k + c] * w[j * k + c]).abs()).sum();
        }
    }
    out
}

fn dequantized(q: &Int8Matrix) -> Vec<f32> {
    let mut out = vec![0f32; q.rows * q.cols];
    for (r, row) in out.chunks_exact_mut(q.cols.max(1)).enumerate().take(q.rows) {
        q.dequantize_row(r, row);
    }
    out
}

/// `(rows, cols, group)`: ragged groups, rows off the 16-row block, tiny and
/// wide shapes, and non-default group sizes.
const INT8_SHAPES: &[(usize, usize, usize)] = &[
    (3, 77, 128),
    (5, 130, 128),
    (129, 33, 128),
    (17, 300, 128),
    (48, 576, 128),
    (33, 257, 32),
    (20, 100, 7),
    (16, 128, 128),
    (1, 5, 128),
    (70, 1536, 128),
];
const TOKENS: &[usize] = &[1, 2, 3, 4, 5, 9, 13];

fn check_int8(label: &str, f: CpuFeatures, x: &[f32], n: usize, q: &Int8Matrix) {
    let packed = PackedInt8::new(q.clone());
    let mut got = vec![f32::NAN; n * q.rows];
    matmul_int8(f, x, n, &packed, &mut got);
    let want = reference::matmul_int8(x, n, q);
    let mag = magnitudes(x, n, q.cols, &dequantized(q), q.rows);
    let what = format!(
        "{label} int8 [{n}, {}] x [{}, {}]^T g{}",
        q.cols, q.rows, q.cols, q.group
    );
    assert_close(&what, &got, &want, &mag, 1e-5, 1e-6);
}

#[test]
fn int8_matmul_matches_reference_on_odd_shapes() {
    let mut r = rng(1);
    for (label, f) in paths() {
        for &(m, k, group) in INT8_SHAPES {
            let w = HostTensor::new(vec![m, k], random(&mut r, m * k, 0.5));
            let q = Int8Matrix::quantize(&w, group);
            for &n in TOKENS {
                check_int8(&label, f, &random(&mut r, n * k, 2.0), n, &q);
            }
        }
    }
}

#[test]
fn matmuls_sweep_long_prompts_in_token_chunks() {
    // Enough tokens x inputs that the activations exceed one cache-sized
    // token chunk, so the weights are swept several times.
    let mut r = rng(10);
    let (n, m, k) = (300, 37, 2100);
    let (x, w) = (random(&mut r, n * k, 1.0), random(&mut r, m * k, 0.5));
    let q = Int8Matrix::quantize(&HostTensor::new(vec![m, k], w.clone()), INT8_GROUP);
    let mag = magnitudes(&x, n, k, &w, m);
    for (label, f) in paths() {
        check_int8(&label, f, &x, n, &q);
        let mut got = vec![f32::NAN; n * m];
        matmul_f32(f, &x, n, k, &w, m, &mut got);
        assert_close(
            &format!("{label} f32 long"),
            &got,
            &reference::matmul_f32(&x, n, k, &w, m),
            &mag,
            1e-4,
            1e-6,
        );
    }
}

#[test]
fn int8_matmul_handles_ties_zeros_and_extreme_weights() {
    let (m, k) = (21, 200);
    let mut r = rng(2);
    // Activations on exact .5 ties (scale 1 since max|x| = 127), an all-zero
    // group, and a huge group: rounding must be half away from zero.
    let mut x: Vec<f32> = (0..3 * k)
        .map(|i| ((i % 255) as f32 - 127.0) / 2.0)
        .collect();
    x[0] = 127.0;
    x[k..k + 128].fill(0.0);
    x[2 * k..3 * k].iter_mut().for_each(|v| *v *= 1e30);
    // Weights of every int8 value, -128 included (not produced by the
    // quantizer, but the packed format and all kernels take it).
    let q = Int8Matrix {
        rows: m,
        cols: k,
        group: 128,
        q: (0..m * k).map(|i| (i * 7 % 256) as u8 as i8).collect(),
        scales: random(&mut r, m * 2, 0.01),
    };
    for (label, f) in paths() {
        for n in 1..=3 {
            check_int8(&label, f, &x[..n * k], n, &q);
        }
    }
}

#[test]
fn packed_int8_dequantizes_like_int8_matrix() {
    let mut r = rng(3);
    for &(m, k, group) in INT8_SHAPES {
        let q = Int8Matrix::quantize(
            &HostTensor::new(vec![m, k], random(&mut r, m * k, 3.0)),
            group,
        );
        let packed = PackedInt8::new(q.clone());
        assert_eq!(
            (packed.rows(), packed.cols(), packed.group()),
            (m, k, group)
        );
        let (mut a, mut b) = (vec![0f32; k], vec![1f32; k]);
        for row in 0..m {
            q.dequantize_row(row, &mut a);
            packed.dequantize_row(row, &mut b);
            assert_eq!(a, b, "row {row} of [{m}, {k}] g{group}");
        }
    }
}

#[test]
fn f32_matmul_matches_reference_on_odd_shapes() {
    let mut r = rng(4);
    let shapes = [
        (3, 77),
        (5, 130),
        (129, 33),
        (17, 1),
        (8, 16),
        (13, 300),
        (64, 576),
        (9, 1031),
    ];
    for (label, f) in paths() {
        for &(m, k) in &shapes {
            let w = random(&mut r, m * k, 1.0);
            for &n in TOKENS.iter().chain(&[6, 8, 17]) {
                let x = random(&mut r, n * k, 1.0);
                let mut got = vec![f32::NAN; n * m];
                matmul_f32(f, &x, n, k, &w, m, &mut got);
                let want = reference::matmul_f32(&x, n, k, &w, m);
                let mag = magnitudes(&x, n, k, &w, m);
                assert_close(
                    &format!("{label} f32 [{n}, {k}] x [{m}, {k}]^T"),
                    &got,
                    &want,
                    &mag,
                    1e-4,
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn attend_one_matches_reference() {
    let mut r = rng(5);
    for (label, f) in paths() {
        for &hd in &[1usize, 7, 16, 17, 64, 80, 128] {
            for &len in &[1usize, 2, 15, 16, 17, 100, 333] {
                // Scale 8 gives scores in the hundreds: the softmax must not overflow.
                for scale in [1.0f32, 8.0] {
                    let q = random(&mut r, hd, scale);
                    let (k, v) = (
                        random(&mut r, len * hd, scale),
                        random(&mut r, len * hd, 1.0),
                    );
                    let mut got = vec![f32::NAN; hd];
                    attend_one(f, &q, &k, &v, len, hd, &mut got);
                    let want = reference::attention(&q, &k, &v, len - 1, 1, 1, hd);
                    let what = format!("{label} attention hd {hd} len {len} scale {scale}");
                    assert_close(&what, &got, &want, &vec![1.0; hd], 1e-4, 1e-5);
                }
            }
        }
    }
}

#[test]
fn kernel_selection_never_exceeds_the_cpu() {
    let all = CpuFeatures {
        avx2: true,
        fma: true,
        avx512f: true,
        avx512bw: true,
        avx512vnni: true,
        force_scalar: false,
    };
    let host = CpuFeatures::detect();
    if !host.avx512vnni || !host.avx512bw || !host.avx512f {
        assert_ne!(all.int8_kernel(), Int8Kernel::Avx512Vnni);
    }
    if !host.avx2 {
        assert_eq!(all.without_avx512().int8_kernel(), Int8Kernel::Scalar);
    }
    assert_eq!(CpuFeatures::scalar().int8_kernel(), Int8Kernel::Scalar);
    assert_eq!(CpuFeatures::scalar().f32_kernel(), F32Kernel::Scalar);
    assert_eq!(
        CpuFeatures {
            force_scalar: true,
            ..all
        }
        .int8_kernel_name(),
        "scalar"
    );
}

// ---- the whole backend through the `Backend` trait ----

fn upload(b: &CpuBackend, rows: usize, cols: usize, data: Vec<f32>) -> CpuTensor {
    b.upload(&HostTensor::new(vec![rows, cols], data)).unwrap()
}

#[test]
fn backend_matmul_f32_and_int8() {
    let b = CpuBackend::new(2).unwrap();
    let mut r = rng(6);
    for &(n, m, k) in &[(1, 96, 200), (5, 33, 130), (12, 40, 576)] {
        let (x, w) = (random(&mut r, n * k, 1.0), random(&mut r, m * k, 0.3));
        let wt = HostTensor::new(vec![m, k], w.clone());
        let xt = upload(&b, n, k, x.clone());

        let lin = b.upload_linear(&wt, WeightDType::F32).unwrap();
        assert_eq!(b.linear_dims(&lin), (m, k));
        let got = b.download(&b.matmul(&xt, &lin).unwrap()).unwrap();
        assert_eq!(got.shape, vec![n, m]);
        let mag = magnitudes(&x, n, k, &w, m);
        assert_close(
            "backend f32",
            &got.data,
            &reference::matmul_f32(&x, n, k, &w, m),
            &mag,
            1e-4,
            1e-6,
        );

        let lin = b.upload_linear(&wt, WeightDType::Int8).unwrap();
        let q = Int8Matrix::quantize(&wt, INT8_GROUP);
        let got = b.download(&b.matmul(&xt, &lin).unwrap()).unwrap();
        assert_close(
            "backend int8",
            &got.data,
            &reference::matmul_int8(&x, n, &q),
            &mag,
            1e-5,
            1e-6,
        );

        // Embedding rows are the dequantized weight rows.
        let ids = [0u32, (m - 1) as u32, 3];
        let emb = b.download(&b.embedding(&lin, &ids).unwrap()).unwrap();
        let deq = dequantized(&q);
        for (row, &id) in emb.data.chunks_exact(k).zip(&ids) {
            assert_eq!(row, &deq[id as usize * k..(id as usize + 1) * k]);
        }

        // bf16: f32 products on the weights rounded to bf16.
        let lin = b.upload_linear(&wt, WeightDType::BF16).unwrap();
        let wb: Vec<f32> = w.iter().map(|&v| reference::round_bf16(v)).collect();
        assert!(wb.iter().zip(&w).any(|(a, b)| a != b), "rounding happened");
        let got = b.download(&b.matmul(&xt, &lin).unwrap()).unwrap();
        let want = reference::matmul_f32(&x, n, k, &wb, m);
        assert_close("backend bf16", &got.data, &want, &mag, 1e-4, 1e-6);
    }
    assert_eq!("bf16".parse::<WeightDType>(), Ok(WeightDType::BF16));
    assert_eq!(WeightDType::BF16.to_string(), "bf16");
    assert_eq!(
        reference::round_bf16(1.0 + 1.0 / 256.0),
        1.0,
        "ties to even"
    );
    assert_eq!(reference::round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    let bad = upload(&b, 2, 3, vec![0.0; 6]);
    let lin = b
        .upload_linear(
            &HostTensor::new(vec![4, 5], vec![0.0; 20]),
            WeightDType::Int8,
        )
        .unwrap();
    assert!(b.matmul(&bad, &lin).is_err());
}

#[test]
fn backend_gqa_attention_over_the_kv_cache() {
    let b = CpuBackend::new(2).unwrap();
    let mut r = rng(7);
    let shape = AttentionShape {
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 20,
    };
    let (qw, kvw) = (
        shape.num_heads * shape.head_dim,
        shape.num_kv_heads * shape.head_dim,
    );
    let (layers, layer, capacity) = (2, 1, 16);
    let mut cache = b
        .kv_cache(layers, shape.num_kv_heads, shape.head_dim, capacity)
        .unwrap();
    let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
    let mut pos = 0;
    // A prefill chunk, a single decode step, then another chunk.
    for n in [5usize, 1, 3] {
        let (q, k, v) = (
            random(&mut r, n * qw, 1.5),
            random(&mut r, n * kvw, 1.5),
            random(&mut r, n * kvw, 1.0),
        );
        b.kv_store(
            &mut cache,
            layer,
            pos,
            &upload(&b, n, kvw, k.clone()),
            &upload(&b, n, kvw, v.clone()),
        )
        .unwrap();
        all_k.extend_from_slice(&k);
        all_v.extend_from_slice(&v);
        let got = b
            .attention(&upload(&b, n, qw, q.clone()), &cache, layer, pos, shape)
            .unwrap();
        let got = b.download(&got).unwrap();
        let want = reference::attention(
            &q,
            &all_k,
            &all_v,
            pos,
            shape.num_heads,
            shape.num_kv_heads,
            shape.head_dim,
        );
        assert_close(
            &format!("gqa attention at {pos}+{n}"),
            &got.data,
            &want,
            &vec![1.0; want.len()],
            1e-4,
            1e-5,
        );
        pos += n;
    }
    let too_many = upload(&b, capacity, kvw, vec![0.0; capacity * kvw]);
    assert!(b
        .kv_store(&mut cache, layer, pos, &too_many, &too_many)
        .is_err());
}

#[test]
fn backend_rope_rms_norm_swiglu() {
    let b = CpuBackend::new(2).unwrap();
    let mut r = rng(8);
    let (n, heads, hd) = (3, 4, 10);
    let x = random(&mut r, n * heads * hd, 2.0);
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 10000f32.powf(-2.0 * i as f32 / hd as f32))
        .collect();

    let mut t = upload(&b, n, heads * hd, x.clone());
    b.rope(&mut t, heads, hd, 7, &inv_freq).unwrap();
    let mut want = x.clone();
    reference::rope(&mut want, heads, hd, 7, &inv_freq);
    assert_close(
        "rope",
        &b.download(&t).unwrap().data,
        &want,
        &vec![1.0; want.len()],
        1e-5,
        1e-6,
    );
    assert!(b.rope(&mut t, heads, hd + 2, 0, &inv_freq).is_err());

    let cols = heads * hd;
    let w = random(&mut r, cols, 1.0);
    let got = b
        .rms_norm(
            &upload(&b, n, cols, x.clone()),
            &upload(&b, 1, cols, w.clone()),
            1e-5,
        )
        .unwrap();
    let want = reference::rms_norm(&x, cols, &w, 1e-5);
    assert_close(
        "rms_norm",
        &b.download(&got).unwrap().data,
        &want,
        &vec![1.0; want.len()],
        1e-5,
        1e-6,
    );

    let got = b.swiglu(&upload(&b, n, cols, x.clone())).unwrap();
    assert_eq!(b.dims(&got), (n, cols / 2));
    let want = reference::swiglu(&x, cols);
    assert_close(
        "swiglu",
        &b.download(&got).unwrap().data,
        &want,
        &vec![1.0; want.len()],
        1e-5,
        1e-6,
    );
    assert!(b.swiglu(&upload(&b, 1, 3, vec![0.0; 3])).is_err());
}

// ---- ad-hoc timing: cargo test --release -p tessera-backend --test kernels -- --ignored --nocapture ----

/// Best seconds of `f` over `reps` runs after a warm-up (the minimum, since
/// this shared 2-core machine is often busy with other builds).
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let s = std::time::Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "timing, not a check"]
fn attention_throughput() {
    let mut r = rng(11);
    let hd = 64;
    for (label, f) in paths() {
        for len in [128usize, 1024, 4096] {
            let (q, k, v) = (
                random(&mut r, hd, 1.0),
                random(&mut r, len * hd, 1.0),
                random(&mut r, len * hd, 1.0),
            );
            let mut out = vec![0f32; hd];
            let s = time(200, || attend_one(f, &q, &k, &v, len, hd, &mut out));
            println!(
                "attend_one {label:>18} hd {hd} len {len:>4}: {:>7.2} us ({:.1} ns/position)",
                s * 1e6,
                s * 1e9 / len as f64
            );
        }
    }
}

#[test]
#[ignore = "timing, not a check"]
fn int8_and_f32_throughput() {
    let mut r = rng(9);
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (label, f) in paths() {
            for &(m, k) in &[(576usize, 1536usize), (1536, 576), (49152, 576)] {
                let w = HostTensor::new(vec![m, k], random(&mut r, m * k, 0.5));
                let packed = PackedInt8::new(Int8Matrix::quantize(&w, INT8_GROUP));
                let reps = if m * k > 10_000_000 { 15 } else { 200 };
                for n in [1usize, 64] {
                    let x = random(&mut r, n * k, 1.0);
                    let mut out = vec![0f32; n * m];
                    let s = pool.install(|| {
                        time(reps / n.min(10), || {
                            matmul_int8(f, &x, n, &packed, &mut out)
                        })
                    });
                    let (gbs, gops) = ((m * k) as f64 / s / 1e9, (2 * n * m * k) as f64 / s / 1e9);
                    println!(
                        "int8 {label:>18} {threads}t [{m:>5}x{k:>4}] n={n:<3} {:>8.1} us  {gbs:6.1} GB/s weights  {gops:7.1} GOPS",
                        s * 1e6
                    );
                }
                for n in [1usize, 64] {
                    let x = random(&mut r, n * k, 1.0);
                    let mut out = vec![0f32; n * m];
                    let s = pool.install(|| {
                        time(reps / 4 / n.min(10) + 3, || {
                            matmul_f32(f, &x, n, k, &w.data, m, &mut out)
                        })
                    });
                    let (gbs, gflops) = (
                        (4 * m * k) as f64 / s / 1e9,
                        (2 * n * m * k) as f64 / s / 1e9,
                    );
                    println!(
                        "f32  {label:>18} {threads}t [{m:>5}x{k:>4}] n={n:<3} {:>8.1} us  {gbs:6.1} GB/s weights  {gflops:7.1} GFLOPS",
                        s * 1e6
                    );
                }
            }
        }
    }
}
