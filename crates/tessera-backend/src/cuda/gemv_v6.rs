//! GEMV v6 (`GemvVariant::V6`, kernels/gemv.cu "v6"): products of 2..64
//! activation rows on tensor cores — int8/int4 weights on fixed-point
//! activations and integer `mma`, bf16 weights on an exact three-way bf16
//! split of the activations — and how one launch is cut (row tiles, input
//! slices, staging in shared memory).

use super::gemv::GemvVariant;
use super::launch::{Args, Dims};
use super::linear::{GemvMode, GemvWeight};
use super::tensor::NormSrc;
use super::CudaBackend;
use crate::error::shape_err;
use crate::{BackendError, Result};

impl CudaBackend {
    /// v6: quantize the activations (RMSNorm fused when `norm` is set; then
    /// `x` is where the normalized input is written), then the tensor-core
    /// product, split over the inputs when its row tiles alone would leave
    /// SMs idle (kernels/gemv.cu, v6).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_v6(
        &self,
        w: &GemvWeight,
        x: u64,
        norm: Option<&NormSrc>,
        n: usize,
        y: u64,
        mode: GemvMode,
    ) -> Result<()> {
        // Weight format (kernels/gemv.cu V6_I8, V6_I4, V6_BF16), the weight
        // and scale addresses, bytes per row, scale groups per row.
        let (fmt, wp, sp, row_bytes, gpr) = match w {
            GemvWeight::Int8(q) if q.bits == 8 => {
                (0, self.ptr(&q.q), self.ptr(&q.scales), q.row_bytes(), q.gpr)
            }
            GemvWeight::Int8(q) => (1, self.ptr(&q.q), self.ptr(&q.scales), q.row_bytes(), q.gpr),
            GemvWeight::Bf16(b) => (2, self.ptr(&b.w), 0, b.kp * 2, 0),
        };
        if !(1..=V6_MAX_ROWS).contains(&n) {
            return Err(BackendError::Device(format!(
                "internal: GEMV v6 called with {n} rows"
            )));
        }
        let (m, k) = w.dims();
        let rows_out = if mode == GemvMode::SwiGlu { m / 2 } else { m };
        // Tiles of 8 activation rows: 1, 2, 4 or 8 (kernels gemv_v6_i8_t{tiles}).
        let tiles = n.div_ceil(8).next_power_of_two();
        let nb = 8 * tiles;
        let groups = k.div_ceil(V6_GROUP);
        // Bytes per group and activation slot: three limb planes of 32 bytes
        // and a scale (int8/int4), or three bf16 pieces of 64 bytes.
        let per_slot = if fmt == 2 {
            3 * 2 * V6_GROUP
        } else {
            3 * V6_GROUP + 4
        };
        let plan = v6_plan(rows_out, mode, groups, nb * per_slot, nb, 2 * self.sm_count)?;
        let smem = plan.smem;
        self.check_gemv_smem(GemvVariant::V6, smem)?;
        let xq = self.alloc::<u8>(groups * nb * per_slot)?;
        let qargs = Args::new()
            .ptr(norm.map(|s| self.ptr(&s.x)).unwrap_or(x))
            .ptr(norm.map(|s| self.ptr(&s.w)).unwrap_or(0))
            .f32(norm.map(|s| s.eps).unwrap_or(0.0))
            .ptr(if norm.is_some() { x } else { 0 })
            .int(k)
            .int(n)
            .int(nb)
            .int(groups)
            .int(fmt);
        let qargs = qargs.ptr(self.ptr(&xq));
        let qdims = Dims {
            grid: (groups.div_ceil(256) as u32, nb as u32, 1),
            block: 256,
            smem: 0,
        };
        // SAFETY: x (and the norm source and weight) hold n rows of k f32;
        // xq holds groups * nb * per_slot bytes, the layout the kernel writes.
        unsafe { self.launch("gemv v6 quantize", &self.k.gemv_v6[0], qdims, qargs) }?;
        let part = if plan.splits > 1 {
            Some(self.alloc::<f32>(plan.splits * n * plan.row_tiles * 128)?)
        } else {
            None
        };
        let args = Args::new()
            .ptr(wp)
            .ptr(sp)
            .ptr(self.ptr(&xq))
            .ptr(y)
            .ptr(part.as_ref().map(|p| self.ptr(p)).unwrap_or(0))
            .ptr(self.ptr(&self.gemv_counters))
            .int(m)
            .int(row_bytes)
            .int(gpr)
            .int(groups)
            .int(plan.gps)
            .int(plan.gst)
            .int(n)
            .int(mode as usize);
        let dims = Dims {
            grid: (plan.row_tiles as u32, plan.splits as u32, 1),
            block: 256,
            smem: smem as u32,
        };
        // SAFETY: the weight is [m, row_bytes] (row_bytes a multiple of 16;
        // lanes read only the 16-byte parts of a group that exist), int8 or
        // int4 with scales [m, gpr], gpr >= groups, or bf16 without; xq as
        // written above; y holds n rows of the mode's output width; with
        // splits > 1 part holds splits * n * row_tiles * 128 f32 and the
        // counters row_tiles <= V6_COUNTERS u32, all zero (every launch
        // leaves them zero).
        let f = &self.k.gemv_v6[1 + 4 * fmt + tiles.trailing_zeros() as usize];
        unsafe { self.launch("gemv v6", f, dims, args) }?;
        // Freed in stream order, after the kernels.
        drop(part);
        drop(xq);
        Ok(())
    }
}

