//! A `tokenizers::Tokenizer` built from `tokenizer.ggml.*` metadata.
//!
//! The reference is transformers' GGUF tokenizer conversion
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py` and the
//! `GPT2Tokenizer` / `LlamaTokenizer` classes it hands the vocabulary to): the
//! same model, pre-tokenizer, decoder, added tokens and post-processor are
//! rebuilt here, so that token ids match `AutoTokenizer.from_pretrained(..,
//! gguf_file=..)` exactly.

use super::meta::Metadata;
use crate::{ModelError, Result, Tokenizer};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's word-boundary marker.
const SPM_SPACE: char = '\u{2581}';

const LLAMA3_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex for a `tokenizer.ggml.pre` value, as transformers maps them.
/// Other values (e.g. `smollm`, `gpt2`) keep GPT-2's built-in byte-level regex.
/// Applied to byte-level vocabularies only: transformers would also apply it
/// to a SentencePiece one, which no real file asks for and which would break it.
fn pre_split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// Build the tokenizer of a GGUF file, or `None` when it has no `tokenizer.ggml.model`.
pub(super) fn build(path: &Path, meta: &Metadata) -> Result<Option<Tokenizer>> {
    let err = |reason: String| ModelError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let Some(model) = meta.str("tokenizer.ggml.model").map_err(err)? else {
        return Ok(None);
    };
    let tokens = meta
        .strs("tokenizer.ggml.tokens")
        .map_err(err)?
        .ok_or_else(|| {
            err(format!(
                "`tokenizer.ggml.model` is `{model}` but `tokenizer.ggml.tokens` is missing"
            ))
        })?;
    let types = meta
        .ints("tokenizer.ggml.token_type")
        .map_err(err)?
        .unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(err(format!(
            "`tokenizer.ggml.token_type` has {} entries but there are {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let merges = match meta.strs("tokenizer.ggml.merges").map_err(err)? {
        Some(m) => Some(split_merges(m).map_err(err)?),
        None => None,
    };

    let mut tok = match model {
        "gpt2" => {
            let merges =
                merges.ok_or_else(|| err("byte-level BPE needs `tokenizer.ggml.merges`".into()))?;
            let pre = meta
                .str("tokenizer.ggml.pre")
                .map_err(err)?
                .unwrap_or("default");
            byte_level_bpe(tokens, merges, pre).map_err(err)?
        }
        "llama" => {
            let merges = match merges {
                Some(m) => m,
                None => {
                    let scores = meta
                        .floats("tokenizer.ggml.scores")
                        .map_err(err)?
                        .ok_or_else(|| err("SentencePiece vocabulary without merges needs `tokenizer.ggml.scores`".into()))?;
                    merges_from_scores(tokens, &scores)
                }
            };
            sentencepiece_bpe(tokens, merges).map_err(err)?
        }
        other => {
            return Err(err(format!(
                "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
            )))
        }
    };

    let byte_level = model == "gpt2";
    add_typed_tokens(&mut tok, tokens, &types, byte_level);

    // The special tokens named by id, as strings (transformers' bos_token, eos_token, ...).
    let special = |key: &str| -> Result<Option<String>> {
        match meta.token_id(key).map_err(err)? {
            None => Ok(None),
            Some(id) => tokens.get(id).cloned().map(Some).ok_or_else(|| {
                err(format!(
                    "`{key}` = {id} is not a token id (there are {} tokens)",
                    tokens.len()
                ))
            }),
        }
    };
    let bos = special("tokenizer.ggml.bos_token_id")?;
    let eos = special("tokenizer.ggml.eos_token_id")?;
    let unk = special("tokenizer.ggml.unknown_token_id")?;
    let pad = special("tokenizer.ggml.padding_token_id")?;
    add_named_specials(&mut tok, [&bos, &eos, &unk, &pad]);

    // SentencePiece vocabularies add BOS unless the file says otherwise (llama.cpp's rule too).
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")
        .map_err(err)?
        .unwrap_or(model == "llama");
    let add_eos = meta
        .bool("tokenizer.ggml.add_eos_token")
        .map_err(err)?
        .unwrap_or(false);
    let post = post_processor(
        &tok,
        bos.as_deref().filter(|_| add_bos),
        eos.as_deref().filter(|_| add_eos),
    )
    .map_err(err)?;
    tok.with_post_processor(Some(post));

    let chat_template = meta
        .str("tokenizer.chat_template")
        .map_err(err)?
        .map(String::from);
    Ok(Some(Tokenizer::from_parts(
        tok,
        path,
        chat_template,
        bos,
        eos,
        add_bos,
    )))
}

/// `"a b"` merge strings to pairs.
fn split_merges(merges: &[String]) -> Result<Merges, String> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut parts = m.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                _ => Err(format!(
                    "`tokenizer.ggml.merges`[{i}] = {m:?} is not two tokens separated by one space"
                )),
            }
        })
        .collect()
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for
/// themselves, the rest are moved to U+0100 onwards in byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // Codes stay below 0x200, all valid scalar values.
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// Byte-level BPE (`tokenizer.ggml.model = gpt2`).
fn byte_level_bpe(
    tokens: &[String],
    merges: Merges,
    pre: &str,
) -> Result<tokenizers::Tokenizer, String> {
    let chars = byte_chars();
    let alphabet: HashSet<char> = chars.iter().copied().collect();
    // Every real token is spelled in the byte alphabet; one that is not (a raw
    // string from a sloppy converter) is respelled from its UTF-8 bytes.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
                t.clone()
            } else {
                t.bytes().map(|b| chars[b as usize]).collect()
            };
            (spelled, id as u32)
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| format!("cannot build the BPE model: {e}"))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    match pre_split_regex(pre) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("pre-tokenizer regex for `{pre}`: {e}"))?;
            let seq = PreSequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ]);
            tok.with_pre_tokenizer(Some(seq));
        }
        None => {
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tok.with_decoder(Some(ByteLevel::default()));
    Ok(tok)
}

