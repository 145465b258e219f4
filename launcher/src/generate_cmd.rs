//! `tessera generate`.

use crate::cli::{GenOptions, GenerateArgs};
use crate::device::{run_on, BackendJob, Device};
use crate::load::{load_model, open_checkpoint};
use anyhow::{bail, Context, Result};
use std::io::Write;
use tessera_backend::Backend;
use tessera_engine::{generate, GenerateRequest, Generation, SamplingParams};
use tessera_model::Checkpoint;

pub fn run(args: GenerateArgs) -> Result<()> {
    let device: Device = args
        .model
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    let ckpt = open_checkpoint(&args.model.model)?;
    let req = request(&args.gen, &ckpt)?;
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

/// The generation request of `opts` for the model of `ckpt`.
pub fn request(opts: &GenOptions, ckpt: &Checkpoint) -> Result<GenerateRequest> {
    let sampling = SamplingParams {
        temperature: opts.temperature,
        top_k: opts.top_k,
        top_p: opts.top_p,
        repetition_penalty: opts.repetition_penalty,
        seed: opts.seed,
    };
    sampling.validate()?;
    Ok(GenerateRequest {
        prompt_ids: prompt_ids(opts, ckpt)?,
        max_new_tokens: opts.max_new_tokens,
        sampling,
        stop: opts.stop.clone(),
        eos_ids: if opts.ignore_eos {
            Vec::new()
        } else {
            ckpt.spec.eos_token_ids.clone()
        },
    })
}

/// Token ids of the prompt: given directly, or tokenized (optionally chat-templated).
fn prompt_ids(args: &GenOptions, ckpt: &Checkpoint) -> Result<Vec<u32>> {
    if let Some(ids) = &args.prompt_ids {
        if args.chat {
            bail!("--chat needs --prompt text, not --prompt-ids");
        }
        return Ok(ids.clone());
    }
    let Some(text) = args.prompt.as_deref() else {
        bail!("give a prompt with --prompt TEXT or --prompt-ids 1,2,3");
    };
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

/// Print a finished generation: a JSON object, or the end of the streamed
/// text plus a summary line on stderr. `extra` adds fields to the JSON.
pub fn report(
    opts: &GenOptions,
    gen: &Generation,
    backend_name: &str,
    dtype: &str,
    load_secs: f64,
    extra: serde_json::Value,
) -> Result<()> {
    if let Some(path) = &opts.dump_logits {
        crate::npy::write_f32(path, &gen.prompt_logits)
            .with_context(|| format!("writing logits to {}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    if opts.json {
        let mut out = serde_json::json!({
            "prompt_ids": gen.prompt_ids,
            "generated_ids": gen.generated_ids,
            "text": gen.text,
            "finish_reason": gen.finish_reason.as_str(),
            "backend": backend_name,
            "dtype": dtype,
            "timings": {
                "load_s": load_secs,
                "prefill_s": gen.prefill_secs,
                "decode_s": gen.decode_secs,
                // Of decode_s, the forward steps (the rest: sampling, text, stop checks).
                "decode_step_s": gen.decode_step_secs,
                "prefill_tokens_per_s": gen.prefill_tokens_per_sec(),
                "decode_tokens_per_s": gen.decode_tokens_per_sec(),
            },
        });
        if let (Some(o), serde_json::Value::Object(e)) = (out.as_object_mut(), extra) {
            o.extend(e);
        }
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

struct Job<'a> {
    args: &'a GenerateArgs,
    ckpt: &'a Checkpoint,
    req: GenerateRequest,
}

impl BackendJob for Job<'_> {
    type Output = Result<()>;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
        let backend_name = backend.name();
        let (model, load) = load_model(backend, self.ckpt, &self.args.model)?;
        let stream = !self.args.gen.json;
        let gen = generate(&model, self.ckpt.tokenizer.as_ref(), &self.req, |piece| {
            if stream {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        })?;
        report(
            &self.args.gen,
            &gen,
            &backend_name,
            &self.args.model.dtype,
            load.secs,
            serde_json::json!({
                "step_graphs": crate::load::step_graphs_json(&model),
                "warm_up": load.warm_up_json(),
                "kv_dtype": model.kv_dtype().to_string(),
            }),
        )
    }
}
