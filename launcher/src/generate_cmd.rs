//! `tessera generate`.

use crate::cli::GenerateArgs;
use crate::device::{run_on, BackendJob, Device};
use crate::load::{load_model, open_checkpoint};
use anyhow::{bail, Context, Result};
use std::io::Write;
use tessera_backend::Backend;
use tessera_engine::{generate, GenerateRequest, SamplingParams};
use tessera_model::Checkpoint;

pub fn run(args: GenerateArgs) -> Result<()> {
    let device: Device = args.model.device.parse()?;
    let ckpt = open_checkpoint(&args.model.model)?;
    let prompt_ids = prompt_ids(&args, &ckpt)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
    };
    sampling.validate()?;
    let req = GenerateRequest {
        prompt_ids,
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop: args.stop.clone(),
        eos_ids: if args.ignore_eos {
            Vec::new()
        } else {
            ckpt.spec.eos_token_ids.clone()
        },
    };
    run_on(
        device,
        args.model.threads,
        Job {
            args: &args,
            ckpt: &ckpt,
            req,
        },
    )
}

/// Token ids of the prompt: given directly, or tokenized (optionally chat-templated).
fn prompt_ids(args: &GenerateArgs, ckpt: &Checkpoint) -> Result<Vec<u32>> {
    if let Some(ids) = &args.prompt_ids {
        if args.chat {
            bail!("--chat needs --prompt text, not --prompt-ids");
        }
        return Ok(ids.clone());
    }
    let text = args.prompt.as_deref().unwrap_or_default();
    let tok = ckpt.tokenizer.as_ref().with_context(|| {
        format!(
            "{} has no tokenizer; pass --prompt-ids instead of --prompt",
            ckpt.path.display()
        )
    })?;
    let ids = if args.chat {
        let rendered = tok.apply_chat_template(text)?;
        tok.encode(&rendered, false)?
    } else {
        tok.encode(text, true)?
    };
    if ids.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    Ok(ids)
}

struct Job<'a> {
    args: &'a GenerateArgs,
    ckpt: &'a Checkpoint,
    req: GenerateRequest,
}

impl BackendJob for Job<'_> {
    type Output = ();
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let backend_name = backend.name();
        let (model, load_secs) = load_model(backend, self.ckpt, &self.args.model)?;
        let stream = !self.args.json;
        let mut stdout = std::io::stdout().lock();
        let gen = generate(&model, self.ckpt.tokenizer.as_ref(), &self.req, |piece| {
            if stream {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        })?;
        if let Some(path) = &self.args.dump_logits {
            crate::npy::write_f32(path, &gen.prompt_logits)
                .with_context(|| format!("writing logits to {}", path.display()))?;
        }
        if self.args.json {
            let out = serde_json::json!({
                "prompt_ids": gen.prompt_ids,
                "generated_ids": gen.generated_ids,
                "text": gen.text,
                "finish_reason": gen.finish_reason.as_str(),
                "backend": backend_name,
                "dtype": self.args.model.dtype,
                "timings": {
                    "load_s": load_secs,
                    "prefill_s": gen.prefill_secs,
                    "decode_s": gen.decode_secs,
                    "prefill_tokens_per_s": gen.prefill_tokens_per_sec(),
                    "decode_tokens_per_s": gen.decode_tokens_per_sec(),
                },
            });
            writeln!(stdout, "{out}")?;
        } else {
            writeln!(stdout)?;
            drop(stdout);
            eprintln!(
                "[{} prompt tokens, {} generated ({}); load {:.2} s, prefill {:.1} tok/s, decode {:.1} tok/s; {}]",
                gen.prompt_ids.len(),
                gen.generated_ids.len(),
                gen.finish_reason.as_str(),
                load_secs,
                gen.prefill_tokens_per_sec(),
                gen.decode_tokens_per_sec(),
                backend_name,
            );
        }
        Ok(())
    }
}
