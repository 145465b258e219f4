//! The GGUF reader against the reference implementations.
//!
//! Expected values come from transformers and gguf-py, printed by
//! `scripts/gguf-tokenizer-ids.py` (rerun it to regenerate them). Tests on the
//! real model need `models/SmolLM2-135M-Instruct.Q4_1.gguf` at the workspace
//! root and are skipped, with a message, when it is absent.

#[path = "../src/gguf/test_writer.rs"]
mod test_writer;

use std::path::PathBuf;
use tessera_model::gguf::{GgufFile, MetaArray, MetaValue};
use tessera_model::{Checkpoint, Slice, TensorSource};
use test_writer::{Val, Writer};

fn smollm2() -> Option<GgufFile> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (copy SmolLM2-135M-Instruct.Q4_1.gguf into models/ to run this test)",
            path.display()
        );
        return None;
    }
    Some(GgufFile::open(&path).expect("open SmolLM2 GGUF"))
}

/// `tok(text)["input_ids"]` from transformers' `AutoTokenizer.from_pretrained(dir, gguf_file=...)`.
#[rustfmt::skip]
const SMOLLM2_IDS: &[(&str, &[u32])] = &[
    ("Hello, world! This is a test.", &[19556, 28, 905, 17, 669, 314, 253, 1028, 30]),
    ("The quick brown fox jumps over the lazy dog.", &[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]),
    ("12345 and 3.14159", &[33, 34, 35, 36, 37, 284, 216, 35, 30, 33, 36, 33, 37, 41]),
    ("a   b\n\n\tc", &[81, 256, 278, 1116, 197, 83]),
    ("   leading spaces", &[256, 2899, 5600]),
    ("trailing spaces   ", &[4861, 4966, 5600, 333]),
    ("na\u{ef}ve caf\u{e9} \u{395}\u{3bb}\u{3bb}\u{3b7}\u{3bd}\u{3b9}\u{3ba}\u{3ac} \u{65e5}\u{672c}\u{8a9e}", &[3546, 46494, 37366, 5664, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 17097, 241, 115, 40993, 179, 120, 248]),
    ("I \u{2764}\u{fe0f} \u{1f980} and \u{1f44d}\u{1f3fd}", &[57, 4636, 247, 114, 31752, 15107, 116, 218, 284, 15107, 235, 231, 10813, 233, 138]),
    ("<|im_start|>user\nhi<|im_end|>", &[1, 4093, 198, 6004, 2]),
    ("don't won't I'm we've they'll she'd", &[12420, 982, 3763, 982, 339, 5248, 392, 3543, 502, 3060, 1041, 6737]),
    ("fn main() { println!(\"{}\", x[0] + 1); }", &[7853, 1085, 1000, 1662, 1628, 34115, 17, 43331, 1002, 1792, 75, 32, 77, 1232, 216, 33, 4258, 4029]),
    ("<|endoftext|>between<|im_start|>\n", &[0, 18946, 1, 198]),
];

#[test]
fn smollm2_token_ids_match_transformers() {
    let Some(g) = smollm2() else { return };
    let tok = g
        .tokenizer()
        .expect("tokenizer")
        .expect("SmolLM2 has a tokenizer");
    for (text, want) in SMOLLM2_IDS {
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            *want,
            "ids of {text:?}"
        );
        assert_eq!(
            tok.encode(text, false).expect("encode"),
            *want,
            "ids of {text:?} without specials"
        );
    }
    assert_eq!(tok.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token.as_deref(), Some("<|im_end|>"));
    assert!(!tok.add_bos);
    assert!(tok
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("<|im_start|>")));
    let prompt = tok.apply_chat_template("hi").expect("chat template");
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
}

