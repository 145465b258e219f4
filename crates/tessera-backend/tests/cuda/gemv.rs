//! GEMV variants (v1, v2, v3; int8 and bf16) against the reference and
//! against each other (the variants promise identical bits), fused epilogues
//! and fused RMSNorm, PDL, and the per-shape timing.

use crate::support::{
    assert_close, backend, dequant_i4, dequant_i8, fused_layer_products, get, host, inv_freq,
    round_bf16, step, step_tensor, step_token, Shape, Weights,
};
use tessera_backend::cuda::GemvVariant;
use tessera_backend::{reference, Backend, WeightDType};
use tessera_model::HostTensor;

/// The variants that run products with `dtype`.
fn variants(dtype: WeightDType) -> Vec<GemvVariant> {
    GemvVariant::ALL
        .into_iter()
        .filter(|v| v.supports_dtype(dtype))
        .collect()
}

/// The f32 values the device weight holds.
fn device_values(w: &HostTensor, dtype: WeightDType) -> Vec<f32> {
    match dtype {
        WeightDType::Int8 => dequant_i8(w),
        WeightDType::Int4 => dequant_i4(w),
        WeightDType::BF16 => round_bf16(w),
        WeightDType::F32 => w.data.clone(),
    }
}

#[test]
fn gemv_variants_match_reference_and_each_other() {
    let Some(mut b) = backend("gemv_variants_match_reference_and_each_other") else {
        return;
    };
    for dtype in [WeightDType::Int8, WeightDType::BF16, WeightDType::Int4] {
        // Ragged k, k beyond one v3 stage, and k = 11008 (activations staged
        // in shared memory for one row, read from global memory for more).
        for (m, k) in [
            (77usize, 333usize),
            (130, 1000),
            (64, 4096 + 128),
            (40, 11008),
        ] {
            let w = host(m, k, 10 + m as u64);
            let deq = device_values(&w, dtype);
            let wd = b.upload_linear(&w, dtype).unwrap();
            assert_eq!(b.linear_dims(&wd), (m, k));
            // 20 and 40 rows: the cuBLAS path (split-activation GEMMs on
            // bf16 tensor cores; int8/int4 also the f32 SGEMM path).
            for n in [1usize, 2, 3, 5, 8, 9, 16, 20, 40] {
                let x = host(n, k, 100 + n as u64);
                let dx = b.upload(&x).unwrap();
                let want = reference::matmul_f32(&x.data, n, k, &deq, m);
                let tol = 2e-5 * (k as f32).sqrt();
                let mut first: Option<Vec<f32>> = None;
                for v in variants(dtype) {
                    let rows: &[Option<usize>] = match v {
                        GemvVariant::V1 => &[None, Some(1), Some(2), Some(4)],
                        GemvVariant::V2 | GemvVariant::V4 | GemvVariant::V5 => &[None, Some(4)],
                        GemvVariant::V3 | GemvVariant::V6 => &[None],
                    };
                    for &r in rows {
                        b.set_gemv_variant(Some(v));
                        b.set_gemv_rows(r);
                        let got = get(&b, &b.matmul(&dx, &wd).unwrap());
                        let what = format!("{dtype} n={n} m={m} k={k} {v} rows/warp {r:?}");
                        assert_close(&got, &want, tol, &what);
                        match &first {
                            None => first = Some(got),
                            Some(f) => assert!(
                                *f == got,
                                "{what}: bits differ from {}",
                                variants(dtype)[0]
                            ),
                        }
                    }
                }
                if n > 16 && dtype != WeightDType::BF16 {
                    b.set_int8_prefill_f32(true);
                    let got = get(&b, &b.matmul(&dx, &wd).unwrap());
                    b.set_int8_prefill_f32(false);
                    assert_close(
                        &got,
                        &want,
                        tol,
                        &format!("{dtype} n={n} m={m} k={k} f32 SGEMM"),
                    );
                }
            }
            b.set_gemv_variant(None);
            b.set_gemv_rows(None);
            assert!(b
                .matmul(&b.upload(&host(1, k + 1, 1)).unwrap(), &wd)
                .is_err());
        }
    }
}

