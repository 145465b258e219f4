//! Tessera against Hugging Face transformers on small random-weight checkpoints
//! (GQA with 6/2 heads, tied embeddings, bf16 shards with llama3 RoPE scaling,
//! Qwen2 QKV bias with linear RoPE scaling in f16). References come from
//! scripts/gen-fixtures.py.

mod common;
use common::*;
use tessera_backend::{cpu::CpuBackend, WeightDType};
use tessera_engine::{generate, GenerateRequest, Model, SamplingParams};
use tessera_model::Checkpoint;

const MODELS: &[&str] = &[
    "llama-gqa-tied",
    "llama3-untied-bf16-sharded",
    "qwen2-bias-f16",
];

fn load(name: &str, dtype: WeightDType) -> Model<CpuBackend> {
    let ckpt = Checkpoint::open(&fixture(name)).expect("fixture opens");
    Model::load(
        CpuBackend::new(2).unwrap(),
        &ckpt.spec,
        ckpt.source.as_ref(),
        dtype,
        |_, _| {},
    )
    .expect("fixture loads")
}

fn greedy(model: &Model<CpuBackend>, prompt: &[u32], n: usize) -> tessera_engine::Generation {
    let req = GenerateRequest {
        prompt_ids: prompt.to_vec(),
        max_new_tokens: n,
        sampling: SamplingParams::default(),
        stop: vec![],
        eos_ids: vec![],
    };
    generate(model, None, &req, |_| {}).expect("generation runs")
}

#[test]
fn f32_matches_transformers_tokens_and_logits() {
    for name in MODELS {
        let exp = expected(name);
        let model = load(name, WeightDType::F32);
        for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["prompt_ids"]);
            let want = ids(&case["greedy_ids"]);
            let gen = greedy(&model, &prompt, want.len());
            assert_eq!(
                gen.generated_ids, want,
                "{name} case {i}: greedy tokens differ from transformers"
            );
            let ref_logits = read_npy(&fixture(name).join(case["logits"].as_str().unwrap()));
            let d = max_abs_diff(&gen.prompt_logits, &ref_logits);
            assert!(
                d < 1e-3,
                "{name} case {i}: last-position logits differ by {d}"
            );
        }
    }
}

/// Random-weight models have near-flat logits (top-2 gaps down to 2e-3) and
/// weights drawn at std 0.15, where int8 rounding moves logits by ~10% of their
/// spread (measured: the same with int8 weights and f32 activations, so it is
/// the weight format, not the kernel). Continuations therefore diverge after
/// the first differing token; the 32-token agreement and perplexity criteria
/// and the first-token criterion are checked on the real model in smollm2.rs.
/// Here: last-position logits within 20% of their standard deviation.
#[test]
fn int8_stays_close_to_f32() {
    for name in MODELS {
        let exp = expected(name);
        let f32m = load(name, WeightDType::F32);
        let i8m = load(name, WeightDType::Int8);
        for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["prompt_ids"]);
            let a = greedy(&f32m, &prompt, 1);
            let b = greedy(&i8m, &prompt, 1);
            let n = a.prompt_logits.len() as f32;
            let mean = a.prompt_logits.iter().sum::<f32>() / n;
            let std = (a
                .prompt_logits
                .iter()
                .map(|x| (x - mean).powi(2))
                .sum::<f32>()
                / n)
                .sqrt();
            let d = max_abs_diff(&a.prompt_logits, &b.prompt_logits);
            assert!(
                d < 0.2 * std,
                "{name} case {i}: int8 logits differ by {d} (std {std})"
            );
        }
    }
}

