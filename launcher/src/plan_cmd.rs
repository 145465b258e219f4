//! `tessera plan CONFIG`: what a config would put where, before loading
//! anything: host and device bytes per part, which layers stay resident, the
//! bytes streamed per forward pass and the decode time the link imposes.
//! `tessera launch` runs the same checks and refuses what this refuses.

use crate::cli::PlanArgs;
use anyhow::{anyhow, bail, Context, Result};
use tessera_backend::WeightDType;
use tessera_config::{Config, Device, WeightBudget};
use tessera_model::{ModelSpec, ShardPlan};
use tessera_offload::{plan, PlanInput, ResidencyPlan, DEFAULT_LINK_GBPS};

/// Bytes kept free beside the weights for activations and scratch when the
/// budget is `auto`.
const ACTIVATION_MARGIN: u64 = 1 << 30;

/// Device bytes of the KV caches a server config allows at most (K and V of
/// every layer in `model.kv_dtype`, as a GPU stores them: 4 bytes each in f32,
/// 2 in bf16; `max_batch` sequences of `max_context` positions).
pub fn kv_cache_bytes(cfg: &Config, spec: &ModelSpec, shard: &ShardPlan) -> u64 {
    let ctx = cfg
        .server
        .max_context
        .map(|c| c as usize)
        .unwrap_or(spec.max_position_embeddings)
        .min(spec.max_position_embeddings);
    let elem = match cfg.model.kv_dtype {
        tessera_config::KvDType::F32 => 4,
        tessera_config::KvDType::Bf16 => 2,
    };
    (2 * spec.num_layers * shard.local_kv_heads() * spec.head_dim * elem * ctx) as u64
        * cfg.server.max_batch as u64
}

/// The weight budget of one rank: the configured size, or for `auto` the
/// device's free memory minus KV caches and a margin for activations.
pub fn resolve_budget(
    cfg: &Config,
    spec: &ModelSpec,
    shard: &ShardPlan,
    device: Device,
) -> Result<(u64, String)> {
    match (cfg.offload.weight_budget, device) {
        (WeightBudget::Bytes(b), _) => Ok((b, "configured".into())),
        (WeightBudget::Auto, Device::Cuda(n)) => {
            let (free, _total) = tessera_backend::cuda::memory_info(n as usize)
                .map_err(|e| anyhow!("offload.weight_budget: auto measures cuda:{n}'s free memory, but {e}; give an explicit size"))?;
            let kv = kv_cache_bytes(cfg, spec, shard);
            let budget = free.saturating_sub(kv + ACTIVATION_MARGIN);
            Ok((
                budget,
                format!(
                    "auto: {} free on cuda:{n} minus {} KV cache (max_batch x max_context) minus {} for activations",
                    gib(free),
                    gib(kv),
                    gib(ACTIVATION_MARGIN)
                ),
            ))
        }
        (WeightBudget::Auto, Device::Cpu) => bail!(
            "offload.weight_budget: auto measures free GPU memory and the device is cpu; give an explicit size"
        ),
    }
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The run-time weight type of the config's model.
fn weight_dtype(cfg: &Config) -> Result<WeightDType> {
    crate::launch::dtype_name(cfg.model.dtype)?
        .parse()
        .map_err(|e: String| anyhow!("model.dtype: {e}"))
}

/// The residency plan of every rank, or the first refusal (with what would fit).
pub fn offload_plans(cfg: &Config, spec: &ModelSpec) -> Result<Vec<(ResidencyPlan, String)>> {
    let world = cfg.parallelism.tensor_parallel as usize;
    let shards = ShardPlan::all(spec, world)
        .with_context(|| format!("splitting the model over tensor_parallel {world}"))?;
    let o = &cfg.offload;
    let mut out = Vec::new();
    for (rank, shard) in shards.iter().enumerate() {
        let device = cfg.parallelism.devices[rank];
        let (budget, how) = resolve_budget(cfg, spec, shard, device)?;
        let input = PlanInput::for_model(
            spec,
            shard,
            weight_dtype(cfg)?,
            budget as usize,
            o.prefetch_depth as usize,
            o.resident_layers.map(|r| r as usize),
            o.link_gbps.unwrap_or(DEFAULT_LINK_GBPS),
        );
        let p = ResidencyPlan::new(&input).map_err(|e| anyhow!("rank {rank} ({device}): {e}"))?;
        out.push((p, how));
    }
    Ok(out)
}

pub fn run(args: PlanArgs) -> Result<()> {
    let cfg = Config::from_file(&args.config)?;
    let model = crate::launch::model_name(&cfg)?;
    let ckpt = crate::load::open_checkpoint(&model)?;
    let spec = &ckpt.spec;
    let world = cfg.parallelism.tensor_parallel as usize;
    println!("model      {model}");
    println!(
        "shape      {} layers, hidden {}, intermediate {}, vocab {}",
        spec.num_layers, spec.hidden_size, spec.intermediate_size, spec.vocab_size
    );
    println!(
        "workers    {world} (tensor_parallel), devices {:?}",
        cfg.parallelism
            .devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
    );
    if !cfg.offload.enabled {
        let shards = ShardPlan::all(spec, world)?;
        let dtype = weight_dtype(&cfg)?;
        for (rank, s) in shards.iter().enumerate() {
            let dev = plan::fixed_bytes(spec, s, dtype)
                + spec.num_layers * plan::layer_bytes(spec, s, dtype);
            println!(
                "rank {rank}     offload disabled: all weights resident, {} ({dev} bytes) as {dtype} (estimate)",
                gib(dev as u64)
            );
        }
        return Ok(());
    }
    if cfg.offload.link_gbps.is_none() {
        println!(
            "assumption host-to-device link of {DEFAULT_LINK_GBPS} GB/s (PCIe Gen4 x16, effective); set offload.link_gbps to change it"
        );
    }
    println!(
        "sizes      {} estimates: values + one f32 scale per 32 inputs (device layouts pad slightly)",
        weight_dtype(&cfg)?
    );
    for (rank, (p, how)) in offload_plans(&cfg, spec)?.iter().enumerate() {
        println!(
            "rank {rank} on {}   budget {how}",
            cfg.parallelism.devices[rank]
        );
        print!("{}", p.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Llama-2 7B, 16 sequences of 4096 positions: 32 layers x 2 x 4096 x 4
    /// bytes = 1 MiB per position in f32, half that in bf16.
    #[test]
    fn kv_bytes_follow_the_kv_dtype() {
        let spec = tessera_model::dummy::spec("llama2-7b").unwrap();
        let shard = ShardPlan::new(&spec, 1, 0).unwrap();
        let cfg = |kv: &str| {
            let text = format!(
                "model: {{path: m, kv_dtype: {kv}}}\nserver: {{max_batch: 16, max_context: 4096}}\n"
            );
            Config::from_str(&text, Path::new("x.yaml")).unwrap()
        };
        let f32 = kv_cache_bytes(&cfg("f32"), &spec, &shard);
        assert_eq!(f32, 16 * 4096 * (1 << 20));
        assert_eq!(kv_cache_bytes(&cfg("bf16"), &spec, &shard), f32 / 2);
    }
}
