//! The GGUF header, metadata and tensor-info table, read through a cursor that
//! checks every length and count against the bytes that are actually left, so a
//! hostile file can neither make us read out of bounds nor allocate more than a
//! small multiple of its own size.
//!
//! Errors here are plain strings; the caller adds the file path.

use super::meta::{MetaArray, MetaValue, Metadata};

/// "GGUF" as the first four bytes.
pub(super) const MAGIC: [u8; 4] = *b"GGUF";
/// ggml's limit on tensor dimensions.
pub(super) const MAX_DIMS: usize = 4;
/// Real files nest arrays at most once; the limit keeps recursion off the stack's edge.
const MAX_ARRAY_DEPTH: usize = 4;

/// Smallest encodings, used to reject counts the remaining bytes cannot hold
/// before anything is allocated for them.
const MIN_KV_BYTES: u64 = 8 + 4 + 1; // key length, value type, one byte of value
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8; // name length, n_dims, one dim, type, offset
const MIN_ARRAY_BYTES: u64 = 4 + 8; // element type, count

/// One row of the tensor-info table, as stored.
#[derive(Debug)]
pub(super) struct RawTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying dimension.
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Relative to the start of the data section.
    pub offset: u64,
}

/// Everything before the data section.
#[derive(Debug)]
pub(super) struct RawHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<RawTensor>,
    /// Where the tensor-info table ends (the data section starts at the next alignment boundary).
    pub table_end: usize,
}

/// A little-endian reader over the mapped file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "{}: needs {n} bytes at offset 0x{:x}, but the file ends at 0x{:x} (truncated or corrupt)",
                what(),
                self.pos,
                self.buf.len()
            ));
        }
        // n <= remaining <= buf.len(), so it fits in usize.
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], String> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A `u64` length followed by that many bytes of UTF-8.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, String> {
        let at = self.pos;
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() {
            return Err(format!(
                "{}: string length {len} (at offset 0x{at:x}) runs past the end of the file (size {})",
                what(),
                self.buf.len()
            ));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("{}: not valid UTF-8 ({e})", what()))
    }

    /// Check that `count` elements of at least `min_bytes` each can fit in what is left.
    fn check_count(
        &self,
        count: u64,
        min_bytes: u64,
        what: &dyn Fn() -> String,
    ) -> Result<usize, String> {
        let fits = count
            .checked_mul(min_bytes)
            .is_some_and(|n| n <= self.remaining());
        if !fits {
            return Err(format!(
                "{}: count {count} at offset 0x{:x} is larger than the rest of the file (size {}) can hold",
                what(),
                self.pos,
                self.buf.len()
            ));
        }
        Ok(count as usize)
    }
}

/// Parse the header, metadata and tensor table of a GGUF file.
pub(super) fn parse_header(buf: &[u8]) -> Result<RawHeader, String> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file: it starts with bytes {:02x} {:02x} {:02x} {:02x} ({:?}), not \"GGUF\"",
            magic[0],
            magic[1],
            magic[2],
            magic[3],
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = c.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (only versions 2 and 3); re-convert the model".into()),
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(format!(
                "GGUF version {v} looks like a big-endian file (version {} byte-swapped); only little-endian GGUF is supported",
                v.swap_bytes()
            ))
        }
        v => return Err(format!("unknown GGUF version {v} (supported: 2, 3)")),
    }
    let tensor_count = c.u64(&|| "tensor count".into())?;
    let kv_count = c.u64(&|| "metadata count".into())?;
    // Counts are checked against the bytes left before reserving anything.
    let kv_count = c.check_count(kv_count, MIN_KV_BYTES, &|| "metadata count".into())?;

    let mut metadata = Metadata::default();
    for i in 0..kv_count {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let value_type = c.u32(&|| format!("type of metadata `{key}`"))?;
        let value = read_value(&mut c, value_type, 0, &|| format!("metadata `{key}`"))?;
        if !metadata.insert(key.clone(), value) {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }

    let tensor_count = c.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, &|| {
        "tensor count".into()
    })?;
    let mut tensors = Vec::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&|| format!("tensor `{name}`: number of dimensions"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(format!(
                "tensor `{name}`: has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("tensor `{name}`: dimension {d}"))?);
        }
        let type_id = c.u32(&|| format!("tensor `{name}`: type"))?;
        let offset = c.u64(&|| format!("tensor `{name}`: data offset"))?;
        tensors.push(RawTensor {
            name,
            dims,
            type_id,
            offset,
        });
    }
    Ok(RawHeader {
        version,
        metadata,
        tensors,
        table_end: c.pos,
    })
}

