//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Run large language models on hardware too small for them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Perplexity of a text file under the model.
    Perplexity(PerplexityArgs),
    /// Time load, prefill and decode; report speed, peak memory and kernels.
    Bench(BenchArgs),
    /// Start one worker process per device from a YAML config and generate through them.
    Launch(LaunchArgs),
    /// Print where a config's weights would go (offload residency plan), loading nothing.
    Plan(PlanArgs),
    /// One rank of a launch (started by `tessera launch`, or by a scheduler with --join).
    Worker(WorkerArgs),
}

/// Where the model comes from and how it runs.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A Hugging Face checkpoint directory, a .gguf file, or `dummy:SHAPE[:SEED]`.
    #[arg(long)]
    pub model: String,
    /// Weight type at run time.
    #[arg(long, default_value = "f32", value_parser = ["f32", "int8", "int4", "bf16"])]
    pub dtype: String,
    /// KV cache element type: f32, or bf16 (keys and values rounded to
    /// bfloat16 when stored: half the cache memory on CUDA).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub kv_dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Stream layers from host memory within this device budget for weights
    /// (`6GiB`, `500MB`, bytes, or `auto` on CUDA); needs `--dtype int8` or `int4`.
    #[arg(long, value_name = "BYTES|auto")]
    pub offload_budget: Option<String>,
    /// With --offload-budget: layers copied ahead of compute (slots = N + 1).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub prefetch: usize,
    /// With --offload-budget: keep exactly this many layers resident instead of as many as fit.
    #[arg(long, value_name = "N")]
    pub resident_layers: Option<usize>,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenOptions,
}

/// The prompt, sampling and output of one generation (`generate` and `launch`).
#[derive(Args, Clone)]
pub struct GenOptions {
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// The prompt as comma-separated token ids (for models without a tokenizer).
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the checkpoint's chat template as one user message.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past the model's end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Write the full-vocabulary logits at the last prompt position to this .npy file.
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
}

impl GenOptions {
    pub fn has_prompt(&self) -> bool {
        self.prompt.is_some() || self.prompt_ids.is_some()
    }
}

#[derive(Args)]
pub struct LaunchArgs {
    /// The YAML config (see docs/config.md).
    pub config: PathBuf,
    #[command(flatten)]
    pub gen: GenOptions,
    /// Do not spawn workers: wait for `tessera worker --join` processes started
    /// by an outside scheduler to register at this address (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub join_listen: Option<String>,
    /// Serve the gRPC API here instead of `server.grpc_address` (port 0: any free port;
    /// the address is printed on stderr as `ready: ... on ADDR`).
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc_address: Option<String>,
    /// Also serve Prometheus metrics (`GET /metrics`, plain HTTP) here when
    /// serving; the address is printed on stderr as `metrics: http://ADDR/metrics`.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
}

#[derive(Args)]
pub struct PlanArgs {
    /// The YAML config (see docs/config.md and docs/offload.md).
    pub config: PathBuf,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Serve the control plane on this unix socket (spawned by `tessera launch`).
    #[arg(long, conflicts_with = "join", required_unless_present = "join")]
    pub socket: Option<PathBuf>,
    /// Register with the launcher at HOST:PORT (started by an outside scheduler).
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// With --join: the TCP address to serve the control plane on; the host must
    /// be reachable by the launcher and the other workers.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// With --join: how long to keep trying to reach the launcher, in seconds.
    #[arg(long, default_value_t = 120)]
    pub join_timeout: u64,
    #[arg(long)]
    pub rank: usize,
    #[arg(long)]
    pub world: usize,
    /// The launcher's pid; the worker exits when it does.
    #[arg(long)]
    pub parent_pid: Option<u32>,
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A UTF-8 text file.
    #[arg(long)]
    pub file: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to time prefill at (comma-separated). The prompt token ids
    /// are synthetic: id(i) = (i * 7919 + 1) mod vocab_size.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub prompt_lens: Vec<usize>,
    /// Tokens to decode one at a time (batch 1), from an empty cache.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Also decode this many sequences stepped together (total tokens/s of the
    /// batch), and prefill as many prompts of the first `--prompt-lens` length
    /// in one step; 1 skips both batched measurements.
    #[arg(long, default_value_t = 8)]
    pub decode_batch: usize,
    /// Timed repetitions of each measurement (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
