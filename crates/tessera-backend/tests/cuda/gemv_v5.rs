//! GEMV v5 (int8 weights, activations as 22-bit fixed point per 16 elements,
//! integer dot products): opt-in because its bits differ from v1-v4, so it is
//! held to the f64 product of the dequantized weights instead, as closely as
//! the f32 variants; and, like them, fusion, recording and PDL must not
//! change a bit of its results.

use crate::gemv::SMALL;
use crate::support::{
    assert_close, assert_falls_back_to_v2, backend, dequant_i8, fused_layer_products, get, host,
    inv_freq, matmul_f64, step, step_tensor, step_token, worst_error, Weights,
};
use tessera_backend::cuda::GemvVariant;
use tessera_backend::{Backend, WeightDType};
use tessera_model::HostTensor;

/// Activations with the spread of real hidden states: a few outliers per
/// row, values near zero, a chunk of zeros.
fn spread_activations(n: usize, k: usize, seed: u64) -> HostTensor {
    let mut x = host(n, k, seed);
    for (i, v) in x.data.iter_mut().enumerate() {
        let j = i % k;
        if j % 97 == 5 {
            *v *= 300.0;
        } else if j % 13 == 7 {
            *v *= 1e-4;
        } else if (32..48).contains(&j) {
            *v = 0.0;
        }
    }
    x
}

#[test]
fn gemv_v5_is_as_close_to_the_exact_product_as_the_f32_variants() {
    let Some(mut b) = backend("gemv_v5_is_as_close_to_the_exact_product_as_the_f32_variants")
    else {
        return;
    };
    for (m, k) in [
        (77usize, 333usize),
        (130, 1000),
        (64, 4096 + 128),
        (40, 11008),
        (9000, 64), // 4 rows per warp from 8192 rows
        (33, 202),  // k % 4 != 0: activations staged element by element
    ] {
        let w = host(m, k, 20 + m as u64);
        let deq = dequant_i8(&w);
        let wd = b.upload_linear(&w, WeightDType::Int8).unwrap();
        for (name, x) in [
            ("uniform", host(1, k, 7 + k as u64)),
            ("spread", spread_activations(1, k, 8 + k as u64)),
        ] {
            let want = matmul_f64(&x.data, 1, k, &deq, m);
            let abs_x: Vec<f32> = x.data.iter().map(|v| v.abs()).collect();
            let abs_w: Vec<f32> = deq.iter().map(|v| v.abs()).collect();
            // The size of the terms, and the bound v5's rounding obeys: each
            // activation is within 2^-22 of its 16-element chunk's largest.
            let terms = matmul_f64(&abs_x, 1, k, &abs_w, m);
            let chunk_max: Vec<f32> = (0..k)
                .map(|j| {
                    abs_x[j / 16 * 16..((j / 16 + 1) * 16).min(k)]
                        .iter()
                        .cloned()
                        .fold(0f32, f32::max)
                })
                .collect();
            let bound = matmul_f64(&chunk_max, 1, k, &abs_w, m);
            let dx = b.upload(&x).unwrap();
            b.set_gemv_variant(Some(GemvVariant::V4));
            let f32_err = worst_error(&get(&b, &b.matmul(&dx, &wd).unwrap()), &want, &terms);
            b.set_gemv_variant(Some(GemvVariant::V5));
            let got = get(&b, &b.matmul(&dx, &wd).unwrap());
            let v5_err = worst_error(&got, &want, &terms);
            let v5_bound = worst_error(&got, &want, &bound);
            println!(
                "{m}x{k} {name}: worst error / sum|x w|: v4 (f32) {f32_err:.2e}, v5 {v5_err:.2e}; \
                 v5 error / sum(|w| chunk max|x|) {v5_bound:.2e}"
            );
            // 2^-22 = 2.4e-7 from the activations, plus the f32 rounding of
            // the chunk sums.
            assert!(
                v5_bound <= 2.4e-7 + 2.0 * f32_err,
                "{m}x{k} {name}: v5 error {v5_bound:.2e} of its bound (v4: {f32_err:.2e})"
            );
            if name == "uniform" {
                // Without outliers v5 is as close as the f32 variants.
                assert!(
                    v5_err <= 2.4e-7_f64.max(4.0 * f32_err),
                    "{m}x{k} {name}: v5 error {v5_err:.2e} (v4: {f32_err:.2e})"
                );
            }
            if name == "uniform" {
                // Rows past a 4-row group and the ragged last chunk are not dropped.
                let want32: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                assert_close(&got, &want32, 1e-5, &format!("v5 {m}x{k} {name}"));
            }
        }
        // n > 1 rows do not run v5; the forced choice falls back to v2 (same
        // bits as v1-v4).
        let dx2 = b.upload(&host(2, k, 3)).unwrap();
        assert_falls_back_to_v2(
            &mut b,
            GemvVariant::V5,
            &dx2,
            &wd,
            &format!("{m}x{k}, two rows"),
        );
    }
    // bf16 and int4 weights never run v5.
    for dtype in [WeightDType::BF16, WeightDType::Int4] {
        let w = b.upload_linear(&host(40, 256, 1), dtype).unwrap();
        let dx = b.upload(&host(1, 256, 2)).unwrap();
        assert_falls_back_to_v2(&mut b, GemvVariant::V5, &dx, &w, &format!("{dtype}"));
    }
    // A NaN or an infinity in the activations makes the products NaN, not a
    // finite guess.
    let w = b
        .upload_linear(&host(20, 100, 4), WeightDType::Int8)
        .unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = host(1, 100, 5);
        x.data[50] = bad;
        let got = get(&b, &b.matmul(&b.upload(&x).unwrap(), &w).unwrap());
        assert!(got.iter().all(|v| v.is_nan()), "{bad} in x: {got:?}");
    }
    b.set_gemv_variant(None);
}

