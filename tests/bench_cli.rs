//! `tessera bench --json`: every field is present and the figures are positive
//! and consistent with each other. No timed thresholds: speed is reported by
//! the benchmark, never asserted.

mod common;
use common::*;
use serde_json::Value;

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number in {v}"))
}

/// `tokens_per_s` and `secs` stats of one measurement: ordered, positive, and
/// agreeing with `tokens`; one run per rep.
fn check_measurement(m: &Value, tokens: u64, reps: usize) {
    assert_eq!(m["tokens"].as_u64(), Some(tokens), "{m}");
    for stat in ["tokens_per_s", "secs"] {
        let (min, med, max) = (
            num(m, &format!("{stat}.min")),
            num(m, &format!("{stat}.median")),
            num(m, &format!("{stat}.max")),
        );
        assert!(min > 0.0 && min.is_finite(), "{stat}.min in {m}");
        assert!(min <= med && med <= max, "{stat} not ordered in {m}");
    }
    let runs = m["runs_tokens_per_s"].as_array().expect("runs list");
    assert_eq!(runs.len(), reps, "{m}");
    // The fastest run is the shortest one.
    let fastest = tokens as f64 / num(m, "secs.min");
    assert!(
        (fastest - num(m, "tokens_per_s.max")).abs() <= 1e-6 * fastest,
        "tokens/s and secs disagree in {m}"
    );
}

#[test]
fn bench_json_fields() {
    let model = fixture("llama-gqa-tied");
    let out = tessera(&[
        "bench",
        "--model",
        model.to_str().expect("utf8 path"),
        "--dtype",
        "int8",
        "--threads",
        "2",
        "--prompt-lens",
        "8,5",
        "--decode-tokens",
        "4",
        "--reps",
        "2",
        "--decode-batch",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "tessera bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");

    assert_eq!(v["dtype"], "int8");
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["reps"].as_u64(), Some(2));
    assert_eq!(v["threads"].as_u64(), Some(2));
    assert!(v["backend"].as_str().is_some_and(|b| b.starts_with("cpu")));
    let kernel = v["cpu"]["kernel"].as_str().expect("cpu.kernel");
    assert_eq!(Some(kernel), v["cpu"]["int8_kernel"].as_str());
    assert!(
        ["avx512-vnni", "avx2", "scalar"].contains(&kernel),
        "{kernel}"
    );
    assert!(v["cpu"]["features"].as_str().is_some());
    assert!(v["cpu"]["f32_kernel"].as_str().is_some());
    assert!(num(&v, "load_s") > 0.0);
    assert_eq!(v["shape"]["vocab_size"].as_u64(), Some(512));

    let prefill = v["prefill"].as_array().expect("prefill list");
    assert_eq!(prefill.len(), 2);
    for (p, len) in prefill.iter().zip([8u64, 5]) {
        assert_eq!(p["prompt_len"].as_u64(), Some(len));
        check_measurement(p, len, 2);
    }
    check_measurement(&v["decode"], 4, 2);
    assert_eq!(v["decode"]["batch"].as_u64(), Some(1));
    assert_eq!(v["decode_batch"]["batch"].as_u64(), Some(2));
    let (b1, b2) = (
        v["decode"]["tokens_per_s"]["median"].as_f64().unwrap(),
        v["decode_batch"]["tokens_per_s"]["median"]
            .as_f64()
            .unwrap(),
    );
    assert!(b1 > 0.0 && b2 > 0.0, "decode rates {b1} {b2}");
    // Batched prefill: 2 prompts of the first prompt length (8) in one step.
    assert_eq!(v["prefill_batch"]["batch"].as_u64(), Some(2));
    assert_eq!(v["prefill_batch"]["prompt_len"].as_u64(), Some(8));
    check_measurement(&v["prefill_batch"], 16, 2);

    if cfg!(target_os = "linux") {
        let peak = num(&v, "peak_rss_bytes");
        assert!(peak > 0.0);
        assert!(peak >= num(&v, "rss_bytes"), "peak RSS below current RSS");
    }
}

#[test]
fn bench_rejects_bad_arguments() {
    let model = fixture("llama-gqa-tied");
    let model = model.to_str().expect("utf8 path");
    for extra in [
        &["--reps", "0"][..],
        &["--decode-tokens", "0"],
        &["--prompt-lens", "0"],
        &["--prompt-lens", "100000"],
    ] {
        let mut args = vec!["bench", "--model", model];
        args.extend_from_slice(extra);
        let out = tessera(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.starts_with("error: "), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
    }
}