/// Inputs per v6 group: the int8 scale group (kernels/gemv.cu, V6_GROUP).
const V6_GROUP: usize = 32;
/// Most groups of one v6 split.
const V6_MAX_GROUPS_PER_SPLIT: usize = 64;
/// Most activation rows of one v6 launch (8 tiles of 8); products with more
/// rows run in launches of this many.
pub(crate) const V6_MAX_ROWS: usize = 64;
/// Shared memory one v6 block may use, so that two fit an SM (227 KiB on an
/// H100/H200).
const V6_SMEM_BUDGET: usize = 110 * 1024;
/// Arrival counters for split v6 launches: the most row tiles of one launch
/// (128 weight rows each, so 2M rows).
pub(crate) const V6_COUNTERS: usize = 16384;

/// How one v6 launch is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V6Plan {
    /// Blocks along the rows: 128 weight rows (SwiGLU: 64 gate and 64 up rows) each.
    row_tiles: usize,
    /// Slices of the input groups (split-K), `gps` groups each.
    splits: usize,
    gps: usize,
    /// Groups staged in shared memory at a time: all `gps` when they fit the
    /// budget, else a multiple of the kernel's 4 groups loaded ahead (V6_U).
    gst: usize,
    /// Dynamic shared memory per block.
    smem: usize,
}

