//! Opening a checkpoint named on the command line and loading it onto a
//! backend, resident or with its layers streamed (`--offload-budget`).

use crate::cli::ModelArgs;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::time::Instant;
use tessera_backend::{Backend, KvDType, WeightDType};
use tessera_comm::Local;
use tessera_engine::Model;
use tessera_model::{Checkpoint, ShardPlan};
use tessera_offload::{load_streamed, PlanInput, StreamOptions, DEFAULT_LINK_GBPS};

/// Bytes left free beside the weights for KV cache and activations when
/// `--offload-budget auto`.
const AUTO_MARGIN: u64 = 2 << 30;

/// Open `--model`: a path, or `dummy:SHAPE[:SEED]`.
pub fn open_checkpoint(model: &str) -> Result<Checkpoint> {
    tessera_worker::open_checkpoint(model).with_context(|| format!("loading model {model}"))
}

/// The weight budget of `--offload-budget`: a size, or `auto` (the GPU's free
/// memory less a margin for KV cache and activations).
fn offload_budget(text: &str, device: &str) -> Result<usize> {
    if text != "auto" {
        return tessera_config::units::parse_size(text)
            .map(|b| b as usize)
            .ok_or_else(|| {
                anyhow!("--offload-budget {text}: expected a size such as 6GiB or 500MB, or auto")
            });
    }
    let ordinal = match device.parse::<tessera_worker::Device>() {
        Ok(tessera_worker::Device::Cuda(n)) => n,
        _ => bail!("--offload-budget auto measures free GPU memory; on {device} give a size"),
    };
    let (free, _) = tessera_backend::cuda::memory_info(ordinal)
        .map_err(|e| anyhow!("--offload-budget auto: {e}"))?;
    Ok(free.saturating_sub(AUTO_MARGIN) as usize)
}

/// Load the checkpoint's weights onto `backend` and warm it up (one
/// throwaway step where the backend wants one: `Model::warm_up`); returns the
/// model and the seconds both took.
/// Progress goes to stderr when it is a terminal.
pub fn load_model<B: Backend + 'static>(
    backend: B,
    ckpt: &Checkpoint,
    args: &ModelArgs,
) -> Result<(Model<B>, LoadTimes)> {
    let dtype: WeightDType = args.dtype.parse().map_err(anyhow::Error::msg)?;
    let kv_dtype: KvDType = args.kv_dtype.parse().map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |done, total| {
        if show {
            eprint!("\rloading layers {done}/{total}");
            if done == total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    };
    let ctx = || format!("loading weights from {}", ckpt.path.display());
    let mut model = match &args.offload_budget {
        None => Model::load(backend, &ckpt.spec, ckpt.source.as_ref(), dtype, progress)
            .with_context(ctx)?,
        Some(budget) => {
            if !matches!(dtype, WeightDType::Int8 | WeightDType::Int4) {
                bail!("--offload-budget streams int8 or int4 weights: add --dtype int8 (or int4)");
            }
            let shard = ShardPlan::new(&ckpt.spec, 1, 0)?;
            let input = PlanInput::for_model(
                &ckpt.spec,
                &shard,
                dtype,
                offload_budget(budget, &args.device)?,
                args.prefetch,
                args.resident_layers,
                DEFAULT_LINK_GBPS,
            );
            let opts = StreamOptions {
                plan: input,
                pin_memory: true,
                record: false,
                synchronous: false,
                dtype,
            };
            let (model, probe) = load_streamed(
                backend,
                &ckpt.spec,
                ckpt.source.as_ref(),
                shard,
                Box::new(Local),
                opts,
                progress,
            )
            .with_context(ctx)?;
            if let Some(p) = probe.plan() {
                eprintln!(
                    "offload: {} of {} layers resident, {} slots, prefetch {}, {:.1} MiB streamed per token",
                    p.resident_count(),
                    p.num_layers(),
                    p.slots,
                    p.prefetch_depth,
                    p.streamed_bytes_per_pass() as f64 / (1 << 20) as f64
                );
            }
            model
        }
    };
    model
        .set_kv_dtype(kv_dtype)
        .map_err(|e| anyhow!("--kv-dtype {kv_dtype}: {e}"))?;
    let t1 = Instant::now();
    let warmed_up = model
        .warm_up()
        .with_context(|| format!("warming up {} after loading", ckpt.path.display()))?;
    Ok((
        model,
        LoadTimes {
            secs: t0.elapsed().as_secs_f64(),
            warm_up_secs: t1.elapsed().as_secs_f64(),
            warmed_up,
        },
    ))
}

/// What `load_model` took: seconds in all, and of that the warm-up step
/// (`Model::warm_up`), which ran only where the backend wanted one.
#[derive(Debug, Clone, Copy)]
pub struct LoadTimes {
    pub secs: f64,
    pub warm_up_secs: f64,
    pub warmed_up: bool,
}

impl LoadTimes {
    /// The `warm_up` field of JSON reports.
    pub fn warm_up_json(&self) -> serde_json::Value {
        serde_json::json!({ "ran": self.warmed_up, "secs": self.warm_up_secs })
    }
}

/// How many decode steps ran from recorded step graphs (CUDA graphs), and why
/// recording last failed, as the `step_graphs` field of JSON reports.
pub fn step_graphs_json<B: Backend>(model: &Model<B>) -> serde_json::Value {
    let s = model.recording_stats();
    serde_json::json!({
        "replayed": s.replayed,
        "last_failure": s.last_failure,
        "greedy_steps": s.greedy_steps,
        "greedy_groups": s.greedy_groups,
    })
}
