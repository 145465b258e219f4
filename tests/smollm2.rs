//! The default real model, SmolLM2-135M-Instruct (GGUF, Q4_1/Q8_0 weights
//! dequantized to f32), against transformers' outputs recorded by
//! scripts/gen-fixtures.py. Every check drives the real `tessera` binary.

mod common;
use common::*;
use serde_json::Value;

fn run_case(
    model: &str,
    dtype: &str,
    text: &str,
    chat: bool,
    logits: Option<&std::path::Path>,
) -> Value {
    let mut args = vec![
        "--model",
        model,
        "--dtype",
        dtype,
        "--prompt",
        text,
        "--max-new-tokens",
        "32",
    ];
    if chat {
        args.push("--chat");
    }
    let l;
    if let Some(p) = logits {
        l = p.to_str().unwrap().to_string();
        args.extend(["--dump-logits", &l]);
    }
    generate_json(&args)
}

fn check_f32_case(model: &str, case: &Value, chat: bool) {
    let text = if chat {
        case["messages"][0]["content"].as_str().unwrap()
    } else {
        case["text"].as_str().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("l.npy");
    let out = run_case(model, "f32", text, chat, Some(&npy));
    assert_eq!(
        ids(&out["prompt_ids"]),
        ids(&case["prompt_ids"]),
        "prompt ids for {text:?}"
    );
    assert_eq!(
        ids(&out["generated_ids"]),
        ids(&case["greedy_ids"]),
        "greedy tokens for {text:?}: got {:?}",
        out["text"]
    );
    let want = read_npy(&fixture("smollm2").join(case["logits"].as_str().unwrap()));
    let d = max_abs_diff(&read_npy(&npy), &want);
    assert!(
        d < 1e-3,
        "last-position logits for {text:?} differ from transformers by {d}"
    );
    let expect_reason = if case["stopped_at_eos"].as_bool().unwrap() {
        "eos"
    } else {
        "length"
    };
    assert_eq!(out["finish_reason"], expect_reason);
}

#[test]
fn f32_greedy_tokens_and_logits_match_transformers() {
    let Some(model) = smollm2_path() else { return };
    let model = model.to_str().unwrap();
    for case in expected("smollm2")["cases"].as_array().unwrap() {
        check_f32_case(model, case, false);
    }
}

#[test]
fn chat_template_prompt_matches_transformers() {
    let Some(model) = smollm2_path() else { return };
    check_f32_case(
        model.to_str().unwrap(),
        &expected("smollm2")["chat_case"],
        true,
    );
}

/// int8 against f32 on the real model. A 135M model decoding greedily is
/// chaotic: one near-tie flipped early changes the whole continuation, so a
/// free-running comparison measures luck more than the weights. The criterion
/// is therefore teacher-forced: along f32's own greedy continuation, int8 must
/// choose the same next token at >= 90% of the 32 positions (and always the
/// first one). Free-running agreement is printed for the record.
#[test]
fn int8_first_token_equal_and_90_percent_agreement() {
    use tessera_backend::{cpu::CpuBackend, WeightDType};
    use tessera_engine::{argmax, generate, GenerateRequest, Model, SamplingParams};
    let Some(path) = smollm2_path() else { return };
    let ckpt = tessera_model::Checkpoint::open(&path).unwrap();
    let load = |dtype| {
        Model::load(
            CpuBackend::new(0).unwrap(),
            &ckpt.spec,
            ckpt.source.as_ref(),
            dtype,
            |_, _| {},
        )
        .unwrap()
    };
    let (f32m, i8m) = (load(WeightDType::F32), load(WeightDType::Int8));
    let tok = ckpt.tokenizer.as_ref().unwrap();
    let vocab = ckpt.spec.vocab_size;
    let (mut forced_sum, mut free_sum, mut n) = (0.0, 0.0, 0.0);
    for case in expected("smollm2")["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let prompt = tok.encode(text, true).unwrap();
        let req = GenerateRequest {
            prompt_ids: prompt.clone(),
            max_new_tokens: 32,
            sampling: SamplingParams::default(),
            stop: vec![],
            eos_ids: vec![],
        };
        let f = generate(&f32m, None, &req, |_| {}).unwrap().generated_ids;
        let q = generate(&i8m, None, &req, |_| {}).unwrap().generated_ids;
        assert_eq!(f[0], q[0], "first int8 token differs from f32 for {text:?}");
        let mut all = prompt.clone();
        all.extend_from_slice(&f[..f.len() - 1]);
        let mut seq = i8m.new_sequence(all.len()).unwrap();
        let logits = i8m.forward(&mut seq, &all, true).unwrap();
        let picks: Vec<u32> = logits
            .data
            .chunks_exact(vocab)
            .skip(prompt.len() - 1)
            .map(argmax)
            .collect();
        let forced = agreement(&f, &picks);
        let free = agreement(&f, &q);
        eprintln!(
            "{text:?}: teacher-forced {:.1}%, free-running {:.1}%",
            forced * 100.0,
            free * 100.0
        );
        assert!(
            forced >= 0.9,
            "int8 picks f32's next token at only {:.0}% of positions for {text:?}",
            forced * 100.0
        );
        forced_sum += forced;
        free_sum += free;
        n += 1.0;
    }
    eprintln!(
        "mean: teacher-forced {:.1}%, free-running {:.1}%",
        forced_sum / n * 100.0,
        free_sum / n * 100.0
    );
}

#[test]
fn perplexity_f32_matches_transformers_int8_within_2_int4_within_50_percent() {
    let Some(model) = smollm2_path() else { return };
    let model = model.to_str().unwrap();
    let exp = &expected("smollm2")["perplexity"];
    let file = fixture("smollm2").join(exp["file"].as_str().unwrap());
    let ppl = |dtype: &str| -> f64 {
        let out = tessera(&[
            "perplexity",
            "--json",
            "--model",
            model,
            "--dtype",
            dtype,
            "--file",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["tokens"].as_u64().unwrap(),
            exp["num_tokens"].as_u64().unwrap(),
            "token count"
        );
        v["perplexity"].as_f64().unwrap()
    };
    let (f, q, q4) = (ppl("f32"), ppl("int8"), ppl("int4"));
    let reference = exp["perplexity"].as_f64().unwrap();
    eprintln!(
        "perplexity: transformers {reference:.4}, tessera f32 {f:.4}, int8 {q:.4}, int4 {q4:.4}"
    );
    assert!(
        (f - reference).abs() / reference < 1e-3,
        "f32 perplexity {f} vs transformers {reference}"
    );
    assert!(
        (q - f).abs() / f < 0.02,
        "int8 perplexity {q} is more than 2% from f32 {f}"
    );
    // Int4 re-rounds weights that are already 4-bit (Q4_1) in this GGUF:
    // measured +39% (docs/int8.md). The bound catches a broken int4 path
    // (random weights give perplexities in the thousands).
    assert!(
        q4 > f && q4 < 1.5 * f,
        "int4 perplexity {q4} is not within 50% above f32 {f}"
    );
}

#[test]
fn tokenizer_ids_match_transformers() {
    let Some(model) = smollm2_path() else { return };
    let ckpt = tessera_model::Checkpoint::open(&model).unwrap();
    let tok = ckpt.tokenizer.as_ref().expect("GGUF carries a tokenizer");
    for case in expected("smollm2")["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "ids for {text:?}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids_with_special"]),
            "ids (special) for {text:?}"
        );
        assert_eq!(
            tok.decode(&ids(&case["ids"]), false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn streams_text_to_stdout_and_stops_on_stop_string() {
    let Some(model) = smollm2_path() else { return };
    let model = model.to_str().unwrap();
    let case = &expected("smollm2")["cases"][2]; // "Once upon a time..."
    let full = run_case(model, "f32", case["text"].as_str().unwrap(), false, None);
    let full_text = full["text"].as_str().unwrap().to_string();
    // Plain mode streams the same text the JSON reports.
    let out = tessera(&[
        "generate",
        "--model",
        model,
        "--prompt",
        case["text"].as_str().unwrap(),
        "--max-new-tokens",
        "32",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'),
        full_text
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("decode"),
        "speed summary on stderr"
    );
    // A stop string cuts the text before it.
    let word = full_text.split_whitespace().nth(3).unwrap().to_string();
    let stopped = generate_json(&[
        "--model",
        model,
        "--prompt",
        case["text"].as_str().unwrap(),
        "--max-new-tokens",
        "32",
        "--stop",
        &word,
    ]);
    assert_eq!(stopped["finish_reason"], "stop");
    let t = stopped["text"].as_str().unwrap();
    assert_eq!(t, &full_text[..full_text.find(&word).unwrap()]);
}
