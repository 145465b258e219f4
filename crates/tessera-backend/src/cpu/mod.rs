//! The CPU backend: f32 activations in `Vec`s, f32 or int8 weights (bf16
//! weights are held as their rounded values in f32), a persistent rayon pool
//! sized by `--threads`, SIMD chosen at run time.

pub mod features;
pub mod kernels;
mod paged_kv;
pub mod stream;

use crate::checks::{self, CacheGeometry};
use crate::error::shape_err;
use crate::{reference, AttentionShape, Backend, BackendError, Result, WeightDType};
use features::CpuFeatures;
pub use paged_kv::{CpuKvCache, KvPoolStats, KV_BLOCK_TOKENS};
use paged_kv::{Half, KvBlockPool};
use rayon::prelude::*;
use tessera_model::{HostTensor, Int8Matrix, INT4_MAX, INT8_GROUP};

/// Activations on the CPU: `rows x cols`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// A weight matrix in its run-time layout.
pub enum CpuLinear {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    Int8(kernels::PackedInt8),
}

impl CpuKvCache {
    fn geometry(&self) -> CacheGeometry {
        CacheGeometry {
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            capacity: self.capacity,
        }
    }
}

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    features: CpuFeatures,
    kv_pool: KvBlockPool,
}

impl CpuBackend {
    /// `threads == 0` means one per available core.
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tessera-cpu-{i}"))
            .build()
            .map_err(|e| {
                BackendError::Device(format!("cannot start {threads} CPU threads: {e}"))
            })?;
        Ok(CpuBackend {
            pool,
            threads,
            features: CpuFeatures::detect(),
            kv_pool: KvBlockPool::new(),
        })
    }

    /// Limit the KV block pool to `blocks` blocks of `KV_BLOCK_TOKENS`
    /// positions (`None`, the default: grow on demand). Past the limit
    /// `kv_store` fails with `KvPoolExhausted`; caches already holding
    /// blocks keep them.
    pub fn set_kv_pool_blocks(&self, blocks: Option<usize>) {
        self.kv_pool.set_limit(blocks);
    }

    /// Blocks of the KV pool in use by live caches, and the pool's size.
    pub fn kv_pool_stats(&self) -> KvPoolStats {
        self.kv_pool.stats()
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn features(&self) -> CpuFeatures {
        self.features
    }
}

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> CpuTensor {
    debug_assert_eq!(rows * cols, data.len());
    CpuTensor { rows, cols, data }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Linear = CpuLinear;
    type KvCache = CpuKvCache;
    type StepGraph = ();

    fn name(&self) -> String {
        format!(
            "cpu ({}, {} threads)",
            self.features.int8_kernel_name(),
            self.threads
        )
    }

    fn upload(&self, t: &HostTensor) -> Result<CpuTensor> {
        let (r, c) = t.dims2();
        Ok(tensor(r, c, t.data.clone()))
    }

    fn download(&self, t: &CpuTensor) -> Result<HostTensor> {
        Ok(HostTensor::new(vec![t.rows, t.cols], t.data.clone()))
    }

    fn dims(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn upload_linear(&self, w: &HostTensor, dtype: WeightDType) -> Result<CpuLinear> {
        if w.shape.len() != 2 {
            return Err(shape_err(
                "upload_linear",
                format!("expected a 2-D weight, got {:?}", w.shape),
            ));
        }
        let (rows, cols) = w.dims2();
        Ok(match dtype {
            WeightDType::F32 => CpuLinear::F32 {
                rows,
                cols,
                data: w.data.clone(),
            },
            WeightDType::Int8 => {
                let packed = self
                    .pool
                    .install(|| kernels::PackedInt8::new(Int8Matrix::quantize(w, INT8_GROUP)));
                CpuLinear::Int8(packed)
            }
            // Int4-rounded weights kept as f32 (like bf16): the same products
            // as the CUDA int4 kernels (f32 activations, f32 accumulation).
            WeightDType::Int4 => {
                let m = Int8Matrix::quantize_to(w, INT8_GROUP, INT4_MAX);
                let mut data = vec![0f32; rows * cols];
                for (r, row) in data.chunks_mut(cols.max(1)).enumerate().take(rows) {
                    m.dequantize_row(r, row);
                }
                CpuLinear::F32 { rows, cols, data }
            }
            // bf16-rounded weights kept as f32: the same products as a bf16
            // kernel with f32 accumulation, at f32 speed.
            WeightDType::BF16 => CpuLinear::F32 {
                rows,
                cols,
                data: w.data.iter().map(|&v| reference::round_bf16(v)).collect(),
            },
        })
    }

    fn linear_dims(&self, w: &CpuLinear) -> (usize, usize) {
        match w {
            CpuLinear::F32 { rows, cols, .. } => (*rows, *cols),
            CpuLinear::Int8(p) => (p.rows(), p.cols()),
        }
    }

    fn slice_rows(&self, x: &CpuTensor, start: usize, count: usize) -> Result<CpuTensor> {
        if start + count > x.rows {
            return Err(shape_err(
                "slice_rows",
                format!("rows {start}..{} of {}", start + count, x.rows),
            ));
        }
        Ok(tensor(
            count,
            x.cols,
            x.data[start * x.cols..(start + count) * x.cols].to_vec(),
        ))
    }

    fn concat_rows(&self, parts: &[&CpuTensor]) -> Result<CpuTensor> {
        let dims: Vec<_> = parts.iter().map(|p| (p.rows, p.cols)).collect();
        let (rows, cols) = checks::concat_rows(&dims)?;
        let mut data = Vec::with_capacity(rows * cols);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Ok(tensor(rows, cols, data))
    }

    fn all_reduce_sum(
        &self,
        x: &mut CpuTensor,
        comm: &mut dyn tessera_comm::Collective,
    ) -> Result<()> {
        comm.all_reduce_sum(&mut x.data)?;
        Ok(())
    }

    fn split_cols(&self, x: &CpuTensor, widths: &[usize]) -> Result<Vec<CpuTensor>> {
        if widths.iter().sum::<usize>() != x.cols {
            return Err(shape_err(
                "split_cols",
                format!("widths {widths:?} do not sum to {}", x.cols),
            ));
        }
        let mut outs: Vec<Vec<f32>> = widths
            .iter()
            .map(|w| Vec::with_capacity(w * x.rows))
            .collect();
        for row in x.data.chunks_exact(x.cols) {
            let mut c = 0;
            for (o, w) in outs.iter_mut().zip(widths) {
                o.extend_from_slice(&row[c..c + w]);
                c += w;
            }
        }
        Ok(outs
            .into_iter()
            .zip(widths)
            .map(|(d, w)| tensor(x.rows, *w, d))
            .collect())
    }

    fn embedding(&self, table: &CpuLinear, ids: &[u32]) -> Result<CpuTensor> {
        let (vocab, hidden) = self.linear_dims(table);
        let mut out = vec![0f32; ids.len() * hidden];
        for (o, &id) in out.chunks_exact_mut(hidden).zip(ids) {
            let id = id as usize;
            if id >= vocab {
                return Err(shape_err(
                    "embedding",
                    format!("token id {id} >= vocabulary size {vocab}"),
                ));
            }
            match table {
                CpuLinear::F32 { data, .. } => {
                    o.copy_from_slice(&data[id * hidden..(id + 1) * hidden])
                }
                CpuLinear::Int8(p) => p.dequantize_row(id, o),
            }
        }
        Ok(tensor(ids.len(), hidden, out))
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        if weight.data.len() != x.cols {
            return Err(shape_err(
                "rms_norm",
                format!("weight {} vs hidden {}", weight.data.len(), x.cols),
            ));
        }
        Ok(tensor(
            x.rows,
            x.cols,
            reference::rms_norm(&x.data, x.cols, &weight.data, eps),
        ))
    }

    fn matmul(&self, x: &CpuTensor, w: &CpuLinear) -> Result<CpuTensor> {
        let (m, k) = self.linear_dims(w);
        if x.cols != k {
            return Err(shape_err(
                "matmul",
                format!("x is [{}, {}], weight is [{m}, {k}]", x.rows, x.cols),
            ));
        }
        let mut out = vec![0f32; x.rows * m];
        self.pool.install(|| match w {
            CpuLinear::F32 { data, .. } => {
                kernels::matmul_f32(self.features, &x.data, x.rows, k, data, m, &mut out)
            }
            CpuLinear::Int8(p) => kernels::matmul_int8(self.features, &x.data, x.rows, p, &mut out),
        });
        Ok(tensor(x.rows, m, out))
    }

    fn add_bias(&self, x: &mut CpuTensor, bias: &CpuTensor) -> Result<()> {
        if bias.data.len() != x.cols {
            return Err(shape_err(
                "add_bias",
                format!("bias {} vs cols {}", bias.data.len(), x.cols),
            ));
        }
        for row in x.data.chunks_exact_mut(x.cols) {
            for (a, b) in row.iter_mut().zip(&bias.data) {
                *a += b;
            }
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        if (x.rows, x.cols) != (y.rows, y.cols) {
            return Err(shape_err(
                "add_assign",
                format!("[{}, {}] vs [{}, {}]", x.rows, x.cols, y.rows, y.cols),
            ));
        }
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
        Ok(())
    }

    fn swiglu(&self, gate_up: &CpuTensor) -> Result<CpuTensor> {
        if !gate_up.cols.is_multiple_of(2) {
            return Err(shape_err("swiglu", format!("odd width {}", gate_up.cols)));
        }
        Ok(tensor(
            gate_up.rows,
            gate_up.cols / 2,
            reference::swiglu(&gate_up.data, gate_up.cols),
        ))
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        heads: usize,
        head_dim: usize,
        start_pos: usize,
        inv_freq: &[f32],
    ) -> Result<()> {
        checks::rope(x.cols, heads, head_dim, inv_freq)?;
        reference::rope(&mut x.data, heads, head_dim, start_pos, inv_freq);
        Ok(())
    }

    fn kv_cache(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<CpuKvCache> {
        self.kv_cache_typed(layers, kv_heads, head_dim, capacity, crate::KvDType::F32)
    }

    fn kv_cache_typed(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: crate::KvDType,
    ) -> Result<CpuKvCache> {
        // Blocks are taken as positions are stored, not for `capacity` up front.
        Ok(CpuKvCache::new(
            self.kv_pool.clone(),
            layers,
            kv_heads,
            head_dim,
            capacity,
            dtype,
        ))
    }

    fn kv_store(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        start_pos: usize,
        k: &CpuTensor,
        v: &CpuTensor,
    ) -> Result<()> {
        checks::kv_store(
            &cache.geometry(),
            layer,
            start_pos,
            (k.rows, k.cols),
            (v.rows, v.cols),
        )?;
        cache.store(layer, start_pos, k.rows, &k.data, &v.data)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        start_pos: usize,
        shape: AttentionShape,
    ) -> Result<CpuTensor> {
        let AttentionShape {
            num_heads,
            num_kv_heads,
            head_dim,
        } = shape;
        checks::attention(&cache.geometry(), layer, start_pos, (q.rows, q.cols), shape)?;
        let end = start_pos + q.rows;
        if end > cache.len() {
            return Err(shape_err(
                "attention",
                format!(
                    "positions 0..{end} requested, the KV cache holds {}",
                    cache.len()
                ),
            ));
        }
        // Each KV head's block slices, head-major: `[kv_head][block]`.
        let nblocks = end.div_ceil(KV_BLOCK_TOKENS);
        let (mut kb, mut vb) = (
            Vec::with_capacity(num_kv_heads * nblocks),
            Vec::with_capacity(num_kv_heads * nblocks),
        );
        for h in 0..num_kv_heads {
            cache.head_blocks(Half::K, layer, h, nblocks, &mut kb);
            cache.head_blocks(Half::V, layer, h, nblocks, &mut vb);
        }
        let mut out = vec![0f32; q.data.len()];
        // One task per (token, head): independent outputs, no locking.
        self.pool.install(|| {
            out.par_chunks_mut(head_dim)
                .enumerate()
                .for_each(|(idx, o)| {
                    let (i, h) = (idx / num_heads, idx % num_heads);
                    let kh = h / (num_heads / num_kv_heads);
                    let qv = &q.data[idx * head_dim..(idx + 1) * head_dim];
                    let blocks = kh * nblocks..(kh + 1) * nblocks;
                    kernels::attend_blocks(
                        self.features,
                        qv,
                        &kb[blocks.clone()],
                        &vb[blocks],
                        KV_BLOCK_TOKENS,
                        start_pos + i + 1,
                        head_dim,
                        o,
                    );
                })
        });
        Ok(tensor(q.rows, q.cols, out))
    }

    fn linear_image(&self, w: &CpuLinear) -> Result<Vec<u8>> {
        let mut out = vec![0u8; stream::image_len(w)];
        w.write_image(&mut out);
        Ok(out)
    }

    fn slot_copier(
        &self,
        host: std::sync::Arc<crate::stream::HostLayers>,
        slots: Vec<Vec<CpuLinear>>,
    ) -> Result<Box<dyn crate::stream::SlotCopier<CpuLinear>>> {
        Ok(Box::new(stream::CpuSlotCopier::new(host, slots)?))
    }
}
