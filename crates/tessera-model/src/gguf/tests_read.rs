//! Reading tensors: dequantization, slices, names and layout, the Q/K
//! permutation, the spec and the tokenizer's error cases.

use super::test_writer::*;
use super::GgufFile;
use crate::{ModelError, RopeScaling, Slice, StorageDType, TensorSource};
use half::{bf16, f16};

fn open(w: &Writer) -> (tempfile::NamedTempFile, GgufFile) {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), w.build()).expect("write temp file");
    let g = GgufFile::open(f.path()).expect("open test file");
    (f, g)
}

/// Deterministic pseudo-random bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

/// `n` elements of type `ty`, with finite scales so every value compares equal to itself.
fn random_data(ty: u32, n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let f16b = |x: f32| f16::from_f32(x).to_le_bytes();
    match ty {
        GGML_F32 => (0..n).for_each(|_| out.extend_from_slice(&rng.unit().to_le_bytes())),
        GGML_F16 => (0..n).for_each(|_| out.extend_from_slice(&f16b(rng.unit()))),
        GGML_BF16 => {
            (0..n).for_each(|_| out.extend_from_slice(&bf16::from_f32(rng.unit()).to_le_bytes()))
        }
        GGML_Q8_0 | GGML_Q4_0 | GGML_Q4_1 => {
            for _ in 0..n / 32 {
                out.extend_from_slice(&f16b(rng.unit() * 0.1));
                if ty == GGML_Q4_1 {
                    out.extend_from_slice(&f16b(rng.unit()));
                }
                let qbytes = if ty == GGML_Q8_0 { 32 } else { 16 };
                (0..qbytes).for_each(|_| out.push(rng.next() as u8));
            }
        }
        _ => unreachable!("test type"),
    }
    out
}

