//! GGUF metadata values and typed look-ups on them.

use std::collections::HashMap;

/// One metadata value, as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(MetaArray),
}

/// A metadata array. Elements are kept in typed vectors rather than one
/// `MetaValue` each, so memory stays proportional to the bytes in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    /// Arrays of arrays; each inner array may have its own element type.
    Array(Vec<MetaArray>),
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer elements widened to i64 (`None` for non-integer arrays or
    /// u64 values beyond i64).
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        fn widen<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            MetaArray::U8(v) => widen(v, |x| Some(x.into())),
            MetaArray::I8(v) => widen(v, |x| Some(x.into())),
            MetaArray::U16(v) => widen(v, |x| Some(x.into())),
            MetaArray::I16(v) => widen(v, |x| Some(x.into())),
            MetaArray::U32(v) => widen(v, |x| Some(x.into())),
            MetaArray::I32(v) => widen(v, |x| Some(x.into())),
            MetaArray::U64(v) => widen(v, |x| i64::try_from(x).ok()),
            MetaArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// Float elements widened to f64 (integers are not converted).
    pub fn as_f64s(&self) -> Option<Vec<f64>> {
        match self {
            MetaArray::F32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            MetaArray::F64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl MetaValue {
    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F32(_) => "float32",
            MetaValue::F64(_) => "float64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Any integer type, as i128 so every stored value fits.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(x) => x.into(),
            MetaValue::I8(x) => x.into(),
            MetaValue::U16(x) => x.into(),
            MetaValue::I16(x) => x.into(),
            MetaValue::U32(x) => x.into(),
            MetaValue::I32(x) => x.into(),
            MetaValue::U64(x) => x.into(),
            MetaValue::I64(x) => x.into(),
            _ => return None,
        })
    }

    /// A float (f32 or f64); integers are accepted too, since writers differ.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => Some(x.into()),
            MetaValue::F64(x) => Some(x),
            _ => self.as_int().map(|x| x as f64),
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// All key/value pairs of a file, in file order.
#[derive(Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Add a pair; returns false (and keeps the first) when the key is a duplicate.
    pub(super) fn insert(&mut self, key: String, value: MetaValue) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// All pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file has no metadata.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A string value, or an error string naming the key and what was found.
    pub(super) fn str(&self, key: &str) -> Result<Option<&str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| wrong_type(key, "a string", v)),
        }
    }

    /// A non-negative integer that fits in usize.
    pub(super) fn usize(&self, key: &str) -> Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_int() {
                Some(x) => usize::try_from(x)
                    .map(Some)
                    .map_err(|_| format!("metadata `{key}` = {x} is not a valid count or size")),
                None => Err(wrong_type(key, "an integer", v)),
            },
        }
    }

    /// A token id; a negative value (some writers use -1) means "none".
    pub(super) fn token_id(&self, key: &str) -> Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_int() {
                Some(x) if x < 0 => Ok(None),
                Some(x) => usize::try_from(x)
                    .map(Some)
                    .map_err(|_| format!("metadata `{key}` = {x} is not a valid token id")),
                None => Err(wrong_type(key, "an integer", v)),
            },
        }
    }

    /// A number, as f64.
    pub(super) fn f64(&self, key: &str) -> Result<Option<f64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| wrong_type(key, "a number", v)),
        }
    }

    /// A bool.
    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| wrong_type(key, "a bool", v)),
        }
    }

    /// An array of strings.
    pub(super) fn strs(&self, key: &str) -> Result<Option<&[String]>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(MetaArray::Str(v))) => Ok(Some(v)),
            Some(v) => Err(wrong_type(key, "an array of strings", v)),
        }
    }

    /// An array of any integer type.
    pub(super) fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(MetaArray::as_i64s)
                .map(Some)
                .ok_or_else(|| wrong_type(key, "an array of integers", v)),
        }
    }

    /// An array of floats.
    pub(super) fn floats(&self, key: &str) -> Result<Option<Vec<f64>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(MetaArray::as_f64s)
                .map(Some)
                .ok_or_else(|| wrong_type(key, "an array of floats", v)),
        }
    }
}

fn wrong_type(key: &str, expected: &str, found: &MetaValue) -> String {
    format!(
        "metadata `{key}` should be {expected}, found {}",
        found.type_name()
    )
}
