//! `format: dummy`: seeded random weights for a named shape, generated on
//! demand, so benchmarks of 7B–70B shapes need no checkpoint file.
//!
//! Invariants:
//! - Every element is a pure function of `(seed, tensor name, row, column)`
//!   (a counter-based generator), so reads are deterministic whatever their
//!   order, and a `Rows`/`Cols` slice is exactly that part of the full tensor.
//! - Matrices lie exactly on the int8 grid of [`Int8Matrix::quantize`]: every
//!   group of [`INT8_GROUP`] inputs of a row is `q * s` with integer `|q| <= 127`,
//!   one `|q| == 127`, and a scale `s` with few mantissa bits. Quantizing them
//!   therefore gives back exactly the same values, so an `f32` and an `int8` run
//!   of one dummy model use identical weights and differ only in how the
//!   activations are treated (exact f32, W8A16 or W8A8). That makes CPU-vs-GPU
//!   comparisons meaningful.
//!
//! [`Int8Matrix::quantize`]: crate::Int8Matrix::quantize

use crate::{
    Checkpoint, HostTensor, ModelError, ModelSpec, Result, RopeScaling, Slice, StorageDType,
    TensorInfo, TensorSource, INT8_GROUP,
};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Shapes `open` knows. `tiny` and `small` are for tests; [`DEEP_SHAPE`] is
/// synthetic; the others have the published shapes of the models they are
/// named after.
pub const DUMMY_SHAPES: &[&str] = &[
    "tiny",
    "small",
    "llama2-7b",
    "llama2-13b",
    "llama2-70b",
    "llama3-8b",
    DEEP_SHAPE,
];

/// Not a real model: Llama-2-70B's widths with 96 layers instead of 80, so that
/// its int8 weights (93.0e9 bytes with scales, 82.7B parameters) exceed an
/// 80 GB GPU (85.0e9 bytes) yet fit 128 GiB of host RAM, for the stage-3
/// streaming check "a model bigger than the GPU" (docs/offload.md). The
/// published dense Llama-style models near that size miss the window:
/// Llama-3-70B (79.4e9 bytes as int8) and Qwen2-72B (81.8e9) fit the GPU,
/// Qwen1.5-110B (125e9) leaves too little of the host.
pub const DEEP_SHAPE: &str = "llama2-70b-deep96";

/// The architecture spec of a named dummy shape.
///
/// EOS lists are empty on purpose: a random model would otherwise stop at a
/// random point, and benchmarks need a fixed number of generated tokens.
pub fn spec(shape: &str) -> Result<ModelSpec> {
    // (vocab, hidden, intermediate, layers, heads, kv_heads, rope_theta, context, bos)
    let (vocab, hidden, inter, layers, heads, kv, theta, ctx, bos) = match shape {
        "tiny" => (1024, 256, 688, 4, 8, 4, 10_000.0, 2048, 1),
        "small" => (32_000, 1024, 2816, 8, 16, 8, 10_000.0, 4096, 1),
        "llama2-7b" => (32_000, 4096, 11_008, 32, 32, 32, 10_000.0, 4096, 1),
        "llama2-13b" => (32_000, 5120, 13_824, 40, 40, 40, 10_000.0, 4096, 1),
        "llama2-70b" => (32_000, 8192, 28_672, 80, 64, 8, 10_000.0, 4096, 1),
        "llama3-8b" => (128_256, 4096, 14_336, 32, 32, 8, 500_000.0, 8192, 128_000),
        DEEP_SHAPE => (32_000, 8192, 28_672, 96, 64, 8, 10_000.0, 4096, 1),
        other => {
            return Err(ModelError::format(
                format!("dummy:{other}"),
                format!(
                    "unknown dummy shape `{other}` (known: {})",
                    DUMMY_SHAPES.join(", ")
                ),
            ))
        }
    };
    Ok(ModelSpec {
        architecture: "LlamaForCausalLM".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: theta,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: ctx,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(bos),
        eos_token_ids: Vec::new(),
    })
}

/// Open a dummy checkpoint: the spec of `shape` and a source generating
/// seeded weights on demand. There is no tokenizer.
pub fn open(shape: &str, seed: u64) -> Result<Checkpoint> {
    let spec = spec(shape)?;
    let path = PathBuf::from(format!("dummy:{shape}:{seed}"));
    let source = DummySource::new(path.clone(), &spec, seed);
    Ok(Checkpoint {
        path,
        spec,
        source: Box::new(source),
        tokenizer: None,
    })
}

