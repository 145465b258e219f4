//! `tessera bench`: load time, prefill and decode speed, peak memory, and the
//! kernels chosen, timed on `tessera_engine::Model` directly.
//!
//! Prompts are synthetic token ids (`synthetic_ids`), so any checkpoint works,
//! with or without a tokenizer; `scripts/bench/llamacpp_bench.py` feeds the same
//! ids to llama.cpp. Each measurement runs `--reps` times after one untimed
//! warm-up and is reported as median, min and max.

use crate::cli::BenchArgs;
use crate::device::{run_on, BackendJob, Device};
use crate::load::{load_model, open_checkpoint};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::time::Instant;
use tessera_backend::cpu::features::{CpuFeatures, F32Kernel};
use tessera_backend::cpu::CpuBackend;
use tessera_backend::Backend;
use tessera_engine::weights::StreamStepStats;
use tessera_engine::{argmax, Model};
use tessera_model::Checkpoint;

pub fn run(args: BenchArgs) -> Result<()> {
    let device: Device = args
        .model
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if args.decode_tokens == 0 {
        bail!("--decode-tokens must be at least 1");
    }
    if args.decode_batch == 0 {
        bail!("--decode-batch must be at least 1 (1 skips the batched measurement)");
    }
    if args.prompt_lens.is_empty() || args.prompt_lens.contains(&0) {
        bail!("--prompt-lens must be a comma-separated list of positive lengths");
    }
    let ckpt = open_checkpoint(&args.model.model)?;
    let context = ckpt.spec.max_position_embeddings;
    let longest = args.prompt_lens.iter().copied().max().unwrap_or(0);
    if longest > context || args.decode_tokens > context {
        bail!(
            "--prompt-lens up to {longest} and --decode-tokens {} must fit the model's \
             context of {context} positions",
            args.decode_tokens
        );
    }
    match device {
        Device::Cpu => {
            let backend = CpuBackend::new(args.model.threads)?;
            let host = HostInfo::cpu(&backend);
            Job {
                args: &args,
                ckpt: &ckpt,
                host,
            }
            .run(backend)
        }
        other => run_on(
            other,
            args.model.threads,
            Job {
                args: &args,
                ckpt: &ckpt,
                host: HostInfo::default(),
            },
        ),
    }
}

/// Prompt token `i` of a synthetic prompt: deterministic, spread over the vocabulary.
pub fn synthetic_ids(n: usize, vocab: usize) -> Vec<u32> {
    let vocab = vocab.max(1) as u64;
    (0..n as u64)
        .map(|i| ((i * 7919 + 1) % vocab) as u32)
        .collect()
}

/// What the CPU backend chose; empty for other devices.
#[derive(Default)]
struct HostInfo {
    threads: Option<usize>,
    features: Option<CpuFeatures>,
}

impl HostInfo {
    fn cpu(b: &CpuBackend) -> Self {
        HostInfo {
            threads: Some(b.threads()),
            features: Some(b.features()),
        }
    }
}

fn f32_kernel_name(f: &CpuFeatures) -> &'static str {
    match f.f32_kernel() {
        F32Kernel::Avx512 => "avx512",
        F32Kernel::Avx2Fma => "avx2-fma",
        F32Kernel::Scalar => "scalar",
    }
}

/// Median, min and max of a non-empty sample.
#[derive(Clone, Copy, Debug)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(v: &[f64]) -> Stats {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stats {
            median,
            min: s.first().copied().unwrap_or(0.0),
            max: s.last().copied().unwrap_or(0.0),
        }
    }
    fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// One timed quantity: `tokens` processed per run, seconds per run.
struct Measurement {
    tokens: usize,
    secs: Vec<f64>,
}

impl Measurement {
    fn rates(&self) -> Vec<f64> {
        self.secs
            .iter()
            .map(|s| self.tokens as f64 / s.max(1e-9))
            .collect()
    }
    fn json(&self) -> Value {
        let rates = self.rates();
        json!({
            "tokens": self.tokens,
            "tokens_per_s": Stats::of(&rates).json(),
            "secs": Stats::of(&self.secs).json(),
            "runs_tokens_per_s": rates,
        })
    }
}

