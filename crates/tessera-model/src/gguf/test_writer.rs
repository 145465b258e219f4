//! A minimal GGUF writer for tests, able to write malformed files on purpose.
//!
//! Standard library only, so `tests/gguf.rs` can include it with `#[path]`.

#![allow(dead_code)]

/// GGUF metadata value type ids.
pub const T_U8: u32 = 0;
pub const T_U32: u32 = 4;
pub const T_I32: u32 = 5;
pub const T_F32: u32 = 6;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;

/// ggml type ids.
pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q4_0: u32 = 2;
pub const GGML_Q4_1: u32 = 3;
pub const GGML_Q8_0: u32 = 8;
pub const GGML_BF16: u32 = 30;

/// A metadata value.
#[derive(Clone, Debug)]
pub enum Val {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    F32Arr(Vec<f32>),
    I32Arr(Vec<i32>),
    /// A type id followed by arbitrary payload bytes (for malformed values).
    Raw(u32, Vec<u8>),
}

/// One tensor: dims in ggml order (fastest first), raw data bytes.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
    /// Write this offset instead of the computed one (and do not write the data).
    pub offset: Option<u64>,
}

/// Builds a GGUF file in memory.
#[derive(Clone, Debug)]
pub struct Writer {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, Val)>,
    pub tensors: Vec<Tensor>,
    /// Write these counts instead of the real ones.
    pub tensor_count: Option<u64>,
    pub kv_count: Option<u64>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
            tensor_count: None,
            kv_count: None,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(mut self, key: &str, v: Val) -> Self {
        self.kvs.push((key.to_string(), v));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }

    /// Serialize. Tensor data is laid out in order, each start aligned.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(
            &self
                .tensor_count
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend_from_slice(&self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            match v {
                Val::U32(x) => {
                    out.extend_from_slice(&T_U32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::I32(x) => {
                    out.extend_from_slice(&T_I32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::F32(x) => {
                    out.extend_from_slice(&T_F32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::Bool(x) => {
                    out.extend_from_slice(&T_BOOL.to_le_bytes());
                    out.push(u8::from(*x));
                }
                Val::Str(s) => {
                    out.extend_from_slice(&T_STRING.to_le_bytes());
                    put_str(&mut out, s);
                }
                Val::StrArr(items) => {
                    out.extend_from_slice(&T_ARRAY.to_le_bytes());
                    out.extend_from_slice(&T_STRING.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for s in items {
                        put_str(&mut out, s);
                    }
                }
                Val::F32Arr(items) => {
                    out.extend_from_slice(&T_ARRAY.to_le_bytes());
                    out.extend_from_slice(&T_F32.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for x in items {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Val::I32Arr(items) => {
                    out.extend_from_slice(&T_ARRAY.to_le_bytes());
                    out.extend_from_slice(&T_I32.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for x in items {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Val::Raw(ty, payload) => {
                    out.extend_from_slice(&ty.to_le_bytes());
                    out.extend_from_slice(payload);
                }
            }
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut next = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            let off = t.offset.unwrap_or(next);
            offsets.push(off);
            next = align(off.saturating_add(t.data.len() as u64).min(u64::MAX / 2));
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        let data_start = align(out.len() as u64) as usize;
        out.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            // Overridden offsets are for malformed files: they may point anywhere.
            if t.offset.is_some() {
                continue;
            }
            let at = data_start + off as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        out
    }
}

/// The synthetic SentencePiece vocabulary of `spm_vocab()` in
/// scripts/gguf-tokenizer-ids.py (tests/gguf.rs checks its ids against
/// transformers).
pub fn spm_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0f32; 3];
    let mut types = vec![2, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    let pieces = [
        "\u{2581}",
        "\u{2581}t",
        "he",
        "\u{2581}the",
        "\u{2581}a",
        "in",
        "er",
        "\u{2581}w",
        "or",
        "ld",
        "\u{2581}wor",
        "\u{2581}world",
        "\u{2581}h",
        "el",
        "lo",
        "ll",
        "llo",
        "\u{2581}hel",
        "\u{2581}hello",
        "at",
        "ea",
        "\u{2581}we",
        "ther",
        "\u{2581}weather",
        "ing",
        "\u{2581}lead",
        "ad",
        "\u{2581}\u{2581}",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        scores.push(-1.0 - i as f32);
        types.push(1);
    }
    for (i, c) in "abcdefghijklmnopqrstuvwxyz!".chars().enumerate() {
        tokens.push(c.to_string());
        scores.push(-100.0 - i as f32);
        types.push(1);
    }
    tokens.extend(["<|eot|>".to_string(), "<tool>".to_string()]);
    scores.extend([0.0, 0.0]);
    types.extend([3, 4]);
    (tokens, scores, types)
}

/// A GGUF file holding only a llama (SentencePiece, byte fallback) tokenizer
/// over `spm_vocab()`: BOS 1, EOS 2, UNK 0, BOS added.
pub fn spm_tokenizer_gguf() -> Vec<u8> {
    let (tokens, scores, types) = spm_vocab();
    Writer::new()
        .kv("general.architecture", Val::Str("llama".into()))
        .kv("tokenizer.ggml.model", Val::Str("llama".into()))
        .kv("tokenizer.ggml.tokens", Val::StrArr(tokens))
        .kv("tokenizer.ggml.scores", Val::F32Arr(scores))
        .kv("tokenizer.ggml.token_type", Val::I32Arr(types))
        .kv("tokenizer.ggml.bos_token_id", Val::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Val::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", Val::U32(0))
        .kv("tokenizer.ggml.add_bos_token", Val::Bool(true))
        .build()
}
