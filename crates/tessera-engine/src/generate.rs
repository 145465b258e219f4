//! The generation loop: prefill the prompt, decode token by token, stream
//! text, stop on EOS, a stop string or the token limit.

use crate::{EngineError, Model, Result, Sampler, SamplingParams};
use std::collections::VecDeque;
use std::time::Instant;
use tessera_backend::Backend;
use tessera_model::Tokenizer;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Token ids that end generation (included in `generated_ids`, not in `text`).
    pub eos_ids: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Length,
    Eos,
    Stop,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// The part of `decode_secs` spent inside the forward steps; the rest is
    /// the loop's own host work (sampling, text, stop checks).
    pub decode_step_secs: f64,
}

impl Generation {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_ids.len() as f64 / self.prefill_secs.max(1e-9)
    }
    /// Decode speed over the tokens produced after the first one (which prefill produced).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let n = self.generated_ids.len().saturating_sub(1);
        if n == 0 {
            0.0
        } else {
            n as f64 / self.decode_secs.max(1e-9)
        }
    }
}

/// Incremental detokenization for streaming: decodes the generated ids,
/// cuts at the first stop string, and hands out only text that can no longer
/// change (it holds back an incomplete UTF-8 character and any suffix that
/// could still grow into a stop string).
///
/// Each update decodes only a short window of ids, not all of them (which
/// made a long generation quadratic): the ids from the last-but-one commit
/// point on. Their text minus the text of the window's first part (decoded
/// alone, the same way) is what the new ids add, so tokens whose text depends
/// on their left neighbour (a leading space that a decoder strips at the
/// start of a text, a UTF-8 character split across tokens) come out as in a
/// decode of all ids. New text is committed once it does not end in an
/// incomplete character. Should a window's text not start with its first
/// part's (a decoder that rewrites earlier text), the update waits while the
/// window ends in an incomplete character, else decodes all ids and starts
/// over from there.
#[derive(Debug, Clone)]
pub struct TextStream {
    stop: Vec<String>,
    emitted: usize,
    text: String,
    stopped: bool,
    /// Window start: ids `prefix..read` decode to `prefix_text`.
    prefix: usize,
    /// Ids decoded and committed into `done`.
    read: usize,
    prefix_text: String,
    /// The text of ids `..read`.
    done: String,
    /// Ids passed to the tokenizer's decode so far (see `ids_decoded`).
    decoded: u64,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        TextStream {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            emitted: 0,
            text: String::new(),
            stopped: false,
            prefix: 0,
            read: 0,
            prefix_text: String::new(),
            done: String::new(),
            decoded: 0,
        }
    }

    /// Decode `ids` (all generated ids so far; each call's ids extend the
    /// previous call's); `finished` says no more will come. Returns the newly
    /// stable text; `stopped()` tells whether a stop string ended it.
    pub fn update(
        &mut self,
        tokenizer: Option<&Tokenizer>,
        ids: &[u32],
        finished: bool,
    ) -> Result<String> {
        let Some(tok) = tokenizer else {
            return Ok(String::new());
        };
        if ids.len() < self.read {
            // Not an extension of the last call: start over.
            *self = TextStream::new(std::mem::take(&mut self.stop));
        }
        let window = self.decode(tok, &ids[self.prefix..])?;
        let tail = match window.strip_prefix(self.prefix_text.as_str()) {
            Some(tail) => tail.to_string(),
            // A character still arriving byte by byte: a byte-fallback
            // decoder turns the whole run of byte tokens into U+FFFDs, also
            // complete characters of the run already committed. Nothing new
            // is stable; the window decodes again once the character is whole.
            None if window.ends_with('\u{FFFD}') && !finished => String::new(),
            None => {
                self.prefix = 0;
                self.read = 0;
                self.prefix_text.clear();
                self.done.clear();
                self.decode(tok, ids)?
            }
        };
        let mut text = String::with_capacity(self.done.len() + tail.len());
        text.push_str(&self.done);
        text.push_str(&tail);
        if !tail.is_empty() && !tail.ends_with('\u{FFFD}') {
            self.done.push_str(&tail);
            self.prefix = self.read;
            self.read = ids.len();
            self.prefix_text = self.decode(tok, &ids[self.prefix..self.read])?;
        }
        // A stop string cannot start before the emitted text's held-back
        // suffix (stable_end), so the search starts shortly before it.
        let longest = self.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = floor_boundary(&text, self.emitted.saturating_sub(longest));
        if let Some(c) = self
            .stop
            .iter()
            .filter_map(|s| text[from..].find(s.as_str()))
            .min()
        {
            text.truncate(from + c);
            self.stopped = true;
        }
        self.text = text;
        let end = self.stable_end(finished || self.stopped);
        // `emitted` is inside the text unless a decoder rewrote earlier text.
        let start = floor_boundary(&self.text, self.emitted.min(end));
        let piece = self.text[start..end].to_string();
        self.emitted = end;
        Ok(piece)
    }

    fn decode(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<String> {
        self.decoded += ids.len() as u64;
        Ok(tok.decode(ids, true)?)
    }

    /// How many ids this stream has passed to the tokenizer's decode in all
    /// (a few per update while windows work; all of them when one falls back).
    pub fn ids_decoded(&self) -> u64 {
        self.decoded
    }

    /// Whether a stop string matched (the text is cut before it).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The whole text so far (stop string excluded).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn stable_end(&self, finished: bool) -> usize {
        let text = &self.text;
        if finished {
            return text.len();
        }
        // Hold back every trailing U+FFFD: a character whose bytes are still
        // coming decodes to one per byte with byte-fallback tokenizers.
        let mut end = text.trim_end_matches('\u{FFFD}').len();
        // Hold back the longest suffix that is a prefix of some stop string.
        for s in &self.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..end].ends_with(&s[..k]) {
                    end = end.min(text[..end].len() - k);
                    break;
                }
            }
        }
        end.max(floor_boundary(text, self.emitted))
    }
}