/// Tensors of a Llama-family model under Hugging Face names, generated on read.
pub struct DummySource {
    path: PathBuf,
    seed: u64,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl DummySource {
    /// A source for every tensor `spec` needs.
    pub fn new(path: PathBuf, spec: &ModelSpec, seed: u64) -> Self {
        let (h, hd, inter) = (spec.hidden_size, spec.head_dim, spec.intermediate_size);
        let (qn, kvn) = (spec.num_heads * hd, spec.num_kv_heads * hd);
        let mut shapes = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>| {
            shapes.insert(name, shape);
        };
        add("model.embed_tokens.weight".into(), vec![spec.vocab_size, h]);
        if !spec.tie_word_embeddings {
            add("lm_head.weight".into(), vec![spec.vocab_size, h]);
        }
        add("model.norm.weight".into(), vec![h]);
        for l in 0..spec.num_layers {
            let p = format!("model.layers.{l}");
            add(format!("{p}.input_layernorm.weight"), vec![h]);
            add(format!("{p}.post_attention_layernorm.weight"), vec![h]);
            add(format!("{p}.self_attn.q_proj.weight"), vec![qn, h]);
            add(format!("{p}.self_attn.k_proj.weight"), vec![kvn, h]);
            add(format!("{p}.self_attn.v_proj.weight"), vec![kvn, h]);
            add(format!("{p}.self_attn.o_proj.weight"), vec![h, qn]);
            add(format!("{p}.mlp.gate_proj.weight"), vec![inter, h]);
            add(format!("{p}.mlp.up_proj.weight"), vec![inter, h]);
            add(format!("{p}.mlp.down_proj.weight"), vec![h, inter]);
            if spec.attention_bias {
                add(format!("{p}.self_attn.q_proj.bias"), vec![qn]);
                add(format!("{p}.self_attn.k_proj.bias"), vec![kvn]);
                add(format!("{p}.self_attn.v_proj.bias"), vec![kvn]);
            }
        }
        DummySource { path, seed, shapes }
    }

    /// The per-tensor key: a hash of the name mixed with the seed.
    fn key(&self, name: &str) -> u64 {
        // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        mix(h ^ mix(self.seed.wrapping_add(GAMMA)))
    }
}

impl TensorSource for DummySource {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.shapes.get(name).map(|s| TensorInfo {
            shape: s.clone(),
            dtype: StorageDType::F32,
        })
    }

    fn read(&self, name: &str, slice: &Slice) -> Result<HostTensor> {
        let (_, out_shape) = self.shapes_of(name, slice)?;
        let mut data = vec![0f32; out_shape.iter().product()];
        self.fill(name, slice, &mut data)?;
        Ok(HostTensor::new(out_shape, data))
    }

    fn read_into(&self, name: &str, slice: &Slice, out: &mut [f32]) -> Result<()> {
        self.fill(name, slice, out)
    }
}

impl DummySource {
    /// The full shape of `name` and the shape of its `slice`.
    fn shapes_of(&self, name: &str, slice: &Slice) -> Result<(&[usize], Vec<usize>)> {
        let shape = self
            .shapes
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let out_shape = slice
            .sliced_shape(shape)
            .ok_or_else(|| ModelError::BadSlice {
                tensor: name.to_string(),
                slice: slice.clone(),
                shape: shape.clone(),
            })?;
        Ok((shape, out_shape))
    }

    /// Generate `slice` of `name` into `out`, which holds exactly its elements.
    fn fill(&self, name: &str, slice: &Slice, out: &mut [f32]) -> Result<()> {
        let (shape, out_shape) = self.shapes_of(name, slice)?;
        let n: usize = out_shape.iter().product();
        if out.len() != n {
            return Err(ModelError::OutputSize {
                tensor: name.to_string(),
                slice: slice.clone(),
                found: n,
                expected: out.len(),
            });
        }
        let key = self.key(name);
        if shape.len() == 1 {
            let start = match slice {
                Slice::Rows(r) => r.start,
                _ => 0,
            };
            for (i, o) in out.iter_mut().enumerate() {
                *o = norm_value(key, start + i);
            }
            return Ok(());
        }
        let cols = shape[1];
        let (first_row, c) = match slice {
            Slice::Rows(r) => (r.start, 0..cols),
            Slice::Full => (0, 0..cols),
            Slice::Cols(c) => (0, c.clone()),
        };
        if !c.is_empty() {
            // Rows are independent, so generate them in parallel.
            out.par_chunks_mut(c.len())
                .enumerate()
                .for_each(|(i, row)| {
                    fill_row(key, first_row + i, cols, c.start, row);
                });
        }
        Ok(())
    }
}

