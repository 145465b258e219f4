//! Host-side tensors as the loaders hand them out, and the slice a rank asks for.

use std::ops::Range;

/// Which part of a tensor to read. Shapes follow the Hugging Face convention:
/// a linear weight is `[out_features, in_features]`, row-major.
///
/// Tensor-parallel ranks ask for `Rows` (column-parallel layers split output
/// features) or `Cols` (row-parallel layers split input features); a loader
/// reads only the bytes the slice covers where its format allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slice {
    Full,
    /// A range of the first dimension.
    Rows(Range<usize>),
    /// A range of the last dimension (2-D tensors only).
    Cols(Range<usize>),
}

impl Slice {
    /// The shape of the slice taken from a tensor of shape `shape`, or `None`
    /// when the slice does not fit.
    pub fn sliced_shape(&self, shape: &[usize]) -> Option<Vec<usize>> {
        match self {
            Slice::Full => Some(shape.to_vec()),
            Slice::Rows(r) => {
                let first = *shape.first()?;
                if r.start > r.end || r.end > first {
                    return None;
                }
                let mut s = shape.to_vec();
                s[0] = r.len();
                Some(s)
            }
            Slice::Cols(c) => {
                if shape.len() != 2 || c.start > c.end || c.end > shape[1] {
                    return None;
                }
                Some(vec![shape[0], c.len()])
            }
        }
    }
}

/// An f32 tensor in host memory (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// `(rows, cols)` of a 2-D tensor; a 1-D tensor is one row.
    pub fn dims2(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => (other[0], other[1..].iter().product()),
        }
    }
}

/// Element types found in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl std::fmt::Display for StorageDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            StorageDType::F32 => "F32",
            StorageDType::F16 => "F16",
            StorageDType::BF16 => "BF16",
            StorageDType::Q8_0 => "Q8_0",
            StorageDType::Q4_0 => "Q4_0",
            StorageDType::Q4_1 => "Q4_1",
        };
        f.write_str(s)
    }
}

/// What a loader knows about a tensor before reading it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub dtype: StorageDType,
}