#[test]
fn dequantizes_known_blocks() {
    let d = f16::from_f32(0.5).to_le_bytes();
    let m = f16::from_f32(-1.0).to_le_bytes();
    let nibbles: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
    let q4_0 = [&d[..], &nibbles].concat();
    let q4_1 = [&d[..], &m[..], &nibbles].concat();
    let q8_0 = [
        &d[..],
        &(0..32).map(|i| (i as i8 - 16) as u8).collect::<Vec<_>>(),
    ]
    .concat();
    let w = Writer::new()
        .tensor("q4_0", &[32], GGML_Q4_0, q4_0)
        .tensor("q4_1", &[32], GGML_Q4_1, q4_1)
        .tensor("q8_0", &[32], GGML_Q8_0, q8_0)
        .tensor(
            "f16",
            &[2],
            GGML_F16,
            [
                f16::from_f32(1.5).to_le_bytes(),
                f16::from_f32(-2.0).to_le_bytes(),
            ]
            .concat(),
        )
        .tensor(
            "bf16",
            &[2],
            GGML_BF16,
            [
                bf16::from_f32(3.0).to_le_bytes(),
                bf16::from_f32(-0.25).to_le_bytes(),
            ]
            .concat(),
        );
    let (_f, g) = open(&w);
    let read = |n: &str| g.read(n, &Slice::Full).expect("read").data;
    // Low nibbles are elements 0..16, high nibbles 16..32.
    let q = read("q4_0");
    for j in 0..16 {
        assert_eq!(q[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(q[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
    }
    let q = read("q4_1");
    for j in 0..16 {
        assert_eq!(q[j], j as f32 * 0.5 - 1.0);
        assert_eq!(q[j + 16], (15 - j) as f32 * 0.5 - 1.0);
    }
    assert_eq!(
        read("q8_0"),
        (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect::<Vec<_>>()
    );
    assert_eq!(read("f16"), vec![1.5, -2.0]);
    assert_eq!(read("bf16"), vec![3.0, -0.25]);
    assert_eq!(g.info("q4_1").map(|i| i.dtype), Some(StorageDType::Q4_1));
}

#[test]
fn slices_equal_parts_of_full_read() {
    let (rows, cols) = (5usize, 96usize);
    let mut rng = Rng(7);
    let mut w = Writer::new();
    for (name, ty) in [
        ("f32", GGML_F32),
        ("f16", GGML_F16),
        ("bf16", GGML_BF16),
        ("q8_0", GGML_Q8_0),
        ("q4_0", GGML_Q4_0),
        ("q4_1", GGML_Q4_1),
    ] {
        w = w.tensor(
            name,
            &[cols as u64, rows as u64],
            ty,
            random_data(ty, rows * cols, &mut rng),
        );
    }
    let (_f, g) = open(&w);
    for name in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"] {
        let full = g.read(name, &Slice::Full).expect("full");
        assert_eq!(full.shape, vec![rows, cols]);
        assert!(full.data.iter().all(|v| v.is_finite()));
        for r in [0..5, 1..4, 2..2, 4..5] {
            let part = g.read(name, &Slice::Rows(r.clone())).expect("rows");
            assert_eq!(part.shape, vec![r.len(), cols]);
            assert_eq!(
                part.data,
                full.data[r.start * cols..r.end * cols],
                "{name} rows {r:?}"
            );
        }
        for c in [0..96, 5..37, 31..33, 32..64, 64..96, 95..96, 10..10] {
            let part = g.read(name, &Slice::Cols(c.clone())).expect("cols");
            assert_eq!(part.shape, vec![rows, c.len()]);
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| full.data[r * cols + c.start..r * cols + c.end].to_vec())
                .collect();
            assert_eq!(part.data, want, "{name} cols {c:?}");
        }
    }
}

#[test]
fn one_d_rows_select_elements() {
    let mut rng = Rng(3);
    let w = Writer::new().tensor(
        "output_norm.weight",
        &[64],
        GGML_Q8_0,
        random_data(GGML_Q8_0, 64, &mut rng),
    );
    let (_f, g) = open(&w);
    let full = g.read("model.norm.weight", &Slice::Full).expect("full");
    let part = g
        .read("model.norm.weight", &Slice::Rows(20..40))
        .expect("rows");
    assert_eq!(part.shape, vec![20]);
    assert_eq!(part.data, full.data[20..40]);
    assert!(matches!(
        g.read("model.norm.weight", &Slice::Cols(0..1)),
        Err(ModelError::BadSlice { .. })
    ));
    assert!(matches!(
        g.read("model.norm.weight", &Slice::Rows(60..65)),
        Err(ModelError::BadSlice { .. })
    ));
    assert!(matches!(
        g.read("nope", &Slice::Full),
        Err(ModelError::MissingTensor { .. })
    ));
}

#[test]
fn names_and_shapes_follow_hugging_face() {
    let w = Writer::new()
        .tensor("token_embd.weight", &[4, 10], GGML_F32, vec![0; 160])
        .tensor("blk.2.ffn_up.weight", &[4, 6], GGML_F32, vec![0; 96])
        .tensor("rope_freqs.weight", &[2], GGML_F32, vec![0; 8]);
    let (_f, g) = open(&w);
    assert_eq!(
        g.names(),
        vec![
            "model.embed_tokens.weight",
            "model.layers.2.mlp.up_proj.weight",
            "rope_freqs.weight"
        ]
    );
    assert_eq!(
        g.info("model.layers.2.mlp.up_proj.weight").map(|i| i.shape),
        Some(vec![6, 4])
    );
    assert_eq!(
        g.gguf_name("model.embed_tokens.weight"),
        Some("token_embd.weight")
    );
    // Row-major with ggml's fastest dimension last: element (r, c) is stored at r * 4 + c.
    let data: Vec<u8> = (0..24).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let (_f2, g2) = open(&Writer::new().tensor("blk.0.ffn_up.weight", &[4, 6], GGML_F32, data));
    let t = g2
        .read("model.layers.0.mlp.up_proj.weight", &Slice::Full)
        .expect("read");
    assert_eq!(t.data[4 * 2 + 3], 11.0);
}

/// A Llama-shaped file whose Q/K rows hold their GGUF row index.
fn rope_file(arch: &str, ty: u32) -> Writer {
    let (cols, heads, kv_heads, hd) = (32u64, 2u64, 1u64, 4u64);
    let rows_data = |rows: u64| -> Vec<u8> {
        match ty {
            GGML_F32 => (0..rows * cols)
                .flat_map(|i| ((i / cols) as f32).to_le_bytes())
                .collect(),
            // One Q8_0 block per row, scale 1, every value the row index.
            _ => (0..rows)
                .flat_map(|r| [&f16::from_f32(1.0).to_le_bytes()[..], &[r as u8; 32]].concat())
                .collect(),
        }
    };
    let bias: Vec<u8> = (0..heads * hd)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    Writer::new()
        .kv("general.architecture", Val::Str(arch.into()))
        .kv(
            &format!("{arch}.attention.head_count"),
            Val::U32(heads as u32),
        )
        .kv(
            &format!("{arch}.attention.head_count_kv"),
            Val::U32(kv_heads as u32),
        )
        .tensor(
            "blk.0.attn_q.weight",
            &[cols, heads * hd],
            ty,
            rows_data(heads * hd),
        )
        .tensor(
            "blk.0.attn_k.weight",
            &[cols, kv_heads * hd],
            ty,
            rows_data(kv_heads * hd),
        )
        .tensor("blk.0.attn_q.bias", &[heads * hd], GGML_F32, bias)
}

fn first_col(t: &crate::HostTensor) -> Vec<f32> {
    let (rows, cols) = t.dims2();
    (0..rows).map(|r| t.data[r * cols]).collect()
}

#[test]
fn llama_q_and_k_rows_are_unpermuted() {
    for ty in [GGML_F32, GGML_Q8_0] {
        let (_f, g) = open(&rope_file("llama", ty));
        let q = g
            .read("model.layers.0.self_attn.q_proj.weight", &Slice::Full)
            .expect("q");
        // Per head of 4: HF rows 0,1 are GGUF rows 0,2 and HF rows 2,3 are GGUF rows 1,3.
        assert_eq!(first_col(&q), vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        let k = g
            .read("model.layers.0.self_attn.k_proj.weight", &Slice::Full)
            .expect("k");
        assert_eq!(first_col(&k), vec![0.0, 2.0, 1.0, 3.0]);
        let second_head = g
            .read("model.layers.0.self_attn.q_proj.weight", &Slice::Rows(4..8))
            .expect("rows");
        assert_eq!(second_head.data, q.data[4 * 32..]);
        let cols = g
            .read(
                "model.layers.0.self_attn.q_proj.weight",
                &Slice::Cols(8..16),
            )
            .expect("cols");
        assert_eq!(first_col(&cols), first_col(&q));
        let split_head = g.read("model.layers.0.self_attn.q_proj.weight", &Slice::Rows(2..6));
        assert!(matches!(split_head, Err(ModelError::BadSlice { .. })));
    }
    let (_f, g) = open(&rope_file("llama", GGML_F32));
    let b = g
        .read("model.layers.0.self_attn.q_proj.bias", &Slice::Full)
        .expect("bias");
    assert_eq!(b.data, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    let b = g
        .read("model.layers.0.self_attn.q_proj.bias", &Slice::Rows(4..8))
        .expect("bias rows");
    assert_eq!(b.data, vec![4.0, 6.0, 5.0, 7.0]);
}

#[test]
fn qwen2_q_and_k_are_left_alone() {
    let (_f, g) = open(&rope_file("qwen2", GGML_F32));
    let q = g
        .read("model.layers.0.self_attn.q_proj.weight", &Slice::Full)
        .expect("q");
    assert_eq!(first_col(&q), (0..8).map(|i| i as f32).collect::<Vec<_>>());
    assert!(g
        .read("model.layers.0.self_attn.q_proj.weight", &Slice::Rows(2..6))
        .is_ok());
}

#[test]
fn llama_q_without_head_count_is_an_error() {
    let mut w = rope_file("llama", GGML_F32);
    w.kvs.retain(|(k, _)| k != "llama.attention.head_count");
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), w.build()).expect("write");
    let msg = GgufFile::open(f.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("llama.attention.head_count"), "{msg}");
}

fn spec_file(arch: &str) -> Writer {
    let key = |k: &str| format!("{arch}.{k}");
    Writer::new()
        .kv("general.architecture", Val::Str(arch.into()))
        .kv(&key("embedding_length"), Val::U32(64))
        .kv(&key("feed_forward_length"), Val::U32(128))
        .kv(&key("block_count"), Val::U32(2))
        .kv(&key("attention.head_count"), Val::U32(4))
        .kv(&key("attention.head_count_kv"), Val::U32(2))
        .kv(&key("attention.layer_norm_rms_epsilon"), Val::F32(1e-6))
        .kv(&key("rope.freq_base"), Val::F32(500000.0))
        .kv(&key("context_length"), Val::U32(4096))
        .kv("tokenizer.ggml.bos_token_id", Val::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Val::U32(2))
        .tensor("token_embd.weight", &[64, 7], GGML_F32, vec![0; 64 * 7 * 4])
}

#[test]
fn spec_from_metadata() {
    let (_f, g) = open(&spec_file("llama"));
    let s = g.spec().expect("spec");
    assert_eq!(s.architecture, "LlamaForCausalLM");
    assert_eq!(
        (
            s.vocab_size,
            s.hidden_size,
            s.intermediate_size,
            s.num_layers
        ),
        (7, 64, 128, 2)
    );
    assert_eq!((s.num_heads, s.num_kv_heads, s.head_dim), (4, 2, 16));
    assert_eq!(
        (s.rms_norm_eps, s.rope_theta, s.max_position_embeddings),
        (1e-6, 500000.0, 4096)
    );
    assert_eq!(s.rope_scaling, RopeScaling::None);
    assert!(s.tie_word_embeddings && !s.attention_bias);
    assert_eq!(
        (s.bos_token_id, s.eos_token_ids.clone()),
        (Some(1), vec![2])
    );

    let w = spec_file("qwen2")
        .kv("qwen2.rope.scaling.type", Val::Str("linear".into()))
        .kv("qwen2.rope.scaling.factor", Val::F32(4.0))
        .kv("qwen2.attention.key_length", Val::U32(32))
        .tensor("output.weight", &[64, 7], GGML_F32, vec![0; 64 * 7 * 4])
        .tensor("blk.0.attn_q.bias", &[64], GGML_F32, vec![0; 256]);
    let (_f, g) = open(&w);
    let s = g.spec().expect("qwen2 spec");
    assert_eq!(s.architecture, "Qwen2ForCausalLM");
    assert_eq!(s.rope_scaling, RopeScaling::Linear { factor: 4.0 });
    assert_eq!(s.head_dim, 32);
    assert!(!s.tie_word_embeddings && s.attention_bias);
}

#[test]
fn spec_errors_name_the_problem() {
    let (_f, g) = open(&spec_file("gpt2"));
    assert!(
        matches!(g.spec(), Err(ModelError::UnknownArchitecture { arch, .. }) if arch == "gpt2")
    );
    let mut w = spec_file("llama");
    w.kvs.retain(|(k, _)| k != "llama.block_count");
    let (_f, g) = open(&w);
    assert!(g
        .spec()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("llama.block_count"));
    let (_f, g) = open(&spec_file("llama").kv("llama.rope.scaling.type", Val::Str("yarn".into())));
    assert!(g
        .spec()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("yarn"));
    let (_f, g) = open(&Writer::new());
    assert!(g.spec().is_err());
}

#[test]
fn tokenizer_absent_or_broken() {
    let (_f, g) = open(&spec_file("llama"));
    assert!(g.tokenizer().expect("no tokenizer is fine").is_none());
    let tokens = Val::StrArr(vec!["a".into(), "b".into()]);
    let w = Writer::new()
        .kv("tokenizer.ggml.model", Val::Str("bert".into()))
        .kv("tokenizer.ggml.tokens", tokens.clone());
    let (_f, g) = open(&w);
    let msg = g
        .tokenizer()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("`bert` is not supported"), "{msg}");
    let w = Writer::new()
        .kv("tokenizer.ggml.model", Val::Str("gpt2".into()))
        .kv("tokenizer.ggml.tokens", tokens.clone())
        .kv("tokenizer.ggml.token_type", Val::I32Arr(vec![1]))
        .kv("tokenizer.ggml.merges", Val::StrArr(vec![]));
    let (_f, g) = open(&w);
    let msg = g
        .tokenizer()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("token_type"), "{msg}");
    let w = Writer::new()
        .kv("tokenizer.ggml.model", Val::Str("gpt2".into()))
        .kv("tokenizer.ggml.tokens", tokens)
        .kv("tokenizer.ggml.merges", Val::StrArr(vec!["a b c".into()]));
    let (_f, g) = open(&w);
    let msg = g
        .tokenizer()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("merges`[0]"), "{msg}");
}