/// Weyl increment of splitmix64.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finalizer: a cheap, well-mixed 64-bit hash.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A norm weight near 1 (`1 + k/64`, `|k| <= 4`): exact in f32, and not all
/// equal, so a wrong index shows up in tests.
fn norm_value(key: u64, i: usize) -> f32 {
    let k = (mix(key.wrapping_add((i as u64 + 1).wrapping_mul(GAMMA))) % 9) as f32 - 4.0;
    1.0 + k / 64.0
}

/// Integer weight of element `index` (row-major) before scaling: the sum of
/// four 16-bit uniforms (Irwin–Hall, close to a normal) mapped to `-127..=127`.
/// Its standard deviation is about 36.7.
#[inline(always)]
fn q_value(key: u64, index: u64) -> f32 {
    let r = mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)));
    let s = ((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) as i32;
    // s is in 0..=4*65535; centre it and scale so the extremes map to +-127,
    // rounding half away from zero in integers (f32::round is a libm call
    // on baseline x86-64, and this runs for every weight). |t| < 2^25, so
    // i32 suffices, and i32 division by a constant vectorizes where i64's does not.
    let t = (s - 131_070) * 127;
    let half = if t >= 0 { 65_535 } else { -65_535 };
    ((t + half) / 131_070) as f32
}

/// Write columns `c0..c0+out.len()` of row `r` of a `[_, cols]` matrix, with
/// the widest vector unit the CPU has: the generator is 64-bit integer math,
/// about 4x faster in AVX-512 lanes than in baseline x86-64 code, and a 100 GB
/// shape has 90e9 weights. Every path computes the same values.
fn fill_row(key: u64, r: usize, cols: usize, c0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("avx512bw") {
            // SAFETY: the CPU has the features `fill_row_avx512` is compiled for.
            return unsafe { x86::fill_row_avx512(key, r, cols, c0, out) };
        }
        if has!("avx2") {
            // SAFETY: the CPU has avx2.
            return unsafe { x86::fill_row_avx2(key, r, cols, c0, out) };
        }
    }
    fill_row_with(key, r, cols, c0, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// # Safety
    /// The CPU must have avx512f, avx512dq, avx512vl and avx512bw.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
    pub(super) unsafe fn fill_row_avx512(
        key: u64,
        r: usize,
        cols: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        super::fill_row_with(key, r, cols, c0, out)
    }

    /// # Safety
    /// The CPU must have avx2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill_row_avx2(
        key: u64,
        r: usize,
        cols: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        super::fill_row_with(key, r, cols, c0, out)
    }
}

