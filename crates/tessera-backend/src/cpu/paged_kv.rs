//! Paged KV memory for the CPU backend: one pool of fixed-size blocks per
//! backend, each block holding `KV_BLOCK_TOKENS` positions of every layer and
//! KV head, and per-sequence caches that are block tables into it.
//!
//! A cache owns the blocks it has taken (they are its block table), so
//! `kv_store` writes and `attention` reads without touching the pool's lock;
//! the pool only hands blocks out, takes them back on drop and keeps the
//! count. Sequences of any length share the pool: a block freed by one is
//! reused, zeroed, by the next, so memory does not fragment.

use crate::{BackendError, Result};
use std::sync::{Arc, Mutex, MutexGuard};

/// Positions per KV block (the router's `BLOCK_TOKENS` counts in the same unit).
pub const KV_BLOCK_TOKENS: usize = 16;

/// Block-pool usage, in blocks of `KV_BLOCK_TOKENS` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvPoolStats {
    /// The pool's limit, or for an unlimited pool the blocks allocated so far.
    pub blocks_total: usize,
    /// Blocks held by live caches.
    pub blocks_used: usize,
    /// `blocks_total - blocks_used`.
    pub blocks_free: usize,
}

/// One block's floats, starting on a 64-byte boundary (one cache line, one
/// AVX-512 load: unaligned rows cost the attention loop 15-35%).
pub(crate) struct KvBlock {
    buf: Box<[f32]>,
    start: usize,
}

/// Floats per 64 bytes.
const LINE_FLOATS: usize = 16;

impl KvBlock {
    fn zeroed(len: usize) -> KvBlock {
        let buf = vec![0f32; len + LINE_FLOATS - 1].into_boxed_slice();
        // Floats from `buf`'s start to the next 64-byte boundary.
        let start = (buf.as_ptr() as usize / 4).wrapping_neg() % LINE_FLOATS;
        KvBlock { buf, start }
    }

    fn len(&self) -> usize {
        self.buf.len() + 1 - LINE_FLOATS
    }

    fn data(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len()]
    }

    fn data_mut(&mut self) -> &mut [f32] {
        let (start, len) = (self.start, self.len());
        &mut self.buf[start..start + len]
    }
}

struct PoolState {
    /// At most this many blocks in use at once (`None`: grow on demand).
    limit: Option<usize>,
    used: usize,
    /// Returned blocks of `idle_len` floats, kept for reuse.
    idle: Vec<KvBlock>,
    idle_len: usize,
}

/// The shared pool; clones are handles to the same pool.
#[derive(Clone)]
pub(crate) struct KvBlockPool(Arc<Mutex<PoolState>>);

impl KvBlockPool {
    pub(crate) fn new() -> Self {
        KvBlockPool(Arc::new(Mutex::new(PoolState {
            limit: None,
            used: 0,
            idle: Vec::new(),
            idle_len: 0,
        })))
    }

    /// The state; a panic elsewhere while holding the lock leaves the counts
    /// consistent (every update is one statement), so poisoning is ignored.
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_limit(&self, limit: Option<usize>) {
        let mut st = self.state();
        st.limit = limit;
        if let Some(limit) = limit {
            let keep = limit.saturating_sub(st.used);
            st.idle.truncate(keep);
        }
    }

    pub(crate) fn stats(&self) -> KvPoolStats {
        let st = self.state();
        let total = st.limit.unwrap_or(st.used + st.idle.len());
        KvPoolStats {
            blocks_total: total,
            blocks_used: st.used,
            blocks_free: total.saturating_sub(st.used),
        }
    }

    /// `n` zeroed blocks of `len` floats, all or none.
    fn take(&self, n: usize, len: usize) -> Result<Vec<KvBlock>> {
        let mut blocks = {
            let mut st = self.state();
            if let Some(total) = st.limit {
                let free = total.saturating_sub(st.used);
                if n > free {
                    return Err(BackendError::KvPoolExhausted {
                        needed: n,
                        free,
                        total,
                    });
                }
            }
            if st.idle_len != len {
                // Another geometry (another model on this backend): start over.
                st.idle.clear();
                st.idle_len = len;
            }
            st.used += n;
            let keep = st.idle.len() - n.min(st.idle.len());
            st.idle.split_off(keep)
        };
        // Zeroed like a fresh cache, so no sequence ever sees another's keys.
        blocks.iter_mut().for_each(|b| b.data_mut().fill(0.0));
        blocks.extend((blocks.len()..n).map(|_| KvBlock::zeroed(len)));
        Ok(blocks)
    }

    fn give_back(&self, blocks: Vec<KvBlock>) {
        let mut st = self.state();
        st.used -= blocks.len();
        let room = st.limit.map_or(usize::MAX, |l| l.saturating_sub(st.used));
        for b in blocks {
            if b.len() == st.idle_len && st.idle.len() < room {
                st.idle.push(b);
            }
        }
    }
}