#[test]
fn fused_epilogues_and_norm_match_unfused_and_reference() {
    let Some(mut b) = backend("fused_epilogues_and_norm_match_unfused_and_reference") else {
        return;
    };
    // k % 16 != 0 (padding) and k % 4 != 0 (unaligned activation rows).
    for (k, inter) in [(200usize, 90usize), (203, 64)] {
        let wgu = host(2 * inter, k, 31);
        let wo = host(k, k, 32);
        let nw = host(1, k, 33);
        for dtype in [WeightDType::Int8, WeightDType::BF16, WeightDType::Int4] {
            let (dgu, dwo) = (device_values(&wgu, dtype), device_values(&wo, dtype));
            let mut results = Vec::new();
            let mut configs: Vec<(bool, Option<GemvVariant>)> = vec![(true, None), (false, None)];
            for v in variants(dtype) {
                configs.push((true, Some(v)));
                configs.push((false, Some(v)));
            }
            for (fused, v) in configs {
                b.set_fusion(fused);
                b.set_gemv_variant(v);
                for n in [1usize, 3, 8, 16] {
                    let what = format!("{dtype} k={k} n={n} fused={fused} variant {v:?}");
                    let x = host(n, k, 40 + n as u64);
                    let (m, hn_vals, got) =
                        fused_layer_products(&b, &wgu, &wo, &nw, &x, (&dgu, &dwo), dtype, &what);
                    results.push((what, m, hn_vals, got));
                }
            }
            let n_cases = 4;
            for chunk in results.chunks(n_cases).skip(1) {
                for (a, b) in chunk.iter().zip(&results[..n_cases]) {
                    assert!(
                        (&a.1, &a.2, &a.3) == (&b.1, &b.2, &b.3),
                        "{} differs in bits from {}",
                        a.0,
                        b.0
                    );
                }
            }
        }
    }
    b.set_fusion(true);
    b.set_gemv_variant(None);
}

/// A small Llama-shaped model for whole decode steps (GQA, 3 layers).
pub const SMALL: Shape = Shape {
    hidden: 256,
    heads: 4,
    kv_heads: 2,
    head_dim: 64,
    inter: 352,
    vocab: 1000,
    layers: 3,
};

/// Decode steps of a small model: fusion, PDL and the GEMV variant change
/// the number and order of launches, never a bit of the logits.
#[test]
fn decode_steps_are_identical_across_fusion_pdl_and_variants() {
    let Some(mut b) = backend("decode_steps_are_identical_across_fusion_pdl_and_variants") else {
        return;
    };
    let s = SMALL;
    let inv = inv_freq(s.head_dim);
    for dtype in [WeightDType::Int8, WeightDType::BF16, WeightDType::Int4] {
        let w = Weights::new(&b, s, dtype);
        let mut runs: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
        let mut configs = vec![
            (true, true, None),
            (false, false, None),
            (true, false, None),
        ];
        for v in variants(dtype) {
            configs.push((true, true, Some(v)));
        }
        for (fused, pdl, v) in configs {
            b.set_fusion(fused);
            b.set_pdl(pdl);
            b.set_gemv_variant(v);
            let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
            let before = b.launch_count();
            let logits: Vec<Vec<f32>> = (0..6)
                .map(|pos| step(&b, &w, s, &mut cache, pos, &inv))
                .collect();
            let per_step = (b.launch_count() - before) as f64 / 6.0;
            println!("{dtype} fused={fused} pdl={pdl} {v:?}: {per_step:.1} launches per step");
            assert!(logits.iter().flatten().all(|v| v.is_finite()));
            runs.push((format!("{dtype} fused={fused} pdl={pdl} {v:?}"), logits));
        }
        for (name, l) in &runs[1..] {
            assert!(*l == runs[0].1, "{name} differs in bits from {}", runs[0].0);
        }
    }
    b.set_fusion(true);
    b.set_pdl(true);
    b.set_gemv_variant(None);
}