/// SentencePiece BPE (`tokenizer.ggml.model = llama`), as transformers' `LlamaTokenizer`.
fn sentencepiece_bpe(tokens: &[String], merges: Merges) -> Result<tokenizers::Tokenizer, String> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    // Characters outside the vocabulary become <0xNN> byte tokens.
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| format!("cannot build the BPE model: {e}"))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    // transformers ignores `tokenizer.ggml.add_space_prefix` here, and so do
    // we, to produce the same ids.
    // Spaces become ▁ and one ▁ is prepended to the start of the text (not
    // after each special token): transformers' non-legacy `prepend_scheme=first`.
    tok.with_pre_tokenizer(Some(Metaspace::new(SPM_SPACE, PrependScheme::First, false)));
    let replace = Replace::new(SPM_SPACE.to_string(), " ").map_err(|e| format!("decoder: {e}"))?;
    let decoder = DecoderSequence::new(vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        // Drop the space that the prepended ▁ decodes to.
        Strip::new(' ', 1, 0).into(),
    ]);
    tok.with_decoder(Some(decoder));
    Ok(tok)
}

/// Merges implied by a SentencePiece vocabulary, ranked as transformers'
/// `generate_merges(vocab, vocab_scores)` ranks them: every split of a token
/// into two vocabulary pieces is a merge with the token's score; ties keep the
/// order of (token position, left id, right id) and are broken by longer
/// pieces first.
fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Merges {
    // token -> id, a repeated token keeping its last id (like a Python dict built in order).
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        ids.insert(t, id);
    }
    // token -> score in first-appearance order, a repeated token taking its last score.
    let mut order: Vec<(&str, f64)> = Vec::with_capacity(tokens.len());
    let mut slot: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        match slot.get(t.as_str()) {
            Some(&i) => order[i].1 = s,
            None => {
                slot.insert(t, order.len());
                order.push((t, s));
            }
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for (token, score) in order {
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    // Stable sort, best first.
    merges.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then_with(|| b.0.chars().count().cmp(&a.0.chars().count()))
            .then_with(|| b.1.chars().count().cmp(&a.1.chars().count()))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// Control tokens become special added tokens and user-defined ones plain
/// added tokens, so the text `<|im_end|>` is one token, not six.
fn add_typed_tokens(
    tok: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i64],
    byte_level: bool,
) {
    let alphabet: Option<HashSet<char>> = byte_level.then(|| byte_chars().into_iter().collect());
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, &ty)| {
            // In a byte-level vocabulary a "control" token outside the byte
            // alphabet is a converter mislabel; adding it would grow the vocabulary.
            ty == TOKEN_TYPE_CONTROL
                && alphabet
                    .as_ref()
                    .is_none_or(|a| t.chars().all(|c| a.contains(&c)))
        })
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tok.add_special_tokens(&control);
    let vocab = tok.get_vocab(true);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, &ty)| ty == TOKEN_TYPE_USER_DEFINED && vocab.contains_key(t.as_str()))
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tok.add_tokens(&user);
}

/// Register the BOS/EOS/UNK/PAD strings as special tokens when they are not
/// added tokens yet, as transformers does with its special-tokens map.
fn add_named_specials(tok: &mut tokenizers::Tokenizer, named: [&Option<String>; 4]) {
    let mut seen: HashSet<String> = tok
        .get_added_tokens_decoder()
        .values()
        .map(|t| t.content.clone())
        .collect();
    let extra: Vec<AddedToken> = named
        .into_iter()
        .flatten()
        // `insert` also drops repeats (BOS and EOS are often the same token).
        .filter(|t| seen.insert(t.to_string()))
        .map(|t| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tok.add_special_tokens(&extra);
}

/// transformers' `update_post_processor`: `[bos] $A [eos]` (and the same around `$B`).
///
/// Built through the serialized form because token strings may contain the
/// `:` and ` ` that the string template syntax uses as separators.
fn post_processor(
    tok: &tokenizers::Tokenizer,
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<TemplateProcessing, String> {
    let part = |seq: &str, type_id: u32| -> Vec<serde_json::Value> {
        let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let mut v: Vec<serde_json::Value> = bos.into_iter().map(special).collect();
        v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        v.extend(eos.into_iter().map(special));
        v
    };
    let single = part("A", 0);
    let mut pair = part("A", 0);
    pair.extend(part("B", 1));
    let mut specials = serde_json::Map::new();
    for t in [bos, eos].into_iter().flatten() {
        let id = tok
            .token_to_id(t)
            .ok_or_else(|| format!("special token {t:?} is not in the vocabulary"))?;
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    let v = json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials});
    serde_json::from_value(v).map_err(|e| format!("post-processor: {e}"))
}
