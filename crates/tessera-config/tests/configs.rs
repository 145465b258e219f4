//! Every file in `configs/` loads and validates, and the three named ones
//! say what their names promise.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_config::{
    Collective, Config, DType, Device, KvDType, ModelFormat, ResolvedCollective, RestartPolicy,
    Threads, WeightBudget,
};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn load(name: &str) -> Config {
    let path = configs_dir().join(name);
    match Config::from_file(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn every_yaml_in_configs_validates() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(configs_dir()).expect("configs/ exists") {
        let path = entry.expect("readable entry").path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            if let Err(e) = Config::from_file(&path) {
                panic!("{e}");
            }
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    for required in ["cpu-tp2.yaml", "gpu-tp2.yaml", "gpu-offload.yaml"] {
        assert!(
            names.iter().any(|n| n == required),
            "configs/{required} missing"
        );
    }
}

#[test]
fn cpu_tp2() {
    let c = load("cpu-tp2.yaml");
    assert_eq!(
        c.model.path.as_deref(),
        Some(Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
    assert_eq!(c.model.format, ModelFormat::Gguf);
    assert_eq!(c.model.dtype, DType::F32);
    assert_eq!(c.parallelism.tensor_parallel, 2);
    assert_eq!(c.parallelism.devices, vec![Device::Cpu, Device::Cpu]);
    assert_eq!(c.parallelism.collective, Collective::Tcp);
    assert_eq!(c.parallelism.resolved_collective(), ResolvedCollective::Tcp);
    assert_eq!(c.parallelism.threads_per_worker, Threads::Auto);
    assert_eq!(c.parallelism.threads_per_worker(16), 8);
    assert_eq!(c.parallelism.threads_per_worker(1), 1);
    assert!(!c.offload.enabled);
    assert_eq!(c.server.max_context, Some(2048));
    assert_eq!(c.supervision.collective_timeout, Duration::from_secs(10));
    assert_eq!(c.supervision.worker_start_timeout, Duration::from_secs(120));
}

#[test]
fn gpu_tp2() {
    let c = load("gpu-tp2.yaml");
    assert_eq!(c.model.format, ModelFormat::Dummy);
    assert_eq!(c.model.path, None);
    let dummy = c.model.dummy.as_ref().expect("dummy section");
    assert_eq!(dummy.shape, "llama2-7b");
    assert_eq!(c.model.dtype, DType::Int8);
    assert_eq!(
        c.parallelism.devices,
        vec![Device::Cuda(0), Device::Cuda(1)]
    );
    assert_eq!(
        c.parallelism.resolved_collective(),
        ResolvedCollective::Nccl
    );
    assert_eq!(c.parallelism.threads_per_worker(64), 2);
    assert_eq!(c.supervision.restart_policy, RestartPolicy::OnFailure);
    assert_eq!(c.supervision.max_restarts, 3);
}

#[test]
fn gpu_offload() {
    let c = load("gpu-offload.yaml");
    assert_eq!(c.parallelism.tensor_parallel, 1);
    assert_eq!(c.parallelism.devices, vec![Device::Cuda(0)]);
    assert_eq!(
        c.parallelism.resolved_collective(),
        ResolvedCollective::Local
    );
    assert_eq!(c.model.dtype, DType::Int8);
    assert!(c.offload.enabled);
    assert_eq!(c.offload.weight_budget, WeightBudget::Bytes(6 << 30));
    assert_eq!(c.offload.prefetch_depth, 2);
    assert!(c.offload.pin_memory);
}

#[test]
fn defaults_for_everything_optional() {
    let c = Config::from_str("model:\n  path: m.gguf\n", Path::new("min.yaml")).unwrap();
    assert_eq!(c.model.format, ModelFormat::Auto);
    assert_eq!(c.model.dtype, DType::F32);
    assert_eq!(c.parallelism.tensor_parallel, 1);
    assert_eq!(c.parallelism.devices, vec![Device::Cpu]);
    assert_eq!(c.parallelism.collective, Collective::Auto);
    assert_eq!(
        c.parallelism.resolved_collective(),
        ResolvedCollective::Local
    );
    assert!(!c.offload.enabled);
    assert_eq!(c.offload.weight_budget, WeightBudget::Auto);
    assert_eq!(c.offload.prefetch_depth, 2);
    assert!(c.offload.pin_memory);
    assert_eq!(c.server.grpc_address, "127.0.0.1:8001");
    assert_eq!(c.server.max_queue, 256);
    assert_eq!(c.server.max_batch, 8);
    assert_eq!(c.server.max_context, None);
    assert_eq!(c.server.max_tokens, 1024);
    assert_eq!(c.supervision.restart_policy, RestartPolicy::Never);
    assert_eq!(c.supervision.max_restarts, 3);
    assert_eq!(c.supervision.worker_start_timeout, Duration::from_secs(600));
    assert_eq!(c.supervision.step_timeout, Duration::from_secs(60));
    assert_eq!(c.supervision.collective_timeout, Duration::from_secs(30));
}

#[test]
fn devices_default_to_cpu_per_worker_and_auto_picks_tcp() {
    let text = "model: {path: m.gguf}\nparallelism: {tensor_parallel: 3}\n";
    let c = Config::from_str(text, Path::new("x.yaml")).unwrap();
    assert_eq!(c.parallelism.devices, vec![Device::Cpu; 3]);
    assert_eq!(c.parallelism.resolved_collective(), ResolvedCollective::Tcp);
}

#[test]
fn accepted_spellings() {
    let text = r#"
model: {path: m, dtype: int8}
parallelism:
  tensor_parallel: 2
  devices: ["cuda:3", 1]
offload: {enabled: true, weight_budget: 1500000000, prefetch_depth: 1}
server: {grpc_address: "localhost:9000", max_context: 100, max_tokens: 100}
supervision: {step_timeout: 1m30s, collective_timeout: 1m 30s, worker_start_timeout: 1h}
"#;
    let c = Config::from_str(text, Path::new("x.yaml")).unwrap();
    assert_eq!(
        c.parallelism.devices,
        vec![Device::Cuda(3), Device::Cuda(1)]
    );
    assert_eq!(
        c.parallelism.resolved_collective(),
        ResolvedCollective::Nccl
    );
    assert_eq!(c.offload.weight_budget, WeightBudget::Bytes(1_500_000_000));
    assert_eq!(c.supervision.step_timeout, Duration::from_secs(90));
    assert_eq!(c.supervision.collective_timeout, Duration::from_secs(90));
    // Empty sections mean defaults.
    let c = Config::from_str("model: {path: m}\noffload:\nserver:\n", Path::new("x.yaml")).unwrap();
    assert!(!c.offload.enabled);
    // Offload on cpu with an explicit budget is the CI configuration of the streamer.
    // int4 streams too, and runs on the CPU (as f32 there).
    let text = "model: {path: m, dtype: int4}\noffload: {enabled: true, weight_budget: 64MiB}\n";
    let c = Config::from_str(text, Path::new("x.yaml")).unwrap();
    assert_eq!(c.model.dtype, DType::Int4);
    let text = "model: {path: m, dtype: int8}\noffload: {enabled: true, weight_budget: 64MiB}\n";
    let c = Config::from_str(text, Path::new("x.yaml")).unwrap();
    assert_eq!(c.offload.weight_budget, WeightBudget::Bytes(64 << 20));
    assert_eq!(
        (c.offload.resident_layers, c.offload.link_gbps),
        (None, None)
    );
    // The KV cache dtype: f32 unless given.
    assert_eq!(c.model.kv_dtype, KvDType::F32);
    let c = Config::from_str("model: {path: m, kv_dtype: bf16}\n", Path::new("x.yaml")).unwrap();
    assert_eq!(c.model.kv_dtype, KvDType::Bf16);
    let text = "model: {path: m, dtype: int8}\noffload: {enabled: true, weight_budget: 64MiB, resident_layers: 3, link_gbps: 50}\n";
    let c = Config::from_str(text, Path::new("x.yaml")).unwrap();
    assert_eq!(
        (c.offload.resident_layers, c.offload.link_gbps),
        (Some(3), Some(50.0))
    );
}
