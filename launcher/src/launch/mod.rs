//! `tessera launch CONFIG`: check the config and the model, start one worker
//! per device, and (one-shot mode) generate through them.
//!
//! Everything that can be checked before a process starts is checked first:
//! the YAML, that the model opens, that its heads split over the workers, the
//! weight dtype, and that CUDA devices exist.

pub(crate) mod group;
mod join;
pub(crate) mod progress;

use crate::cli::LaunchArgs;
use crate::generate_cmd::{report, request};
use anyhow::{anyhow, bail, Context, Result};
use group::{GroupSpec, WorkerGroup};
use progress::LoadBar;
use std::time::Instant;
use tessera_backend::WeightDType;
use tessera_config::{Config, DType, ModelFormat, ResolvedCollective, RestartPolicy};
use tessera_engine::{generate_steps, EngineError, StepOut};
use tessera_model::ShardPlan;
use tessera_proto::worker::{SeqStep, StepOutput, StepRequest, Transport};

/// Errors of the generation loop: an engine error, or a worker group failure.
#[derive(Debug)]
struct LoopError(anyhow::Error);

impl From<EngineError> for LoopError {
    fn from(e: EngineError) -> Self {
        LoopError(e.into())
    }
}

pub(crate) fn model_name(cfg: &Config) -> Result<String> {
    match (cfg.model.format, &cfg.model.dummy, &cfg.model.path) {
        (ModelFormat::Dummy, Some(d), _) => Ok(format!("dummy:{}:{}", d.shape, d.seed)),
        (_, _, Some(p)) => Ok(p.display().to_string()),
        _ => {
            bail!("the config names no model (model.path, or model.format: dummy with model.dummy)")
        }
    }
}

pub(crate) fn dtype_name(d: DType) -> Result<&'static str> {
    let name = match d {
        DType::F32 => "f32",
        DType::Int8 => "int8",
        DType::Int4 => "int4",
        DType::Bf16 => "bf16",
        DType::F16 => "f16",
    };
    name.parse::<WeightDType>()
        .map_err(|e| anyhow!("model.dtype: {e}"))?;
    Ok(name)
}

/// The model name clients use: the checkpoint's file or folder name without
/// extension (`SmolLM2-135M-Instruct.Q4_1`), or `dummy-SHAPE`.
fn served_name(cfg: &Config) -> String {
    match (&cfg.model.dummy, &cfg.model.path) {
        (Some(d), _) if cfg.model.format == ModelFormat::Dummy => format!("dummy-{}", d.shape),
        (_, Some(p)) => {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            name.strip_suffix(".gguf")
                .map(str::to_string)
                .unwrap_or(name)
        }
        _ => "model".into(),
    }
}

