//! Portable int8 tile: one 16-row block x one token, exact i32 dots per
//! group, then the reference's f32 combination. Also the fallback on non-x86.

use super::int8::{Int8TileFn, PackedInt8, QuantActs, BLOCK_ROWS, QUAD};
use super::TileSet;

/// The portable kernel only has the 1 x 1 tile.
pub(crate) const TILES: TileSet<Int8TileFn> = TileSet {
    r: 1,
    t: 1,
    full: tile,
    unit_tail: tile,
    token_tail: tile,
    single: tile,
};

const LINE: usize = BLOCK_ROWS * QUAD;

fn tile(w: &PackedInt8, block: usize, acts: &QuantActs, token: usize, out: &mut [f32]) {
    let (lines, sw) = (w.block_lines(block), w.block_scales(block));
    let (xq, xs) = (acts.token_q(token), acts.token_scales(token));
    let mut acc = [0f32; BLOCK_ROWS];
    for g in 0..w.groups() {
        // Products accumulate byte-position-wise (`[row][input]`, like the
        // line) so the loop is plain elementwise i32 work that vectorizes;
        // each row's 4 lanes are summed once per group.
        let mut lanes = [0i32; LINE];
        let quads = w.quad_range(g);
        for (line, x) in lines[quads.clone()]
            .iter()
            .zip(xq[quads.start * QUAD..quads.end * QUAD].chunks_exact(QUAD))
        {
            let pattern: [i16; 16] = std::array::from_fn(|i| x[i % QUAD] as i16);
            for (l, b) in lanes.chunks_exact_mut(16).zip(line.0.chunks_exact(16)) {
                for ((l, &b), p) in l.iter_mut().zip(b).zip(&pattern) {
                    // Undo the +128 storage offset (the activations are signed
                    // here); an i8 x i8 product fits i16, the cheap multiply.
                    *l += ((b ^ 0x80) as i8 as i16 * p) as i32;
                }
            }
        }
        let sw = &sw[g * BLOCK_ROWS..(g + 1) * BLOCK_ROWS];
        for ((a, l), s) in acc.iter_mut().zip(lanes.chunks_exact(QUAD)).zip(sw) {
            let dot: i32 = l.iter().sum();
            *a += dot as f32 * xs[g] * s;
        }
    }
    out[..BLOCK_ROWS].copy_from_slice(&acc);
}