/// K or V half of a block.
#[derive(Clone, Copy)]
pub(crate) enum Half {
    K = 0,
    V = 1,
}

/// One sequence's keys and values: a block table into the backend's pool.
/// Block `b` holds positions `16b..16b+16` laid out
/// `[K|V][layer][kv_head][position in block][head_dim]`, so one head's rows
/// in a block are contiguous for the attention loop.
pub struct CpuKvCache {
    pub(crate) layers: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    /// The logical limit, checked as before paging (`CacheFull`).
    pub(crate) capacity: usize,
    /// bf16: stored keys and values are rounded to bf16 (kept as f32).
    pub(crate) dtype: crate::KvDType,
    /// Positions `0..len` have blocks and were written by some `kv_store`.
    len: usize,
    blocks: Vec<KvBlock>,
    pool: KvBlockPool,
}

impl CpuKvCache {
    pub(crate) fn new(
        pool: KvBlockPool,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: crate::KvDType,
    ) -> Self {
        CpuKvCache {
            layers,
            kv_heads,
            head_dim,
            capacity,
            dtype,
            len: 0,
            blocks: Vec::new(),
            pool,
        }
    }

    /// Positions stored so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blocks this cache holds.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    fn block_len(&self) -> usize {
        2 * self.layers * self.kv_heads * KV_BLOCK_TOKENS * self.head_dim
    }

    /// Where `half` of `(layer, head)` starts inside a block.
    fn head_offset(&self, half: Half, layer: usize, head: usize) -> usize {
        ((half as usize * self.layers + layer) * self.kv_heads + head)
            * KV_BLOCK_TOKENS
            * self.head_dim
    }

    /// Write `k`, `v` rows (`[n, kv_heads*head_dim]`, already checked) at
    /// `start_pos..`, taking the blocks that range crosses into first; on a
    /// pool error nothing changes.
    pub(crate) fn store(
        &mut self,
        layer: usize,
        start_pos: usize,
        rows: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let end = start_pos + rows;
        let need = end
            .div_ceil(KV_BLOCK_TOKENS)
            .saturating_sub(self.blocks.len());
        if need > 0 {
            let fresh = self.pool.take(need, self.block_len())?;
            self.blocks.extend(fresh);
        }
        let (hd, kvh) = (self.head_dim, self.kv_heads);
        for (half, src) in [(Half::K, k), (Half::V, v)] {
            for i in 0..rows {
                let pos = start_pos + i;
                let (b, r) = (pos / KV_BLOCK_TOKENS, pos % KV_BLOCK_TOKENS);
                for h in 0..kvh {
                    let at = self.head_offset(half, layer, h) + r * hd;
                    let dst = &mut self.blocks[b].data_mut()[at..at + hd];
                    let row = &src[(i * kvh + h) * hd..][..hd];
                    match self.dtype {
                        crate::KvDType::F32 => dst.copy_from_slice(row),
                        // Nearest even, as the CUDA cache's f32_to_bf16_bits.
                        crate::KvDType::BF16 => {
                            for (d, &x) in dst.iter_mut().zip(row) {
                                *d = half::bf16::from_f32(x).to_f32();
                            }
                        }
                    }
                }
            }
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// `half` of `(layer, head)` in each of the first `nblocks` blocks,
    /// `[KV_BLOCK_TOKENS][head_dim]` each.
    pub(crate) fn head_blocks<'a>(
        &'a self,
        half: Half,
        layer: usize,
        head: usize,
        nblocks: usize,
        into: &mut Vec<&'a [f32]>,
    ) {
        let at = self.head_offset(half, layer, head);
        let n = KV_BLOCK_TOKENS * self.head_dim;
        into.extend(self.blocks[..nblocks].iter().map(|b| &b.data()[at..at + n]));
    }
}

impl Drop for CpuKvCache {
    fn drop(&mut self) {
        if !self.blocks.is_empty() {
            self.pool.give_back(std::mem::take(&mut self.blocks));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_start_on_a_cache_line_and_are_reused_zeroed() {
        let pool = KvBlockPool::new();
        for len in [1usize, 640, 4096, 12_345] {
            let mut blocks = pool.take(3, len).unwrap();
            for b in &mut blocks {
                assert_eq!(b.data().as_ptr() as usize % 64, 0);
                assert_eq!(b.data().len(), len);
                b.data_mut().fill(7.0);
            }
            pool.give_back(blocks);
            let again = pool.take(2, len).unwrap();
            assert!(again.iter().all(|b| b.data().iter().all(|&x| x == 0.0)));
            assert_eq!(pool.stats().blocks_total, 3, "reused, not allocated");
            pool.give_back(again);
        }
    }
}
