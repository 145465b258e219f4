//! The table of bad configs: each one is rejected before anything starts,
//! and the message names the file, the key path, the bad value and what is
//! allowed.

use std::path::Path;
use tessera_config::{Config, ConfigError};

const FILE: &str = "configs/bad.yaml";

/// (case, YAML text, key path, strings the message must also contain:
/// the bad value and (part of) what is allowed)
const CASES: &[(&str, &str, &str, &[&str])] = &[
    // Unknown keys, at the top and nested.
    (
        "unknown top-level key",
        "model: {path: m.gguf}\nparalelism: {tensor_parallel: 2}\n",
        "paralelism",
        &["unknown key `paralelism`", "`parallelism`", "`supervision`"],
    ),
    (
        "unknown nested key",
        "model: {path: m.gguf}\nparallelism:\n  tensor_parallel: 2\n  device: [cpu, cpu]\n",
        "parallelism.device",
        &["unknown key `device`", "`devices`", "`threads_per_worker`"],
    ),
    (
        "unknown key in dummy",
        "model:\n  format: dummy\n  dummy: {shape: tiny, sead: 1}\n",
        "model.dummy.sead",
        &["unknown key `sead`", "`shape`, `seed`"],
    ),
    // Missing required keys.
    (
        "no model section",
        "parallelism: {tensor_parallel: 1}\n",
        "model",
        &["required key `model` is missing"],
    ),
    ("empty file", "# nothing yet\n", "model", &["no settings"]),
    (
        "offload link bandwidth of zero",
        "model: {path: m, dtype: int8}\noffload: {enabled: true, weight_budget: 1GiB, link_gbps: 0}\n",
        "offload.link_gbps",
        &["0", "a number > 0"],
    ),
    (
        "model path missing",
        "model: {format: gguf}\n",
        "model.path",
        &["(missing)", ".gguf", "format: dummy"],
    ),
    (
        "dummy without shape",
        "model: {format: dummy, dummy: {seed: 3}}\n",
        "model.dummy.shape",
        &["required key `shape` is missing"],
    ),
    // Wrong types.
    (
        "section of the wrong type",
        "model: {path: m.gguf}\nparallelism: 3\n",
        "parallelism",
        &["integer `3`", "a mapping with the keys `tensor_parallel`"],
    ),
    (
        "tensor_parallel not a number",
        "model: {path: m.gguf}\nparallelism: {tensor_parallel: two}\n",
        "parallelism.tensor_parallel",
        &["\"two\"", "an integer >= 1"],
    ),
    (
        "tensor_parallel zero",
        "model: {path: m.gguf}\nparallelism: {tensor_parallel: 0}\n",
        "parallelism.tensor_parallel",
        &["`0`", "an integer >= 1"],
    ),
    (
        "boolean written as yes",
        "model: {path: m.gguf}\noffload: {enabled: yes}\n",
        "offload.enabled",
        &["\"yes\"", "a boolean"],
    ),
    (
        "negative seed",
        "model: {format: dummy, dummy: {shape: tiny, seed: -1}}\n",
        "model.dummy.seed",
        &["`-1`", "an integer >= 0"],
    ),
    (
        "bad shape name",
        "model: {format: dummy, dummy: {shape: \"llama 7b\"}}\n",
        "model.dummy.shape",
        &["\"llama 7b\"", "llama2-7b"],
    ),
    (
        "empty path",
        "model: {path: \"\"}\n",
        "model.path",
        &["\"\"", "a non-empty path"],
    ),
    // Values outside the allowed set.
    (
        "unknown format",
        "model: {path: m, format: safetensors}\n",
        "model.format",
        &["`safetensors`", "`auto`, `hf`, `gguf`, `dummy`"],
    ),
    (
        "unknown dtype",
        "model: {path: m, dtype: q4}\n",
        "model.dtype",
        &["`q4`", "`f32`, `int8`, `int4`, `bf16`, `f16`"],
    ),
    (
        "unknown KV cache dtype",
        "model: {path: m, kv_dtype: int8}\n",
        "model.kv_dtype",
        &["`int8`", "`f32` or `bf16`"],
    ),
    (
        "unknown collective",
        "model: {path: m}\nparallelism: {collective: mpi}\n",
        "parallelism.collective",
        &["`mpi`", "`nccl`, `tcp`"],
    ),
    (
        "unknown restart policy",
        "model: {path: m}\nsupervision: {restart_policy: always}\n",
        "supervision.restart_policy",
        &["`always`", "`never` or `on-failure`"],
    ),
    (
        "bad device name",
        "model: {path: m}\nparallelism:\n  tensor_parallel: 2\n  devices: [cpu, gpu0]\n",
        "parallelism.devices[1]",
        &["\"gpu0\"", "`cpu`", "\"cuda:N\""],
    ),
    (
        "negative device",
        "model: {path: m}\nparallelism: {devices: [-1]}\n",
        "parallelism.devices[0]",
        &["`-1`", "CUDA ordinal"],
    ),
    (
        "empty device list",
        "model: {path: m}\nparallelism: {devices: []}\n",
        "parallelism.devices",
        &["length 0", "at least one device"],
    ),
    (
        "threads zero",
        "model: {path: m}\nparallelism: {threads_per_worker: 0}\n",
        "parallelism.threads_per_worker",
        &["`0`", "`auto` or an integer >= 1"],
    ),
    (
        "bad size unit",
        "model: {path: m, dtype: int8}\noffload: {enabled: true, weight_budget: 12XB}\n",
        "offload.weight_budget",
        &["\"12XB\"", "`auto`", "GiB"],
    ),
    (
        "zero size",
        "model: {path: m, dtype: int8}\noffload: {weight_budget: 0}\n",
        "offload.weight_budget",
        &["`0`", "a byte count > 0"],
    ),
    (
        "duration without unit",
        "model: {path: m}\nsupervision: {step_timeout: 30}\n",
        "supervision.step_timeout",
        &["\"30\"", "\"30s\""],
    ),
    (
        "duration in words",
        "model: {path: m}\nsupervision: {worker_start_timeout: 5 minutes}\n",
        "supervision.worker_start_timeout",
        &["\"5 minutes\"", "units ms, s, m, h"],
    ),
    (
        "zero duration",
        "model: {path: m}\nsupervision: {collective_timeout: 0s}\n",
        "supervision.collective_timeout",
        &["\"0s\"", "a duration > 0"],
    ),
    (
        "bad address",
        "model: {path: m}\nserver: {grpc_address: \"8001\"}\n",
        "server.grpc_address",
        &["\"8001\"", "`127.0.0.1:8001`"],
    ),
    (
        "zero limit",
        "model: {path: m}\nserver: {max_batch: 0}\n",
        "server.max_batch",
        &["`0`", "an integer >= 1"],
    ),
    // Impossible combinations.
    (
        "tensor_parallel 2 with one device",
        "model: {path: m}\nparallelism: {tensor_parallel: 2, devices: [cpu]}\n",
        "parallelism.devices",
        &["[cpu]", "tensor_parallel` is 2", "exactly 2 device(s)"],
    ),
    (
        "more devices than workers",
        "model: {path: m}\nparallelism: {tensor_parallel: 1, devices: [0, 1]}\n",
        "parallelism.devices",
        &["[cuda:0, cuda:1]", "exactly 1 device(s)"],
    ),
    (
        "nccl on cpu",
        "model: {path: m}\nparallelism:\n  tensor_parallel: 2\n  devices: [cpu, cpu]\n  collective: nccl\n",
        "parallelism.collective",
        &["nccl", "`tcp` or `auto`"],
    ),
    (
        "cpu and cuda mixed",
        "model: {path: m}\nparallelism: {tensor_parallel: 2, devices: [cpu, 0]}\n",
        "parallelism.devices[1]",
        &["cuda:0", "mixed", "`cpu` for every worker"],
    ),
    (
        "same GPU twice",
        "model: {path: m}\nparallelism: {tensor_parallel: 3, devices: [0, 1, \"cuda:0\"]}\n",
        "parallelism.devices[2]",
        &["cuda:0", "already devices[0]", "distinct CUDA ordinals"],
    ),
    (
        "half precision on cpu",
        "model: {path: m, dtype: bf16}\n",
        "model.dtype",
        &["bf16", "`f32`, `int8` or `int4`"],
    ),
    (
        "path with format dummy",
        "model: {path: m.gguf, format: dummy, dummy: {shape: tiny}}\n",
        "model.path",
        &["m.gguf", "leave `model.path` out"],
    ),
    (
        "dummy format without dummy section",
        "model: {format: dummy}\n",
        "model.dummy",
        &["(missing)", "shape: llama2-7b"],
    ),
    (
        "dummy section with a real format",
        "model: {path: m.gguf, format: gguf, dummy: {shape: tiny}}\n",
        "model.dummy",
        &["only used with `format: dummy`"],
    ),
    (
        "prefetch 0 with offload",
        "model: {path: m, dtype: int8}\nparallelism: {devices: [0]}\noffload: {enabled: true, prefetch_depth: 0}\n",
        "offload.prefetch_depth",
        &["= 0", "an integer >= 1"],
    ),
    (
        "offload with f32 weights",
        "model: {path: m}\nparallelism: {devices: [0]}\noffload: {enabled: true}\n",
        "model.dtype",
        &["f32", "`int8`"],
    ),
    (
        "offload auto budget on cpu",
        "model: {path: m, dtype: int8}\noffload: {enabled: true, weight_budget: auto}\n",
        "offload.weight_budget",
        &["auto", "explicit size"],
    ),
    (
        "max_tokens above max_context",
        "model: {path: m}\nserver: {max_context: 512, max_tokens: 1024}\n",
        "server.max_tokens",
        &["1024", "from 1 to 512"],
    ),
    (
        "on-failure with no restarts",
        "model: {path: m}\nsupervision: {restart_policy: on-failure, max_restarts: 0}\n",
        "supervision.max_restarts",
        &["= 0", ">= 1"],
    ),
    (
        "collective timeout longer than step timeout",
        "model: {path: m}\nsupervision: {step_timeout: 10s, collective_timeout: 1m}\n",
        "supervision.collective_timeout",
        &["1m", "up to 10s"],
    ),
];