#[test]
fn gemv_v5_fused_epilogues_and_norm_match_unfused() {
    let Some(mut b) = backend("gemv_v5_fused_epilogues_and_norm_match_unfused") else {
        return;
    };
    b.set_gemv_variant(Some(GemvVariant::V5));
    for (k, inter) in [(200usize, 90usize), (203, 64), (512, 300)] {
        let wgu = host(2 * inter, k, 31);
        let wo = host(k, k, 32);
        let nw = host(1, k, 33);
        let (dgu, dwo) = (dequant_i8(&wgu), dequant_i8(&wo));
        let x = host(1, k, 41);
        let mut results = Vec::new();
        for fused in [true, false] {
            b.set_fusion(fused);
            let what = format!("k={k} fused={fused}");
            let (dv, int8) = ((dgu.as_slice(), dwo.as_slice()), WeightDType::Int8);
            results.push(fused_layer_products(
                &b, &wgu, &wo, &nw, &x, dv, int8, &what,
            ));
        }
        assert!(
            results[0] == results[1],
            "k={k}: fused and unfused v5 differ in bits"
        );
    }
    b.set_fusion(true);
    b.set_gemv_variant(None);
}

/// Whole decode steps under v5: eager with and without fusion and PDL, and
/// replayed from a recording, all bit-identical; and within 1e-4 of v4's.
#[test]
fn gemv_v5_decode_steps_are_identical_eager_fused_and_recorded() {
    let Some(mut b) = backend("gemv_v5_decode_steps_are_identical_eager_fused_and_recorded") else {
        return;
    };
    let s = SMALL;
    let inv = inv_freq(s.head_dim);
    let steps = 7;
    let w = Weights::new(&b, s, WeightDType::Int8);
    let run_with = |b: &tessera_backend::cuda::CudaBackend, w: &Weights| {
        let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
        (0..steps)
            .map(|pos| step(b, w, s, &mut cache, pos, &inv))
            .collect::<Vec<_>>()
    };
    let run = |b: &tessera_backend::cuda::CudaBackend| run_with(b, &w);
    b.set_gemv_variant(Some(GemvVariant::V4));
    let f32_path = run(&b);
    b.set_gemv_variant(Some(GemvVariant::V5));
    let eager = run(&b);
    for (pos, (a, e)) in eager.iter().zip(&f32_path).enumerate() {
        assert_close(a, e, 1e-4, &format!("v5 vs v4 logits at position {pos}"));
    }
    assert!(eager != f32_path, "v5 ran the f32 kernels (identical bits)");
    for (fused, pdl) in [(false, false), (true, false)] {
        b.set_fusion(fused);
        b.set_pdl(pdl);
        assert!(
            run(&b) == eager,
            "v5 fused={fused} pdl={pdl} differs in bits"
        );
    }
    b.set_fusion(true);
    b.set_pdl(true);
    // Each layer in its own memory (as the decode benchmarks also run):
    // same values, so the same bits.
    let copies = Weights::new(&b, s, WeightDType::Int8).with_distinct_layers(s);
    assert_eq!(copies.copies.len(), s.layers - 1);
    assert!(
        run_with(&b, &copies) == eager,
        "v5 with distinct layer copies"
    );
    let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
    let mut got = vec![step(&b, &w, s, &mut cache, 0, &inv)];
    assert!(b.begin_step_graph(1, step_token(s, 1), s.vocab).unwrap());
    let logits = step_tensor(&b, &w, s, &mut cache, 1, &inv);
    let graph = b
        .end_step_graph(logits)
        .expect("recording a v5 decode step");
    for pos in 1..steps {
        got.push(
            b.replay_step_graph(&graph, pos, step_token(s, pos))
                .unwrap()
                .data,
        );
    }
    assert!(
        got == eager,
        "replayed v5 steps differ in bits from eager ones"
    );
    b.set_gemv_variant(None);
}