/// The generator of [`fill_row`], inlined into each `#[target_feature]` entry
/// point so it compiles with that instruction set.
#[inline(always)]
fn fill_row_with(key: u64, r: usize, cols: usize, c0: usize, out: &mut [f32]) {
    let c1 = c0 + out.len();
    let gpr = cols.div_ceil(INT8_GROUP);
    let row_start = (r * cols) as u64;
    let mut g = c0 / INT8_GROUP;
    while g * INT8_GROUP < c1 {
        let (g0, g1) = (g * INT8_GROUP, ((g + 1) * INT8_GROUP).min(cols));
        let gkey = mix(key ^ mix((r * gpr + g) as u64 ^ 0x5851_f42d_4c95_7f2d));
        // Scale m * 2^-18 with m in 112..=144: at most 8 significant bits, so
        // 127 * s and (127 * s) / 127 are exact and quantization round-trips.
        let m = 112 + (gkey >> 40) % 33;
        let scale = m as f32 / 262_144.0;
        let (lo, hi) = (g0.max(c0), g1.min(c1));
        // A loop without branches (it vectorizes), then the forced element.
        for (c, o) in (lo..hi).zip(&mut out[lo - c0..hi - c0]) {
            *o = q_value(key, row_start + c as u64) * scale;
        }
        // One element of the group carries |q| = 127, so the group's max is 127 * s.
        let forced = g0 + (gkey % (g1 - g0) as u64) as usize;
        if (lo..hi).contains(&forced) {
            let forced_q = if gkey & (1 << 20) != 0 { 127.0 } else { -127.0 };
            out[forced - c0] = forced_q * scale;
        }
        g += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Int8Matrix;

    #[test]
    fn every_shape_has_a_valid_spec() {
        for s in DUMMY_SHAPES {
            let spec = spec(s).unwrap();
            spec.validate(Path::new(s)).unwrap();
        }
        assert!(spec("llama9-1t").is_err());
    }

    #[test]
    fn reads_are_deterministic_and_slices_match_the_full_tensor() {
        let ck = open("tiny", 7).unwrap();
        let name = "model.layers.1.mlp.down_proj.weight"; // [256, 688]: ragged last group
        let full = ck.source.read(name, &Slice::Full).unwrap();
        assert_eq!(full.shape, vec![256, 688]);
        assert_eq!(
            full,
            open("tiny", 7)
                .unwrap()
                .source
                .read(name, &Slice::Full)
                .unwrap()
        );
        assert_ne!(
            full,
            open("tiny", 8)
                .unwrap()
                .source
                .read(name, &Slice::Full)
                .unwrap()
        );
        let rows = ck.source.read(name, &Slice::Rows(3..10)).unwrap();
        assert_eq!(rows.data, full.data[3 * 688..10 * 688]);
        let cols = ck.source.read(name, &Slice::Cols(100..300)).unwrap();
        for r in 0..256 {
            assert_eq!(
                cols.data[r * 200..(r + 1) * 200],
                full.data[r * 688 + 100..r * 688 + 300]
            );
        }
        let norm = ck.source.read("model.norm.weight", &Slice::Full).unwrap();
        let part = ck
            .source
            .read("model.norm.weight", &Slice::Rows(5..9))
            .unwrap();
        assert_eq!(part.data, norm.data[5..9]);
        assert!(norm.data.iter().all(|v| (0.9..1.1).contains(v)));
        assert!(ck.source.read(name, &Slice::Cols(0..689)).is_err());
        assert!(ck.source.read("nope", &Slice::Full).is_err());
    }

    #[test]
    fn matrices_are_exactly_on_the_int8_grid_with_std_near_0_02() {
        let ck = open("tiny", 1).unwrap();
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.mlp.down_proj.weight",
        ] {
            let t = ck.source.read(name, &Slice::Full).unwrap();
            let q = Int8Matrix::quantize(&t, INT8_GROUP);
            let mut row = vec![0f32; q.cols];
            for r in 0..q.rows {
                q.dequantize_row(r, &mut row);
                assert_eq!(row, t.data[r * q.cols..(r + 1) * q.cols], "{name} row {r}");
            }
            let n = t.data.len() as f64;
            let mean = t.data.iter().map(|&v| v as f64).sum::<f64>() / n;
            let std = (t
                .data
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / n)
                .sqrt();
            assert!(
                mean.abs() < 1e-3 && (0.012..0.028).contains(&std),
                "{name}: mean {mean} std {std}"
            );
        }
    }

    /// Bytes of an int8 `[rows, cols]` matrix: one per value, plus one f32
    /// scale per [`INT8_GROUP`] inputs of each row.
    fn int8_bytes(rows: usize, cols: usize) -> usize {
        rows * cols + rows * cols.div_ceil(INT8_GROUP) * 4
    }

    #[test]
    fn the_deep_shape_exceeds_an_80gb_gpu_and_fits_128gib_of_host_ram() {
        // The formula is the quantizer's layout (tiny's down_proj has a ragged last group).
        let tiny = open("tiny", 0).unwrap();
        for name in [
            "model.layers.0.mlp.down_proj.weight",
            "model.embed_tokens.weight",
        ] {
            let q =
                Int8Matrix::quantize(&tiny.source.read(name, &Slice::Full).unwrap(), INT8_GROUP);
            assert_eq!(
                q.q.len() + 4 * q.scales.len(),
                int8_bytes(q.rows, q.cols),
                "{name}"
            );
        }
        let ck = open(DEEP_SHAPE, 0).unwrap();
        let deep = &ck.spec;
        let real = spec("llama2-70b").unwrap();
        assert_eq!(deep.num_layers, 96);
        assert_eq!(
            ModelSpec {
                num_layers: real.num_layers,
                ..deep.clone()
            },
            real,
            "everything but the layer count is Llama-2-70B's"
        );
        let (mut params, mut bytes) = (0usize, 0usize);
        for name in ck.source.names() {
            let shape = ck.source.info(&name).unwrap().shape;
            params += shape.iter().product::<usize>();
            bytes += match shape[..] {
                [rows, cols] => int8_bytes(rows, cols),
                [n] => 4 * n, // norms stay f32
                _ => unreachable!("{name}: {shape:?}"),
            };
        }
        // 96 layers of 855,638,016 weights (962,592,768 bytes as int8), embedding
        // and LM head of 262,144,000 each, 193 norms of 8192.
        assert_eq!(params, 82_667_118_592);
        assert_eq!(bytes, 93_005_053_952);
        // An H100 80GB has about 85.0e9 bytes; 128 GiB of host RAM is 137.4e9.
        assert!(bytes as f64 > 85.0e9 && (bytes as f64) < 110e9, "{bytes}");
    }

    #[test]
    fn generated_values_do_not_change_between_builds() {
        // FNV-1a of the f32 bits, recorded before the generator was vectorized:
        // a faster generator must give the same weights.
        for (shape, seed, name, want) in [
            (
                "tiny",
                7,
                "model.layers.1.mlp.down_proj.weight",
                0xb8ec_c508_35b3_7562u64,
            ),
            (
                "tiny",
                7,
                "model.embed_tokens.weight",
                0x8bac_3b53_d0b8_9060,
            ),
            (
                "small",
                3,
                "model.layers.5.self_attn.q_proj.weight",
                0x12a4_d756_b8b0_4915,
            ),
            (
                "tiny",
                7,
                "model.layers.2.input_layernorm.weight",
                0x7fff_c26e_9e9a_1b83,
            ),
        ] {
            let t = open(shape, seed)
                .unwrap()
                .source
                .read(name, &Slice::Full)
                .unwrap();
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in t.data.iter().flat_map(|v| v.to_bits().to_le_bytes()) {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
            assert_eq!(h, want, "dummy:{shape}:{seed} {name}");
        }
    }

    #[test]
    fn every_instruction_set_generates_the_same_values() {
        // Columns 50..950 of 1000: groups cut at both ends, a ragged last group.
        let (key, cols) = (0x1234_5678_9abc_def0, 1000);
        let mut want = vec![0f32; 900];
        fill_row_with(key, 3, cols, 50, &mut want);
        let mut got = vec![0f32; 900];
        fill_row(key, 3, cols, 50, &mut got);
        assert_eq!(got, want);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("avx512bw") {
                got.fill(0.0);
                // SAFETY: the CPU has the features (checked just above).
                unsafe { x86::fill_row_avx512(key, 3, cols, 50, &mut got) };
                assert_eq!(got, want, "avx512");
            } else {
                eprintln!("avx512 path skipped: not on this CPU");
            }
            if has!("avx2") {
                got.fill(0.0);
                // SAFETY: the CPU has avx2.
                unsafe { x86::fill_row_avx2(key, 3, cols, 50, &mut got) };
                assert_eq!(got, want, "avx2");
            } else {
                eprintln!("avx2 path skipped: not on this CPU");
            }
        }
    }

    #[test]
    fn read_into_fills_exactly_the_slice_and_checks_its_length() {
        let ck = open("tiny", 7).unwrap();
        let name = "model.layers.1.self_attn.k_proj.weight"; // [128, 256]
        let full = ck.source.read(name, &Slice::Full).unwrap();
        let mut part = vec![0f32; 5 * 256];
        ck.source
            .read_into(name, &Slice::Rows(3..8), &mut part)
            .unwrap();
        assert_eq!(part, full.data[3 * 256..8 * 256]);
        let err = ck
            .source
            .read_into(name, &Slice::Rows(3..9), &mut part)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && err.contains("1536") && err.contains("1280"),
            "{err}"
        );
    }

    #[test]
    fn every_tensor_the_spec_needs_is_listed() {
        let ck = open("llama3-8b", 0).unwrap();
        let names = ck.source.names();
        assert_eq!(names.len(), 2 + 1 + 32 * 9);
        let info = ck
            .source
            .info("model.layers.31.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(info.shape, vec![1024, 4096]);
    }
}