/// The largest char boundary of `text` at or below `i`.
fn floor_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Generate from `req` on a model in this process; `on_text` receives each
/// newly stable piece of text.
pub fn generate<B: Backend>(
    model: &Model<B>,
    tokenizer: Option<&Tokenizer>,
    req: &GenerateRequest,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    if req.prompt_ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let context = model.spec().max_position_embeddings;
    if req.prompt_ids.len() + req.max_new_tokens > context {
        return Err(EngineError::ContextExceeded {
            prompt: req.prompt_ids.len(),
            new: req.max_new_tokens,
            context,
        });
    }
    let mut seq = model.new_sequence(req.prompt_ids.len() + req.max_new_tokens)?;
    // TESSERA_GREEDY_AHEAD=0 steps greedy generations one token at a time (A/B).
    let ahead_on = std::env::var("TESSERA_GREEDY_AHEAD").map_or(true, |v| v != "0");
    generate_steps(
        |ids: &[u32], ahead: usize| {
            if ahead > 0 && ahead_on {
                if let Some(t) = model.decode_greedy(&mut seq, ids[0], ahead)? {
                    if !t.is_empty() {
                        return Ok(StepOut::Tokens(t));
                    }
                }
            }
            Ok(StepOut::Logits(model.forward(&mut seq, ids, false)?.data))
        },
        context,
        tokenizer,
        req,
        on_text,
    )
}

/// Tokens decoded per call when greedy steps run on the device
/// (`Model::decode_greedy`): one host round trip per this many tokens instead
/// of per token; when the text ends early, at most this many minus one steps
/// were wasted, and streamed text arrives in bursts of up to this many tokens.
pub const GREEDY_AHEAD: usize = 8;

/// What a step of [`generate_steps`] returns.
pub enum StepOut {
    /// The logits of the appended token's position.
    Logits(Vec<f32>),
    /// Greedy choices made on the device (asked for with `ahead > 0`): the
    /// token after the appended one, then the token after that, ...; the
    /// sequence already holds every one of them but the last.
    Tokens(Vec<u32>),
}

