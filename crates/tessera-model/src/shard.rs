//! The tensor-parallel shard planner: which slice of each weight a rank reads.
//!
//! Megatron-style splits over `world` ranks (see docs/sharding.md):
//!
//! - Q/K/V and gate/up are column-parallel: each rank reads a range of output
//!   features, i.e. `Slice::Rows` of the `[out, in]` weight (and of the bias).
//! - o_proj and down_proj are row-parallel: each rank reads a range of input
//!   features, `Slice::Cols` of the `[out, in]` weight; the partial outputs are
//!   summed with an all-reduce.
//! - Embedding, LM head and norms are replicated (`Slice::Full`).
//!
//! Attention heads are split by KV group: with `world <= num_kv_heads` the KV
//! groups are divided as evenly as possible and each rank gets the query heads
//! of its groups. With `world > num_kv_heads` (up to `num_heads`) each rank
//! holds exactly one KV head, replicated on the ranks that share it, and the
//! query heads of that group are divided among those ranks. Either way every
//! rank's local heads form a regular GQA layout (`local_heads` is a multiple
//! of `local_kv_heads`), so the attention kernel runs unchanged on a shard.
//!
//! The MLP intermediate dimension is split in units of [`INT8_GROUP`] when it
//! allows it, so every rank's down_proj columns start on an int8 group
//! boundary and quantizing a shard gives the same groups as quantizing the
//! whole matrix.

use crate::{ModelError, ModelSpec, Result, Slice, INT8_GROUP};
use std::ops::Range;
use std::path::PathBuf;

/// How a tensor is divided among ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Every rank reads the whole tensor.
    Replicated,
    /// Output features split: each rank reads a range of rows.
    Column,
    /// Input features split: each rank reads a range of columns; outputs are all-reduced.
    Row,
}

/// Parameter counts one rank holds (elements, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankParams {
    /// Elements of the split tensors this rank holds (its slices of Q/K/V/O,
    /// gate/up/down and the Q/K/V biases; replicated KV heads count here too).
    pub sharded: usize,
    /// Elements every rank holds whole: embedding, LM head, norms.
    pub replicated: usize,
}

impl RankParams {
    pub fn total(&self) -> usize {
        self.sharded + self.replicated
    }
}

/// What one rank of a `world`-way tensor-parallel group loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    world: usize,
    rank: usize,
    head_dim: usize,
    q_heads: Range<usize>,
    kv_heads: Range<usize>,
    intermediate: Range<usize>,
    kv_replicated: bool,
}

/// Part `i` of `n` items split into `parts` contiguous ranges as evenly as
/// possible, larger parts first (3 over 2 gives 0..2 and 2..3).
fn even_range(n: usize, parts: usize, i: usize) -> Range<usize> {
    let (base, extra) = (n / parts, n % parts);
    let start = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    start..start + len
}

/// `self_attn.q_proj.weight` for `model.layers.7.self_attn.q_proj.weight`.
fn layer_suffix(name: &str) -> Option<&str> {
    let (idx, suffix) = name.strip_prefix("model.layers.")?.split_once('.')?;
    idx.parse::<usize>().ok().map(|_| suffix)
}

fn plan_error(key: &str, reason: String) -> ModelError {
    ModelError::Config {
        path: PathBuf::from("tensor-parallel shard plan"),
        key: key.to_string(),
        reason,
    }
}

impl ShardPlan {
    /// The plan for `rank` of `world` ranks.
    ///
    /// Fails when `world` is 0, `rank >= world`, `world` exceeds the number of
    /// query heads (a rank needs at least one head) or the intermediate size.
    pub fn new(spec: &ModelSpec, world: usize, rank: usize) -> Result<ShardPlan> {
        let (nh, nkv) = (spec.num_heads, spec.num_kv_heads);
        if world == 0 {
            return Err(plan_error(
                "tensor_parallel",
                "world size must be at least 1".into(),
            ));
        }
        if rank >= world {
            return Err(plan_error(
                "rank",
                format!(
                    "rank {rank} is out of range for world size {world} (ranks are 0..{world})"
                ),
            ));
        }
        if nh == 0 || nkv == 0 || !nh.is_multiple_of(nkv) {
            return Err(plan_error(
                "num_key_value_heads",
                format!("{nkv} KV heads do not divide {nh} query heads"),
            ));
        }
        if world > nh {
            return Err(plan_error(
                "tensor_parallel",
                format!(
                    "world size {world} exceeds the model's {nh} query heads \
                     ({nkv} KV heads); every rank needs at least one query head, \
                     so at most {nh} ranks"
                ),
            ));
        }
        if world > spec.intermediate_size {
            return Err(plan_error(
                "tensor_parallel",
                format!(
                    "world size {world} exceeds intermediate_size {}",
                    spec.intermediate_size
                ),
            ));
        }
        let group = nh / nkv;
        let (q_heads, kv_heads, kv_replicated) = if world <= nkv {
            let kv = even_range(nkv, world, rank);
            (kv.start * group..kv.end * group, kv, false)
        } else {
            // More ranks than KV heads: ranks are spread over the KV groups as
            // evenly as possible; the ranks of one group share (replicate) its
            // KV head and split its query heads. `world <= nh` guarantees every
            // group has at most `group` ranks, so each gets a query head.
            let (g, first) = (0..nkv)
                .map(|g| (g, even_range(world, nkv, g)))
                .find(|(_, r)| r.contains(&rank))
                .map(|(g, r)| (g, r.start))
                .ok_or_else(|| plan_error("rank", format!("rank {rank} has no KV group")))?;
            let ranks_in_group = even_range(world, nkv, g).len();
            let q = even_range(group, ranks_in_group, rank - first);
            (g * group + q.start..g * group + q.end, g..g + 1, true)
        };
        let n = spec.intermediate_size;
        let intermediate = if n.is_multiple_of(INT8_GROUP) && n / INT8_GROUP >= world {
            let u = even_range(n / INT8_GROUP, world, rank);
            u.start * INT8_GROUP..u.end * INT8_GROUP
        } else {
            even_range(n, world, rank)
        };
        Ok(ShardPlan {
            world,
            rank,
            head_dim: spec.head_dim,
            q_heads,
            kv_heads,
            intermediate,
            kv_replicated,
        })
    }