#[test]
fn all_metadata_types_parse() {
    use super::{MetaArray, MetaValue};
    let nested = {
        // [[1u16, 2u16], ["x"]]
        let mut p = T_ARRAY.to_le_bytes().to_vec();
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&[1, 0, 2, 0]);
        p.extend_from_slice(&T_STRING.to_le_bytes());
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&1u64.to_le_bytes());
        p.push(b'x');
        p
    };
    let w = Writer::new()
        .kv("u8", Val::Raw(0, vec![200]))
        .kv("i8", Val::Raw(1, vec![0xff]))
        .kv("u16", Val::Raw(2, 513u16.to_le_bytes().to_vec()))
        .kv("i16", Val::Raw(3, (-2i16).to_le_bytes().to_vec()))
        .kv("u32", Val::U32(7))
        .kv("i32", Val::I32(-7))
        .kv("f32", Val::F32(0.5))
        .kv("bool", Val::Bool(true))
        .kv("str", Val::Str("héllo".into()))
        .kv("u64", Val::Raw(10, u64::MAX.to_le_bytes().to_vec()))
        .kv("i64", Val::Raw(11, (-9i64).to_le_bytes().to_vec()))
        .kv("f64", Val::Raw(12, 0.25f64.to_le_bytes().to_vec()))
        .kv("nested", Val::Raw(T_ARRAY, nested));
    let (_f, g) = open(&w);
    let m = g.metadata();
    assert_eq!(m.len(), 13);
    assert_eq!(m.get("u8"), Some(&MetaValue::U8(200)));
    assert_eq!(m.get("i8"), Some(&MetaValue::I8(-1)));
    assert_eq!(m.get("u16"), Some(&MetaValue::U16(513)));
    assert_eq!(m.get("i16"), Some(&MetaValue::I16(-2)));
    assert_eq!(m.get("i32"), Some(&MetaValue::I32(-7)));
    assert_eq!(m.get("f32"), Some(&MetaValue::F32(0.5)));
    assert_eq!(m.get("bool"), Some(&MetaValue::Bool(true)));
    assert_eq!(m.get("str").and_then(MetaValue::as_str), Some("héllo"));
    assert_eq!(
        m.get("u64").and_then(MetaValue::as_int),
        Some(u64::MAX.into())
    );
    assert_eq!(m.get("i64"), Some(&MetaValue::I64(-9)));
    assert_eq!(m.get("f64"), Some(&MetaValue::F64(0.25)));
    let want = MetaArray::Array(vec![
        MetaArray::U16(vec![1, 2]),
        MetaArray::Str(vec!["x".into()]),
    ]);
    assert_eq!(m.get("nested"), Some(&MetaValue::Array(want)));
}
