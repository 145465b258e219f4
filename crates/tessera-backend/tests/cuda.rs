//! CUDA backend vs the reference ops, on odd shapes. Without a GPU every test
//! prints "skipped: no CUDA device" and passes; on a GPU machine the device
//! script runs this binary (built here with `cargo test --no-run`).

use tessera_backend::cuda::{module, CudaBackend, CudaKvCache, CudaLinear, CudaTensor};
use tessera_backend::{reference, AttentionShape, Backend, BackendError, WeightDType};
use tessera_model::{HostTensor, Int8Matrix, INT8_GROUP};

/// The backend, or `None` after printing why the test is skipped.
fn backend(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(BackendError::Unavailable(what, why)) => {
            println!("{test}: skipped: no CUDA device ({what}: {why})");
            None
        }
        Err(e) => panic!("{test}: CUDA backend failed to start: {e}"),
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
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

fn host(rows: usize, cols: usize, seed: u64) -> HostTensor {
    HostTensor::new(vec![rows, cols], values(rows * cols, seed))
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
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

#[test]
fn kernels_compile_to_ptx_with_nvrtc() {
    // Needs only libnvrtc (e.g. the nvidia-cuda-nvrtc wheel on LD_LIBRARY_PATH), no GPU.
    match module::compile_ptx("compute_90") {
        Ok(ptx) => {
            for k in [
                "gemv_i8_1",
                "gemv_i8_8",
                "attention",
                "quantize_i8",
                "split_cols4",
            ] {
                assert!(ptx.contains(k), "PTX lacks {k}");
            }
            println!("NVRTC compiled {} bytes of PTX for compute_90", ptx.len());
            // For inspection with ptxas (registers, spills) on a build machine.
            if let Ok(path) = std::env::var("TESSERA_PTX_OUT") {
                std::fs::write(&path, &ptx).unwrap();
            }
        }
        Err(BackendError::Unavailable(what, why)) => println!("skipped: no NVRTC ({what}: {why})"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn new_without_gpu_is_a_clean_error() {
    match CudaBackend::new(0) {
        Ok(b) => println!("GPU present: {}", b.name()),
        Err(e) => {
            assert!(matches!(e, BackendError::Unavailable(..)), "{e}");
            println!("skipped: no CUDA device ({e})");
        }
    }
}

#[test]
fn upload_download_slice_split() {
    let Some(b) = backend("upload_download_slice_split") else {
        return;
    };
    let x = host(5, 21, 1);
    let d = b.upload(&x).unwrap();
    assert_eq!(b.dims(&d), (5, 21));
    assert_eq!(b.download(&d).unwrap(), x);
    let s = b.download(&b.slice_rows(&d, 2, 3).unwrap()).unwrap();
    assert_eq!(s.data, x.data[2 * 21..5 * 21]);
    assert!(b.slice_rows(&d, 4, 2).is_err());
    let widths = [3, 5, 7, 2, 4]; // five pieces: two launches
    let parts = b.split_cols(&d, &widths).unwrap();
    let mut c0 = 0;
    for (p, w) in parts.iter().zip(widths) {
        let got = b.download(p).unwrap();
        for r in 0..5 {
            assert_eq!(
                got.data[r * w..(r + 1) * w],
                x.data[r * 21 + c0..r * 21 + c0 + w]
            );
        }
        c0 += w;
    }
    assert!(b.split_cols(&d, &[3, 3]).is_err());
}

#[test]
fn elementwise_ops_match_reference() {
    let Some(b) = backend("elementwise_ops_match_reference") else {
        return;
    };
    for cols in [7usize, 1000, 4099] {
        let x = host(3, cols, 2);
        let w = host(1, cols, 3);
        let got = b
            .download(
                &b.rms_norm(&b.upload(&x).unwrap(), &b.upload(&w).unwrap(), 1e-5)
                    .unwrap(),
            )
            .unwrap();
        assert_close(
            &got.data,
            &reference::rms_norm(&x.data, cols, &w.data, 1e-5),
            1e-5,
            "rms_norm",
        );
    }
    let (x, y, bias) = (host(4, 37, 4), host(4, 37, 5), host(1, 37, 6));
    let mut dx = b.upload(&x).unwrap();
    b.add_assign(&mut dx, &b.upload(&y).unwrap()).unwrap();
    b.add_bias(&mut dx, &b.upload(&bias).unwrap()).unwrap();
    let want: Vec<f32> = (0..x.data.len())
        .map(|i| x.data[i] + y.data[i] + bias.data[i % 37])
        .collect();
    assert_close(
        &b.download(&dx).unwrap().data,
        &want,
        1e-6,
        "add_assign + add_bias",
    );
    assert!(b
        .add_assign(&mut dx, &b.upload(&host(4, 36, 1)).unwrap())
        .is_err());

    let gu = host(3, 2 * 45, 7);
    let got = b
        .download(&b.swiglu(&b.upload(&gu).unwrap()).unwrap())
        .unwrap();
    assert_eq!(got.shape, vec![3, 45]);
    assert_close(&got.data, &reference::swiglu(&gu.data, 90), 1e-5, "swiglu");

    for (heads, hd, start) in [(3usize, 10usize, 5usize), (4, 128, 1000)] {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let x = host(5, heads * hd, 8);
        let mut dx = b.upload(&x).unwrap();
        b.rope(&mut dx, heads, hd, start, &inv).unwrap();
        let mut want = x.data.clone();
        reference::rope(&mut want, heads, hd, start, &inv);
        assert_close(&b.download(&dx).unwrap().data, &want, 2e-5, "rope");
    }
}

#[test]
fn embedding_and_quantizer_are_exact() {
    let Some(b) = backend("embedding_and_quantizer_are_exact") else {
        return;
    };
    let table = host(50, 300, 9); // 300 = two groups + a ragged one, not a multiple of 16
    let ids: Vec<u32> = vec![49, 0, 7, 7, 23];
    let f = b.upload_linear(&table, WeightDType::F32).unwrap();
    let got = b.download(&b.embedding(&f, &ids).unwrap()).unwrap();
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            got.data[r * 300..(r + 1) * 300],
            table.data[id as usize * 300..(id as usize + 1) * 300]
        );
    }
    // Device quantization must equal the host quantizer bit for bit.
    let q = Int8Matrix::quantize(&table, INT8_GROUP);
    let i8w = b.upload_linear(&table, WeightDType::Int8).unwrap();
    let all: Vec<u32> = (0..50).collect();
    let got = b.download(&b.embedding(&i8w, &all).unwrap()).unwrap();
    let mut row = vec![0f32; 300];
    for r in 0..50 {
        q.dequantize_row(r, &mut row);
        assert_eq!(got.data[r * 300..(r + 1) * 300], row[..], "row {r}");
    }
    let one = b.download(&b.embedding(&i8w, &[17]).unwrap()).unwrap();
    assert_eq!(one.data, got.data[17 * 300..18 * 300]);
    assert!(b.embedding(&f, &[50]).is_err());
}

#[test]
fn matmul_f32_and_int8_match_reference() {
    let Some(mut b) = backend("matmul_f32_and_int8_match_reference") else {
        return;
    };
    for (m, k) in [(77usize, 333usize), (130, 1000), (64, 4096 + 128)] {
        let w = host(m, k, 10 + m as u64);
        let q = Int8Matrix::quantize(&w, INT8_GROUP);
        // W8A16 is exact f32 math on the dequantized weight.
        let mut deq = vec![0f32; m * k];
        for r in 0..m {
            q.dequantize_row(r, &mut deq[r * k..(r + 1) * k]);
        }
        let wf = b.upload_linear(&w, WeightDType::F32).unwrap();
        let wq = b.upload_linear(&w, WeightDType::Int8).unwrap();
        assert_eq!(b.linear_dims(&wq), (m, k));
        for n in [1usize, 2, 3, 5, 8, 9, 20] {
            let x = host(n, k, 100 + n as u64);
            let dx = b.upload(&x).unwrap();
            let got = b.download(&b.matmul(&dx, &wf).unwrap()).unwrap();
            assert_eq!(got.shape, vec![n, m]);
            let tol = 2e-5 * (k as f32).sqrt();
            assert_close(
                &got.data,
                &reference::matmul_f32(&x.data, n, k, &w.data, m),
                tol,
                "matmul f32",
            );
            // Every one-row GEMV variant (1, 2, 4 weight rows per warp).
            for rows in [None, Some(1), Some(2), Some(4)] {
                b.set_gemv_rows(rows);
                let got = b.download(&b.matmul(&dx, &wq).unwrap()).unwrap();
                let what = format!("matmul int8 n={n} m={m} k={k} rows/warp {rows:?}");
                let want = reference::matmul_f32(&x.data, n, k, &deq, m);
                assert_close(&got.data, &want, tol, &what);
            }
            b.set_gemv_rows(None);
        }
        assert!(b
            .matmul(&b.upload(&host(1, k + 1, 1)).unwrap(), &wq)
            .is_err());
    }
}

#[test]
fn fused_epilogues_match_unfused_and_reference() {
    let Some(mut b) = backend("fused_epilogues_match_unfused_and_reference") else {
        return;
    };
    let (k, inter) = (200usize, 90usize); // ragged k: vector and scalar tails
    let wgu = host(2 * inter, k, 31);
    let wo = host(k, k, 32);
    let deq = |w: &HostTensor| {
        let q = Int8Matrix::quantize(w, INT8_GROUP);
        let (m, k) = w.dims2();
        let mut d = vec![0f32; m * k];
        for r in 0..m {
            q.dequantize_row(r, &mut d[r * k..(r + 1) * k]);
        }
        d
    };
    let (dgu, dwo) = (deq(&wgu), deq(&wo));
    let mut results = Vec::new();
    for (fused, rows) in [
        (true, None),
        (true, Some(4)),
        (true, Some(2)),
        (false, None),
    ] {
        b.set_fusion(fused);
        b.set_gemv_rows(rows);
        let gu = b.upload_linear(&wgu, WeightDType::Int8).unwrap();
        let o = b.upload_linear(&wo, WeightDType::Int8).unwrap();
        for n in [1usize, 3, 8] {
            let x = host(n, k, 40 + n as u64);
            let dx = b.upload(&x).unwrap();
            // SwiGLU fused into the gate/up product.
            let m = b
                .download(&b.swiglu(&b.matmul(&dx, &gu).unwrap()).unwrap())
                .unwrap();
            let want = reference::swiglu(
                &reference::matmul_f32(&x.data, n, k, &dgu, 2 * inter),
                2 * inter,
            );
            assert_close(
                &m.data,
                &want,
                1e-4,
                &format!("fused swiglu n={n} fused={fused}"),
            );
            // Residual add fused into a product that reads the residual itself:
            // copy-on-write must keep the product's input intact.
            let mut r = b.upload(&x).unwrap();
            let y = b.matmul(&r, &o).unwrap();
            b.add_assign(&mut r, &y).unwrap();
            let prod = reference::matmul_f32(&x.data, n, k, &dwo, k);
            let want: Vec<f32> = x.data.iter().zip(&prod).map(|(a, p)| a + p).collect();
            let got = b.download(&r).unwrap();
            assert_close(
                &got.data,
                &want,
                1e-4,
                &format!("fused add n={n} fused={fused}"),
            );
            // The deferred product is still readable on its own, and equal.
            assert_close(
                &b.download(&y).unwrap().data,
                &prod,
                1e-4,
                "deferred product",
            );
            results.push((m.data, got.data));
        }
    }
    let half = results.len() / 2;
    assert_eq!(
        results[..half],
        results[half..],
        "fusion must not change a bit"
    );
}

#[test]
fn attention_prefill_and_decode_match_reference() {
    let Some(b) = backend("attention_prefill_and_decode_match_reference") else {
        return;
    };
    for (heads, kvh, hd, chunks) in [
        (6usize, 2usize, 40usize, vec![7usize, 1, 3]),
        (4, 4, 128, vec![300, 1, 1]),
        (8, 2, 64, vec![1, 1, 70]),
        (2, 1, 200, vec![5, 1]), // head_dim > 128: the other kernel variant
    ] {
        let total: usize = chunks.iter().sum();
        let shape = AttentionShape {
            num_heads: heads,
            num_kv_heads: kvh,
            head_dim: hd,
        };
        let layers = 2;
        let mut cache = b.kv_cache(layers, kvh, hd, total + 2).unwrap();
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        let mut start = 0;
        for (c, &n) in chunks.iter().enumerate() {
            let seed = 1000 * c as u64 + hd as u64;
            let (q, k, v) = (
                host(n, heads * hd, seed),
                host(n, kvh * hd, seed + 1),
                host(n, kvh * hd, seed + 2),
            );
            ks.extend_from_slice(&k.data);
            vs.extend_from_slice(&v.data);
            // Layer 1 only: layer 0 stays zero, which would show a wrong layer offset.
            b.kv_store(
                &mut cache,
                1,
                start,
                &b.upload(&k).unwrap(),
                &b.upload(&v).unwrap(),
            )
            .unwrap();
            let got = b
                .download(
                    &b.attention(&b.upload(&q).unwrap(), &cache, 1, start, shape)
                        .unwrap(),
                )
                .unwrap();
            let want = reference::attention(&q.data, &ks, &vs, start, heads, kvh, hd);
            assert_close(
                &got.data,
                &want,
                2e-5,
                &format!("attention h{heads}/{kvh} hd{hd} rows {n} at {start}"),
            );
            start += n;
        }
        let one = b.upload(&host(1, kvh * hd, 5)).unwrap();
        assert!(matches!(
            b.kv_store(&mut cache, 0, total + 2, &one, &one),
            Err(BackendError::CacheFull { .. })
        ));
    }
}

/// Not a correctness test: achieved weight bandwidth of the int8 GEMV on
/// 7B-layer shapes and the cost of one small kernel, printed as `BENCH` lines
/// for the device report (`cuda-tests --ignored bench`).
#[test]
#[ignore]
fn bench_gemv_and_small_ops() {
    let Some(mut b) = backend("bench_gemv_and_small_ops") else {
        return;
    };
    use std::time::Instant;
    // Deferred products would not run at all: time the plain kernel.
    b.set_fusion(false);
    for (m, k) in [(22016usize, 4096usize), (4096, 11008), (32000, 4096)] {
        let w = b.upload_linear(&host(m, k, 1), WeightDType::Int8).unwrap();
        let bytes = (m * k.div_ceil(16) * 16 + m * k.div_ceil(INT8_GROUP) * 4) as f64;
        for (n, rows) in [
            (1usize, None),
            (1, Some(1)),
            (1, Some(2)),
            (1, Some(4)),
            (8, None),
        ] {
            b.set_gemv_rows(rows);
            let x = b.upload(&host(n, k, 2)).unwrap();
            for _ in 0..3 {
                b.matmul(&x, &w).unwrap();
            }
            b.synchronize().unwrap();
            let iters = 50;
            let t = Instant::now();
            for _ in 0..iters {
                b.matmul(&x, &w).unwrap();
            }
            b.synchronize().unwrap();
            let secs = t.elapsed().as_secs_f64() / iters as f64;
            let r = rows.map(|r| format!("_r{r}")).unwrap_or_default();
            println!(
                "BENCH gemv_i8_{m}x{k}_n{n}{r}_gb_per_s {:.1}",
                bytes / secs / 1e9
            );
        }
        b.set_gemv_rows(None);
    }
    let x = b.upload(&host(1, 4096, 3)).unwrap();
    let g = b.upload(&host(1, 4096, 4)).unwrap();
    let iters = 500;
    let t = Instant::now();
    for _ in 0..iters {
        let mut y = b.rms_norm(&x, &g, 1e-5).unwrap();
        b.add_assign(&mut y, &x).unwrap();
    }
    b.synchronize().unwrap();
    println!(
        "BENCH small_op_us {:.2}",
        t.elapsed().as_secs_f64() * 1e6 / (2 * iters) as f64
    );
}

/// int8 weights of one llama2-7b layer plus the LM head.
struct Layer7b {
    qkv: CudaLinear,
    o: CudaLinear,
    gate_up: CudaLinear,
    down: CudaLinear,
    lm_head: CudaLinear,
    embed: CudaLinear,
    norm: CudaTensor,
}

const H7B: usize = 4096;

/// One decode step issued op by op exactly as the engine does.
fn step_7b(
    b: &CudaBackend,
    w: &Layer7b,
    cache: &mut CudaKvCache,
    pos: usize,
    inv: &[f32],
) -> Vec<f32> {
    let (h, heads, hd, layers) = (H7B, 32, 128, 32);
    let shape = AttentionShape {
        num_heads: heads,
        num_kv_heads: heads,
        head_dim: hd,
    };
    let mut x = b.embedding(&w.embed, &[(pos % 32000) as u32]).unwrap();
    for l in 0..layers {
        let hn = b.rms_norm(&x, &w.norm, 1e-5).unwrap();
        let t = b.matmul(&hn, &w.qkv).unwrap();
        let mut p = b.split_cols(&t, &[h, h, h]).unwrap().into_iter();
        let (mut q, mut k, v) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        b.rope(&mut q, heads, hd, pos, inv).unwrap();
        b.rope(&mut k, heads, hd, pos, inv).unwrap();
        b.kv_store(cache, l, pos, &k, &v).unwrap();
        let a = b.attention(&q, cache, l, pos, shape).unwrap();
        b.add_assign(&mut x, &b.matmul(&a, &w.o).unwrap()).unwrap();
        let hn = b.rms_norm(&x, &w.norm, 1e-5).unwrap();
        let m = b.swiglu(&b.matmul(&hn, &w.gate_up).unwrap()).unwrap();
        b.add_assign(&mut x, &b.matmul(&m, &w.down).unwrap())
            .unwrap();
    }
    let hn = b.rms_norm(&x, &w.norm, 1e-5).unwrap();
    b.download(&b.matmul(&hn, &w.lm_head).unwrap())
        .unwrap()
        .data
}

/// Not a correctness test: batch-1 decode steps of the llama2-7b shape with
/// one layer's int8 weights reused for all 32 layers (208 MB per layer, far
/// beyond L2, so the weight stream is real), fused and unfused. Separates
/// backend speed from the CLI; printed as `BENCH` lines.
#[test]
#[ignore]
fn bench_decode_step_llama2_7b_shape() {
    let Some(mut b) = backend("bench_decode_step_llama2_7b_shape") else {
        return;
    };
    use std::time::Instant;
    let (h, inter, vocab, hd) = (H7B, 11008usize, 32000usize, 128usize);
    let q8 = |b: &CudaBackend, m: usize, k: usize, seed: u64| {
        b.upload_linear(&host(m, k, seed), WeightDType::Int8)
            .unwrap()
    };
    let w = Layer7b {
        qkv: q8(&b, 3 * h, h, 1),
        o: q8(&b, h, h, 2),
        gate_up: q8(&b, 2 * inter, h, 3),
        down: q8(&b, h, inter, 4),
        lm_head: q8(&b, vocab, h, 5),
        embed: b
            .upload_linear(&host(vocab, h, 6), WeightDType::F32)
            .unwrap(),
        norm: b.upload(&HostTensor::new(vec![h], vec![1.0; h])).unwrap(),
    };
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let mut logits = Vec::new();
    for fused in [true, false] {
        b.set_fusion(fused);
        let mut cache = b.kv_cache(32, 32, hd, 512).unwrap();
        for pos in 0..128 {
            step_7b(&b, &w, &mut cache, pos, &inv); // a realistic context; warm-up
        }
        let iters = 64;
        let t = Instant::now();
        for pos in 128..128 + iters {
            step_7b(&b, &w, &mut cache, pos, &inv);
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        let tag = if fused { "" } else { "_unfused" };
        println!(
            "BENCH decode_step_7b_shape{tag}_tokens_per_s {:.1}",
            1.0 / secs
        );
        logits.push(step_7b(&b, &w, &mut cache, 128 + iters, &inv));
    }
    assert_eq!(logits[0], logits[1], "fusion changed the logits");
}