#[test]
fn every_bad_config_is_rejected_naming_file_key_value_and_allowed() {
    assert!(CASES.len() >= 15);
    let mut failures = Vec::new();
    for (case, text, key, needles) in CASES {
        let err = match Config::from_str(text, Path::new(FILE)) {
            Ok(_) => {
                failures.push(format!("{case}: accepted"));
                continue;
            }
            Err(e) => e,
        };
        let msg = err.to_string();
        eprintln!("{case}:\n    {msg}");
        if !msg.starts_with(FILE) {
            failures.push(format!(
                "{case}: message does not start with the file: {msg}"
            ));
        }
        if err.key() != Some(*key) || !msg.contains(&format!("`{key}`")) {
            failures.push(format!("{case}: expected key `{key}`, got {msg}"));
        }
        for needle in *needles {
            if !msg.contains(needle) {
                failures.push(format!("{case}: no {needle:?} in: {msg}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schema_errors_carry_line_and_column() {
    let text = "model: {path: m}\nparallelism:\n  tensor_parallel: 2\n  devices: [cpu, gpu0]\n";
    let err = Config::from_str(text, Path::new(FILE)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("configs/bad.yaml:4:"), "{msg}");
    match err {
        ConfigError::Schema { location, .. } => assert_eq!(location.unwrap().line, 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn yaml_syntax_errors_name_file_and_line() {
    let err = Config::from_str("model:\n  path: m\n  bad: : x\n", Path::new(FILE)).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("configs/bad.yaml:3:"), "{msg}");
    assert!(msg.contains("not valid YAML"), "{msg}");
}

#[test]
fn duplicate_keys_are_rejected_with_their_key_path() {
    for (text, key) in [
        ("model: {path: a}\nmodel: {path: b}\n", "model"),
        (
            "model: {path: a}\nparallelism:\n  tensor_parallel: 1\n  tensor_parallel: 2\n",
            "parallelism.tensor_parallel",
        ),
    ] {
        let err = Config::from_str(text, Path::new(FILE)).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some(key), "{msg}");
        assert!(msg.starts_with(FILE), "{msg}");
        assert!(msg.contains("appears more than once"), "{msg}");
    }
}

#[test]
fn several_documents_are_rejected() {
    let err =
        Config::from_str("model: {path: a}\n---\nmodel: {path: b}\n", Path::new(FILE)).unwrap_err();
    assert!(err.to_string().starts_with(FILE), "{err}");
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tp.yaml");
    std::fs::write(
        &path,
        "model: {path: m}\nparallelism: {tensor_parallel: 2, devices: [0]}\n",
    )
    .unwrap();
    let msg = Config::from_file(&path).unwrap_err().to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("`parallelism.devices`"), "{msg}");

    let missing = dir.path().join("nope.yaml");
    let err = Config::from_file(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("nope.yaml"), "{err}");
}