/// The generation loop over any forward step: `step(ids, ahead)` appends
/// `ids` to the sequence and returns the logits of its last position, or,
/// for a greedy request with `ahead > 0`, up to that many tokens, chosen by
/// the argmax the sampler would take (picked where the logits are: a GPU, a
/// worker, so they need not travel). The prompt step (`ahead == 0`) returns
/// logits. `generate` runs it over a local model; the launcher over steps on
/// worker processes, so one-shot generation through the workers samples,
/// stops and streams exactly like `generate`.
pub fn generate_steps<E: From<EngineError>>(
    mut step: impl FnMut(&[u32], usize) -> std::result::Result<StepOut, E>,
    context: usize,
    tokenizer: Option<&Tokenizer>,
    req: &GenerateRequest,
    mut on_text: impl FnMut(&str),
) -> std::result::Result<Generation, E> {
    if req.prompt_ids.is_empty() {
        return Err(EngineError::EmptyPrompt.into());
    }
    if req.prompt_ids.len() + req.max_new_tokens > context {
        return Err(EngineError::ContextExceeded {
            prompt: req.prompt_ids.len(),
            new: req.max_new_tokens,
            context,
        }
        .into());
    }
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let mut stream = TextStream::new(req.stop.clone());

    let t0 = Instant::now();
    let prompt_logits = match step(&req.prompt_ids, 0)? {
        StepOut::Logits(l) => l,
        StepOut::Tokens(_) => {
            return Err(EngineError::Backend(tessera_backend::BackendError::Device(
                "internal: the prompt step returned tokens, not logits".into(),
            ))
            .into())
        }
    };
    let prefill_secs = t0.elapsed().as_secs_f64();
    let greedy = req.sampling.is_greedy();

    let mut history = req.prompt_ids.clone();
    let mut generated: Vec<u32> = Vec::new();
    let mut finish = FinishReason::Length;
    let t1 = Instant::now();
    let mut decode_step_secs = 0.0;
    let mut logits = prompt_logits.clone();
    // Greedy choices the device made ahead (already in the sequence but the last).
    let mut ahead: VecDeque<u32> = VecDeque::new();
    while generated.len() < req.max_new_tokens {
        let next = match ahead.pop_front() {
            Some(t) => t,
            None => sampler.sample(&logits, &history),
        };
        generated.push(next);
        history.push(next);
        let is_eos = req.eos_ids.contains(&next);
        let done = is_eos || generated.len() == req.max_new_tokens;
        let piece = stream.update(tokenizer, &generated, done)?;
        let stopped = stream.stopped();
        if !piece.is_empty() {
            on_text(&piece);
        }
        if is_eos {
            finish = FinishReason::Eos;
            break;
        }
        if stopped {
            finish = FinishReason::Stop;
            break;
        }
        if generated.len() == req.max_new_tokens {
            break;
        }
        if !ahead.is_empty() {
            continue; // `next` is in the sequence already
        }
        let t = Instant::now();
        let want = if greedy {
            (req.max_new_tokens - generated.len()).min(GREEDY_AHEAD)
        } else {
            0
        };
        match step(&[next], want)? {
            StepOut::Logits(l) => logits = l,
            StepOut::Tokens(t) => ahead.extend(t),
        }
        decode_step_secs += t.elapsed().as_secs_f64();
    }
    let decode_secs = t1.elapsed().as_secs_f64();
    Ok(Generation {
        prompt_ids: req.prompt_ids.clone(),
        generated_ids: generated,
        text: stream.text().to_string(),
        finish_reason: finish,
        prompt_logits,
        prefill_secs,
        decode_secs,
        decode_step_secs,
    })
}

/// Perplexity of `ids` under the model: `exp(mean NLL)` of tokens `1..n` given
/// their prefixes, computed in one forward pass over the whole text.
pub fn perplexity<B: Backend>(model: &Model<B>, ids: &[u32]) -> Result<f64> {
    if ids.len() < 2 {
        return Err(EngineError::EmptyPrompt);
    }
    let mut seq = model.new_sequence(ids.len())?;
    if seq.capacity() < ids.len() {
        return Err(EngineError::ContextExceeded {
            prompt: ids.len(),
            new: 0,
            context: seq.capacity(),
        });
    }
    let logits = model.forward(&mut seq, ids, true)?;
    let vocab = model.spec().vocab_size;
    let mut nll = 0f64;
    for (i, row) in logits
        .data
        .chunks_exact(vocab)
        .take(ids.len() - 1)
        .enumerate()
    {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        nll += lse - row[ids[i + 1] as usize] as f64;
    }
    Ok((nll / (ids.len() - 1) as f64).exp())
}