/// Seconds for one prefill of `ids` into a fresh sequence.
fn time_prefill<B: Backend>(model: &Model<B>, ids: &[u32]) -> Result<f64> {
    let mut seq = model.new_sequence(ids.len())?;
    let t0 = Instant::now();
    let logits = model.forward(&mut seq, ids, false)?;
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box(logits);
    Ok(secs)
}

/// Seconds for `n` single-token forward calls from an empty cache, each fed
/// the previous step's argmax (greedy decode at batch 1).
fn time_decode<B: Backend>(model: &Model<B>, n: usize) -> Result<f64> {
    let vocab = model.spec().vocab_size;
    let mut seq = model.new_sequence(n)?;
    let mut tok = synthetic_ids(1, vocab)[0];
    let t0 = Instant::now();
    for _ in 0..n {
        let logits = model.forward(&mut seq, &[tok], false)?;
        tok = argmax(&logits.data);
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Decode `n` tokens in each of `batch` sequences stepped together (one
/// forward call per step for the whole batch); returns the seconds taken.
fn time_decode_batch<B: Backend>(model: &Model<B>, n: usize, batch: usize) -> Result<f64> {
    let vocab = model.spec().vocab_size;
    let mut seqs = (0..batch)
        .map(|_| model.new_sequence(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut toks = synthetic_ids(batch, vocab);
    let t0 = Instant::now();
    for _ in 0..n {
        let step: Vec<[u32; 1]> = toks.iter().map(|&t| [t]).collect();
        let mut entries: Vec<_> = seqs
            .iter_mut()
            .zip(&step)
            .map(|(seq, ids)| tessera_engine::BatchEntry {
                seq,
                ids,
                logits: tessera_engine::Logits::Last,
            })
            .collect();
        let logits = model.forward_batch(&mut entries)?;
        toks = logits.iter().map(|l| argmax(&l.data)).collect();
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds for one prefill of `ids` into each of `batch` fresh sequences, all
/// in one forward call (the linear layers see `batch * ids.len()` rows).
fn time_prefill_batch<B: Backend>(model: &Model<B>, ids: &[u32], batch: usize) -> Result<f64> {
    let mut seqs = (0..batch)
        .map(|_| model.new_sequence(ids.len()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut entries: Vec<_> = seqs
        .iter_mut()
        .map(|seq| tessera_engine::BatchEntry {
            seq,
            ids,
            logits: tessera_engine::Logits::Last,
        })
        .collect();
    let t0 = Instant::now();
    let logits = model.forward_batch(&mut entries)?;
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box(logits);
    Ok(secs)
}

/// `VmHWM` (peak resident set) and `VmRSS` from /proc/self/status, in bytes.
fn rss_bytes() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.trim();
            let kib: u64 = rest.strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The CPU's marketing name from /proc/cpuinfo, where there is one.
fn cpu_model_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

struct Job<'a> {
    args: &'a BenchArgs,
    ckpt: &'a Checkpoint,
    host: HostInfo,
}

impl BackendJob for Job<'_> {
    type Output = Result<()>;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
        let args = self.args;
        let backend_name = backend.name();
        let (model, load) = load_model(backend, self.ckpt, &args.model)?;
        let load_secs = load.secs;
        let vocab = model.spec().vocab_size;
        let progress = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());

        // Warm-up: first touch of every weight page and a wake-up of the pool.
        let shortest = args.prompt_lens.iter().copied().min().unwrap_or(1);
        time_prefill(&model, &synthetic_ids(shortest.min(16), vocab))?;
        time_decode(&model, 2.min(args.decode_tokens))?;

        let mut prefill = Vec::new();
        for &len in &args.prompt_lens {
            let ids = synthetic_ids(len, vocab);
            let mut m = Measurement {
                tokens: len,
                secs: Vec::new(),
            };
            for rep in 0..args.reps {
                if progress {
                    eprint!("\rprefill {len}: rep {}/{}   ", rep + 1, args.reps);
                }
                m.secs.push(time_prefill(&model, &ids)?);
            }
            prefill.push(m);
        }
        let weights = model.layer_weights();
        let _ = weights.take_stats(); // forget warm-up and prefill copies
        let mut decode = Measurement {
            tokens: args.decode_tokens,
            secs: Vec::new(),
        };
        for rep in 0..args.reps {
            if progress {
                eprint!(
                    "\rdecode {}: rep {}/{}   ",
                    args.decode_tokens,
                    rep + 1,
                    args.reps
                );
            }
            decode.secs.push(time_decode(&model, args.decode_tokens)?);
        }
        let stream_decode = weights.take_stats();
        let nb = args.decode_batch;
        let mut decode_b = Measurement {
            tokens: args.decode_tokens * nb,
            secs: Vec::new(),
        };
        if nb > 1 {
            time_decode_batch(&model, 2.min(args.decode_tokens), nb)?;
            let _ = weights.take_stats();
            for rep in 0..args.reps {
                if progress {
                    eprint!("\rdecode batch {nb}: rep {}/{}   ", rep + 1, args.reps);
                }
                decode_b
                    .secs
                    .push(time_decode_batch(&model, args.decode_tokens, nb)?);
            }
        }
        let stream_batch = if nb > 1 { weights.take_stats() } else { None };
        // Batched prefill: `nb` prompts of the first prompt length in one step.
        let prefill_len = args.prompt_lens.first().copied().unwrap_or(1);
        let mut prefill_b = Measurement {
            tokens: prefill_len * nb,
            secs: Vec::new(),
        };
        if nb > 1 {
            let ids = synthetic_ids(prefill_len, vocab);
            time_prefill_batch(&model, &ids, nb)?;
            for rep in 0..args.reps {
                if progress {
                    eprint!(
                        "\rprefill {prefill_len} batch {nb}: rep {}/{}   ",
                        rep + 1,
                        args.reps
                    );
                }
                prefill_b.secs.push(time_prefill_batch(&model, &ids, nb)?);
            }
            let _ = weights.take_stats();
        }
        if progress {
            eprintln!();
        }
        let (peak_rss, rss) = rss_bytes();
        let steps_b1 = args.decode_tokens * args.reps;
        let offload = stream_decode.map(|s| {
            json!({
                "layers": weights.describe(),
                "decode": stream_json(&s, steps_b1),
                "decode_batch": stream_batch.map(|b| stream_json(&b, steps_b1)),
            })
        });

        let features = self.host.features;
        let int8_kernel = features.map(|f| f.int8_kernel_name());
        let f32_kernel = features.as_ref().map(f32_kernel_name);
        let kernel = match args.model.dtype.as_str() {
            "int8" => int8_kernel,
            _ => f32_kernel,
        };
        let spec = model.spec();
        if args.json {
            let out = json!({
                "model": args.model.model,
                "dtype": args.model.dtype,
                "kv_dtype": args.model.kv_dtype,
                "device": args.model.device,
                "backend": backend_name,
                "threads": self.host.threads,
                "offload": offload,
                "cpu": {
                    "model_name": cpu_model_name(),
                    "features": features.map(|f| f.describe()),
                    "int8_kernel": int8_kernel,
                    "f32_kernel": f32_kernel,
                    "kernel": kernel,
                },
                "shape": {
                    "layers": spec.num_layers,
                    "hidden_size": spec.hidden_size,
                    "intermediate_size": spec.intermediate_size,
                    "heads": spec.num_heads,
                    "kv_heads": spec.num_kv_heads,
                    "vocab_size": spec.vocab_size,
                },
                "reps": args.reps,
                "load_s": load_secs,
                "warm_up": load.warm_up_json(),
                "prefill": args.prompt_lens.iter().zip(&prefill).map(|(len, m)| {
                    let mut v = m.json();
                    v["prompt_len"] = json!(len);
                    v
                }).collect::<Vec<_>>(),
                "decode": {
                    "batch": 1,
                    "start_position": 0,
                    "tokens": decode.tokens,
                    "tokens_per_s": Stats::of(&decode.rates()).json(),
                    "secs": Stats::of(&decode.secs).json(),
                    "runs_tokens_per_s": decode.rates(),
                },
                "decode_batch": if nb > 1 { json!({
                    "batch": nb,
                    "start_position": 0,
                    "tokens_per_sequence": args.decode_tokens,
                    "tokens_per_s": Stats::of(&decode_b.rates()).json(),
                    "secs": Stats::of(&decode_b.secs).json(),
                    "runs_tokens_per_s": decode_b.rates(),
                }) } else { json!(null) },
                "prefill_batch": if nb > 1 { json!({
                    "batch": nb,
                    "prompt_len": prefill_len,
                    "tokens": prefill_b.tokens,
                    "tokens_per_s": Stats::of(&prefill_b.rates()).json(),
                    "secs": Stats::of(&prefill_b.secs).json(),
                    "runs_tokens_per_s": prefill_b.rates(),
                }) } else { json!(null) },
                "step_graphs": crate::load::step_graphs_json(&model),
                "peak_rss_bytes": peak_rss,
                "rss_bytes": rss,
            });
            println!("{out}");
            return Ok(());
        }

        let mib = |b: Option<u64>| match b {
            Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
            None => "n/a".to_string(),
        };
        println!("model    {} ({})", args.model.model, args.model.dtype);
        println!("backend  {backend_name}");
        if let Some(t) = self.host.threads {
            println!("threads  {t}");
        }
        if let Some(f) = features {
            println!(
                "cpu      {} [{}]; kernel {} (int8 {}, f32 {})",
                cpu_model_name().unwrap_or_else(|| "unknown".into()),
                f.describe(),
                kernel.unwrap_or("?"),
                f.int8_kernel_name(),
                f32_kernel_name(&f),
            );
        }
        println!("load     {load_secs:.3} s");
        println!(
            "{:<20} {:>12} {:>12} {:>12}   ({} reps)",
            "tokens/s", "median", "min", "max", args.reps
        );
        let row = |name: String, m: &Measurement| {
            let s = Stats::of(&m.rates());
            println!(
                "{name:<20} {:>12.1} {:>12.1} {:>12.1}",
                s.median, s.min, s.max
            );
        };
        for m in &prefill {
            row(format!("prefill {}", m.tokens), m);
        }
        row(format!("decode {} (b=1)", decode.tokens), &decode);
        if nb > 1 {
            row(format!("decode {} (b={nb})", args.decode_tokens), &decode_b);
            row(format!("prefill {prefill_len} (b={nb})"), &prefill_b);
        }
        if let Some(s) = &stream_decode {
            println!("offload  {}", weights.describe());
            stream_row("decode b=1", s, steps_b1);
            if let Some(b) = &stream_batch {
                stream_row(&format!("decode b={nb}"), b, steps_b1);
            }
        }
        let rec = model.recording_stats();
        if rec.replayed > 0 || rec.last_failure.is_some() {
            println!(
                "graphs   {} decode steps replayed from recorded steps{}",
                rec.replayed,
                rec.last_failure
                    .map(|f| format!("; recording failed: {f}"))
                    .unwrap_or_default()
            );
        }
        println!("peak RSS {}", mib(peak_rss));
        Ok(())
    }
}

/// Streaming statistics of `steps` decode steps as JSON.
fn stream_json(s: &StreamStepStats, steps: usize) -> Value {
    let steps = steps.max(1) as f64;
    let step_s = s.step_time.as_secs_f64();
    json!({
        "steps": steps,
        "copies": s.copies,
        "bytes": s.bytes,
        "bytes_per_step": s.bytes as f64 / steps,
        "copy_s": s.copy_time.as_secs_f64(),
        "wait_s": s.wait_time.as_secs_f64(),
        "wait_ms_per_step": s.wait_time.as_secs_f64() * 1e3 / steps,
        "step_s": step_s,
        "copy_gbps": s.copy_gbps(),
        // Bytes over wall time: what the decode achieved end to end.
        "effective_gbps": if step_s > 0.0 { s.bytes as f64 / step_s / 1e9 } else { 0.0 },
    })
}

/// One line of streaming statistics.
fn stream_row(name: &str, s: &StreamStepStats, steps: usize) {
    let steps = steps.max(1) as f64;
    let step_s = s.step_time.as_secs_f64();
    println!(
        "stream   {name}: {:.1} MiB/step, copy {:.2} GB/s while copying, {:.2} GB/s over the step, compute waited {:.2} ms/step",
        s.bytes as f64 / steps / (1 << 20) as f64,
        s.copy_gbps(),
        if step_s > 0.0 { s.bytes as f64 / step_s / 1e9 } else { 0.0 },
        s.wait_time.as_secs_f64() * 1e3 / steps,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn synthetic_ids_stay_in_vocab() {
        let ids = synthetic_ids(600, 512);
        assert_eq!(ids.len(), 600);
        assert!(ids.iter().all(|&i| i < 512));
        assert_eq!(&ids[..3], &[1, 7920 % 512, 15839 % 512]);
    }
}
