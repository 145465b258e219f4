//! `tessera plan` and the offload flags of `generate`, driven through the real
//! binary: plans print before anything loads, bad configurations are refused
//! with what would fit, and a streamed run gives the resident run's tokens.

mod common;
use common::*;

fn plan(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).unwrap();
    tessera(&["plan", p.to_str().unwrap()])
}

const SEVEN_B: &str = "model: {format: dummy, dtype: int8, dummy: {shape: llama2-7b}}\n";

#[test]
fn plan_prints_residency_and_prediction() {
    let out = plan(&format!(
        "{SEVEN_B}offload: {{enabled: true, weight_budget: 4GiB, prefetch_depth: 2, link_gbps: 20}}\n"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "14 of 32 layers",
        "3 slots",
        "resident layers    2,4,",
        "streamed per pass",
        "ms/token",
        "20.0 GB/s",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn plan_refuses_bad_configurations_saying_what_fits() {
    for (offload, want) in [
        (
            "weight_budget: 300MiB",
            "at least 933.6 MiB (978993152 bytes)",
        ),
        ("weight_budget: 4GiB, resident_layers: 40", "at most 32"),
        (
            "weight_budget: 4GiB, resident_layers: 20",
            "at most 14 resident layers fit",
        ),
        ("weight_budget: 4GiB, prefetch_depth: 0", "prefetch_depth"),
    ] {
        let out = plan(&format!("{SEVEN_B}offload: {{enabled: true, {offload}}}\n"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{offload}: accepted");
        assert!(err.contains(want), "{offload}: {err}");
    }
}

/// The synthetic shape bigger than an 80 GB GPU (docs/offload.md): `plan`
/// prints its exact int8 bytes, which the device check compares with the GPU's
/// memory, and plans it on a CPU-only machine without generating a weight.
#[test]
fn plan_sizes_the_shape_bigger_than_an_80gb_gpu() {
    let deep = "model: {format: dummy, dtype: int8, dummy: {shape: llama2-70b-deep96}}\n";
    let out = plan(deep);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("(93005053952 bytes) as int8"), "{text}");
    // Fixed 596,148,224 bytes + 3 slots of 962,592,768: 75 of 96 layers fit 76 GB.
    let out = plan(&format!(
        "{deep}offload: {{enabled: true, weight_budget: 76GB, prefetch_depth: 2}}\n"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["75 of 96 layers", "(21 streamed layers)", "3 slots"] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn generate_streamed_matches_resident_tokens() {
    let base = [
        "--model",
        "dummy:tiny:3",
        "--dtype",
        "int8",
        "--prompt-ids",
        "1,2,3,4",
        "--max-new-tokens",
        "8",
        "--threads",
        "2",
    ];
    let resident = generate_json(&base);
    let mut args = base.to_vec();
    args.extend([
        "--offload-budget",
        "1B",
        "--prefetch",
        "1",
        "--resident-layers",
        "0",
    ]);
    let out = tessera(
        &["generate", "--json"]
            .iter()
            .chain(args.iter())
            .copied()
            .collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("at least"),
        "a 1-byte budget: {err}"
    );
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain([
            "--offload-budget",
            "64MiB",
            "--prefetch",
            "1",
            "--resident-layers",
            "1",
        ])
        .collect();
    let streamed = generate_json(&args);
    assert_eq!(streamed["generated_ids"], resident["generated_ids"]);
}

/// Int4 streams the same way (`--dtype int4`); f32 is refused with a hint.
#[test]
fn generate_streamed_int4_matches_resident_int4() {
    let base = [
        "--model",
        "dummy:tiny:5",
        "--dtype",
        "int4",
        "--prompt-ids",
        "9,2,7,4",
        "--max-new-tokens",
        "8",
        "--threads",
        "2",
    ];
    let resident = generate_json(&base);
    assert_eq!(resident["dtype"], "int4");
    let streamed_args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--offload-budget", "64MiB", "--resident-layers", "1"])
        .collect();
    let streamed = generate_json(&streamed_args);
    assert_eq!(streamed["generated_ids"], resident["generated_ids"]);
    let mut f32_args = base.to_vec();
    f32_args[3] = "f32";
    f32_args.extend(["--offload-budget", "64MiB"]);
    let out = tessera(
        &["generate", "--json"]
            .iter()
            .chain(f32_args.iter())
            .copied()
            .collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("int8 or int4"),
        "f32 streaming: {err}"
    );
}

/// `tensor_parallel: 2` + offload: each worker streams its own shard, and the
/// tokens are those of the same launch with every layer resident.
#[test]
fn launch_tp2_streams_each_shard() {
    let dir = tempfile::tempdir().unwrap();
    let run = |offload: &str| {
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            format!(
                "model: {{format: dummy, dtype: int8, dummy: {{shape: tiny, seed: 3}}}}\n\
                 parallelism: {{tensor_parallel: 2, devices: [cpu, cpu], threads_per_worker: 1}}\n\
                 offload: {offload}\n"
            ),
        )
        .unwrap();
        let out = tessera(&[
            "launch",
            p.to_str().unwrap(),
            "--json",
            "--prompt-ids",
            "1,2,3",
            "--max-new-tokens",
            "6",
        ]);
        assert!(
            out.status.success(),
            "{offload}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let streaming_ranks = v["workers"]
            .as_array()
            .expect("workers in --json")
            .iter()
            .filter(|w| {
                w["backend"]
                    .as_str()
                    .unwrap_or("")
                    .contains("streamed: 1 of 4 layers resident")
            })
            .count();
        (v["generated_ids"].clone(), streaming_ranks)
    };
    let (resident, none) = run("{enabled: false}");
    assert_eq!(none, 0);
    let (streamed, ranks) =
        run("{enabled: true, weight_budget: 64MiB, prefetch_depth: 1, resident_layers: 1}");
    assert_eq!(ranks, 2, "both workers stream their own shard");
    assert_eq!(streamed, resident);
}

/// `tessera bench --offload-budget` reports what streaming did per decode step.
#[test]
fn bench_prints_streaming_statistics() {
    let out = tessera(&[
        "bench",
        "--model",
        "dummy:tiny:1",
        "--dtype",
        "int8",
        "--threads",
        "2",
        "--json",
        "--prompt-lens",
        "4",
        "--decode-tokens",
        "4",
        "--decode-batch",
        "2",
        "--reps",
        "1",
        "--offload-budget",
        "64MiB",
        "--prefetch",
        "1",
        "--resident-layers",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["offload"]["decode"];
    // tiny: 4 layers, 2 resident, so 2 layers' bytes per decode step.
    assert!(d["bytes_per_step"].as_f64().unwrap() > 0.0, "{v}");
    assert!(d["copy_gbps"].as_f64().unwrap() > 0.0, "{v}");
    assert!(d["wait_s"].as_f64().is_some(), "{v}");
    assert!(
        v["offload"]["decode_batch"]["bytes"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(
        v["offload"]["layers"]
            .as_str()
            .unwrap()
            .contains("2 of 4 layers resident"),
        "{v}"
    );
}

/// `tessera launch` refuses the plans `tessera plan` refuses, before any worker starts.
#[test]
fn launch_refuses_an_offload_plan_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(
        &p,
        format!("{SEVEN_B}offload: {{enabled: true, weight_budget: 300MiB}}\n"),
    )
    .unwrap();
    let out = tessera(&[
        "launch",
        p.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
        "--max-new-tokens",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("rank 0 (cpu): offload plan refused") && err.contains("at least"),
        "{err}"
    );
}