/// A bf16 KV cache (keys and values rounded to bf16 when stored) against
/// transformers' f32 logits: bf16 keeps 8 significant bits, so keys and values
/// move by up to 2^-9 of themselves. Measured on these random-weight models:
/// up to 1.8% of the logits' standard deviation (int8 weights: ~10%); the
/// bound is 3%, and the logits must move at all (the rounding really happened).
#[test]
fn bf16_kv_cache_stays_close_to_transformers() {
    for name in MODELS {
        let exp = expected(name);
        let mut model = load(name, WeightDType::F32);
        model.set_kv_dtype(tessera_backend::KvDType::BF16).unwrap();
        for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["prompt_ids"]);
            let gen = greedy(&model, &prompt, 1);
            let ref_logits = read_npy(&fixture(name).join(case["logits"].as_str().unwrap()));
            let n = ref_logits.len() as f32;
            let mean = ref_logits.iter().sum::<f32>() / n;
            let std = (ref_logits.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
            let d = max_abs_diff(&gen.prompt_logits, &ref_logits);
            println!(
                "{name} case {i}: bf16 KV logits within {d:.2e} of transformers (std {std:.3})"
            );
            assert!(
                d < 0.03 * std,
                "{name} case {i}: bf16 KV logits differ by {d} (std {std})"
            );
            assert!(
                d > 1e-6,
                "{name} case {i}: bf16 KV logits equal the f32 ones ({d}): nothing was rounded"
            );
        }
    }
}

#[test]
fn cli_generate_matches_library_and_writes_logits() {
    let name = "llama-gqa-tied";
    let case = &expected(name)["cases"][1];
    let prompt: Vec<String> = ids(&case["prompt_ids"])
        .iter()
        .map(|x| x.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("logits.npy");
    let out = generate_json(&[
        "--model",
        fixture(name).to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--max-new-tokens",
        "32",
        "--dump-logits",
        npy.to_str().unwrap(),
    ]);
    assert_eq!(ids(&out["generated_ids"]), ids(&case["greedy_ids"]));
    assert_eq!(ids(&out["prompt_ids"]), ids(&case["prompt_ids"]));
    assert_eq!(out["finish_reason"], "length");
    for key in [
        "load_s",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "decode_step_s",
    ] {
        assert!(
            out["timings"][key].as_f64().unwrap() > 0.0,
            "timings.{key} missing"
        );
    }
    // The forward steps are part of the decode time.
    let t = &out["timings"];
    assert!(t["decode_step_s"].as_f64().unwrap() <= t["decode_s"].as_f64().unwrap());
    let want = read_npy(&fixture(name).join(case["logits"].as_str().unwrap()));
    assert!(max_abs_diff(&read_npy(&npy), &want) < 1e-3);
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let model = load("llama-gqa-tied", WeightDType::F32);
    let run = |seed| {
        let req = GenerateRequest {
            prompt_ids: vec![5, 6, 7],
            max_new_tokens: 24,
            sampling: SamplingParams {
                temperature: 1.0,
                top_p: 0.95,
                top_k: 50,
                seed,
                ..Default::default()
            },
            stop: vec![],
            eos_ids: vec![],
        };
        generate(&model, None, &req, |_| {}).unwrap().generated_ids
    };
    assert_eq!(run(11), run(11), "same seed must give the same tokens");
    assert_ne!(
        run(11),
        run(12),
        "different seeds should give different samples"
    );
}

#[test]
fn eos_ends_generation_and_is_reported() {
    let model = load("llama-gqa-tied", WeightDType::F32);
    let case = &expected("llama-gqa-tied")["cases"][1];
    let want = ids(&case["greedy_ids"]);
    // Declare the 5th greedy token an EOS: generation must stop right there.
    let req = GenerateRequest {
        prompt_ids: ids(&case["prompt_ids"]),
        max_new_tokens: 32,
        sampling: SamplingParams::default(),
        stop: vec![],
        eos_ids: vec![want[4]],
    };
    let gen = generate(&model, None, &req, |_| {}).unwrap();
    let first = want.iter().position(|t| *t == want[4]).unwrap();
    assert_eq!(gen.generated_ids, want[..=first].to_vec());
    assert_eq!(gen.finish_reason, tessera_engine::FinishReason::Eos);
}
