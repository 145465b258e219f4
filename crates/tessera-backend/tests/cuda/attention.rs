//! Attention and the KV cache against the reference: prefill and decode with
//! every split rule, f32 and bf16 caches, deferred KV stores, and the
//! one-launch batched decode attention against one sequence at a time.

use crate::support::{self, assert_close, backend, get, host};
use tessera_backend::cuda::CudaBackend;
use tessera_backend::{reference, AttentionShape, Backend, BackendError, KvDType};
use tessera_model::HostTensor;

#[test]
fn attention_prefill_and_decode_match_reference() {
    let Some(mut b) = backend("attention_prefill_and_decode_match_reference") else {
        return;
    };
    // Chosen splits, one block per (row, head), and forced position splits:
    // more splits than positions leaves some empty; every launch must leave
    // the arrival counters at zero for the next (several calls per case).
    // Minimum positions per split: the default (128: the 300-position case
    // splits, short contexts do not), 1 (every context split as far as the
    // launch allows) and 64 (a 301..302-position context uses 4 of 7 or 32).
    for (splits, min_chunk) in [
        (None, 128),
        (None, 1),
        (Some(1), 1),
        (Some(7), 1),
        (Some(7), 64),
        (Some(32), 1),
        (Some(32), 64),
    ] {
        b.set_attention_splits(splits);
        b.set_attention_min_chunk(min_chunk);
        attention_cases(&b, (splits, min_chunk), KvDType::F32);
        // bf16 caches: the reference attends over keys and values rounded to
        // bf16 (nearest even), including the rows the launch itself stores
        // (deferred stores read them from the QKV product).
        if matches!(
            (splits, min_chunk),
            (None, 128) | (Some(7), 1) | (Some(32), 64)
        ) {
            attention_cases(&b, (splits, min_chunk), KvDType::BF16);
        }
    }
}