#[test]
fn smollm2_decode_inverts_encode() {
    let Some(g) = smollm2() else { return };
    let tok = g
        .tokenizer()
        .expect("tokenizer")
        .expect("SmolLM2 has a tokenizer");
    for (text, _) in SMOLLM2_IDS {
        let ids = tok.encode(text, true).expect("encode");
        assert_eq!(tok.decode(&ids, false).expect("decode"), *text);
    }
}

/// transformers' ids with SmolLM2's vocabulary and `tokenizer.ggml.pre` set to another value, which
/// switches its pre-tokenizer to that model's split regex (`smollm` keeps GPT-2's).
#[rustfmt::skip]
const PRE_IDS: &[(&str, &str, &[u32])] = &[
    ("smollm", "DON'T SHOUT, I'M HERE", &[52, 2154, 23, 68, 334, 21953, 28, 339, 23, 61, 27873]),
    ("smollm", "x=\"quoted\" (paren) [brackets]", &[104, 2671, 385, 5036, 18, 365, 10384, 25, 933, 6838, 936, 1175, 77]),
    ("smollm", "$100,000 in 2024 and 1234567", &[20, 33, 32, 32, 28, 32, 32, 32, 281, 216, 34, 32, 34, 36, 284, 216, 33, 34, 35, 36, 37, 38, 39]),
    ("smollm", "line\u{d}\n\u{d}\nbreaks\n\n\n  end", &[1311, 7209, 198, 43627, 1116, 3805, 1112]),
    ("smollm", "Hello!!!\n\n\nWorld...   ok", &[19556, 29646, 1116, 198, 11265, 2026, 256, 10907]),
    ("smollm", "snake_case and camelCase; e.g. #hashtag @user", &[48284, 79, 7544, 284, 32782, 10802, 43, 297, 30, 87, 30, 907, 14307, 9204, 3394, 4093]),
    ("llama-bpe", "DON'T SHOUT, I'M HERE", &[52, 2154, 23, 68, 334, 21953, 28, 339, 23, 61, 27873]),
    ("llama-bpe", "x=\"quoted\" (paren) [brackets]", &[104, 2671, 385, 5036, 18, 365, 10384, 25, 933, 6838, 936, 1175, 77]),
    ("llama-bpe", "$100,000 in 2024 and 1234567", &[20, 33, 32, 32, 28, 32, 32, 32, 281, 216, 34, 32, 34, 36, 284, 216, 33, 34, 35, 36, 37, 38, 39]),
    ("llama-bpe", "line\u{d}\n\u{d}\nbreaks\n\n\n  end", &[1311, 18682, 43627, 16506, 216, 1112]),
    ("llama-bpe", "Hello!!!\n\n\nWorld...   ok", &[19556, 29646, 16506, 11265, 2026, 256, 10907]),
    ("llama-bpe", "snake_case and camelCase; e.g. #hashtag @user", &[48284, 79, 7544, 284, 32782, 10802, 43, 297, 30, 87, 30, 907, 14307, 9204, 3394, 4093]),
    ("qwen2", "DON'T SHOUT, I'M HERE", &[52, 2154, 23, 68, 334, 21953, 28, 339, 23, 61, 27873]),
    ("qwen2", "x=\"quoted\" (paren) [brackets]", &[104, 2671, 385, 5036, 18, 365, 10384, 25, 933, 6838, 936, 1175, 77]),
    ("qwen2", "$100,000 in 2024 and 1234567", &[20, 33, 32, 32, 28, 32, 32, 32, 281, 216, 34, 32, 34, 36, 284, 216, 33, 34, 35, 36, 37, 38, 39]),
    ("qwen2", "line\u{d}\n\u{d}\nbreaks\n\n\n  end", &[1311, 18682, 43627, 16506, 216, 1112]),
    ("qwen2", "Hello!!!\n\n\nWorld...   ok", &[19556, 29646, 16506, 11265, 2026, 256, 10907]),
    ("qwen2", "snake_case and camelCase; e.g. #hashtag @user", &[48284, 79, 7544, 284, 32782, 10802, 43, 297, 30, 87, 30, 907, 14307, 9204, 3394, 4093]),
];

