//! The CUDA backend end to end, through the `tessera` binary and the engine:
//! greedy tokens equal to the CPU backend's on a seeded model, recorded decode
//! steps (CUDA graphs) giving the tokens of kernel-by-kernel steps, streamed
//! offload (also in a launched worker) giving the tokens of the resident run,
//! and batched decode giving each sequence's lone tokens.
//!
//! Needs a GPU, or the CPU emulator of the CUDA libraries
//! (`scripts/cuda-emu.sh test` runs these with it, in CI). Without either the
//! tests print why and pass; with `TESSERA_REQUIRE_CUDA=1` they fail instead.

mod common;

use common::{generate_json_env, ids, launch_json, max_abs_diff, read_npy};
use serde_json::Value;

/// 20 prompt tokens: the prefill takes the large-product path (more than
/// `GEMV_MAX_ROWS` rows: dequantized weights and cuBLAS), decode the GEMVs.
const PROMPT: &str = "1,15,300,7,99,512,3,42,870,5,11,640,2,77,301,9,18,256,700,4";
const TOKENS: usize = 12;

fn cuda_present(test: &str) -> bool {
    match tessera_backend::cuda::probe() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("TESSERA_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("{test}: TESSERA_REQUIRE_CUDA=1 but CUDA is unavailable: {e}");
            }
            println!("{test}: skipped: {e}");
            false
        }
    }
}

/// `tessera generate --json` on `dummy:tiny:SEED`; `env` is added to the child's.
fn generate(seed: u32, device: &str, dtype: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let model = format!("dummy:tiny:{seed}");
    let tokens = TOKENS.to_string();
    let mut args = vec![
        "--model",
        &model,
        "--device",
        device,
        "--dtype",
        dtype,
        "--prompt-ids",
        PROMPT,
        "--max-new-tokens",
        &tokens,
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    generate_json_env(&args, env)
}

/// `tessera launch CONFIG --json` with the test prompt.
fn launch(cfg: &std::path::Path) -> Value {
    let tokens = TOKENS.to_string();
    launch_json(cfg, &["--prompt-ids", PROMPT, "--max-new-tokens", &tokens])
}

fn replayed(v: &Value) -> u64 {
    v["step_graphs"]["replayed"]
        .as_u64()
        .expect("step_graphs.replayed")
}

#[test]
fn cuda_greedy_tokens_and_logits_match_the_cpu_backend() {
    if !cuda_present("cuda_greedy_tokens_and_logits_match_the_cpu_backend") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The dummy weights lie on the int8 grid, so CUDA int8 (W8A16) computes
    // the CPU f32 function; bf16 and int4 round the weights, and the CPU
    // backend holds the same rounded weights.
    // GEMV v5 (fixed-point activations on dp4a) is forced in one int8 run
    // and offered to the per-shape timing in another; its products are
    // within 2^-22 of the f32 ones, so the greedy tokens stay the same.
    // A bf16 KV cache: CUDA stores bf16, the CPU keeps the rounded values in
    // f32, so both compute one function again.
    let v5: &[(&str, &str)] = &[("TESSERA_GEMV", "v5")];
    let dp4a: &[(&str, &str)] = &[("TESSERA_INT8_DECODE", "dp4a")];
    let kv_bf16: &[&str] = &["--kv-dtype", "bf16"];
    for (i, (cuda_dt, cpu_dt, env, kv)) in [
        ("f32", "f32", &[][..], &[][..]),
        ("int8", "f32", &[][..], &[][..]),
        ("bf16", "bf16", &[][..], &[][..]),
        ("int4", "int4", &[][..], &[][..]),
        ("int8", "f32", v5, &[][..]),
        ("int8", "f32", dp4a, &[][..]),
        ("int4", "int4", dp4a, &[][..]),
        ("int8", "f32", &[][..], kv_bf16),
        ("bf16", "bf16", &[][..], kv_bf16),
    ]
    .into_iter()
    .enumerate()
    {
        let logits = |dev: &str| dir.path().join(format!("{dev}-{cuda_dt}-{i}.npy"));
        let (lc, lg) = (logits("cpu"), logits("cuda"));
        let (lcs, lgs) = (lc.to_str().unwrap(), lg.to_str().unwrap());
        let cpu = generate(
            1,
            "cpu",
            cpu_dt,
            &[&["--dump-logits", lcs], kv].concat(),
            &[],
        );
        let cuda = generate(
            1,
            "cuda",
            cuda_dt,
            &[&["--dump-logits", lgs], kv].concat(),
            env,
        );
        let kv_dtype = if kv.is_empty() { "f32" } else { "bf16" };
        assert_eq!(cuda["kv_dtype"], kv_dtype, "cuda {cuda_dt} {kv:?}");
        assert_eq!(cpu["kv_dtype"], kv_dtype, "cpu {cpu_dt} {kv:?}");
        assert_eq!(
            ids(&cuda["generated_ids"]),
            ids(&cpu["generated_ids"]),
            "cuda {cuda_dt} {env:?} {kv:?} vs cpu {cpu_dt}: greedy tokens"
        );
        // CUDA warms up after loading (GEMV timing out of the first request); the CPU has nothing to warm.
        assert_eq!(cuda["warm_up"]["ran"], true, "{}", cuda["warm_up"]);
        assert_eq!(cpu["warm_up"]["ran"], false, "{}", cpu["warm_up"]);
        let (a, b) = (read_npy(&lg), read_npy(&lc));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&a, &b);
        assert!(
            diff <= 1e-3 * scale.max(1.0),
            "cuda {cuda_dt} vs cpu {cpu_dt}: last-prompt logits differ by {diff} (largest |logit| {scale})"
        );
        // The first token comes from the prefill and the first decode step
        // runs eagerly; every later step (the recorded one too) is a replay.
        assert_eq!(
            replayed(&cuda),
            TOKENS as u64 - 2,
            "cuda {cuda_dt}: {}",
            cuda["step_graphs"]
        );
        assert!(
            cuda["backend"].as_str().unwrap().starts_with("cuda:0"),
            "{}",
            cuda["backend"]
        );
        println!(
            "cuda {cuda_dt} {env:?} {kv:?} = cpu {cpu_dt}: {TOKENS} tokens, logits within {diff:.2e} of {scale:.2}"
        );
    }
}

