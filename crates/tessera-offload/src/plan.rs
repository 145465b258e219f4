//! The residency planner: given a device budget for weights, keep as many
//! layers resident as fit beside the streaming slots and stream the rest, so a
//! model slightly too big runs at nearly full speed rather than at link speed.

use crate::{OffloadError, Result};
use std::fmt::Write as _;
use tessera_backend::WeightDType;
use tessera_model::{ModelSpec, ShardPlan, INT8_GROUP};

/// Host-to-device bandwidth assumed when none is configured: PCIe Gen4 x16,
/// effective (about 80% of its 32 GB/s raw).
pub const DEFAULT_LINK_GBPS: f64 = 25.0;

/// Bytes of an int8 `[rows, cols]` matrix: values plus one f32 scale per group.
/// Device layouts pad a little (see docs/offload.md); this is the estimate the
/// planner uses before anything is loaded.
pub fn int8_bytes(rows: usize, cols: usize) -> usize {
    rows * cols + rows * cols.div_ceil(INT8_GROUP) * 4
}

/// Estimated device bytes of a `[rows, cols]` weight of `dtype` (CUDA
/// layouts: int4 two values per byte plus int8's scales; the CPU keeps int4
/// and bf16 weights as f32, see `WeightDType`, and the streamer then plans
/// with the measured size).
pub fn weight_bytes(dtype: WeightDType, rows: usize, cols: usize) -> usize {
    match dtype {
        WeightDType::Int8 => int8_bytes(rows, cols),
        WeightDType::Int4 => rows * cols.div_ceil(2) + rows * cols.div_ceil(INT8_GROUP) * 4,
        WeightDType::BF16 => rows * cols * 2,
        WeightDType::F32 => rows * cols * 4,
    }
}

/// Estimated bytes of one layer's four matrices of `dtype` for `shard`'s rank.
pub fn layer_bytes(spec: &ModelSpec, shard: &ShardPlan, dtype: WeightDType) -> usize {
    let h = spec.hidden_size;
    let (q, kv, i) = (
        shard.q_rows().len(),
        shard.kv_rows().len(),
        shard.local_intermediate(),
    );
    let b = |r, c| weight_bytes(dtype, r, c);
    b(q + 2 * kv, h) + b(h, q) + b(2 * i, h) + b(h, i)
}

/// Estimated bytes that always stay on the device: embedding, LM head (when
/// not tied, in `dtype`), norms and biases.
pub fn fixed_bytes(spec: &ModelSpec, shard: &ShardPlan, dtype: WeightDType) -> usize {
    let h = spec.hidden_size;
    let heads = if spec.tie_word_embeddings { 1 } else { 2 };
    let mut small = (2 * spec.num_layers + 1) * h * 4;
    if spec.attention_bias {
        small += spec.num_layers * (shard.q_rows().len() + 2 * shard.kv_rows().len()) * 4;
    }
    heads * weight_bytes(dtype, spec.vocab_size, h) + small
}

/// What the planner is given.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    pub num_layers: usize,
    /// Device bytes of one layer's matrices (all layers are the same size).
    pub layer_bytes: usize,
    /// Device bytes of the weights that are never streamed.
    pub fixed_bytes: usize,
    /// Device bytes available for all weights.
    pub budget: usize,
    /// Layers the copy engine runs ahead (≥ 1); slots = depth + 1, fewer
    /// when fewer layers stream (the depth then shrinks to match).
    pub prefetch_depth: usize,
    /// Force this many resident layers instead of as many as fit.
    pub resident_layers: Option<usize>,
    /// Host-to-device bandwidth for the prediction, GB/s.
    pub link_gbps: f64,
}

/// Which layers stay on the device, and what streaming the rest costs.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidencyPlan {
    /// Per layer: kept on the device for the whole run.
    pub resident: Vec<bool>,
    /// Streaming slots on the device (0 when nothing streams).
    pub slots: usize,
    pub prefetch_depth: usize,
    pub layer_bytes: usize,
    pub fixed_bytes: usize,
    pub budget: usize,
    pub link_gbps: f64,
}

/// `1.25 GiB`, or `3.1 MiB` below a GiB.
fn gib(b: usize) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// `r` of `n` layers, spread evenly so copies overlap resident compute too.
fn spread(n: usize, r: usize) -> Vec<bool> {
    (0..n).map(|i| (i + 1) * r / n > i * r / n).collect()
}

