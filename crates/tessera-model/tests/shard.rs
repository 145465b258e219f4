//! The tensor-parallel shard planner: coverage, head grouping, errors, and
//! real slices read from a fixture checkpoint.

use std::path::PathBuf;
use tessera_model::{
    Checkpoint, HostTensor, ModelError, ModelSpec, Parallelism, RopeScaling, ShardPlan, Slice,
    INT8_GROUP,
};

#[allow(clippy::too_many_arguments)]
fn spec(
    heads: usize,
    kv_heads: usize,
    hidden: usize,
    head_dim: usize,
    intermediate: usize,
    vocab: usize,
    layers: usize,
    tied: bool,
    bias: bool,
) -> ModelSpec {
    ModelSpec {
        architecture: "LlamaForCausalLM".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 2048,
        tie_word_embeddings: tied,
        attention_bias: bias,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

fn smollm2() -> ModelSpec {
    spec(9, 3, 576, 64, 1536, 49152, 30, true, false)
}
fn llama2_7b() -> ModelSpec {
    spec(32, 32, 4096, 128, 11008, 32000, 32, false, false)
}
fn llama3_8b() -> ModelSpec {
    spec(32, 8, 4096, 128, 14336, 128256, 32, false, false)
}
fn qwen_like() -> ModelSpec {
    // 5 query heads sharing one KV head, with Q/K/V biases (the qwen2 fixture's shape).
    spec(5, 1, 80, 16, 144, 320, 2, false, true)
}
fn fixture_gqa() -> ModelSpec {
    spec(6, 2, 96, 16, 160, 512, 3, true, false)
}

/// Tensor names and full shapes of layer 0, plus the replicated tensors.
fn tensors(s: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let (h, hd, i) = (s.hidden_size, s.head_dim, s.intermediate_size);
    let (q, kv) = (s.num_heads * hd, s.num_kv_heads * hd);
    let p = "model.layers.0";
    let mut v = vec![
        ("model.embed_tokens.weight".into(), vec![s.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
        (format!("{p}.input_layernorm.weight"), vec![h]),
        (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
        (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
        (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
        (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
        (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
        (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
        (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
    ];
    if !s.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![s.vocab_size, h]));
    }
    if s.attention_bias {
        v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
        v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
        v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
    }
    v
}

/// Every invariant a plan for `world` ranks must satisfy.
fn check_plans(s: &ModelSpec, world: usize) -> Vec<ShardPlan> {
    let plans = ShardPlan::all(s, world).expect("plan");
    assert_eq!(plans.len(), world);
    let (nh, nkv) = (s.num_heads, s.num_kv_heads);
    let group = nh / nkv;
    let replicated = world > nkv;

    // Head counts add up; query heads stay with their KV group.
    assert_eq!(plans.iter().map(ShardPlan::local_heads).sum::<usize>(), nh);
    for p in &plans {
        assert_eq!(p.world(), world);
        assert!(p.local_heads() > 0, "rank {} has no query head", p.rank());
        assert!(p.local_kv_heads() > 0);
        assert_eq!(
            p.local_heads() % p.local_kv_heads(),
            0,
            "irregular local GQA"
        );
        assert_eq!(p.kv_replicated(), replicated);
        for h in p.q_heads() {
            assert!(
                p.kv_heads().contains(&(h / group)),
                "q head {h} on rank {} but its KV group {} is not",
                p.rank(),
                h / group
            );
        }
        // Every local KV head serves at least one local query head.
        for g in p.kv_heads() {
            assert!(p.q_heads().any(|h| h / group == g));
        }
        assert_eq!(p.q_rows().len(), p.local_heads() * s.head_dim);
        assert_eq!(p.kv_rows().len(), p.local_kv_heads() * s.head_dim);
    }
    if replicated {
        assert!(plans.iter().all(|p| p.local_kv_heads() == 1));
    } else {
        assert_eq!(
            plans.iter().map(ShardPlan::local_kv_heads).sum::<usize>(),
            nkv
        );
    }
    assert_eq!(
        plans
            .iter()
            .map(ShardPlan::local_intermediate)
            .sum::<usize>(),
        s.intermediate_size
    );
    let i = s.intermediate_size;
    if i.is_multiple_of(INT8_GROUP) && i / INT8_GROUP >= world {
        for p in &plans {
            assert_eq!(p.intermediate_range().start % INT8_GROUP, 0);
            assert_eq!(p.local_intermediate() % INT8_GROUP, 0);
        }
    }

    // Union of the slices covers each tensor: split tensors exactly once
    // (K/V once per sharing rank when replicated), replicated ones on every rank.
    for (name, shape) in tensors(s) {
        let rows = shape[0];
        let cols = shape.get(1).copied().unwrap_or(1);
        let mut row_count = vec![0usize; rows];
        let mut col_count = vec![0usize; cols];
        let mut full = 0;
        for p in &plans {
            let slice = p.slice_for(&name);
            let local = p.local_shape(&name, &shape).expect("slice fits");
            match &slice {
                Slice::Full => full += 1,
                Slice::Rows(r) => {
                    assert_eq!(local[0], r.len());
                    r.clone().for_each(|x| row_count[x] += 1);
                }
                Slice::Cols(c) => {
                    assert_eq!(local, vec![rows, c.len()]);
                    c.clone().for_each(|x| col_count[x] += 1);
                }
            }
        }
        match ShardPlan::parallelism(&name) {
            Parallelism::Replicated => assert_eq!(full, world, "{name}"),
            Parallelism::Column => {
                assert_eq!(full, 0, "{name}");
                let kv = name.contains("k_proj") || name.contains("v_proj");
                for (row, &n) in row_count.iter().enumerate() {
                    let kv_head = row / s.head_dim;
                    let expected = if kv && replicated {
                        plans
                            .iter()
                            .filter(|p| p.kv_heads().contains(&kv_head))
                            .count()
                    } else {
                        1
                    };
                    assert_eq!(n, expected, "{name} row {row} read {n} times");
                }
            }
            Parallelism::Row => {
                assert_eq!(full, 0, "{name}");
                assert!(col_count.iter().all(|&n| n == 1), "{name}: {col_count:?}");
            }
        }
    }

    // Parameter accounting: replicated parts equal everywhere; sharded parts
    // sum to the model's (exactly when no KV head is replicated).
    let full = ShardPlan::new(s, 1, 0).unwrap().params(s);
    let rep = plans[0].params(s).replicated;
    assert!(plans.iter().all(|p| p.params(s).replicated == rep));
    assert_eq!(rep, full.replicated);
    let sharded: usize = plans.iter().map(|p| p.params(s).sharded).sum();
    if replicated {
        assert!(sharded > full.sharded);
    } else {
        assert_eq!(sharded, full.sharded);
    }
    plans
}

#[test]
fn smollm2_world_1_is_everything() {
    let s = smollm2();
    let p = &check_plans(&s, 1)[0];
    assert_eq!((p.q_heads(), p.kv_heads()), (0..9, 0..3));
    assert_eq!(p.intermediate_range(), 0..1536);
    for (name, _) in tensors(&s) {
        let expected = match ShardPlan::parallelism(&name) {
            Parallelism::Replicated => Slice::Full,
            Parallelism::Column if name.contains("q_proj") => Slice::Rows(0..576),
            Parallelism::Column if name.contains("_proj") && name.contains("attn") => {
                Slice::Rows(0..192)
            }
            Parallelism::Column => Slice::Rows(0..1536),
            Parallelism::Row if name.contains("o_proj") => Slice::Cols(0..576),
            Parallelism::Row => Slice::Cols(0..1536),
        };
        assert_eq!(p.slice_for(&name), expected, "{name}");
    }
    // SmolLM2-135M: about 134.5M parameters.
    let params = p.params(&s).total();
    assert!((134_000_000..135_000_000).contains(&params), "{params}");
    assert_eq!(p.bytes_per_rank(&s, 4.0), params as u64 * 4);
}

#[test]
fn smollm2_world_2_splits_kv_groups_two_and_one() {
    let s = smollm2();
    let plans = check_plans(&s, 2);
    let (r0, r1) = (&plans[0], &plans[1]);
    assert_eq!((r0.q_heads(), r0.kv_heads()), (0..6, 0..2));
    assert_eq!((r1.q_heads(), r1.kv_heads()), (6..9, 2..3));
    assert_eq!((r0.local_heads(), r0.local_kv_heads()), (6, 2));
    assert_eq!((r1.local_heads(), r1.local_kv_heads()), (3, 1));
    assert_eq!((r0.q_rows(), r1.q_rows()), (0..384, 384..576));
    assert_eq!((r0.kv_rows(), r1.kv_rows()), (0..128, 128..192));
    assert_eq!(
        (r0.local_intermediate(), r1.local_intermediate()),
        (768, 768)
    );
    assert_eq!(
        r1.slice_for("model.layers.29.self_attn.o_proj.weight"),
        Slice::Cols(384..576)
    );
    assert_eq!(
        r1.slice_for("model.layers.3.mlp.down_proj.weight"),
        Slice::Cols(768..1536)
    );
    assert_eq!(
        r0.slice_for("model.layers.3.mlp.up_proj.weight"),
        Slice::Rows(0..768)
    );
    assert_eq!(r0.slice_for("model.embed_tokens.weight"), Slice::Full);
    assert!(!r0.kv_replicated());
}

#[test]
fn smollm2_world_3_one_group_each() {
    let s = smollm2();
    let plans = check_plans(&s, 3);
    for (r, p) in plans.iter().enumerate() {
        assert_eq!(p.q_heads(), 3 * r..3 * r + 3);
        assert_eq!(p.kv_heads(), r..r + 1);
        assert_eq!(p.intermediate_range(), 512 * r..512 * (r + 1));
    }
}

#[test]
fn smollm2_more_ranks_than_kv_heads_replicates_kv() {
    let s = smollm2();
    for world in 4..=9 {
        check_plans(&s, world);
    }
    // world 4: group 0 is shared by ranks 0 and 1 (query heads 0..2, 2..3).
    let plans = check_plans(&s, 4);
    assert_eq!((plans[0].q_heads(), plans[0].kv_heads()), (0..2, 0..1));
    assert_eq!((plans[1].q_heads(), plans[1].kv_heads()), (2..3, 0..1));
    assert_eq!((plans[2].q_heads(), plans[2].kv_heads()), (3..6, 1..2));
    assert_eq!((plans[3].q_heads(), plans[3].kv_heads()), (6..9, 2..3));
    assert!(plans[1].kv_replicated());
}

#[test]
fn llama2_7b_mha() {
    let s = llama2_7b();
    for world in [1, 2, 4, 8] {
        let plans = check_plans(&s, world);
        for p in &plans {
            assert_eq!(p.local_heads(), 32 / world);
            assert_eq!(p.local_kv_heads(), 32 / world);
        }
    }
    // 11008 = 344 groups of 32; over 8 ranks exactly 43 groups each.
    let plans = check_plans(&s, 8);
    assert!(plans.iter().all(|p| p.local_intermediate() == 1376));
    // RSS expectation: bf16 7B at world 8 is 1/8 of the 6.48B layer
    // parameters plus the two 32000x4096 embedding matrices: about 2.14 GB.
    let full = plans[0].params(&s);
    let layers = ShardPlan::new(&s, 1, 0).unwrap().params(&s).sharded;
    assert_eq!(full.sharded * 8, layers);
    assert_eq!(full.replicated, 2 * 32000 * 4096 + (2 * 32 + 1) * 4096);
    let bytes = plans[0].bytes_per_rank(&s, 2.0);
    assert!((2_100_000_000..2_200_000_000).contains(&bytes), "{bytes}");
}

#[test]
fn gqa_8_kv_heads_world_3_is_uneven() {
    let s = llama3_8b();
    let plans = check_plans(&s, 3);
    let kv: Vec<_> = plans.iter().map(ShardPlan::local_kv_heads).collect();
    let q: Vec<_> = plans.iter().map(ShardPlan::local_heads).collect();
    assert_eq!(kv, [3, 3, 2]);
    assert_eq!(q, [12, 12, 8]);
    assert_eq!(plans[2].q_heads(), 24..32);
    // 14336 = 448 groups of 32: 150, 149, 149 groups.
    let i: Vec<_> = plans.iter().map(ShardPlan::local_intermediate).collect();
    assert_eq!(i, [4800, 4768, 4768]);
    for world in [2, 4, 8, 16, 32] {
        check_plans(&s, world);
    }
}

#[test]
fn fixture_shapes_and_biases() {
    for world in [1, 2, 3, 4, 5] {
        check_plans(&qwen_like(), world);
    }
    for world in [1, 2, 3, 4, 6] {
        check_plans(&fixture_gqa(), world);
    }
    // 144 is not a multiple of 32: plain even split.
    let plans = check_plans(&qwen_like(), 3);
    assert!(plans.iter().all(|p| p.local_intermediate() == 48));
    // One KV head shared by all ranks; query heads 2, 2, 1; biases follow weights.
    assert_eq!(plans[2].q_heads(), 4..5);
    assert_eq!(
        plans[2].slice_for("model.layers.1.self_attn.q_proj.bias"),
        Slice::Rows(64..80)
    );
    assert_eq!(
        plans[2].slice_for("model.layers.1.self_attn.v_proj.bias"),
        Slice::Rows(0..16)
    );
    // 160 = 5 groups of 32 over 2 ranks: 96 and 64.
    let plans = check_plans(&fixture_gqa(), 2);
    assert_eq!(plans[1].intermediate_range(), 96..160);
}

fn config_err(e: ModelError) -> (String, String) {
    let msg = e.to_string();
    match e {
        ModelError::Config { key, .. } => (key, msg),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

#[test]
fn errors_name_the_problem() {
    let s = smollm2();
    let (key, msg) = config_err(ShardPlan::new(&s, 0, 0).unwrap_err());
    assert_eq!(key, "tensor_parallel");
    assert!(msg.contains("at least 1"), "{msg}");

    let (key, msg) = config_err(ShardPlan::new(&s, 2, 2).unwrap_err());
    assert_eq!(key, "rank");
    assert!(
        msg.contains("rank 2") && msg.contains("world size 2"),
        "{msg}"
    );

    let (key, msg) = config_err(ShardPlan::new(&s, 10, 0).unwrap_err());
    assert_eq!(key, "tensor_parallel");
    assert!(
        msg.contains("10") && msg.contains("9 query heads") && msg.contains("at most 9"),
        "{msg}"
    );
    assert!(ShardPlan::all(&s, 0).is_err());
}

#[test]
fn unknown_and_replicated_names_are_full() {
    let p = ShardPlan::new(&smollm2(), 2, 1).unwrap();
    for name in [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.x.self_attn.q_proj.weight",
        "something.else",
    ] {
        assert_eq!(p.slice_for(name), Slice::Full, "{name}");
    }
}

fn fixture() -> Checkpoint {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llama-gqa-tied");
    Checkpoint::open(&dir).expect("open fixture")
}

/// Concatenate `[rows, c_i]` pieces along columns.
fn concat_cols(parts: &[HostTensor]) -> HostTensor {
    let rows = parts[0].shape[0];
    let cols: usize = parts.iter().map(|p| p.shape[1]).sum();
    let mut data = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for p in parts {
            let c = p.shape[1];
            data.extend_from_slice(&p.data[r * c..(r + 1) * c]);
        }
    }
    HostTensor::new(vec![rows, cols], data)
}

/// Concatenate pieces along rows.
fn concat_rows(parts: &[HostTensor]) -> HostTensor {
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    HostTensor::new(shape, parts.iter().flat_map(|p| p.data.clone()).collect())
}

#[test]
fn fixture_slices_reassemble_the_full_tensors() {
    let ck = fixture();
    let src = ck.source.as_ref();
    for world in [1, 2, 3] {
        let plans = ShardPlan::all(&ck.spec, world).unwrap();
        for l in 0..ck.spec.num_layers {
            let p = format!("model.layers.{l}");
            for (suffix, par) in [
                ("self_attn.o_proj.weight", Parallelism::Row),
                ("mlp.down_proj.weight", Parallelism::Row),
                ("self_attn.q_proj.weight", Parallelism::Column),
                ("mlp.gate_proj.weight", Parallelism::Column),
                ("mlp.up_proj.weight", Parallelism::Column),
            ] {
                let name = format!("{p}.{suffix}");
                assert_eq!(ShardPlan::parallelism(&name), par);
                let full = src.read(&name, &Slice::Full).unwrap();
                let parts: Vec<HostTensor> = plans
                    .iter()
                    .map(|plan| {
                        let t = src.read(&name, &plan.slice_for(&name)).unwrap();
                        assert_eq!(Some(t.shape.clone()), plan.local_shape(&name, &full.shape));
                        t
                    })
                    .collect();
                let joined = match par {
                    Parallelism::Row => concat_cols(&parts),
                    _ => concat_rows(&parts),
                };
                assert_eq!(joined, full, "{name} at world {world}");
            }
            // K/V: each rank's rows are exactly its KV heads of the full tensor.
            for suffix in ["self_attn.k_proj.weight", "self_attn.v_proj.weight"] {
                let name = format!("{p}.{suffix}");
                let full = src.read(&name, &Slice::Full).unwrap();
                let cols = full.shape[1];
                for plan in &plans {
                    let t = src.read(&name, &plan.slice_for(&name)).unwrap();
                    let rows = plan.kv_rows();
                    assert_eq!(t.data, full.data[rows.start * cols..rows.end * cols]);
                }
            }
        }
    }
}

#[test]
fn row_parallel_partial_products_sum_to_the_full_product() {
    // What the all-reduce after o_proj computes: sum over ranks of
    // x[:, cols_r] @ W[:, cols_r]^T equals x @ W^T.
    let ck = fixture();
    let name = "model.layers.1.self_attn.o_proj.weight";
    let full = ck.source.read(name, &Slice::Full).unwrap();
    let (out, inp) = (full.shape[0], full.shape[1]);
    let x: Vec<f32> = (0..inp)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
        .collect();
    let dot = |w: &HostTensor, xs: &[f32]| -> Vec<f32> {
        let c = w.shape[1];
        (0..w.shape[0])
            .map(|r| {
                w.data[r * c..(r + 1) * c]
                    .iter()
                    .zip(xs)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect()
    };
    let expected = dot(&full, &x);
    let plans = ShardPlan::all(&ck.spec, 3).unwrap();
    let mut sum = vec![0f32; out];
    for plan in &plans {
        let Slice::Cols(c) = plan.slice_for(name) else {
            panic!("o_proj must be column-sliced");
        };
        let w = ck.source.read(name, &Slice::Cols(c.clone())).unwrap();
        for (s, v) in sum.iter_mut().zip(dot(&w, &x[c])) {
            *s += v;
        }
    }
    for (a, b) in sum.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}
