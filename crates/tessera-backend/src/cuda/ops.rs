//! `Backend` for `CudaBackend`: shape checks, then one kernel launch per op,
//! or none when the op's result can stay lazy until a consumer absorbs it
//! (see `tensor.rs`).

use super::launch::{Args, Dims};
use super::linear::{GemvMode, GEMV_MAX_ROWS};
use super::tensor::{ColView, Lazy, NormJob, NormSrc, RopeJob};
use super::{dev, CudaBackend, CudaKvCache, CudaLinear, CudaTensor};
use crate::checks;
use crate::error::shape_err;
use crate::{AttentionShape, Backend, Result, WeightDType};
use std::sync::Arc;
use tessera_model::HostTensor;

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Linear = CudaLinear;
    type KvCache = CudaKvCache;
    type StepGraph = super::graph::CudaStepGraph;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn upload(&self, t: &HostTensor) -> Result<CudaTensor> {
        let (r, c) = t.dims2();
        let buf = if t.data.is_empty() {
            self.alloc(1)?
        } else {
            self.stream.clone_htod(&t.data).map_err(dev("upload"))?
        };
        Ok(CudaTensor::ready(r, c, buf))
    }

    fn download(&self, t: &CudaTensor) -> Result<HostTensor> {
        let n = t.rows * t.cols;
        let mut data = vec![0f32; n];
        if n > 0 {
            let buf = self.buf(t)?;
            self.stream
                .memcpy_dtoh(&buf.slice(..n), &mut data)
                .map_err(dev("download"))?;
        }
        self.synchronize()?;
        Ok(HostTensor::new(vec![t.rows, t.cols], data))
    }

    fn dims(&self, t: &CudaTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn upload_linear(&self, w: &HostTensor, dtype: WeightDType) -> Result<CudaLinear> {
        self.upload_linear_impl(w, dtype)
    }

    fn linear_dims(&self, w: &CudaLinear) -> (usize, usize) {
        w.dims()
    }

    fn linear_image(&self, w: &CudaLinear) -> Result<Vec<u8>> {
        self.linear_image_impl(w)
    }

    fn host_buffer(&self, len: usize, pinned: bool) -> Result<Box<dyn crate::stream::HostBytes>> {
        self.host_buffer_impl(len, pinned)
    }

    fn slot_copier(
        &self,
        host: std::sync::Arc<crate::stream::HostLayers>,
        slots: Vec<Vec<CudaLinear>>,
    ) -> Result<Box<dyn crate::stream::SlotCopier<CudaLinear>>> {
        self.slot_copier_impl(host, slots)
    }

    /// GEMV variants are timed the first time a shape is seen, RoPE tables
    /// uploaded on first use: a step right after loading pays both.
    fn wants_warm_up(&self) -> bool {
        true
    }

    fn begin_step_graph(&self, pos: usize, token: u32, cols: usize) -> Result<bool> {
        self.begin_step_graph_impl(pos, token, cols)
    }

    fn end_step_graph(&self, logits: CudaTensor) -> Result<Self::StepGraph> {
        self.end_step_graph_impl(logits)
    }

    fn abort_step_graph(&self) {
        self.abort_step_graph_impl()
    }

    fn replay_step_graph(
        &self,
        graph: &Self::StepGraph,
        pos: usize,
        token: u32,
    ) -> Result<HostTensor> {
        self.replay_step_graph_impl(graph, pos, token)
    }

    fn replay_step_graph_greedy(
        &self,
        graph: &Self::StepGraph,
        pos: usize,
        token: u32,
        n: usize,
    ) -> Result<Option<Vec<u32>>> {
        self.replay_step_graph_greedy_impl(graph, pos, token, n)
            .map(Some)
    }

    fn argmax_rows(&self, x: &CudaTensor) -> Result<Vec<u32>> {
        self.argmax_rows_impl(x)
    }

    fn slice_rows(&self, x: &CudaTensor, start: usize, count: usize) -> Result<CudaTensor> {
        if start + count > x.rows {
            let detail = format!("rows {start}..{} of {}", start + count, x.rows);
            return Err(shape_err("slice_rows", detail));
        }
        if start == 0 && count == x.rows {
            // All rows (the decode step's last row): share, don't copy.
            return Ok(CudaTensor::shared_ready(count, x.cols, self.shared(x)?));
        }
        let mut out = self.alloc::<f32>(count * x.cols)?;
        if count * x.cols > 0 {
            let src = self.buf(x)?.slice(start * x.cols..(start + count) * x.cols);
            let mut dst = out.slice_mut(..count * x.cols);
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(dev("slice_rows"))?;
        }
        Ok(CudaTensor::ready(count, x.cols, out))
    }

    fn concat_rows(&self, parts: &[&CudaTensor]) -> Result<CudaTensor> {
        let dims: Vec<_> = parts.iter().map(|p| (p.rows, p.cols)).collect();
        let (rows, cols) = checks::concat_rows(&dims)?;
        let mut out = self.alloc::<f32>((rows * cols).max(1))?;
        let mut at = 0;
        for p in parts {
            let n = p.rows * p.cols;
            if n > 0 {
                let src = self.buf(p)?.slice(..n);
                let mut dst = out.slice_mut(at..at + n);
                self.stream
                    .memcpy_dtod(&src, &mut dst)
                    .map_err(dev("concat_rows"))?;
            }
            at += n;
        }
        Ok(CudaTensor::ready(rows, cols, out))
    }

    /// With NCCL the sum happens in device memory on this backend's stream;
    /// any other transport goes through host memory.
    fn all_reduce_sum(
        &self,
        x: &mut CudaTensor,
        comm: &mut dyn tessera_comm::Collective,
    ) -> Result<()> {
        if comm.world() == 1 {
            return Ok(());
        }
        if comm.as_any_mut().is::<tessera_comm::NcclCollective>() {
            let n = x.rows * x.cols;
            let ptr = {
                let buf = self.buf_mut(x)?;
                self.ptr(buf)
            };
            if let Some(nccl) = comm
                .as_any_mut()
                .downcast_mut::<tessera_comm::NcclCollective>()
            {
                // SAFETY: `ptr` holds `n` f32 of `x`, which we hold exclusively
                // (buf_mut); the call is ordered on our stream and returns
                // only when the collective has completed.
                unsafe { nccl.all_reduce_sum_device(ptr, n, self.stream.cu_stream()) }?;
            }
            return Ok(());
        }
        let mut host = self.download(x)?;
        comm.all_reduce_sum(&mut host.data)?;
        *x = self.upload(&host)?;
        Ok(())
    }

    fn split_cols(&self, x: &CudaTensor, widths: &[usize]) -> Result<Vec<CudaTensor>> {
        if widths.iter().sum::<usize>() != x.cols {
            let detail = format!("widths {widths:?} do not sum to {}", x.cols);
            return Err(shape_err("split_cols", detail));
        }
        let parent = self.shared(x)?;
        let mut col0 = 0usize;
        let mut outs = Vec::with_capacity(widths.len());
        for &w in widths {
            let view = ColView {
                parent: parent.clone(),
                stride: x.cols,
                col0,
                rope: None,
            };
            // Fused: column views, read in place by the KV store and attention.
            let t = CudaTensor::lazy(x.rows, w, Lazy::Cols(view));
            if !self.fuse {
                self.buf(&t)?;
            }
            outs.push(t);
            col0 += w;
        }
        Ok(outs)
    }

    fn embedding(&self, table: &CudaLinear, ids: &[u32]) -> Result<CudaTensor> {
        self.embedding_impl(table, ids)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        if weight.rows * weight.cols != x.cols {
            let detail = format!("weight {} vs hidden {}", weight.rows * weight.cols, x.cols);
            return Err(shape_err("rms_norm", detail));
        }
        let src = NormSrc {
            x: self.shared(x)?,
            w: self.shared(weight)?,
            eps,
            rows: x.rows,
            cols: x.cols,
        };
        let out = self.alloc::<f32>(x.rows * x.cols)?;
        if self.fuse && x.rows <= GEMV_MAX_ROWS {
            // Fused: the GEMV that reads this tensor normalizes as it loads.
            let l = Lazy::Norm {
                out: Arc::new(out),
                job: NormJob::new(src),
            };
            return Ok(CudaTensor::lazy(x.rows, x.cols, l));
        }
        self.rms_norm_into(&src, self.ptr(&out))?;
        Ok(CudaTensor::ready(x.rows, x.cols, out))
    }

    fn matmul(&self, x: &CudaTensor, w: &CudaLinear) -> Result<CudaTensor> {
        self.matmul_impl(x, w)
    }

    fn add_bias(&self, x: &mut CudaTensor, bias: &CudaTensor) -> Result<()> {
        if bias.rows * bias.cols != x.cols {
            let detail = format!("bias {} vs cols {}", bias.rows * bias.cols, x.cols);
            return Err(shape_err("add_bias", detail));
        }
        let (cols, total) = (x.cols, x.rows * x.cols);
        let bias_p = self.ptr(self.buf(bias)?);
        let x_p = self.ptr(self.buf_mut(x)?);
        let args = Args::new().ptr(x_p).ptr(bias_p).int(cols).i64(total);
        if total == 0 {
            return Ok(());
        }
        // SAFETY: x holds total f32, bias cols.
        unsafe { self.launch("add_bias", &self.k.add_bias, Dims::flat(total), args) }
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        if (x.rows, x.cols) != (y.rows, y.cols) {
            let detail = format!("[{}, {}] vs [{}, {}]", x.rows, x.cols, y.rows, y.cols);
            return Err(shape_err("add_assign", detail));
        }
        let (rows, total) = (x.rows, x.rows * x.cols);
        if let Some(p) = y.pending_gemv()? {
            // Fused: the deferred product adds itself into x. Not when the
            // product reads x itself (the kernel would race with its own writes).
            let x_ptr = self.ptr(self.buf_mut(x)?);
            let norm_src = match &p.input.norm {
                Some(j) => j.src_ptr(self)?,
                None => None,
            };
            if self.ptr(&p.input.x) != x_ptr && norm_src != Some(x_ptr) {
                return self.launch_gemv(&p, rows, x_ptr, GemvMode::Accumulate);
            }
        }
        let y_p = self.ptr(self.buf(y)?);
        let x_p = self.ptr(self.buf_mut(x)?);
        if total == 0 {
            return Ok(());
        }
        let args = Args::new().ptr(x_p).ptr(y_p).i64(total);
        // SAFETY: x and y hold total f32.
        unsafe { self.launch("add_assign", &self.k.add_assign, Dims::flat(total), args) }
    }

    fn swiglu(&self, gate_up: &CudaTensor) -> Result<CudaTensor> {
        if !gate_up.cols.is_multiple_of(2) {
            return Err(shape_err("swiglu", format!("odd width {}", gate_up.cols)));
        }
        let m = gate_up.cols / 2;
        let out = self.alloc::<f32>(gate_up.rows * m)?;
        if let Some(p) = gate_up.pending_gemv()? {
            // Fused: each warp computes gate rows and their up rows and gates them.
            self.launch_gemv(&p, gate_up.rows, self.ptr(&out), GemvMode::SwiGlu)?;
            return Ok(CudaTensor::ready(gate_up.rows, m, out));
        }
        let total = gate_up.rows * m;
        if total > 0 {
            let args = Args::new()
                .ptr(self.ptr(self.buf(gate_up)?))
                .int(m)
                .i64(total)
                .ptr(self.ptr(&out));
            // SAFETY: gate_up holds rows x 2m f32, out rows x m.
            unsafe { self.launch("swiglu", &self.k.swiglu, Dims::flat(total), args) }?;
        }
        Ok(CudaTensor::ready(gate_up.rows, m, out))
    }

    fn rope(
        &self,
        x: &mut CudaTensor,
        heads: usize,
        head_dim: usize,
        start_pos: usize,
        inv_freq: &[f32],
    ) -> Result<()> {
        checks::rope(x.cols, heads, head_dim, inv_freq)?;
        let table = self.rope_table(inv_freq)?;
        let (start, dpos) = self.step_pos(start_pos)?;
        let job = RopeJob {
            table,
            head_dim,
            start,
            dpos,
        };
        // Fused: a Q/K view applies RoPE where it is read.
        if self.fuse && x.defer_rope(job)? {
            return Ok(());
        }
        let threads = x.rows * heads * (head_dim / 2);
        let (rows, x_p) = (x.rows, self.ptr(self.buf_mut(x)?));
        if threads == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(x_p)
            .int(rows)
            .int(heads)
            .int(head_dim)
            .int(start)
            .ptr(table)
            .ptr(dpos);
        // SAFETY: x holds rows x heads*head_dim f32; the table head_dim/2.
        unsafe { self.launch("rope", &self.k.rope, Dims::flat(threads), args) }
    }

    fn kv_cache(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<CudaKvCache> {
        self.kv_cache_typed(layers, kv_heads, head_dim, capacity, crate::KvDType::F32)
    }

    fn kv_cache_typed(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: crate::KvDType,
    ) -> Result<CudaKvCache> {
        let n = (layers * kv_heads * head_dim * capacity).max(1) * dtype.bytes();
        let k = self.stream.alloc_zeros::<u8>(n).map_err(dev("kv_cache"))?;
        let v = self.stream.alloc_zeros::<u8>(n).map_err(dev("kv_cache"))?;
        Ok(CudaKvCache {
            layers,
            kv_heads,
            head_dim,
            capacity,
            dtype,
            k,
            v,
            pending: std::sync::Mutex::new(None),
        })
    }

    fn kv_store(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        start_pos: usize,
        k: &CudaTensor,
        v: &CudaTensor,
    ) -> Result<()> {
        self.kv_store_impl(cache, layer, start_pos, k, v)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        cache: &CudaKvCache,
        layer: usize,
        start_pos: usize,
        shape: AttentionShape,
    ) -> Result<CudaTensor> {
        self.attention_impl(q, cache, layer, start_pos, shape)
    }

    fn attention_batch(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        caches: &mut [&mut CudaKvCache],
        layer: usize,
        starts: &[usize],
        inv_freq: &[f32],
        shape: AttentionShape,
    ) -> Result<CudaTensor> {
        self.attention_batch_impl(q, k, v, caches, layer, starts, inv_freq, shape)
    }
}