    /// The plans of every rank, in rank order.
    pub fn all(spec: &ModelSpec, world: usize) -> Result<Vec<ShardPlan>> {
        (0..world.max(1))
            .map(|r| ShardPlan::new(spec, world, r))
            .collect()
    }

    pub fn world(&self) -> usize {
        self.world
    }
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// Global indices of this rank's query heads.
    pub fn q_heads(&self) -> Range<usize> {
        self.q_heads.clone()
    }
    /// Global indices of this rank's KV heads.
    pub fn kv_heads(&self) -> Range<usize> {
        self.kv_heads.clone()
    }
    pub fn local_heads(&self) -> usize {
        self.q_heads.len()
    }
    pub fn local_kv_heads(&self) -> usize {
        self.kv_heads.len()
    }
    /// True when `world > num_kv_heads`: this rank's KV head is also held by
    /// other ranks (K/V projections and cache are computed on each of them).
    pub fn kv_replicated(&self) -> bool {
        self.kv_replicated
    }
    /// Rows of q_proj (and its bias) this rank reads; also o_proj's columns.
    pub fn q_rows(&self) -> Range<usize> {
        self.q_heads.start * self.head_dim..self.q_heads.end * self.head_dim
    }
    /// Rows of k_proj and v_proj (and their biases) this rank reads.
    pub fn kv_rows(&self) -> Range<usize> {
        self.kv_heads.start * self.head_dim..self.kv_heads.end * self.head_dim
    }
    /// Global range of the MLP intermediate features this rank holds: rows of
    /// gate_proj/up_proj, columns of down_proj.
    pub fn intermediate_range(&self) -> Range<usize> {
        self.intermediate.clone()
    }
    pub fn local_intermediate(&self) -> usize {
        self.intermediate.len()
    }

    /// How the tensor named `name` (Hugging Face name) is divided.
    pub fn parallelism(name: &str) -> Parallelism {
        match layer_suffix(name) {
            Some(
                "self_attn.q_proj.weight"
                | "self_attn.q_proj.bias"
                | "self_attn.k_proj.weight"
                | "self_attn.k_proj.bias"
                | "self_attn.v_proj.weight"
                | "self_attn.v_proj.bias"
                | "mlp.gate_proj.weight"
                | "mlp.up_proj.weight",
            ) => Parallelism::Column,
            Some("self_attn.o_proj.weight" | "mlp.down_proj.weight") => Parallelism::Row,
            _ => Parallelism::Replicated,
        }
    }

    /// The slice of tensor `name` this rank reads. Column-parallel weights and
    /// their biases give `Rows`, row-parallel weights `Cols`, everything else
    /// (embedding, LM head, norms, unknown names) `Full`. A bias is sliced
    /// exactly when its weight is column-parallel; row-parallel layers of the
    /// supported architectures have no bias.
    pub fn slice_for(&self, name: &str) -> Slice {
        let suffix = layer_suffix(name).unwrap_or("");
        match Self::parallelism(name) {
            Parallelism::Replicated => Slice::Full,
            Parallelism::Column if suffix.starts_with("self_attn.q_proj.") => {
                Slice::Rows(self.q_rows())
            }
            Parallelism::Column if suffix.starts_with("self_attn.") => Slice::Rows(self.kv_rows()),
            Parallelism::Column => Slice::Rows(self.intermediate_range()),
            Parallelism::Row if suffix == "self_attn.o_proj.weight" => Slice::Cols(self.q_rows()),
            Parallelism::Row => Slice::Cols(self.intermediate_range()),
        }
    }

    /// Shape of this rank's part of a tensor whose full shape is `shape`, or
    /// `None` when the slice does not fit it.
    pub fn local_shape(&self, name: &str, shape: &[usize]) -> Option<Vec<usize>> {
        self.slice_for(name).sliced_shape(shape)
    }

    /// Elements this rank holds, split into sharded and replicated parts.
    pub fn params(&self, spec: &ModelSpec) -> RankParams {
        let h = spec.hidden_size;
        let (q, kv, i) = (
            self.q_rows().len(),
            self.kv_rows().len(),
            self.local_intermediate(),
        );
        let mut layer = q * h + 2 * kv * h + h * q + 3 * i * h;
        if spec.attention_bias {
            layer += q + 2 * kv;
        }
        let heads = if spec.tie_word_embeddings { 1 } else { 2 };
        RankParams {
            sharded: layer * spec.num_layers,
            replicated: heads * spec.vocab_size * h + (2 * spec.num_layers + 1) * h,
        }
    }

    /// Estimated weight bytes this rank holds at `bytes_per_elem` bytes per
    /// parameter: about 1/world of the sharded weights plus the replicated parts.
    pub fn bytes_per_rank(&self, spec: &ModelSpec, bytes_per_elem: f64) -> u64 {
        (self.params(spec).total() as f64 * bytes_per_elem).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::even_range;

    #[test]
    fn even_range_gives_larger_parts_first() {
        assert_eq!(even_range(3, 2, 0), 0..2);
        assert_eq!(even_range(3, 2, 1), 2..3);
        assert_eq!(even_range(8, 3, 2), 6..8);
        assert_eq!(even_range(4, 4, 3), 3..4);
    }
}