#[test]
fn recorded_steps_give_the_tokens_of_eager_steps() {
    if !cuda_present("recorded_steps_give_the_tokens_of_eager_steps") {
        return;
    }
    for dtype in ["int8", "int4"] {
        let graphs = generate(2, "cuda", dtype, &[], &[]);
        let eager = generate(2, "cuda", dtype, &[], &[("TESSERA_CUDA_GRAPH", "0")]);
        assert_eq!(
            ids(&graphs["generated_ids"]),
            ids(&eager["generated_ids"]),
            "{dtype}"
        );
        assert_eq!(replayed(&graphs), TOKENS as u64 - 2, "{dtype}");
        assert_eq!(replayed(&eager), 0, "{dtype}: TESSERA_CUDA_GRAPH=0");
        assert!(graphs["step_graphs"]["last_failure"].is_null());
    }
}

#[test]
fn cuda_streamed_offload_matches_resident() {
    if !cuda_present("cuda_streamed_offload_matches_resident") {
        return;
    }
    for dtype in ["int8", "int4"] {
        let resident = generate(3, "cuda", dtype, &[], &[]);
        for resident_layers in ["0", "2"] {
            let streamed = generate(
                3,
                "cuda",
                dtype,
                &[
                    "--offload-budget",
                    "64MiB",
                    "--prefetch",
                    "1",
                    "--resident-layers",
                    resident_layers,
                ],
                &[],
            );
            assert_eq!(
                ids(&streamed["generated_ids"]),
                ids(&resident["generated_ids"]),
                "{dtype}, {resident_layers} resident layers"
            );
        }
    }
}