/// With `set_int8_decode_dp4a`, the per-shape timing includes v5 for int8
/// one-row products (only those), and its result passes the check against
/// the baseline.
#[test]
fn autotune_includes_v5_when_opted_in() {
    let Some(mut b) = backend("autotune_includes_v5_when_opted_in") else {
        return;
    };
    b.set_gemv_variant(None);
    b.set_int8_decode_dp4a(true);
    let w = host(300, 768, 5);
    let wd = b.upload_linear(&w, WeightDType::Int8).unwrap();
    let auto = get(
        &b,
        &b.matmul(&b.upload(&host(1, 768, 6)).unwrap(), &wd).unwrap(),
    );
    // Products are deferred until read.
    let wb = b.upload_linear(&w, WeightDType::BF16).unwrap();
    get(
        &b,
        &b.matmul(&b.upload(&host(1, 768, 6)).unwrap(), &wb).unwrap(),
    );
    get(
        &b,
        &b.matmul(&b.upload(&host(3, 768, 6)).unwrap(), &wd).unwrap(),
    );
    let t = b.gemv_tunings();
    assert_eq!(t.len(), 3, "{t:?}");
    let variants = |i: usize| t[i].micros.iter().map(|(v, _)| *v).collect::<Vec<_>>();
    assert!(variants(0).contains(&GemvVariant::V5), "{}", t[0]);
    assert!(t[0].micros.iter().all(|(_, us)| us.is_some()), "{}", t[0]);
    assert!(!variants(1).contains(&GemvVariant::V5), "bf16: {}", t[1]);
    assert!(!variants(2).contains(&GemvVariant::V5), "3 rows: {}", t[2]);
    b.set_gemv_variant(Some(t[0].chosen));
    assert_eq!(
        auto,
        get(
            &b,
            &b.matmul(&b.upload(&host(1, 768, 6)).unwrap(), &wd).unwrap()
        ),
        "auto ran its choice {}",
        t[0].chosen
    );
    b.set_int8_decode_dp4a(false);
}