fn attention_cases(b: &CudaBackend, splits: (Option<usize>, usize), kv: KvDType) {
    let round = |x: &[f32]| -> Vec<f32> {
        match kv {
            KvDType::F32 => x.to_vec(),
            KvDType::BF16 => x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect(),
        }
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
        let mut cache = b.kv_cache_typed(layers, kvh, hd, total + 2, kv).unwrap();
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        let mut start = 0;
        for (c, &n) in chunks.iter().enumerate() {
            let seed = 1000 * c as u64 + hd as u64;
            let (q, k, v) = (
                host(n, heads * hd, seed),
                host(n, kvh * hd, seed + 1),
                host(n, kvh * hd, seed + 2),
            );
            ks.extend(round(&k.data));
            vs.extend(round(&v.data));
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
                &format!(
                    "attention h{heads}/{kvh} hd{hd} rows {n} at {start}, splits {splits:?}, {kv} cache"
                ),
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

/// A KV store deferred into the next attention call (fusion on, decode-sized
/// rows) still lands when that call does not take it: a store for another
/// layer, an attention call for another layer or position, or a recording
/// abandoned before its attention call (whose store must not run at all).
#[test]
fn deferred_kv_stores_land_whoever_reads_next() {
    let Some(b) = backend("deferred_kv_stores_land_whoever_reads_next") else {
        return;
    };
    let (heads, kvh, hd) = (4usize, 2usize, 32usize);
    let shape = AttentionShape {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let mut cache = b.kv_cache(2, kvh, hd, 8).unwrap();
    let rows = |n: usize, seed: u64| host(n, kvh * hd, seed);
    let (k0, v0, k1, v1) = (rows(3, 1), rows(3, 2), rows(3, 3), rows(3, 4));
    let up = |t: &HostTensor| b.upload(t).unwrap();
    // Layer 0's store is deferred, then flushed by layer 1's store; layer
    // 1's is flushed by attention on layer 0 (another layer).
    b.kv_store(&mut cache, 0, 0, &up(&k0), &up(&v0)).unwrap();
    b.kv_store(&mut cache, 1, 0, &up(&k1), &up(&v1)).unwrap();
    let q = host(3, heads * hd, 5);
    for (layer, ks, vs) in [(0, &k0, &v0), (1, &k1, &v1)] {
        let got = b
            .download(&b.attention(&up(&q), &cache, layer, 0, shape).unwrap())
            .unwrap();
        let want = reference::attention(&q.data, &ks.data, &vs.data, 0, heads, kvh, hd);
        assert_close(&got.data, &want, 2e-5, &format!("layer {layer}"));
    }
    // A store at position 3, then attention for a query at position 2
    // (another position: the store runs first; positions 0..=2 are read).
    let (k3, v3) = (rows(1, 6), rows(1, 7));
    b.kv_store(&mut cache, 0, 3, &up(&k3), &up(&v3)).unwrap();
    let q2 = host(1, heads * hd, 13);
    let got = b
        .download(&b.attention(&up(&q2), &cache, 0, 2, shape).unwrap())
        .unwrap();
    let want = reference::attention(&q2.data, &k0.data, &v0.data, 2, heads, kvh, hd);
    assert_close(
        &got.data,
        &want,
        2e-5,
        "query at 2 with a store at 3 pending",
    );
    // Position 4: first deferred inside a recording that is then abandoned
    // (that store must never run), then stored eagerly and read.
    let (k4, v4) = (rows(1, 8), rows(1, 9));
    let (bad_k, bad_v) = (up(&rows(1, 10)), up(&rows(1, 11)));
    let (k4d, v4d) = (up(&k4), up(&v4));
    if b.begin_step_graph(4, 0, 8).unwrap() {
        b.kv_store(&mut cache, 0, 4, &bad_k, &bad_v).unwrap();
        b.abort_step_graph();
    }
    b.kv_store(&mut cache, 0, 4, &k4d, &v4d).unwrap();
    let mut ks = k0.data.clone();
    let mut vs = v0.data.clone();
    for (k, v) in [(&k3, &v3), (&k4, &v4)] {
        ks.extend_from_slice(&k.data);
        vs.extend_from_slice(&v.data);
    }
    let q4 = host(1, heads * hd, 12);
    let got = b
        .download(&b.attention(&up(&q4), &cache, 0, 4, shape).unwrap())
        .unwrap();
    let want = reference::attention(&q4.data, &ks, &vs, 4, heads, kvh, hd);
    assert_close(
        &got.data,
        &want,
        2e-5,
        "positions 3 and 4 after the abandoned recording",
    );
    // An eager store left pending (its step failed before attention) when a
    // recording begins: the recording cannot take it and fails; the store is
    // kept and runs on the eager rerun.
    let (k5, v5, k6, v6) = (rows(1, 14), rows(1, 15), rows(1, 16), rows(1, 17));
    let (k6d, v6d) = (up(&k6), up(&v6));
    b.kv_store(&mut cache, 0, 5, &up(&k5), &up(&v5)).unwrap();
    if b.begin_step_graph(6, 0, 8).unwrap() {
        let err = b.kv_store(&mut cache, 0, 6, &k6d, &v6d).unwrap_err();
        assert!(err.to_string().contains("still pending"), "{err}");
        b.abort_step_graph();
    }
    b.kv_store(&mut cache, 0, 6, &k6d, &v6d).unwrap();
    for (k, v) in [(&k5, &v5), (&k6, &v6)] {
        ks.extend_from_slice(&k.data);
        vs.extend_from_slice(&v.data);
    }
    let q6 = host(1, heads * hd, 18);
    let got = b
        .download(&b.attention(&up(&q6), &cache, 0, 6, shape).unwrap())
        .unwrap();
    let want = reference::attention(&q6.data, &ks, &vs, 6, heads, kvh, hd);
    assert_close(
        &got.data,
        &want,
        2e-5,
        "position 5 kept through a failed recording",
    );
}

/// `attention_batch` (several sequences' RoPE, KV store and attention in one
/// launch) against the single-sequence ops one sequence at a time: caches
/// of different capacities, contexts from 1 to 300 positions, GQA, forced
/// position splits (so both paths cut every context alike: identical bits),
/// and a later single-sequence step reading what the batched call stored.
#[test]
fn batched_decode_attention_matches_one_sequence_at_a_time() {
    let Some(mut b) = backend("batched_decode_attention_matches_one_sequence_at_a_time") else {
        return;
    };
    let (layers, heads, kvh, hd) = (2usize, 8usize, 2usize, 64usize);
    let shape = AttentionShape {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let inv = support::inv_freq(hd);
    // (capacity, position of the new token) per sequence.
    let seqs = [(16usize, 0usize), (320, 300), (40, 7), (130, 129), (64, 33)];
    let n = seqs.len();
    // bf16 caches too: the batched launch rounds the new keys and values as
    // the single-sequence store does.
    for (splits, min_chunk, kv) in [
        (Some(4), 1, KvDType::F32),
        (Some(1), 1, KvDType::F32),
        (Some(4), 1, KvDType::BF16),
    ] {
        b.set_attention_splits(splits);
        b.set_attention_min_chunk(min_chunk);
        let mut runs = Vec::new();
        for batched in [true, false] {
            // Caches filled with the same history either way.
            let mut caches: Vec<_> = seqs
                .iter()
                .map(|&(cap, _)| b.kv_cache_typed(layers, kvh, hd, cap, kv).unwrap())
                .collect();
            for (i, (c, &(_, pos))) in caches.iter_mut().zip(&seqs).enumerate() {
                for layer in 0..layers {
                    if pos > 0 {
                        let kh = b.upload(&host(pos, kvh * hd, 50 + i as u64)).unwrap();
                        let vh = b.upload(&host(pos, kvh * hd, 60 + i as u64)).unwrap();
                        b.kv_store(c, layer, 0, &kh, &vh).unwrap();
                    }
                }
            }
            let mut outs = Vec::new();
            for layer in 0..layers {
                // One QKV product row per sequence, split into column views.
                let qkv = b
                    .upload(&host(n, (heads + 2 * kvh) * hd, 70 + layer as u64))
                    .unwrap();
                let parts = b
                    .split_cols(&qkv, &[heads * hd, kvh * hd, kvh * hd])
                    .unwrap();
                let starts: Vec<usize> = seqs.iter().map(|s| s.1).collect();
                let mut refs: Vec<_> = caches.iter_mut().collect();
                let out = if batched {
                    b.attention_batch(
                        &parts[0], &parts[1], &parts[2], &mut refs, layer, &starts, &inv, shape,
                    )
                } else {
                    tessera_backend::attention_per_sequence(
                        &b, &parts[0], &parts[1], &parts[2], &mut refs, layer, &starts, &inv, shape,
                    )
                }
                .unwrap();
                outs.push(get(&b, &out));
            }
            // A later step of each sequence alone reads what was stored.
            for (c, &(_, pos)) in caches.iter_mut().zip(&seqs) {
                let q = b.upload(&host(1, heads * hd, 90)).unwrap();
                outs.push(get(&b, &b.attention(&q, c, 1, pos, shape).unwrap()));
            }
            runs.push(outs);
        }
        assert!(
            runs[0] == runs[1],
            "splits {splits:?}, {kv} caches: batched attention differs from one sequence at a time"
        );
    }
    b.set_attention_splits(None);
    b.set_attention_min_chunk(128);
    // Mismatched inputs are refused by name.
    let mut c = b.kv_cache(1, kvh, hd, 8).unwrap();
    let q = b.upload(&host(2, heads * hd, 1)).unwrap();
    let k = b.upload(&host(2, kvh * hd, 2)).unwrap();
    let Err(err) = b.attention_batch(&q, &k, &k, &mut [&mut c], 0, &[0], &inv, shape) else {
        panic!("two rows for one cache accepted");
    };
    assert!(err.to_string().contains("attention_batch"), "{err}");
    // A RoPE table of the wrong length, likewise.
    let q1 = b.upload(&host(1, heads * hd, 1)).unwrap();
    let k1 = b.upload(&host(1, kvh * hd, 2)).unwrap();
    let short = &inv[..3];
    let Err(err) = b.attention_batch(&q1, &k1, &k1, &mut [&mut c], 0, &[0], short, shape) else {
        panic!("a 3-entry RoPE table accepted for head_dim {hd}");
    };
    assert!(err.to_string().contains("rope"), "{err}");
}
