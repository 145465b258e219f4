//! Timings for the device report (`cuda-tests --ignored bench`), printed as
//! `BENCH name value` lines; not correctness tests (those assert nothing
//! about speed).

use crate::support::{
    backend, copy_linear, get, host, inv_freq, rows_tensor, step, step_tensor, step_token, Weights,
    LLAMA2_7B,
};
use std::time::Instant;
use tessera_backend::cuda::{CudaBackend, CudaLinear, GemvVariant};
use tessera_backend::{AttentionShape, Backend, KvDType, WeightDType};

/// Device copies of a weight (so consecutive products never hit L2).
fn copies(w: &CudaLinear, count: usize) -> Vec<CudaLinear> {
    (0..count).map(|_| copy_linear(w)).collect()
}

/// Achieved weight bandwidth of every GEMV variant on the llama2-7b matrices
/// (o_proj, fused QKV, fused gate/up, down_proj, LM head), int8 and bf16, at
/// 1 and 16 activation rows; consecutive launches read different copies of
/// the weight (more than 256 MB in all), as a decode step does. Also the
/// cost of one small op.
#[test]
#[ignore]
fn bench_gemv_variants_and_small_ops() {
    let Some(mut b) = backend("bench_gemv_variants_and_small_ops") else {
        return;
    };
    // Deferred products would not run at all: time the plain kernels.
    b.set_fusion(false);
    for (m, k) in [
        (4096usize, 4096usize),
        (12288, 4096),
        (22016, 4096),
        (4096, 11008),
        (32000, 4096),
    ] {
        let w = host(m, k, 1);
        for dtype in [WeightDType::Int8, WeightDType::BF16] {
            let first = b.upload_linear(&w, dtype).unwrap();
            let bytes = first.bytes();
            let ws = copies(&first, (256usize << 20).div_ceil(bytes).max(2));
            drop(first);
            for n in [1usize, 8, 16] {
                let x = b.upload(&host(n, k, 2)).unwrap();
                let opt_in = [GemvVariant::V5, GemvVariant::V6];
                for v in GemvVariant::ALL.into_iter().chain(opt_in) {
                    // v4 and v5 take one activation row (with more they run
                    // v2), v6 two or more; 8 rows: v2 (the f32 baseline) and v6.
                    let one_row = matches!(v, GemvVariant::V4 | GemvVariant::V5);
                    if !v.supports_dtype(dtype)
                        || (one_row && n > 1)
                        || (v == GemvVariant::V6 && n == 1)
                        || (n == 8 && !matches!(v, GemvVariant::V2 | GemvVariant::V6))
                    {
                        continue;
                    }
                    b.set_gemv_variant(Some(v));
                    for w in &ws {
                        b.matmul(&x, w).unwrap();
                    }
                    b.synchronize().unwrap();
                    let iters = (3 * ws.len()).max(40);
                    let t = Instant::now();
                    for i in 0..iters {
                        b.matmul(&x, &ws[i % ws.len()]).unwrap();
                    }
                    b.synchronize().unwrap();
                    let secs = t.elapsed().as_secs_f64() / iters as f64;
                    println!(
                        "BENCH gemv_{dtype}_{m}x{k}_n{n}_{v}_gb_per_s {:.1}",
                        bytes as f64 / secs / 1e9
                    );
                }
            }
        }
    }
    b.set_gemv_variant(None);
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

/// A llama2-7b-shape cache with room for `steps` more positions after a
/// 128-token context, filled step by step (a realistic context; warm-up).
fn context(b: &CudaBackend, w: &Weights, steps: usize) -> <CudaBackend as Backend>::KvCache {
    let (s, inv) = (LLAMA2_7B, inv_freq(LLAMA2_7B.head_dim));
    let mut cache = b
        .kv_cache(s.layers, s.kv_heads, s.head_dim, 128 + steps + 1)
        .unwrap();
    for pos in 0..128 {
        step(b, w, s, &mut cache, pos, &inv);
    }
    cache
}

/// Decode steps per second of the llama2-7b shape with one layer's weights
/// reused for all 32 layers (208 MB int8 per layer, far beyond L2), as the
/// engine issues them: `steps` after a 128-token context.
fn decode_rate(b: &CudaBackend, w: &Weights, steps: usize) -> (f64, f64, Vec<f32>) {
    let (s, inv) = (LLAMA2_7B, inv_freq(LLAMA2_7B.head_dim));
    let mut cache = context(b, w, steps);
    let before = b.launch_count();
    let t = Instant::now();
    for pos in 128..128 + steps {
        step(b, w, s, &mut cache, pos, &inv);
    }
    let secs = t.elapsed().as_secs_f64() / steps as f64;
    let launches = (b.launch_count() - before) as f64 / steps as f64;
    (
        1.0 / secs,
        launches,
        step(b, w, s, &mut cache, 128 + steps, &inv),
    )
}

/// As [`decode_rate`], with the step after the context recorded once (a
/// CUDA graph) and every step replayed: a warm-up replay at 128, `steps - 1`
/// timed replays, and the logits of the step at `128 + steps`.
fn recorded_decode_rate(b: &CudaBackend, w: &Weights, steps: usize) -> (f64, Vec<f32>) {
    let (s, inv) = (LLAMA2_7B, inv_freq(LLAMA2_7B.head_dim));
    let mut cache = context(b, w, steps);
    assert!(b
        .begin_step_graph(128, step_token(s, 128), s.vocab)
        .unwrap());
    let logits = step_tensor(b, w, s, &mut cache, 128, &inv);
    let graph = b.end_step_graph(logits).expect("recording a decode step");
    b.replay_step_graph(&graph, 128, step_token(s, 128))
        .unwrap();
    let t = Instant::now();
    for pos in 129..128 + steps {
        b.replay_step_graph(&graph, pos, step_token(s, pos))
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64() / (steps - 1) as f64;
    let last = b
        .replay_step_graph(&graph, 128 + steps, step_token(s, 128 + steps))
        .unwrap();
    (1.0 / secs, last.data)
}

/// Batch-1 decode of the llama2-7b shape, int8 and bf16: the default
/// configuration (fusion, PDL, GEMV variant timed per shape), each variant
/// forced, and without PDL and fusion (the previous state), with launches per
/// step and weight bytes per step for the roofline.
#[test]
#[ignore]
fn bench_decode_step_llama2_7b_shape() {
    let Some(mut b) = backend("bench_decode_step_llama2_7b_shape") else {
        return;
    };
    let steps = 48;
    for dtype in [WeightDType::Int8, WeightDType::BF16] {
        let w = Weights::new(&b, LLAMA2_7B, dtype);
        println!(
            "BENCH decode_7b_{dtype}_weight_bytes_per_step {}",
            w.bytes_per_step(LLAMA2_7B)
        );
        let mut configs: Vec<(String, bool, bool, Option<GemvVariant>)> =
            vec![(String::new(), true, true, None)];
        for v in GemvVariant::ALL {
            if v.supports_dtype(dtype) {
                configs.push((format!("_{v}"), true, true, Some(v)));
            }
        }
        configs.push(("_nopdl".into(), true, false, None));
        configs.push(("_unfused_nopdl".into(), false, false, None));
        let mut logits = Vec::new();
        for (tag, fused, pdl, v) in configs {
            b.set_fusion(fused);
            b.set_pdl(pdl);
            b.set_gemv_variant(v);
            let (rate, launches, l) = decode_rate(&b, &w, steps);
            println!("BENCH decode_7b_{dtype}{tag}_tokens_per_s {rate:.1}");
            println!("BENCH decode_7b_{dtype}{tag}_launches_per_step {launches:.0}");
            logits.push((tag, l));
        }
        // The default configuration again, each step replayed from a recording.
        b.set_fusion(true);
        b.set_pdl(true);
        b.set_gemv_variant(None);
        let (rate, l) = recorded_decode_rate(&b, &w, steps);
        println!("BENCH decode_7b_{dtype}_graph_tokens_per_s {rate:.1}");
        println!("BENCH decode_7b_{dtype}_graph_launches_per_step 0");
        logits.push(("_graph".into(), l));
        // Recorded again with one attention block per head (no position
        // splits), and with every context split (at least one position per
        // split): the split's gain or loss at this context. Other summation
        // orders, so not compared in bits.
        for (tag, splits, min_chunk) in [("att1", Some(1), 128), ("split_all", None, 1)] {
            b.set_attention_splits(splits);
            b.set_attention_min_chunk(min_chunk);
            let (rate, _) = recorded_decode_rate(&b, &w, steps);
            println!("BENCH decode_7b_{dtype}_graph_{tag}_tokens_per_s {rate:.1}");
            println!("BENCH decode_7b_{dtype}_graph_{tag}_launches_per_step 0");
        }
        b.set_attention_splits(None);
        b.set_attention_min_chunk(128);
        // GEMV v5 (opt-in, int8: fixed-point activations on dp4a) for every
        // one-row product, eager and recorded; its bits differ from v1-v4.
        let mut v5_logits = Vec::new();
        if GemvVariant::V5.supports_dtype(dtype) {
            b.set_gemv_variant(Some(GemvVariant::V5));
            let (rate, launches, l) = decode_rate(&b, &w, steps);
            println!("BENCH decode_7b_{dtype}_v5_tokens_per_s {rate:.1}");
            println!("BENCH decode_7b_{dtype}_v5_launches_per_step {launches:.0}");
            v5_logits.push(("_v5", l));
            let (rate, l) = recorded_decode_rate(&b, &w, steps);
            println!("BENCH decode_7b_{dtype}_graph_v5_tokens_per_s {rate:.1}");
            v5_logits.push(("_graph_v5", l));
            b.set_gemv_variant(None);
        }
        // Every layer in its own memory, as in a real model: the rates above
        // share one layer's matrices between the 32 layers. Same values, so
        // the same bits as the shared recorded step.
        let w = w.with_distinct_layers(LLAMA2_7B);
        let (rate, l) = recorded_decode_rate(&b, &w, steps);
        println!("BENCH decode_7b_{dtype}_graph_distinct_layers_tokens_per_s {rate:.1}");
        logits.push(("_graph_distinct_layers".into(), l));
        if GemvVariant::V5.supports_dtype(dtype) {
            b.set_gemv_variant(Some(GemvVariant::V5));
            let (rate, l) = recorded_decode_rate(&b, &w, steps);
            println!("BENCH decode_7b_{dtype}_graph_v5_distinct_layers_tokens_per_s {rate:.1}");
            v5_logits.push(("_graph_v5_distinct_layers", l));
            b.set_gemv_variant(None);
        }
        drop(w);
        for t in b.gemv_tunings() {
            println!("TUNE {t}");
        }
        for (tag, l) in &logits[1..] {
            assert!(*l == logits[0].1, "{dtype}{tag}: logits differ in bits");
        }
        let scale = logits[0].1.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (tag, l) in &v5_logits {
            let diff = l
                .iter()
                .zip(&logits[0].1)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("BENCH decode_7b_{dtype}{tag}_max_logit_diff {diff:.3e}");
            assert!(
                diff <= 1e-3 * scale.max(1.0),
                "{dtype}{tag}: logits differ by {diff} (largest |logit| {scale})"
            );
        }
        if let [(_, eager), rest @ ..] = &v5_logits[..] {
            for (tag, l) in rest {
                assert!(
                    l == eager,
                    "{dtype}{tag}: v5 logits differ in bits from eager v5"
                );
            }
        }
    }
}

/// Where a decode step's time goes: one batch-1 step of the llama2-7b shape
/// (int8 and bf16, default configuration, after a 128-token context) with
/// each launch timed alone (`start_timeline`: events around every kernel, so
/// no PDL overlap), summed per op and grid, beside the untimed step's time.
#[test]
#[ignore]
fn bench_decode_breakdown_llama2_7b_shape() {
    let Some(mut b) = backend("bench_decode_breakdown_llama2_7b_shape") else {
        return;
    };
    for (dtype, v5) in [
        (WeightDType::Int8, false),
        (WeightDType::Int8, true),
        (WeightDType::BF16, false),
    ] {
        // `int8_v5`: GEMV v5 forced for every one-row product.
        b.set_gemv_variant(v5.then_some(GemvVariant::V5));
        let tag = if v5 {
            format!("{dtype}_v5")
        } else {
            dtype.to_string()
        };
        let w = Weights::new(&b, LLAMA2_7B, dtype);
        let (rate, _, _) = decode_rate(&b, &w, 8);
        let (s, inv) = (LLAMA2_7B, inv_freq(LLAMA2_7B.head_dim));
        let mut cache = context(&b, &w, 1);
        b.start_timeline().unwrap();
        step(&b, &w, s, &mut cache, 128, &inv);
        let t = b.take_timeline().unwrap();
        let mut per: Vec<(String, usize, f64)> = Vec::new();
        for l in &t {
            let key = format!("{} grid {}", l.op, l.grid);
            match per.iter_mut().find(|p| p.0 == key) {
                Some(p) => {
                    p.1 += 1;
                    p.2 += l.micros;
                }
                None => per.push((key, 1, l.micros)),
            }
        }
        per.sort_by(|a, b| b.2.total_cmp(&a.2));
        let total: f64 = t.iter().map(|l| l.micros).sum();
        println!("BENCH breakdown_7b_{tag}_step_us {:.1}", 1e6 / rate);
        println!("BENCH breakdown_7b_{tag}_sum_of_kernels_us {total:.1}");
        println!("BENCH breakdown_7b_{tag}_launches {}", t.len());
        for (key, n, us) in per {
            println!(
                "BREAKDOWN {tag} {key}: {n} launches, {us:.1} us ({:.2} us each)",
                us / n as f64
            );
        }
    }
    b.set_gemv_variant(None);
}

/// Prefill of a 128-token prompt on the llama2-7b shape (one layer's weights
/// reused by all 32 layers), backend level: int8 with the split-bf16
/// tensor-core products (the default), int8 through f32 SGEMM
/// (`set_int8_prefill_f32`), and bf16; tokens/s, the largest logit
/// difference of the two int8 paths, and a breakdown of one int8 prefill by
/// kernel (cuBLAS calls are not in it: the untimed step minus the kernels'
/// sum is roughly their time).
#[test]
#[ignore]
fn bench_decode_prefill_llama2_7b_shape() {
    let Some(mut b) = backend("bench_decode_prefill_llama2_7b_shape") else {
        return;
    };
    let (s, inv) = (LLAMA2_7B, inv_freq(LLAMA2_7B.head_dim));
    let n = 128;
    let prefill = |b: &CudaBackend, w: &Weights| {
        let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, n).unwrap();
        get(b, &rows_tensor(b, w, s, &mut cache, 0, n, &inv))
    };
    let mut int8_logits: Vec<Vec<f32>> = Vec::new();
    for dtype in [WeightDType::Int8, WeightDType::BF16] {
        let w = Weights::new(&b, s, dtype);
        // (tag, f32 prefill, fixed-point activations: GEMV v6)
        let paths: &[(&str, bool, bool)] = if dtype == WeightDType::Int8 {
            &[
                ("int8", false, false),
                ("int8_f32", true, false),
                ("int8_v6", false, true),
            ]
        } else {
            &[("bf16", false, false)]
        };
        for &(tag, f32_path, v6) in paths {
            b.set_int8_prefill_f32(f32_path);
            b.set_int8_decode_dp4a(v6);
            prefill(&b, &w); // first use: allocations, GEMV/cuBLAS set-up
            let runs = 3;
            let t = Instant::now();
            let mut l = Vec::new();
            for _ in 0..runs {
                l = prefill(&b, &w);
            }
            let secs = t.elapsed().as_secs_f64() / runs as f64;
            println!(
                "BENCH prefill_7b_{tag}_{n}_tokens_per_s {:.1}",
                n as f64 / secs
            );
            if dtype == WeightDType::Int8 {
                int8_logits.push(l);
            }
        }
        b.set_int8_decode_dp4a(false);
        if dtype == WeightDType::Int8 {
            b.set_int8_prefill_f32(false);
            let mut cache = b.kv_cache(s.layers, s.kv_heads, s.head_dim, n).unwrap();
            let t = Instant::now();
            b.start_timeline().unwrap();
            get(&b, &rows_tensor(&b, &w, s, &mut cache, 0, n, &inv));
            let wall = t.elapsed().as_secs_f64() * 1e6;
            let timeline = b.take_timeline().unwrap();
            let mut per: Vec<(&str, usize, f64)> = Vec::new();
            for l in &timeline {
                match per.iter_mut().find(|p| p.0 == l.op) {
                    Some(p) => {
                        p.1 += 1;
                        p.2 += l.micros;
                    }
                    None => per.push((l.op, 1, l.micros)),
                }
            }
            let sum: f64 = timeline.iter().map(|l| l.micros).sum();
            println!("BENCH prefill_7b_int8_timed_step_us {wall:.1}");
            println!("BENCH prefill_7b_int8_sum_of_kernels_us {sum:.1}");
            for (op, count, us) in per {
                println!("BREAKDOWN prefill int8 {op}: {count} launches, {us:.1} us");
            }
        }
    }
    let diff = int8_logits[0]
        .iter()
        .zip(&int8_logits[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("BENCH prefill_7b_int8_bf16x3_vs_f32_max_logit_diff {diff:.3e}");
    let diff = int8_logits[2]
        .iter()
        .zip(&int8_logits[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("BENCH prefill_7b_int8_v6_vs_f32_max_logit_diff {diff:.3e}");
}

/// One decode attention call (one query row, the llama2-7b head layout: 32
/// heads of 128) at growing contexts, with the position splits the backend
/// chooses (`auto`: at least 128 positions per split), every context split
/// (`split_all`: the splits alone decide) and one block per head (`att1`), in
/// microseconds per call and GB/s of K and V read (f32 cache).
#[test]
#[ignore]
fn bench_decode_attention_long_context() {
    let Some(mut b) = backend("bench_decode_attention_long_context") else {
        return;
    };
    let s = LLAMA2_7B;
    let shape = AttentionShape {
        num_heads: s.heads,
        num_kv_heads: s.kv_heads,
        head_dim: s.head_dim,
    };
    let width = s.kv_heads * s.head_dim;
    let q = b.upload(&host(1, s.heads * s.head_dim, 7)).unwrap();
    // f32 caches with each split rule, and bf16 caches (half the bytes) with
    // the default rule; GB/s counts the bytes the cache really holds.
    let cases = [
        ("auto", None, 128, KvDType::F32),
        ("split_all", None, 1, KvDType::F32),
        ("att1", Some(1), 128, KvDType::F32),
        ("kvbf16_auto", None, 128, KvDType::BF16),
    ];
    for ctx in [128usize, 512, 2048, 8192] {
        // Positions 0..=ctx stored in one call; the query is at ctx.
        let k = b.upload(&host(ctx + 1, width, 8)).unwrap();
        let v = b.upload(&host(ctx + 1, width, 9)).unwrap();
        for (tag, splits, min_chunk, kv) in cases {
            let mut cache = b
                .kv_cache_typed(1, s.kv_heads, s.head_dim, ctx + 1, kv)
                .unwrap();
            b.kv_store(&mut cache, 0, 0, &k, &v).unwrap();
            let kv_bytes = 2.0 * ((ctx + 1) * width * kv.bytes()) as f64;
            b.set_attention_splits(splits);
            b.set_attention_min_chunk(min_chunk);
            for _ in 0..5 {
                b.attention(&q, &cache, 0, ctx, shape).unwrap();
            }
            b.synchronize().unwrap();
            let iters = 200;
            let t = Instant::now();
            for _ in 0..iters {
                b.attention(&q, &cache, 0, ctx, shape).unwrap();
            }
            b.synchronize().unwrap();
            let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
            println!("BENCH attention_decode_ctx{ctx}_{tag}_us {us:.2}");
            println!(
                "BENCH attention_decode_ctx{ctx}_{tag}_gb_per_s {:.1}",
                kv_bytes / us / 1e3
            );
        }
    }
    b.set_attention_splits(None);
    b.set_attention_min_chunk(128);
}
