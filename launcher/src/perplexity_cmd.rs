//! `tessera perplexity`.

use crate::cli::PerplexityArgs;
use crate::device::{run_on, BackendJob, Device};
use crate::load::{load_model, open_checkpoint};
use anyhow::{Context, Result};
use tessera_backend::Backend;
use tessera_model::Checkpoint;

pub fn run(args: PerplexityArgs) -> Result<()> {
    let device: Device = args
        .model
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    let ckpt = open_checkpoint(&args.model.model)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let tok = ckpt
        .tokenizer
        .as_ref()
        .with_context(|| format!("{} has no tokenizer", ckpt.path.display()))?;
    let ids = tok.encode(&text, true)?;
    run_on(
        device,
        args.model.threads,
        Job {
            args: &args,
            ckpt: &ckpt,
            ids,
        },
    )
}

struct Job<'a> {
    args: &'a PerplexityArgs,
    ckpt: &'a Checkpoint,
    ids: Vec<u32>,
}

impl BackendJob for Job<'_> {
    type Output = Result<()>;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
        let (model, _) = load_model(backend, self.ckpt, &self.args.model)?;
        let ppl = tessera_engine::perplexity(&model, &self.ids)?;
        if self.args.json {
            println!(
                "{}",
                serde_json::json!({ "tokens": self.ids.len(), "perplexity": ppl, "dtype": self.args.model.dtype })
            );
        } else {
            println!(
                "perplexity {ppl:.4} over {} tokens ({})",
                self.ids.len(),
                self.args.model.dtype
            );
        }
        Ok(())
    }
}