/// `tessera launch` with a one-GPU worker process streaming its weights (the
/// YAML `offload:` section, as `configs/gpu-offload.yaml` on a small shape)
/// gives `generate --device cuda`'s tokens.
#[test]
fn launched_cuda_worker_with_offload_matches_generate() {
    if !cuda_present("launched_cuda_worker_with_offload_matches_generate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gpu-offload-tiny.yaml");
    std::fs::write(
        &cfg,
        "model:\n  format: dummy\n  dtype: int8\n  dummy:\n    shape: tiny\n    seed: 4\n\
         parallelism:\n  tensor_parallel: 1\n  devices: [\"cuda:0\"]\n\
         offload:\n  enabled: true\n  weight_budget: 64MiB\n  prefetch_depth: 1\n  \
         resident_layers: 1\n  pin_memory: true\n\
         supervision:\n  step_timeout: 120s\n  worker_start_timeout: 120s\n",
    )
    .unwrap();
    let launched = launch(&cfg);
    let direct = generate(4, "cuda", "int8", &[], &[]);
    assert_eq!(
        ids(&launched["generated_ids"]),
        ids(&direct["generated_ids"]),
        "launched worker vs generate"
    );
    let worker = &launched["workers"][0];
    assert!(
        worker.to_string().contains("cuda:0"),
        "worker report: {worker}"
    );
}

/// `ckpt` loaded in this process on GPU 0 with `dtype` weights.
fn cuda_model(
    ckpt: &tessera_model::Checkpoint,
    dtype: tessera_backend::WeightDType,
) -> tessera_engine::Model<tessera_backend::cuda::CudaBackend> {
    let b = tessera_backend::cuda::CudaBackend::new(0).unwrap();
    tessera_engine::Model::load(b, &ckpt.spec, ckpt.source.as_ref(), dtype, |_, _| {}).unwrap()
}

/// `ckpt` loaded on the CPU backend with f32 weights (the reference).
fn cpu_f32_model(
    ckpt: &tessera_model::Checkpoint,
) -> tessera_engine::Model<tessera_backend::cpu::CpuBackend> {
    let b = tessera_backend::cpu::CpuBackend::new(1).unwrap();
    let f32 = tessera_backend::WeightDType::F32;
    tessera_engine::Model::load(b, &ckpt.spec, ckpt.source.as_ref(), f32, |_, _| {}).unwrap()
}

/// Greedy decode of several sequences stepped together (`forward_batch`, as
/// the server's continuous batching does): every sequence's tokens equal its
/// lone run on the same backend (which records and replays its steps), and the
/// batched logits stay within 1e-4 of the lone ones. Prompts of different
/// lengths, one long enough for the large-product prefill path.
fn batched_vs_lone<B: tessera_backend::Backend + 'static>(
    model: &tessera_engine::Model<B>,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Vec<Vec<u32>> {
    use tessera_engine::{argmax, BatchEntry};
    let lone: Vec<(Vec<u32>, Vec<Vec<f32>>)> = prompts
        .iter()
        .map(|p| {
            let mut seq = model.new_sequence(64).unwrap();
            let mut logits = vec![model.forward(&mut seq, p, false).unwrap().data];
            let mut toks = vec![argmax(&logits[0])];
            for _ in 0..steps {
                let l = model
                    .forward(&mut seq, &[*toks.last().unwrap()], false)
                    .unwrap()
                    .data;
                toks.push(argmax(&l));
                logits.push(l);
            }
            (toks, logits)
        })
        .collect();
    let mut seqs: Vec<_> = prompts
        .iter()
        .map(|_| model.new_sequence(64).unwrap())
        .collect();
    let mut toks: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    for step in 0..=steps {
        let inputs: Vec<Vec<u32>> = if step == 0 {
            prompts.to_vec()
        } else {
            toks.iter().map(|t| vec![*t.last().unwrap()]).collect()
        };
        let mut batch: Vec<BatchEntry<'_, B>> = seqs
            .iter_mut()
            .zip(&inputs)
            .map(|(seq, ids)| BatchEntry {
                seq,
                ids,
                logits: tessera_engine::Logits::Last,
            })
            .collect();
        let out = model.forward_batch(&mut batch).unwrap();
        for (i, l) in out.iter().enumerate() {
            let want = &lone[i].1[step];
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(&l.data, want);
            assert!(
                diff <= 1e-4 * scale,
                "sequence {i}, step {step}: batched logits differ from the lone run's by {diff}"
            );
            toks[i].push(argmax(&l.data));
        }
    }
    for (i, (want, _)) in lone.iter().enumerate() {
        assert_eq!(&toks[i], want, "sequence {i}: batched vs lone tokens");
    }
    // The same batch with every other sequence's greedy choice made where the
    // logits are (`Logits::Argmax`, the served greedy path; the others still
    // return logits): the same tokens, and no logits for the picked ones.
    let mut seqs: Vec<_> = prompts
        .iter()
        .map(|_| model.new_sequence(64).unwrap())
        .collect();
    let mut picked: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    for step in 0..=steps {
        let inputs: Vec<Vec<u32>> = if step == 0 {
            prompts.to_vec()
        } else {
            picked.iter().map(|t| vec![*t.last().unwrap()]).collect()
        };
        let mut batch: Vec<BatchEntry<'_, B>> = seqs
            .iter_mut()
            .zip(&inputs)
            .enumerate()
            .map(|(i, (seq, ids))| BatchEntry {
                seq,
                ids,
                logits: if i % 2 == 0 {
                    tessera_engine::Logits::Argmax
                } else {
                    tessera_engine::Logits::Last
                },
            })
            .collect();
        let (out, picks) = model.forward_batch_picks(&mut batch).unwrap();
        for (i, (l, pick)) in out.iter().zip(picks).enumerate() {
            let t = if i % 2 == 0 {
                assert!(
                    l.data.is_empty(),
                    "sequence {i}: logits of a picked row came back"
                );
                pick.expect("a greedy choice")
            } else {
                assert!(pick.is_none());
                argmax(&l.data)
            };
            picked[i].push(t);
        }
    }
    assert_eq!(
        picked, toks,
        "greedy choices made with the logits vs on the host"
    );
    toks
}