impl ResidencyPlan {
    /// Plan within the budget, or refuse with what would fit.
    pub fn new(input: &PlanInput) -> Result<Self> {
        let PlanInput {
            num_layers: n,
            layer_bytes: lb,
            fixed_bytes: fb,
            budget,
            prefetch_depth: depth,
            ..
        } = *input;
        if depth == 0 {
            return Err(OffloadError::Plan(
                "prefetch depth 0 copies each layer only when it is needed, so no copy \
                 overlaps compute; use a prefetch depth of at least 1 (2 slots)"
                    .into(),
            ));
        }
        if let Some(r) = input.resident_layers {
            if r > n {
                return Err(OffloadError::Plan(format!(
                    "{r} resident layers requested but the model has {n}; at most {n}"
                )));
            }
        }
        let all = fb + n * lb;
        let slots = depth + 1;
        let min = fb + slots * lb;
        // Everything fits: nothing streams (unless fewer resident layers are forced).
        let fits_all = budget >= all;
        let resident = match input.resident_layers {
            Some(r) if r < n => r,
            Some(_) => n,
            None if fits_all => n,
            None => {
                if budget < min {
                    return Err(OffloadError::Plan(Self::too_small(input, min, all)));
                }
                ((budget - min) / lb.max(1)).min(n)
            }
        };
        // A ring never needs more slots than there are layers to stream.
        let slots = slots.min(n - resident);
        let depth = depth.min(slots.saturating_sub(1));
        let need = fb + (resident + slots) * lb;
        if need > budget {
            return Err(OffloadError::Plan(if resident == n {
                format!(
                    "all {n} layers resident need {} ({need} bytes) but the budget is {} \
                     ({budget} bytes); with prefetch depth {depth} the largest number of \
                     resident layers that fits is {}",
                    gib(need),
                    gib(budget),
                    budget.saturating_sub(min) / lb.max(1)
                )
            } else if budget < min {
                Self::too_small(input, min, all)
            } else {
                format!(
                    "{resident} resident layers plus {slots} slots need {} ({need} bytes) but \
                     the budget is {} ({budget} bytes); at most {} resident layers fit",
                    gib(need),
                    gib(budget),
                    (budget - min) / lb.max(1)
                )
            }));
        }
        Ok(ResidencyPlan {
            resident: spread(n, resident),
            slots,
            prefetch_depth: depth,
            layer_bytes: lb,
            fixed_bytes: fb,
            budget,
            link_gbps: input.link_gbps,
        })
    }

    fn too_small(input: &PlanInput, min: usize, all: usize) -> String {
        let slots = input.prefetch_depth + 1;
        format!(
            "a weight budget of {} ({} bytes) is smaller than the embedding and LM head ({}) \
             plus {slots} streaming slots of one layer each ({} per layer): at least {} \
             ({min} bytes) is needed to stream every layer with prefetch depth {}, and {} \
             ({all} bytes) keeps every layer resident",
            gib(input.budget),
            input.budget,
            gib(input.fixed_bytes),
            gib(input.layer_bytes),
            gib(min),
            input.prefetch_depth,
            gib(all),
        )
    }

    /// A plan with one slot and no prefetch (each copy waits for the previous
    /// layer's compute): for tests and for measuring what prefetch buys. The
    /// configuration and `tessera plan` refuse it.
    pub fn synchronous(
        num_layers: usize,
        resident_layers: usize,
        layer_bytes: usize,
        fixed_bytes: usize,
    ) -> Self {
        let r = resident_layers.min(num_layers);
        let slots = usize::from(r < num_layers);
        ResidencyPlan {
            resident: spread(num_layers, r),
            slots,
            prefetch_depth: 0,
            layer_bytes,
            fixed_bytes,
            budget: fixed_bytes + (r + slots) * layer_bytes,
            link_gbps: DEFAULT_LINK_GBPS,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.resident.len()
    }
    pub fn resident_count(&self) -> usize {
        self.resident.iter().filter(|&&r| r).count()
    }
    /// Layers copied every forward pass, in order.
    pub fn streamed_layers(&self) -> Vec<usize> {
        (0..self.num_layers())
            .filter(|&l| !self.resident[l])
            .collect()
    }
    /// Bytes copied host → device per forward pass.
    pub fn streamed_bytes_per_pass(&self) -> usize {
        (self.num_layers() - self.resident_count()) * self.layer_bytes
    }
    /// Device bytes of all weights: fixed, resident layers, slots.
    pub fn device_bytes(&self) -> usize {
        self.fixed_bytes + (self.resident_count() + self.slots) * self.layer_bytes
    }
    /// Host bytes of the store (one buffer per streamed layer).
    pub fn host_bytes(&self) -> usize {
        self.streamed_bytes_per_pass()
    }
    /// Decode time per token the link alone imposes, in seconds (a lower
    /// bound: the copies of one pass cannot go faster than the link).
    pub fn predicted_decode_seconds(&self) -> f64 {
        self.streamed_bytes_per_pass() as f64 / (self.link_gbps * 1e9)
    }

    /// Human-readable summary (what `tessera plan` prints for one rank).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let n = self.num_layers();
        let r = self.resident_count();
        let _ = writeln!(
            s,
            "  weight budget      {:>12}  ({} bytes)",
            gib(self.budget),
            self.budget
        );
        let _ = writeln!(
            s,
            "  device: fixed      {:>12}  (embedding, LM head, norms)",
            gib(self.fixed_bytes)
        );
        let _ = writeln!(
            s,
            "  device: resident   {:>12}  ({r} of {n} layers, {} each)",
            gib(r * self.layer_bytes),
            gib(self.layer_bytes)
        );
        let _ = writeln!(
            s,
            "  device: slots      {:>12}  ({} slots, prefetch depth {})",
            gib(self.slots * self.layer_bytes),
            self.slots,
            self.prefetch_depth
        );
        let _ = writeln!(s, "  device: total      {:>12}", gib(self.device_bytes()));
        let _ = writeln!(
            s,
            "  host store         {:>12}  ({} streamed layers)",
            gib(self.host_bytes()),
            n - r
        );
        let _ = writeln!(s, "  resident layers    {}", ranges(&self.resident));
        let _ = writeln!(
            s,
            "  streamed per pass  {:>12}",
            gib(self.streamed_bytes_per_pass())
        );
        let _ = writeln!(
            s,
            "  decode, link-bound {:>9.2} ms/token ({:.1} tokens/s at {:.1} GB/s)",
            self.predicted_decode_seconds() * 1e3,
            1.0 / self.predicted_decode_seconds().max(1e-12),
            self.link_gbps
        );
        s
    }
}