pub fn run(args: LaunchArgs) -> Result<()> {
    let cfg = Config::from_file(&args.config)?;
    let model = model_name(&cfg)?;
    let ckpt = crate::load::open_checkpoint(&model)?;
    if cfg.model.format == ModelFormat::Gguf && !ckpt.path.is_file() {
        bail!(
            "model.format is gguf but {} is not a file",
            ckpt.path.display()
        );
    }
    if cfg.model.format == ModelFormat::Hf && !ckpt.path.is_dir() {
        bail!(
            "model.format is hf but {} is not a directory",
            ckpt.path.display()
        );
    }
    let world = cfg.parallelism.tensor_parallel as usize;
    let plans = ShardPlan::all(&ckpt.spec, world)
        .with_context(|| format!("splitting {model} over tensor_parallel {world}"))?;
    // Offload: refuse a plan that cannot work before any worker starts.
    let offload = if cfg.offload.enabled {
        Some(crate::plan_cmd::offload_plans(&cfg, &ckpt.spec)?)
    } else {
        None
    };
    let devices: Vec<String> = cfg
        .parallelism
        .devices
        .iter()
        .map(|d| d.to_string())
        .collect();
    if devices.iter().any(|d| d.starts_with("cuda")) {
        let count = tessera_backend::cuda::probe()
            .map_err(|e| anyhow!("parallelism.devices lists CUDA devices, but {e}"))?;
        for d in &cfg.parallelism.devices {
            if let tessera_config::Device::Cuda(n) = d {
                if *n as usize >= count {
                    bail!("parallelism.devices: cuda:{n} does not exist (this machine has {count} GPUs)");
                }
            }
        }
    }
    let dtype = dtype_name(cfg.model.dtype)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let transport = match cfg.parallelism.resolved_collective() {
        ResolvedCollective::Local => Transport::Local,
        ResolvedCollective::Tcp => Transport::Tcp,
        ResolvedCollective::Nccl => Transport::Nccl,
    };
    let sup = &cfg.supervision;
    let spec = GroupSpec {
        model: model.clone(),
        dtype: dtype.to_string(),
        kv_dtype: cfg.model.kv_dtype.name().to_string(),
        devices,
        threads: cfg.parallelism.threads_per_worker(cores),
        transport,
        start_timeout: sup.worker_start_timeout,
        step_timeout: sup.step_timeout,
        collective_timeout: sup.collective_timeout,
        join_listen: args.join_listen.clone(),
        offload: offload.map(|plans| {
            plans
                .iter()
                .map(|(p, _)| tessera_proto::worker::OffloadSpec {
                    weight_budget: p.budget as u64,
                    prefetch_depth: p.prefetch_depth as u32,
                    pin_memory: cfg.offload.pin_memory,
                    resident_layers: cfg.offload.resident_layers,
                })
                .collect()
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if !args.gen.has_prompt() {
        let context = ckpt.spec.max_position_embeddings;
        let max_context = cfg
            .server
            .max_context
            .map(|c| (c as usize).min(context))
            .unwrap_or(context);
        let serve = crate::serve::ServeSpec {
            address: args
                .grpc_address
                .clone()
                .unwrap_or_else(|| cfg.server.grpc_address.clone()),
            metrics_address: args.metrics_address.clone(),
            model_name: served_name(&cfg),
            max_queue: cfg.server.max_queue as usize,
            max_batch: cfg.server.max_batch as usize,
            max_context,
            max_tokens: cfg.server.max_tokens as usize,
            eos_ids: ckpt.spec.eos_token_ids.clone(),
            tokenizer: ckpt.tokenizer.clone(),
            max_restarts: match sup.restart_policy {
                RestartPolicy::Never => 0,
                RestartPolicy::OnFailure => sup.max_restarts,
            },
        };
        return rt.block_on(crate::serve::serve(serve, spec));
    }
    let req = request(&args.gen, &ckpt)?;

    let max_restarts = match sup.restart_policy {
        RestartPolicy::Never => 0,
        RestartPolicy::OnFailure => sup.max_restarts,
    };
    let mut attempt = 0;
    loop {
        let t0 = Instant::now();
        let mut bar = LoadBar::new(world);
        let result = rt
            .block_on(WorkerGroup::start(&spec, &mut bar))
            .and_then(|group| {
                let load_secs = t0.elapsed().as_secs_f64();
                let context = ckpt.spec.max_position_embeddings;
                let capacity = (req.prompt_ids.len() + req.max_new_tokens) as u32;
                let stream = !args.gen.json;
                let mut first = true;
                let mut worker_tokens = 0u64;
                let gen = generate_steps(
                    |ids: &[u32], ahead: usize| -> Result<StepOut, LoopError> {
                        // The prompt step returns logits (the loop samples the
                        // first token from them and reports them); a greedy
                        // request's later steps ask rank 0 for its argmax, so
                        // no vocabulary of logits crosses the socket per token.
                        let token = ahead > 0;
                        let step = StepRequest {
                            seqs: vec![SeqStep {
                                seq_id: 1,
                                ids: ids.to_vec(),
                                capacity,
                                all_logits: false,
                                // Greedy requests only (rank 0's argmax is the
                                // loop's); the loop samples any other itself.
                                sampling: (std::mem::take(&mut first) && req.sampling.is_greedy())
                                    .then(|| crate::serve::scheduler::sampling_spec(&req.sampling)),
                                output: if token {
                                    StepOutput::Token
                                } else {
                                    StepOutput::Logits
                                } as i32,
                            }],
                            drop: vec![],
                            logits_from_all_ranks: false,
                        };
                        let reply = rt.block_on(group.step(step)).map_err(LoopError)?;
                        let out = reply.seqs.first().ok_or_else(|| {
                            LoopError(anyhow!("rank 0 returned nothing for the sequence"))
                        })?;
                        if token {
                            let t = out
                                .token
                                .ok_or_else(|| LoopError(anyhow!("rank 0 returned no token")))?;
                            worker_tokens += 1;
                            return Ok(StepOut::Tokens(vec![t]));
                        }
                        Ok(StepOut::Logits(
                            out.logits
                                .chunks_exact(4)
                                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                .collect(),
                        ))
                    },
                    context,
                    ckpt.tokenizer.as_ref(),
                    &req,
                    |piece| {
                        if stream {
                            use std::io::Write;
                            let mut out = std::io::stdout().lock();
                            let _ = out.write_all(piece.as_bytes());
                            let _ = out.flush();
                        }
                    },
                );
                match gen {
                    Ok(gen) => {
                        let info = group.info.clone();
                        rt.block_on(group.shutdown());
                        Ok((gen, info, load_secs, worker_tokens))
                    }
                    Err(LoopError(e)) => {
                        group.abort();
                        Err(e)
                    }
                }
            });
        match result {
            Ok((gen, info, load_secs, worker_tokens)) => {
                let bytes_per_param = match dtype {
                    "int8" => 1.0 + 4.0 / tessera_model::INT8_GROUP as f64,
                    "int4" => 0.5 + 4.0 / tessera_model::INT8_GROUP as f64,
                    "bf16" | "f16" => 2.0,
                    _ => 4.0,
                };
                let workers: Vec<_> = info
                    .iter()
                    .zip(&plans)
                    .map(|(w, p)| {
                        serde_json::json!({
                            "rank": w.rank,
                            "pid": w.pid,
                            "place": w.place,
                            "backend": w.backend,
                            "peak_rss_bytes": w.peak_rss_bytes,
                            "weight_bytes_estimate": p.bytes_per_rank(&ckpt.spec, bytes_per_param),
                        })
                    })
                    .collect();
                let backend = info.first().map(|w| w.backend.clone()).unwrap_or_default();
                let extra = serde_json::json!({
                    // Decode steps whose token rank 0 picked (greedy requests).
                    "worker_sampled_tokens": worker_tokens,
                    "tensor_parallel": world,
                    "collective": format!("{transport:?}").to_lowercase(),
                    "restarts": attempt,
                    "workers": workers,
                });
                return report(&args.gen, &gen, &backend, dtype, load_secs, extra);
            }
            Err(e) if attempt < max_restarts => {
                attempt += 1;
                note!("error: {}", crate::error_line::one_line(&e));
                note!("restarting the workers ({attempt} of {max_restarts}, restart_policy: on-failure)");
            }
            Err(e) => return Err(e),
        }
    }
}
