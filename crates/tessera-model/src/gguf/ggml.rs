//! ggml tensor types: their ids in a GGUF file, their block layout, and
//! dequantization to f32 bit-for-bit as gguf-py's `gguf.quants.dequantize` does it.

use crate::StorageDType;

/// The element types Tessera reads, as the message of `UnsupportedDType` lists them.
pub(super) const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// Largest block of any supported type, for stack buffers.
const MAX_BLOCK: usize = 32;

/// What a ggml type id in a tensor info means to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GgmlType {
    /// A type we dequantize.
    Supported(StorageDType),
    /// A real ggml type we do not read (k-quants, i-quants, integers, ...), by ggml's name.
    Unsupported(&'static str),
}

impl GgmlType {
    /// Decode a type id; `None` for ids ggml has never assigned (or has retired).
    pub(super) fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::{Supported as S, Unsupported as U};
        Some(match id {
            0 => S(StorageDType::F32),
            1 => S(StorageDType::F16),
            2 => S(StorageDType::Q4_0),
            3 => S(StorageDType::Q4_1),
            6 => U("Q5_0"),
            7 => U("Q5_1"),
            8 => S(StorageDType::Q8_0),
            9 => U("Q8_1"),
            10 => U("Q2_K"),
            11 => U("Q3_K"),
            12 => U("Q4_K"),
            13 => U("Q5_K"),
            14 => U("Q6_K"),
            15 => U("Q8_K"),
            16 => U("IQ2_XXS"),
            17 => U("IQ2_XS"),
            18 => U("IQ3_XXS"),
            19 => U("IQ1_S"),
            20 => U("IQ4_NL"),
            21 => U("IQ3_S"),
            22 => U("IQ2_S"),
            23 => U("IQ4_XS"),
            24 => U("I8"),
            25 => U("I16"),
            26 => U("I32"),
            27 => U("I64"),
            28 => U("F64"),
            29 => U("IQ1_M"),
            30 => S(StorageDType::BF16),
            34 => U("TQ1_0"),
            35 => U("TQ2_0"),
            39 => U("MXFP4"),
            _ => return None,
        })
    }
}

/// Elements per block (1 for plain float types).
pub(super) fn block_elems(d: StorageDType) -> usize {
    match d {
        StorageDType::F32 | StorageDType::F16 | StorageDType::BF16 => 1,
        StorageDType::Q8_0 | StorageDType::Q4_0 | StorageDType::Q4_1 => 32,
    }
}

/// Bytes per block.
pub(super) fn block_bytes(d: StorageDType) -> usize {
    match d {
        StorageDType::F32 => 4,
        StorageDType::F16 | StorageDType::BF16 => 2,
        // f16 scale + 32 x i8
        StorageDType::Q8_0 => 34,
        // f16 scale + 32 x 4-bit
        StorageDType::Q4_0 => 18,
        // f16 scale, f16 min + 32 x 4-bit
        StorageDType::Q4_1 => 20,
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize one block into `out[..block_elems]`.
///
/// The arithmetic mirrors gguf-py in f32 (`d * q`, `d * q + m`, no fused
/// multiply-add), so the values are identical, not merely close.
fn dequant_block(d: StorageDType, block: &[u8], out: &mut [f32]) {
    match d {
        StorageDType::F32 => out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        StorageDType::F16 => out[0] = f16_at(block, 0),
        // bf16 is the top half of an f32; shifting keeps NaN payloads as gguf-py does.
        StorageDType::BF16 => {
            out[0] = f32::from_bits(u32::from(u16::from_le_bytes([block[0], block[1]])) << 16)
        }
        StorageDType::Q8_0 => {
            let scale = f16_at(block, 0);
            for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                *o = (q as i8) as f32 * scale;
            }
        }
        StorageDType::Q4_0 => {
            let scale = f16_at(block, 0);
            // Byte j holds element j in its low nibble and element j + 16 in its high nibble.
            for (j, &q) in block[2..18].iter().enumerate() {
                out[j] = scale * ((q & 0x0f) as i32 - 8) as f32;
                out[j + 16] = scale * ((q >> 4) as i32 - 8) as f32;
            }
        }
        StorageDType::Q4_1 => {
            let scale = f16_at(block, 0);
            let min = f16_at(block, 2);
            for (j, &q) in block[4..20].iter().enumerate() {
                out[j] = scale * (q & 0x0f) as f32 + min;
                out[j + 16] = scale * (q >> 4) as f32 + min;
            }
        }
    }
}

/// Dequantize elements `c0..c1` of one row into `out` (`c1 - c0` values).
///
/// `row` holds the whole row, which starts on a block boundary (GGUF rows are
/// whole blocks), so only the blocks covering `c0..c1` are decoded.
pub(super) fn dequant_range(d: StorageDType, row: &[u8], c0: usize, c1: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), c1 - c0);
    let be = block_elems(d);
    let bb = block_bytes(d);
    if be == 1 {
        for (o, b) in out.iter_mut().zip(row[c0 * bb..c1 * bb].chunks_exact(bb)) {
            dequant_block(d, b, std::slice::from_mut(o));
        }
        return;
    }
    let mut buf = [0f32; MAX_BLOCK];
    let mut written = 0;
    for blk in c0 / be..c1.div_ceil(be) {
        let first = blk * be;
        dequant_block(d, &row[blk * bb..(blk + 1) * bb], &mut buf[..be]);
        // The part of this block inside c0..c1.
        let lo = c0.max(first) - first;
        let hi = c1.min(first + be) - first;
        out[written..written + hi - lo].copy_from_slice(&buf[lo..hi]);
        written += hi - lo;
    }
}