#[test]
fn pre_tokenizer_regexes_match_transformers() {
    let Some(g) = smollm2() else { return };
    let meta = g.metadata();
    let strs = |key: &str| match meta.get(key) {
        Some(MetaValue::Array(MetaArray::Str(v))) => v.clone(),
        other => panic!("{key}: {other:?}"),
    };
    let types = match meta.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(MetaArray::I32(v))) => v.clone(),
        other => panic!("token_type: {other:?}"),
    };
    for pre in ["smollm", "llama-bpe", "qwen2"] {
        let w = Writer::new()
            .kv("general.architecture", Val::Str("llama".into()))
            .kv("tokenizer.ggml.model", Val::Str("gpt2".into()))
            .kv("tokenizer.ggml.pre", Val::Str(pre.into()))
            .kv(
                "tokenizer.ggml.tokens",
                Val::StrArr(strs("tokenizer.ggml.tokens")),
            )
            .kv("tokenizer.ggml.token_type", Val::I32Arr(types.clone()))
            .kv(
                "tokenizer.ggml.merges",
                Val::StrArr(strs("tokenizer.ggml.merges")),
            )
            .kv("tokenizer.ggml.bos_token_id", Val::U32(1))
            .kv("tokenizer.ggml.eos_token_id", Val::U32(2))
            .kv("tokenizer.ggml.add_bos_token", Val::Bool(false));
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), w.build()).expect("write");
        let tok = GgufFile::open(f.path())
            .expect("open")
            .tokenizer()
            .expect("tokenizer")
            .expect("has one");
        for (_, text, ids) in PRE_IDS.iter().filter(|(p, _, _)| *p == pre) {
            let got = tok.encode(text, true).expect("encode");
            assert_eq!(got, *ids, "ids of {text:?} with pre {pre}");
            assert_eq!(tok.decode(&got, false).expect("decode"), *text);
        }
    }
}

