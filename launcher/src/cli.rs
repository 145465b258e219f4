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
}

/// Where the model comes from and how it runs.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A Hugging Face checkpoint directory, a .gguf file, or `dummy:SHAPE[:SEED]`.
    #[arg(long)]
    pub model: String,
    /// Weight type at run time.
    #[arg(long, default_value = "f32", value_parser = ["f32", "int8", "bf16"])]
    pub dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
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
    /// Timed repetitions of each measurement (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
