//! Malformed and hostile files: each must give an error that says what is
//! wrong, never a panic or a huge allocation.

use super::test_writer::*;
use super::GgufFile;
use crate::{ModelError, Slice, TensorSource};

fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), bytes).expect("write temp file");
    f
}

/// Open `bytes` expecting failure; the error's message.
fn open_err(bytes: &[u8]) -> String {
    let f = write_tmp(bytes);
    match GgufFile::open(f.path()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_msg(bytes: &[u8], needles: &[&str]) {
    let msg = open_err(bytes);
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should contain {n:?}");
    }
}

/// A small valid file with two tensors, the second one last in the file.
fn valid() -> Writer {
    Writer::new()
        .kv("general.architecture", Val::Str("llama".into()))
        .kv(
            "tokenizer.ggml.tokens",
            Val::StrArr(vec!["a".into(), "b".into()]),
        )
        .tensor("blk.0.attn_norm.weight", &[8], GGML_F32, vec![0u8; 32])
        .tensor("blk.0.ffn_down.weight", &[32, 2], GGML_Q8_0, vec![0u8; 68])
}

#[test]
fn valid_file_opens() {
    let f = write_tmp(&valid().build());
    let g = GgufFile::open(f.path()).expect("valid file");
    assert_eq!(g.version(), 3);
    assert_eq!(g.names().len(), 2);
}

#[test]
fn wrong_magic_says_not_gguf() {
    let mut b = valid().build();
    b[..4].copy_from_slice(b"GGML");
    assert_msg(&b, &["not a GGUF file"]);
    assert_msg(
        b"{\"not\": \"gguf at all, but long enough\"}",
        &["not a GGUF file"],
    );
}

#[test]
fn tiny_file_is_rejected() {
    assert_msg(b"GGUF", &["too small"]);
    assert_msg(b"", &["too small"]);
}

#[test]
fn versions() {
    let mut w = valid();
    w.version = 1;
    assert_msg(&w.build(), &["version 1"]);
    w.version = 3u32.swap_bytes();
    assert_msg(&w.build(), &["big-endian"]);
    w.version = 9;
    assert_msg(&w.build(), &["unknown GGUF version 9"]);
    w.version = 2;
    let f = write_tmp(&w.build());
    assert_eq!(GgufFile::open(f.path()).expect("v2 file").version(), 2);
}

#[test]
fn huge_string_length() {
    let b = valid()
        .kv(
            "evil",
            Val::Raw(T_STRING, (1u64 << 60).to_le_bytes().to_vec()),
        )
        .build();
    assert_msg(
        &b,
        &[
            "metadata `evil`",
            "string length 1152921504606846976",
            "runs past the end",
        ],
    );
}

#[test]
fn huge_array_counts() {
    for (elem, count) in [
        (T_U32, 1u64 << 40),
        (T_STRING, u64::MAX),
        (T_ARRAY, u64::MAX / 3),
        (T_U8, 1 << 33),
    ] {
        let mut payload = elem.to_le_bytes().to_vec();
        payload.extend_from_slice(&count.to_le_bytes());
        let b = valid().kv("evil.array", Val::Raw(T_ARRAY, payload)).build();
        assert_msg(
            &b,
            &[
                "metadata `evil.array`",
                &format!("count {count}"),
                "larger than the rest of the file",
            ],
        );
    }
}

#[test]
fn deeply_nested_arrays() {
    let mut payload = Vec::new();
    for _ in 0..64 {
        payload.extend_from_slice(&T_ARRAY.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
    }
    let b = valid().kv("evil.nest", Val::Raw(T_ARRAY, payload)).build();
    assert_msg(&b, &["metadata `evil.nest`", "nested more than"]);
}

#[test]
fn unknown_value_types() {
    assert_msg(
        &valid().kv("k", Val::Raw(13, vec![0; 8])).build(),
        &["metadata `k`", "unknown value type 13"],
    );
    let mut payload = 99u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&1u64.to_le_bytes());
    assert_msg(
        &valid().kv("k", Val::Raw(T_ARRAY, payload)).build(),
        &["unknown array element type 99"],
    );
}

#[test]
fn huge_header_counts() {
    let mut w = valid();
    w.kv_count = Some(u64::MAX);
    assert_msg(
        &w.build(),
        &["metadata count", "larger than the rest of the file"],
    );
    let mut w = valid();
    w.tensor_count = Some(1 << 50);
    assert_msg(
        &w.build(),
        &["tensor count", "larger than the rest of the file"],
    );
}

#[test]
fn duplicate_key_and_tensor() {
    let b = valid()
        .kv("general.architecture", Val::Str("qwen2".into()))
        .build();
    assert_msg(&b, &["`general.architecture` appears twice"]);
    let b = valid()
        .tensor("blk.0.attn_norm.weight", &[8], GGML_F32, vec![0u8; 32])
        .build();
    assert_msg(&b, &["`blk.0.attn_norm.weight` appears twice"]);
}

#[test]
fn invalid_utf8_key() {
    let mut w = valid();
    w.kvs.push(("bad\u{1}key".into(), Val::U32(1)));
    let mut b = w.build();
    let at = b
        .windows(7)
        .position(|s| s == b"bad\x01key")
        .expect("key bytes");
    b[at + 3] = 0xff;
    assert_msg(&b, &["metadata key #2", "UTF-8"]);
}

#[test]
fn tensor_data_past_end_of_file() {
    let mut w = valid();
    w.tensors[1].offset = Some(1 << 20);
    assert_msg(
        &w.build(),
        &[
            "tensor `blk.0.ffn_down.weight`",
            "+68 bytes runs past the end of the file (size",
        ],
    );
    w.tensors[1].offset = Some(u64::MAX - 31);
    assert_msg(
        &w.build(),
        &[
            "tensor `blk.0.ffn_down.weight`",
            "runs past the end of the file",
        ],
    );
}

#[test]
fn absurd_dimensions() {
    let b = valid()
        .tensor("big", &[32, 1 << 62, 1 << 62], GGML_F32, vec![])
        .build();
    assert_msg(&b, &["tensor `big`", "overflow"]);
    let b = valid()
        .tensor("big", &[1 << 40, 1 << 20], GGML_F32, vec![])
        .build();
    assert_msg(&b, &["tensor `big`", "runs past the end of the file"]);
    let b = valid().tensor("zero", &[32, 0], GGML_F32, vec![]).build();
    assert_msg(&b, &["tensor `zero`", "dimension 1 is zero"]);
}

#[test]
fn misaligned_and_overlapping_offsets() {
    let mut w = valid();
    w.tensors[1].offset = Some(4);
    assert_msg(
        &w.build(),
        &[
            "tensor `blk.0.ffn_down.weight`",
            "0x4 is not a multiple of the alignment 32",
        ],
    );
    let mut w = valid().tensor("blk.0.ffn_up.weight", &[32, 2], GGML_Q8_0, vec![0u8; 68]);
    w.tensors[2].offset = Some(32);
    assert_msg(
        &w.build(),
        &["overlap", "blk.0.ffn_down.weight", "blk.0.ffn_up.weight"],
    );
}

#[test]
fn alignment_key() {
    let b = valid().kv("general.alignment", Val::U32(3)).build();
    assert_msg(&b, &["general.alignment", "power-of-two"]);
    let b = valid()
        .kv("general.alignment", Val::Str("32".into()))
        .build();
    assert_msg(&b, &["general.alignment"]);
    let mut w = valid().kv("general.alignment", Val::U32(64));
    w.alignment = 64;
    let f = write_tmp(&w.build());
    let g = GgufFile::open(f.path()).expect("64-byte aligned file");
    assert_eq!(
        g.read("model.layers.0.input_layernorm.weight", &Slice::Full)
            .expect("read")
            .numel(),
        8
    );
}

#[test]
fn bad_tensor_types_and_dims() {
    assert_msg(
        &valid().tensor("t", &[4], 77, vec![0; 16]).build(),
        &["tensor `t`", "unknown ggml type 77"],
    );
    let f = write_tmp(&valid().tensor("t", &[256], 12, vec![0; 144]).build());
    match GgufFile::open(f.path()) {
        Err(ModelError::UnsupportedDType { tensor, dtype, .. }) => {
            assert_eq!((tensor.as_str(), dtype.as_str()), ("t", "Q4_K"));
        }
        Err(other) => panic!("expected UnsupportedDType, got {other}"),
        Ok(_) => panic!("expected UnsupportedDType"),
    }
    assert_msg(
        &valid()
            .tensor("t", &[1, 1, 1, 1, 1], GGML_F32, vec![0; 4])
            .build(),
        &["tensor `t`", "5 dimensions"],
    );
    assert_msg(
        &valid().tensor("t", &[], GGML_F32, vec![]).build(),
        &["tensor `t`", "0 dimensions"],
    );
    assert_msg(
        &valid()
            .tensor("t", &[16, 2], GGML_Q8_0, vec![0; 34])
            .build(),
        &["tensor `t`", "Q8_0 block size 32"],
    );
}

#[test]
fn every_truncation_fails_cleanly() {
    let full = valid().build();
    for n in 0..full.len() {
        let msg = open_err(&full[..n]);
        assert!(!msg.is_empty());
    }
}

#[test]
fn random_corruption_never_panics() {
    let full = valid()
        .kv("general.alignment", Val::U32(32))
        .kv("tokenizer.ggml.scores", Val::F32Arr(vec![0.5, -1.0]))
        .build();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut b = full.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        let f = write_tmp(&b);
        if let Ok(g) = GgufFile::open(f.path()) {
            for name in g.names() {
                let _ = g.read(&name, &Slice::Full);
            }
            let _ = g.spec();
            let _ = g.tokenizer();
        }
    }
}