/// Read one value of GGUF type `ty`. `depth` counts enclosing arrays.
fn read_value(
    c: &mut Cursor,
    ty: u32,
    depth: usize,
    what: &dyn Fn() -> String,
) -> Result<MetaValue, String> {
    macro_rules! scalar {
        ($variant:ident, $t:ty) => {
            MetaValue::$variant(<$t>::from_le_bytes(c.array(what)?))
        };
    }
    Ok(match ty {
        0 => scalar!(U8, u8),
        1 => scalar!(I8, i8),
        2 => scalar!(U16, u16),
        3 => scalar!(I16, i16),
        4 => scalar!(U32, u32),
        5 => scalar!(I32, i32),
        6 => scalar!(F32, f32),
        7 => MetaValue::Bool(c.array::<1>(what)?[0] != 0),
        8 => MetaValue::Str(c.string(what)?),
        9 => MetaValue::Array(read_array(c, depth, what)?),
        10 => scalar!(U64, u64),
        11 => scalar!(I64, i64),
        12 => scalar!(F64, f64),
        other => return Err(format!("{}: unknown value type {other}", what())),
    })
}

/// Read an array: element type, count, elements.
fn read_array(
    c: &mut Cursor,
    depth: usize,
    what: &dyn Fn() -> String,
) -> Result<MetaArray, String> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(format!(
            "{}: arrays nested more than {MAX_ARRAY_DEPTH} deep",
            what()
        ));
    }
    let elem_type = c.u32(&|| format!("{}: array element type", what()))?;
    let count = c.u64(&|| format!("{}: array length", what()))?;

    macro_rules! fixed {
        ($variant:ident, $t:ty) => {{
            const SIZE: usize = std::mem::size_of::<$t>();
            let n = c.check_count(count, SIZE as u64, &|| format!("{}: array length", what()))?;
            let bytes = c.take((n * SIZE) as u64, what)?;
            MetaArray::$variant(
                bytes
                    .chunks_exact(SIZE)
                    .map(|b| {
                        let mut a = [0u8; SIZE];
                        a.copy_from_slice(b);
                        <$t>::from_le_bytes(a)
                    })
                    .collect(),
            )
        }};
    }
    Ok(match elem_type {
        0 => fixed!(U8, u8),
        1 => fixed!(I8, i8),
        2 => fixed!(U16, u16),
        3 => fixed!(I16, i16),
        4 => fixed!(U32, u32),
        5 => fixed!(I32, i32),
        6 => fixed!(F32, f32),
        7 => {
            let n = c.check_count(count, 1, &|| format!("{}: array length", what()))?;
            MetaArray::Bool(c.take(n as u64, what)?.iter().map(|&b| b != 0).collect())
        }
        8 => {
            let n = c.check_count(count, 8, &|| format!("{}: array length", what()))?;
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&|| format!("{}[{i}]", what()))?);
            }
            MetaArray::Str(v)
        }
        9 => {
            let n = c.check_count(count, MIN_ARRAY_BYTES, &|| {
                format!("{}: array length", what())
            })?;
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_array(c, depth + 1, &|| format!("{}[{i}]", what()))?);
            }
            MetaArray::Array(v)
        }
        10 => fixed!(U64, u64),
        11 => fixed!(I64, i64),
        12 => fixed!(F64, f64),
        other => return Err(format!("{}: unknown array element type {other}", what())),
    })
}