#[test]
fn cuda_batched_decode_matches_lone_sequences_and_the_cpu() {
    if !cuda_present("cuda_batched_decode_matches_lone_sequences_and_the_cpu") {
        return;
    }
    use tessera_backend::WeightDType;
    let prompts: Vec<Vec<u32>> = vec![
        vec![5, 9],
        vec![1, 15, 300, 7, 99],
        vec![700, 2, 33, 4, 8, 16, 23, 42, 108],
        (0..20).map(|i| (i * 37 + 11) % 1024).collect(),
    ];
    let ckpt = tessera_model::dummy::open("tiny", 6).unwrap();
    let want = batched_vs_lone(&cpu_f32_model(&ckpt), &prompts, 6);
    // int8 (W8A16) computes the CPU f32 function on these weights (on the int8 grid).
    for dtype in [WeightDType::F32, WeightDType::Int8] {
        let got = batched_vs_lone(&cuda_model(&ckpt, dtype), &prompts, 6);
        assert_eq!(got, want, "cuda {dtype} vs cpu f32");
    }
    // GEMV v6 forced: the batched steps' int8 products (2..16 rows) run on
    // fixed-point activations and integer tensor cores, the lone runs' one-row
    // products on the f32 path; same tokens, logits within 1e-4.
    let mut b = tessera_backend::cuda::CudaBackend::new(0).unwrap();
    b.set_gemv_variant(Some(tessera_backend::cuda::GemvVariant::V6));
    let model = tessera_engine::Model::load(
        b,
        &ckpt.spec,
        ckpt.source.as_ref(),
        WeightDType::Int8,
        |_, _| {},
    )
    .unwrap();
    let got = batched_vs_lone(&model, &prompts, 6);
    assert_eq!(got, want, "cuda int8 with GEMV v6 vs cpu f32");
    // bf16 weights with v6 forced (bf16 tensor-core products, activations
    // split exactly into three bf16) against the CPU's bf16 weights.
    let cpu = tessera_backend::cpu::CpuBackend::new(1).unwrap();
    let bf16 = WeightDType::BF16;
    let cpu_bf16 =
        tessera_engine::Model::load(cpu, &ckpt.spec, ckpt.source.as_ref(), bf16, |_, _| {})
            .unwrap();
    let want_bf16 = batched_vs_lone(&cpu_bf16, &prompts, 6);
    let mut b = tessera_backend::cuda::CudaBackend::new(0).unwrap();
    b.set_gemv_variant(Some(tessera_backend::cuda::GemvVariant::V6));
    let model =
        tessera_engine::Model::load(b, &ckpt.spec, ckpt.source.as_ref(), bf16, |_, _| {}).unwrap();
    let got = batched_vs_lone(&model, &prompts, 6);
    assert_eq!(got, want_bf16, "cuda bf16 with GEMV v6 vs cpu bf16");
}