/// `0-3,8,10-11` for the `true` entries; `none` when there are none.
pub fn ranges(flags: &[bool]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        if flags[i] {
            let start = i;
            while i + 1 < flags.len() && flags[i + 1] {
                i += 1;
            }
            parts.push(if start == i {
                format!("{i}")
            } else {
                format!("{start}-{i}")
            });
        }
        i += 1;
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(budget: usize) -> PlanInput {
        PlanInput {
            num_layers: 10,
            layer_bytes: 100,
            fixed_bytes: 50,
            budget,
            prefetch_depth: 2,
            resident_layers: None,
            link_gbps: 25.0,
        }
    }

    #[test]
    fn int4_layers_are_about_half_of_int8() {
        // 4096 x 11008 (a llama2-7b down_proj): values + one f32 scale per 32.
        let (r, c) = (4096, 11008);
        assert_eq!(
            weight_bytes(WeightDType::Int8, r, c),
            r * c + r * (c / 32) * 4
        );
        assert_eq!(
            weight_bytes(WeightDType::Int4, r, c),
            r * c / 2 + r * (c / 32) * 4
        );
        let ratio = weight_bytes(WeightDType::Int8, r, c) as f64
            / weight_bytes(WeightDType::Int4, r, c) as f64;
        assert!((ratio - 1.8).abs() < 1e-9, "{ratio}");
        // A ragged row rounds its half byte up.
        assert_eq!(weight_bytes(WeightDType::Int4, 1, 33), 17 + 2 * 4);
    }

    #[test]
    fn keeps_as_many_layers_resident_as_fit() {
        let p = ResidencyPlan::new(&input(50 + 3 * 100 + 4 * 100 + 99)).unwrap();
        assert_eq!((p.resident_count(), p.slots), (4, 3));
        assert!(p.device_bytes() <= p.budget);
        assert_eq!(p.streamed_bytes_per_pass(), 600);
        let all = ResidencyPlan::new(&input(50 + 1000)).unwrap();
        assert_eq!((all.resident_count(), all.slots), (10, 0));
        assert_eq!(all.predicted_decode_seconds(), 0.0);
    }

    #[test]
    fn refuses_bad_configurations_saying_what_fits() {
        let e = ResidencyPlan::new(&input(50 + 2 * 100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least") && e.contains("350 bytes"), "{e}");
        let mut i = input(10_000);
        i.prefetch_depth = 0;
        assert!(ResidencyPlan::new(&i)
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        i.prefetch_depth = 1;
        i.resident_layers = Some(11);
        assert!(ResidencyPlan::new(&i)
            .unwrap_err()
            .to_string()
            .contains("at most 10"));
        let mut i = input(50 + 5 * 100);
        i.resident_layers = Some(4);
        let e = ResidencyPlan::new(&i).unwrap_err().to_string();
        assert!(e.contains("at most 2 resident"), "{e}");
    }

    #[test]
    fn resident_layers_are_spread_out() {
        assert_eq!(ranges(&spread(6, 3)), "1,3,5");
        assert_eq!(ranges(&spread(4, 0)), "none");
        assert_eq!(ranges(&spread(4, 4)), "0-3");
        assert_eq!(spread(7, 6).iter().filter(|&&r| r).count(), 6);
    }
}