/// A decode step recorded once (a CUDA graph) and replayed at later
/// positions gives the logits of the eager steps bit for bit, with no kernel
/// launch of its own per replayed step.
#[test]
fn recorded_decode_steps_replay_the_eager_steps_bit_for_bit() {
    let Some(mut b) = backend("recorded_decode_steps_replay_the_eager_steps_bit_for_bit") else {
        return;
    };
    let s = SMALL;
    let inv = inv_freq(s.head_dim);
    let steps = 9;
    // Int8 again with 4 forced attention splits of at least 2 positions:
    // the recorded step launches all 4 and its rows use 1..4 as the context
    // grows, while eager steps launch only as many as they use; the bits
    // must agree.
    for (dt, splits) in [
        (WeightDType::F32, None),
        (WeightDType::Int8, None),
        (WeightDType::BF16, None),
        (WeightDType::Int4, None),
        (WeightDType::Int8, Some(4)),
    ] {
        b.set_attention_splits(splits);
        b.set_attention_min_chunk(if splits.is_some() { 2 } else { 128 });
        let w = Weights::new(&b, s, dt);
        let dtype = format!("{dt} (attention splits {splits:?})");
        let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
        let eager: Vec<Vec<f32>> = (0..steps)
            .map(|pos| step(&b, &w, s, &mut cache, pos, &inv))
            .collect();

        let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
        // Step 0 eagerly (it warms up per-shape choices), step 1 recorded.
        let mut got = vec![step(&b, &w, s, &mut cache, 0, &inv)];
        assert!(
            b.begin_step_graph(1, step_token(s, 1), s.vocab).unwrap(),
            "{dtype}: the CUDA backend should record steps"
        );
        let logits = step_tensor(&b, &w, s, &mut cache, 1, &inv);
        let graph = b.end_step_graph(logits).expect("recording a decode step");
        let before = b.launch_count();
        for pos in 1..steps {
            let out = b
                .replay_step_graph(&graph, pos, step_token(s, pos))
                .unwrap();
            assert_eq!(out.shape, vec![1, s.vocab]);
            got.push(out.data);
        }
        assert_eq!(
            b.launch_count(),
            before,
            "{dtype}: replays launched kernels one by one"
        );
        for (pos, (g, e)) in got.iter().zip(&eager).enumerate() {
            assert!(
                g == e,
                "{dtype}: position {pos}: replayed logits differ in bits from eager"
            );
        }
        // An eager step after replays continues the same sequence.
        let next = step(&b, &w, s, &mut cache, steps, &inv);
        assert!(next.iter().all(|v| v.is_finite()));
        println!("{dtype}: {} replayed steps identical to eager", steps - 1);
    }
    b.set_attention_splits(None);
    b.set_attention_min_chunk(128);
    // A failed recording is abandoned cleanly and eager steps still work.
    let w = Weights::new(&b, s, WeightDType::Int8);
    let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
    assert!(b.begin_step_graph(0, 0, s.vocab).unwrap());
    b.abort_step_graph();
    let after_abort = step(&b, &w, s, &mut cache, 0, &inv);
    assert!(after_abort.iter().all(|v| v.is_finite()));

    // A recording broken half-way by an op that synchronises (the capture is
    // invalidated; later ops and frees on the stream fail) is abandoned
    // cleanly: the stream stops recording, eager steps give the eager
    // results, and the next recording works. The engine relies on this to
    // fall back to eager steps.
    let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
    let eager: Vec<Vec<f32>> = (0..4)
        .map(|pos| step(&b, &w, s, &mut cache, pos, &inv))
        .collect();
    let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, 16).unwrap();
    assert_eq!(step(&b, &w, s, &mut cache, 0, &inv), eager[0]);
    assert!(b.begin_step_graph(1, step_token(s, 1), s.vocab).unwrap());
    let x = b.embedding(&w.embed, &[step_token(s, 1)]).unwrap();
    let hn = b.rms_norm(&x, &w.norm, 1e-5).unwrap();
    assert!(
        b.download(&hn).is_err(),
        "a download (a host sync) while recording must fail"
    );
    drop((x, hn));
    b.abort_step_graph();
    assert_eq!(
        step(&b, &w, s, &mut cache, 1, &inv),
        eager[1],
        "eager step after a broken recording"
    );
    assert!(b.begin_step_graph(2, step_token(s, 2), s.vocab).unwrap());
    let logits = step_tensor(&b, &w, s, &mut cache, 2, &inv);
    let graph = b
        .end_step_graph(logits)
        .expect("recording after a broken one");
    for (pos, want) in eager.iter().enumerate().skip(2) {
        let out = b
            .replay_step_graph(&graph, pos, step_token(s, pos))
            .unwrap();
        assert!(
            &out.data == want,
            "replay at {pos} after a broken recording"
        );
    }
}

#[test]
fn autotune_times_every_variant_once_per_shape() {
    let Some(mut b) = backend("autotune_times_every_variant_once_per_shape") else {
        return;
    };
    b.set_gemv_variant(None);
    let w = host(300, 512, 5);
    let wd = b.upload_linear(&w, WeightDType::Int8).unwrap();
    let dx = b.upload(&host(1, 512, 6)).unwrap();
    let auto = get(&b, &b.matmul(&dx, &wd).unwrap());
    let again = get(&b, &b.matmul(&dx, &wd).unwrap());
    let t = b.gemv_tunings();
    assert_eq!(t.len(), 1, "one timing per shape: {t:?}");
    assert_eq!(t[0].shape, "int8 300x512 n=1");
    assert_eq!(t[0].micros.len(), 4, "v1, v2, v3 and v4 for one row");
    assert!(t[0].micros.iter().all(|(_, us)| us.is_some()), "{}", t[0]);
    println!("{}", t[0]);
    b.set_gemv_variant(Some(GemvVariant::V1));
    assert_eq!(auto, get(&b, &b.matmul(&dx, &wd).unwrap()));
    assert_eq!(auto, again);
}