#[test]
fn smollm2_spec() {
    let Some(g) = smollm2() else { return };
    let s = g.spec().expect("spec");
    assert_eq!(s.architecture, "LlamaForCausalLM");
    assert_eq!(
        (
            s.vocab_size,
            s.hidden_size,
            s.intermediate_size,
            s.num_layers
        ),
        (49152, 576, 1536, 30)
    );
    assert_eq!((s.num_heads, s.num_kv_heads, s.head_dim), (9, 3, 64));
    assert_eq!(
        (s.rms_norm_eps, s.rope_theta, s.max_position_embeddings),
        (1e-5, 100000.0, 8192)
    );
    assert!(s.tie_word_embeddings && !s.attention_bias);
    assert_eq!(
        (s.bos_token_id, s.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
}

/// `sum`, and `wsum` weighting element i by (i % 251 + 1), as the script computes them.
/// Neumaier summation, so the order of terms does not matter at this tolerance.
fn checksums(data: &[f32]) -> (f64, f64) {
    fn sum(it: impl Iterator<Item = f64>) -> f64 {
        let (mut s, mut c) = (0f64, 0f64);
        for x in it {
            let t = s + x;
            c += if s.abs() >= x.abs() {
                (s - t) + x
            } else {
                (x - t) + s
            };
            s = t;
        }
        s + c
    }
    let plain = sum(data.iter().map(|&v| f64::from(v)));
    let weighted = sum(data
        .iter()
        .enumerate()
        .map(|(i, &v)| f64::from(v) * ((i % 251) + 1) as f64));
    (plain, weighted)
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

/// (HF name, shape, first 8 and last 4 values as f32 bits, sum, wsum) from gguf-py's `dequantize`.
type Dequant = (&'static str, &'static [usize], [u32; 8], [u32; 4], f64, f64);
#[rustfmt::skip]
const GGUF_PY: &[Dequant] = &[
    ("model.embed_tokens.weight", &[49152, 576], [0xbdda3400, 0x3d071400, 0x3d456c00, 0xbcbb0800, 0xbd8c4600, 0xbd3b0800, 0x3ca64000, 0xbdf96000], [0x3da02300, 0x3e03ab00, 0xbdf58b00, 0xbd2ad000], -15353.04449415207, -1898685.4179515839), // token_embd.weight, Q8_0
    ("model.layers.0.mlp.down_proj.weight", &[576, 1536], [0xbea96000, 0x3eb13000, 0x3d9a4000, 0xbeeeb000, 0xbd760000, 0xbea96000, 0x3d9a4000, 0x3e57c000], [0xbdb89800, 0xbe780000, 0xbdb89800, 0xbe39b800], 150.63577270507812, 26879.50949859619), // blk.0.ffn_down.weight, Q4_1
    ("model.layers.0.input_layernorm.weight", &[576], [0x3c650000, 0x3cc30000, 0xbca20000, 0xbcf80000, 0xbca10000, 0xbd100000, 0x3cb90000, 0xbca40000], [0x3b950000, 0x3cbb0000, 0x3d4d0000, 0xbd1d0000], 0.6129436492919922, -83.07148933410645), // blk.0.attn_norm.weight, F32
    ("model.layers.29.self_attn.v_proj.weight", &[192, 576], [0x3e112000, 0xbe8e2000, 0x3e9e7000, 0x3e670000, 0xbde10000, 0x3f500800, 0x3e112000, 0x3e670000], [0xbe53f000, 0xbe53f000, 0x3ea07800, 0x3d5a0000], -23.565185546875, -15374.365661621094), // blk.29.attn_v.weight, Q4_1
];

#[test]
fn smollm2_dequantization_matches_gguf_py() {
    let Some(g) = smollm2() else { return };
    for (name, shape, first, last, sum, wsum) in GGUF_PY {
        let t = g.read(name, &Slice::Full).expect("read");
        assert_eq!(t.shape, *shape, "{name}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&t.data[..8]), first, "{name} first values");
        assert_eq!(bits(&t.data[t.numel() - 4..]), last, "{name} last values");
        let (s, w) = checksums(&t.data);
        assert_close(s, *sum, &format!("{name} sum"));
        assert_close(w, *wsum, &format!("{name} wsum"));
    }
}

/// (name, shape, (row, col, f32 bits) picks, sum, wsum) from transformers' `model.state_dict()`.
type StateDict = (
    &'static str,
    [usize; 2],
    &'static [(usize, usize, u32)],
    f64,
    f64,
);
#[rustfmt::skip]
const TRANSFORMERS: &[StateDict] = &[
    ("model.layers.0.self_attn.q_proj.weight", [576, 576], &[(0, 0, 0xbdc54000), (1, 0, 0xbe230000), (31, 5, 0xbdc9a000), (32, 5, 0x3e3d2000), (63, 575, 0xbd7ae000), (64, 1, 0x3de6c000), (575, 575, 0xbe830000)], 59.22322082519531, 12509.517395019531),
    ("model.layers.0.self_attn.k_proj.weight", [192, 576], &[(0, 0, 0xbe1f0000), (1, 0, 0x3e504000), (31, 5, 0x3e2c8000), (32, 5, 0x3e180000), (63, 575, 0x3d330000), (64, 1, 0x3f57f000), (191, 575, 0x3eba3000)], 26.937057495117188, -21390.180557250977),
    ("model.layers.0.mlp.down_proj.weight", [576, 1536], &[(0, 0, 0xbea96000), (1, 0, 0x3e308000), (31, 5, 0x3e74c800), (32, 5, 0x3dbe0000), (63, 575, 0xbd4cc000), (64, 1, 0x3c8dc000), (575, 1535, 0xbe39b800)], 150.63577270507812, 26879.50949859619),
];

#[test]
fn smollm2_weights_match_transformers_state_dict() {
    let Some(g) = smollm2() else { return };
    for (name, shape, picks, sum, wsum) in TRANSFORMERS {
        let t = g.read(name, &Slice::Full).expect("read");
        assert_eq!(t.shape, shape.to_vec(), "{name}");
        for &(r, c, bits) in *picks {
            assert_eq!(t.data[r * shape[1] + c].to_bits(), bits, "{name}[{r}, {c}]");
        }
        let (s, w) = checksums(&t.data);
        assert_close(s, *sum, &format!("{name} sum"));
        assert_close(w, *wsum, &format!("{name} wsum"));
    }
}

#[test]
fn smollm2_slices_match_full_reads() {
    let Some(g) = smollm2() else { return };
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.embed_tokens.weight",
    ] {
        let full = g.read(name, &Slice::Full).expect("full");
        let (rows, cols) = full.dims2();
        let r = 64..rows.min(192);
        let part = g.read(name, &Slice::Rows(r.clone())).expect("rows");
        assert_eq!(
            part.data,
            full.data[r.start * cols..r.end * cols],
            "{name} rows"
        );
        let c = 100..300;
        let part = g.read(name, &Slice::Cols(c.clone())).expect("cols");
        let want: Vec<f32> = (0..rows)
            .flat_map(|i| full.data[i * cols + c.start..i * cols + c.end].to_vec())
            .collect();
        assert_eq!(part.data, want, "{name} cols");
    }
}

#[test]
fn smollm2_opens_as_checkpoint() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let ck = Checkpoint::open(&path).expect("checkpoint");
    assert_eq!(ck.spec.num_layers, 30);
    assert!(ck.tokenizer.is_some());
    // 30 layers x 9 tensors + embedding + final norm; the embedding is tied.
    assert_eq!(ck.source.names().len(), 272);
    assert!(ck.source.info("lm_head.weight").is_none());
}

/// (text, `tok(text)["input_ids"]`, `tok.decode(ids, skip_special_tokens=True)`) from transformers.
#[rustfmt::skip]
const SPM_IDS: &[(&str, &[u32], &str)] = &[
    ("hello world", &[1, 259, 261, 275, 270], "hello world"),
    ("Hello World!", &[1, 259, 75, 272, 273, 259, 90, 267, 268, 313], "Hello World!"),
    ("the  weather", &[1, 262, 259, 280, 278, 261, 304], "the  weather"),
    (" leading", &[1, 259, 298, 279, 290, 283], "leading"),
    ("h\u{e9}llo \u{65e5}\u{672c}", &[1, 271, 198, 172, 275, 259, 233, 154, 168, 233, 159, 175], "h\u{e9}llo \u{65e5}\u{672c}"),
    ("<s>hello</s>", &[1, 1, 261, 275, 2], "hello"),
    ("hi<|eot|>there", &[1, 271, 295, 314, 306, 261, 304, 291], "hithere"),
    ("<tool>x", &[1, 315, 310], "<tool>x"),
    ("<unk>", &[1, 0], ""),
    ("trailing ", &[1, 260, 304, 287, 295, 298, 283, 259], "trailing "),
    ("a\nb", &[1, 263, 13, 288], "a\nb"),
];

#[test]
fn sentencepiece_token_ids_match_transformers() {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), test_writer::spm_tokenizer_gguf()).expect("write");
    let g = GgufFile::open(f.path()).expect("open");
    let tok = g.tokenizer().expect("tokenizer").expect("has a tokenizer");
    assert!(tok.add_bos);
    assert_eq!(tok.bos_id, Some(1));
    for (text, ids, decoded) in SPM_IDS {
        let got = tok.encode(text, true).expect("encode");
        assert_eq!(got, *ids, "ids of {text:?}");
        assert_eq!(
            tok.decode(&got, true).expect("decode"),
            *decoded,
            "decode of {text:?}"
        );
    }
}