/// Cut a v6 product of `rows_out` outputs over `groups` input groups with
/// `nb` activation slots (`per_group` bytes of staged activations per group)
/// into about `target` blocks (two per SM): as many
/// input slices as the row tiles leave room for, at most
/// V6_MAX_GROUPS_PER_SPLIT groups each, no empty slice. Depends on the shape
/// and the SM count only, so every launch of a shape adds its slices alike.
fn v6_plan(
    rows_out: usize,
    mode: GemvMode,
    groups: usize,
    per_group: usize,
    nb: usize,
    target: usize,
) -> Result<V6Plan> {
    let per = if mode == GemvMode::SwiGlu { 64 } else { 128 };
    let row_tiles = rows_out.div_ceil(per).max(1);
    let groups = groups.max(1);
    // Groups whose activations (`per_group` bytes each) fit the shared
    // memory left beside the [nb][128] results.
    let room = (V6_SMEM_BUDGET.saturating_sub(nb * 128 * 4) / per_group).max(4);
    // The one- and two-tile kernels stage their whole slice at once, so a
    // slice is at most what fits; larger ones stage it in parts.
    let max_gps = if nb <= 16 {
        room.min(V6_MAX_GROUPS_PER_SPLIT)
    } else {
        V6_MAX_GROUPS_PER_SPLIT
    };
    let want = target.div_ceil(row_tiles).max(1);
    let splits = want.max(groups.div_ceil(max_gps)).min(groups);
    let gps = groups.div_ceil(splits);
    let splits = groups.div_ceil(gps);
    if splits > 1 && row_tiles > V6_COUNTERS {
        return Err(shape_err(
            "matmul",
            format!("GEMV v6: {rows_out} output rows need more than {V6_COUNTERS} row tiles"),
        ));
    }
    // Groups staged at a time: all of the slice when they fit, else a
    // multiple of the 4 the kernels load ahead.
    let gst = if gps <= room { gps } else { room / 4 * 4 };
    let smem = gst * per_group + nb * 128 * 4;
    Ok(V6Plan {
        row_tiles,
        splits,
        gps,
        gst,
        smem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_plans_fill_the_gpu_and_bound_shared_memory() {
        // The llama2-7b decode products on an H100 (132 SMs, 264 blocks wanted), 16 rows.
        let plan = |rows_out, mode, k: usize| {
            v6_plan(rows_out, mode, k.div_ceil(32), 16 * 100, 16, 264).unwrap()
        };
        let store = GemvMode::Store;
        // o_proj: 32 row tiles, 9 slices of 15 groups (the last of 8).
        let o = plan(4096, store, 4096);
        assert_eq!((o.row_tiles, o.splits, o.gps), (32, 9, 15));
        // down: 344 groups, at most 64 per slice, as many as fill the GPU.
        let down = plan(4096, GemvMode::Accumulate, 11008);
        assert_eq!((down.row_tiles, down.splits, down.gps), (32, 9, 39));
        // gate/up with SwiGLU: 64 outputs (128 weight rows) per block.
        let gu = plan(11008, GemvMode::SwiGlu, 4096);
        assert_eq!((gu.row_tiles, gu.splits, gu.gps), (172, 2, 64));
        // The LM head: slices bounded by the 64-group limit.
        let head = plan(32000, store, 4096);
        assert_eq!((head.row_tiles, head.splits, head.gps), (250, 2, 64));
        for p in [o, down, gu, head] {
            // Every group in exactly one non-empty slice.
            assert!(p.gps <= V6_MAX_GROUPS_PER_SPLIT);
            // Two blocks fit the 227 KiB an H100 SM offers.
            assert!(2 * (p.smem + 1024) <= 227 * 1024, "{p:?}");
        }
        assert_eq!(down.splits * down.gps - 344, 7);
        // Enough rows for the GPU: one slice, no partial sums.
        let one = v6_plan(40000, store, 64, 8 * 100, 8, 264).unwrap();
        assert_eq!((one.splits, one.gps), (1, 64));
        // A single group never splits; a tiny product gets at least one tile.
        let tiny = v6_plan(3, store, 1, 8 * 100, 8, 264).unwrap();
        assert_eq!((tiny.row_tiles, tiny.splits, tiny.gps), (1, 1, 1));
        // Up to 16 activation rows stage a whole slice; 64 rows stage 12
        // groups at a time (a multiple of the 4 loaded ahead).
        assert!([o, down, gu, head].iter().all(|p| p.gst == p.gps));
        let prefill = v6_plan(4096, store, 4096 / 32, 64 * 100, 64, 264).unwrap();
        assert_eq!((prefill.splits, prefill.gps, prefill.gst), (9, 15, 12));
        assert!(2 * (prefill.smem + 1024) <= 227 * 1024, "{prefill:?}");
        // Too many row tiles for the counters when split: refused by name.
        let err = v6_plan(
            V6_COUNTERS * 128 + 1,
            store,
            4096 / 32,
            16 * 100,
            16,
            264 * 1000,
        )
        .unwrap_err();
        assert!(err.to_string().contains("row tiles"), "{err}");
    }
}