/// `tensor_parallel: 2` on two GPUs with NCCL (`configs/gpu-tp2.yaml` on a
/// small shape), without and with each worker streaming its shard: the
/// tokens of `generate --device cuda`. Needs two GPUs: on the emulator,
/// `TESSERA_CUDA_EMU_DEVICES=2` (its NCCL runs the ranks' collectives through
/// shared memory); on a machine with one GPU it is skipped.
#[test]
fn launched_tp2_cuda_workers_with_nccl_match_generate() {
    // Only the emulator reads this; it must be set before the first CUDA call.
    std::env::set_var("TESSERA_CUDA_EMU_DEVICES", "2");
    if !cuda_present("launched_tp2_cuda_workers_with_nccl_match_generate") {
        return;
    }
    let gpus = tessera_backend::cuda::probe().unwrap_or(0);
    if gpus < 2 {
        println!(
            "launched_tp2_cuda_workers_with_nccl_match_generate: skipped: {gpus} GPU(s), needs 2"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let direct = generate(7, "cuda", "int8", &[], &[]);
    for offload in [
        "{enabled: false}",
        "{enabled: true, weight_budget: 64MiB, prefetch_depth: 1, resident_layers: 1}",
    ] {
        let cfg = dir.path().join("gpu-tp2-tiny.yaml");
        std::fs::write(
            &cfg,
            format!(
                "model: {{format: dummy, dtype: int8, dummy: {{shape: tiny, seed: 7}}}}\n\
                 parallelism: {{tensor_parallel: 2, devices: [0, 1], collective: nccl}}\n\
                 offload: {offload}\n\
                 supervision: {{step_timeout: 120s, worker_start_timeout: 120s, collective_timeout: 60s}}\n"
            ),
        )
        .unwrap();
        let v = launch(&cfg);
        assert_eq!(
            ids(&v["generated_ids"]),
            ids(&direct["generated_ids"]),
            "tp2 over NCCL (offload {offload}) vs one GPU"
        );
        let workers = v["workers"].as_array().expect("workers in --json");
        assert_eq!(workers.len(), 2, "{v}");
        for (i, w) in workers.iter().enumerate() {
            assert!(
                w.to_string().contains(&format!("cuda:{i}")),
                "worker {i}: {w}"
            );
        }
    }
}

#[test]
fn a_bad_int8_decode_setting_is_refused_by_name() {
    if !cuda_present("a_bad_int8_decode_setting_is_refused_by_name") {
        return;
    }
    for (var, value, accepted) in [
        ("TESSERA_INT8_DECODE", "fast", "dp4a"),
        ("TESSERA_BATCH_ATTENTION", "fused", "per-sequence"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "generate",
                "--model",
                "dummy:tiny:1",
                "--device",
                "cuda",
                "--dtype",
                "int8",
            ])
            .args(["--prompt-ids", PROMPT, "--max-new-tokens", "2"])
            .env(var, value)
            .output()
            .expect("spawn tessera");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(
            err.contains(&format!("{var}=\"{value}\" is not a valid setting"))
                && err.contains(accepted),
            "the error should name the setting, the value and the values it takes: {err}"
        );
        assert!(
            !err.contains("Use device cpu"),
            "a bad setting is not a missing GPU: {err}"
        );
    }
}

/// Greedy generation runs its decode steps in groups on the device
/// (`Model::decode_greedy`, `GREEDY_AHEAD` per call) once the step is
/// recorded: the tokens equal those of one step at a time with the host's
/// argmax (`TESSERA_GREEDY_AHEAD=0`) and of the CPU backend, and an EOS in the
/// middle of a group ends the text there, as it does one step at a time.
#[test]
fn greedy_steps_on_the_device_give_the_host_argmax_tokens() {
    if !cuda_present("greedy_steps_on_the_device_give_the_host_argmax_tokens") {
        return;
    }
    use tessera_backend::WeightDType;
    use tessera_engine::{generate, FinishReason, GenerateRequest, GREEDY_AHEAD};
    let ckpt = tessera_model::dummy::open("tiny", 8).unwrap();
    let cpu = cpu_f32_model(&ckpt);
    let new = 3 + 2 * GREEDY_AHEAD + 3; // eager, recorded, two full groups, a short one
    let req = |eos: Vec<u32>| GenerateRequest {
        prompt_ids: vec![1, 15, 300, 7, 99],
        max_new_tokens: new,
        sampling: Default::default(),
        stop: Vec::new(),
        eos_ids: eos,
    };
    let want = generate(&cpu, None, &req(Vec::new()), |_| {}).unwrap();
    for dtype in [WeightDType::F32, WeightDType::Int8] {
        let model = cuda_model(&ckpt, dtype);
        let before = model.recording_stats();
        let got = generate(&model, None, &req(Vec::new()), |_| {}).unwrap();
        assert_eq!(got.generated_ids, want.generated_ids, "{dtype}: vs cpu f32");
        // Every step after the eager first one is a replay; all but the
        // recorded one (the first replay) ran in groups: 8, 8 and 3.
        let after = model.recording_stats();
        assert_eq!(after.replayed - before.replayed, new as u64 - 2);
        assert_eq!(after.greedy_steps - before.greedy_steps, new as u64 - 3);
        assert_eq!(after.greedy_groups - before.greedy_groups, 3, "{after:?}");
        // An EOS inside the first group (its first occurrence decides).
        let at = 2 + GREEDY_AHEAD / 2;
        let eos = got.generated_ids[at];
        let first = got.generated_ids.iter().position(|&t| t == eos).unwrap();
        let stopped = generate(&model, None, &req(vec![eos]), |_| {}).unwrap();
        assert_eq!(stopped.finish_reason, FinishReason::Eos, "{dtype}");
        assert_eq!(
            stopped.generated_ids,
            got.generated_ids[..=first],
            "{dtype}: EOS"
        );
        // One step at a time gives the same.
        std::env::set_var("TESSERA_GREEDY_AHEAD", "0");
        let single = generate(&model, None, &req(Vec::new()), |_| {}).unwrap();
        let single_eos = generate(&model, None, &req(vec![eos]), |_| {}).unwrap();
        std::env::remove_var("TESSERA_GREEDY_AHEAD");
        let last = model.recording_stats();
        // Tokens from index 3 on come from groups: the EOS run made one if
        // its EOS came that late; the runs one step at a time made none.
        let groups = u64::from(first >= 3);
        assert_eq!(last.greedy_groups, after.greedy_groups + groups, "{last:?}");
        assert_eq!(
            single.generated_ids, got.generated_ids,
            "{dtype}: one step at a time"
        );
        assert_eq!(single_eos.generated_ids, stopped.generated_ids, "{dtype}");
        println!(
            "{dtype}: {new} greedy tokens in groups of {GREEDY_AHEAD} = one at a time = cpu f32"
        );
    }
}

/// With `TESSERA_INT8_DECODE=dp4a`, int8 prompts longer than the GEMV rows
/// (here 40 tokens) run their products on GEMV v6 (fixed-point activations,
/// integer tensor cores) instead of cuBLAS: the CPU f32 tokens, logits
/// within 1e-3.
#[test]
fn dp4a_prefill_of_a_long_prompt_gives_the_cpu_tokens() {
    if !cuda_present("dp4a_prefill_of_a_long_prompt_gives_the_cpu_tokens") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prompt: String = (0..40)
        .map(|i| ((i * 53 + 7) % 1000).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let run = |device: &str, dtype: &str, env: &[(&str, &str)]| {
        let npy = dir.path().join(format!("{device}.npy"));
        let args = [
            "--model",
            "dummy:tiny:2",
            "--device",
            device,
            "--dtype",
            dtype,
            "--prompt-ids",
            &prompt,
            "--max-new-tokens",
            "8",
            "--threads",
            "1",
            "--dump-logits",
            npy.to_str().unwrap(),
        ];
        (generate_json_env(&args, env), read_npy(&npy))
    };
    let (cpu, cpu_logits) = run("cpu", "f32", &[]);
    let (cuda, cuda_logits) = run("cuda", "int8", &[("TESSERA_INT8_DECODE", "dp4a")]);
    assert_eq!(
        ids(&cuda["generated_ids"]),
        ids(&cpu["generated_ids"]),
        "dp4a prefill: greedy tokens"
    );
    let scale = cpu_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&cuda_logits, &cpu_logits);
    assert!(
        diff <= 1e-3 * scale.max(1.0),
        "dp4a prefill: last-prompt logits differ by {diff} (largest |logit| {scale})"
    );
}
