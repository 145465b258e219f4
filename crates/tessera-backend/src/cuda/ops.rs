//! `Backend` for `CudaBackend`: shape checks, then one kernel launch per op
//! (or none, when a deferred int8 product absorbs the op, see `tensor.rs`).

use super::linear::GemvMode;
use super::{dev, CudaBackend, CudaKvCache, CudaLinear, CudaTensor};
use crate::checks;
use crate::error::shape_err;
use crate::{AttentionShape, Backend, Result, WeightDType};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use tessera_model::HostTensor;

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Linear = CudaLinear;
    type KvCache = CudaKvCache;

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

    fn slice_rows(&self, x: &CudaTensor, start: usize, count: usize) -> Result<CudaTensor> {
        if start + count > x.rows {
            let detail = format!("rows {start}..{} of {}", start + count, x.rows);
            return Err(shape_err("slice_rows", detail));
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
        let src = self.buf(x)?;
        let mut outs = Vec::with_capacity(widths.len());
        for w in widths {
            outs.push(CudaTensor::ready(
                x.rows,
                *w,
                self.alloc::<f32>(x.rows * w)?,
            ));
        }
        // Four pieces per launch: Q/K/V is one launch.
        let mut col0 = 0usize;
        for chunk in outs.chunks(4) {
            let mut ptrs = [0u64; 4];
            let mut ws = [0i32; 4];
            for (j, t) in chunk.iter().enumerate() {
                ptrs[j] = self.ptr(self.buf(t)?);
                ws[j] = t.cols as i32;
            }
            let span: usize = chunk.iter().map(|t| t.cols).sum();
            let (rows, cols, c0) = (x.rows as i32, x.cols as i32, col0 as i32);
            let mut b = self.stream.launch_builder(&self.k.split_cols4);
            b.arg(src).arg(&rows).arg(&cols).arg(&c0);
            for j in 0..4 {
                b.arg(&ptrs[j]).arg(&ws[j]);
            }
            self.launch_1d("split_cols", x.rows * span, &mut b)?;
            col0 += span;
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
        let mut out = self.alloc::<f32>(x.rows * x.cols)?;
        if x.rows > 0 {
            let cols = x.cols as i32;
            let mut b = self.stream.launch_builder(&self.k.rms_norm);
            b.arg(self.buf(x)?)
                .arg(self.buf(weight)?)
                .arg(&cols)
                .arg(&eps)
                .arg(&mut out);
            let block = if x.cols >= 4096 { 1024 } else { 256 };
            let cfg = LaunchConfig {
                grid_dim: (x.rows as u32, 1, 1),
                block_dim: (block, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: x and out are [rows, cols], weight has cols entries.
            unsafe { b.launch(cfg) }.map_err(dev("rms_norm"))?;
        }
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
        let (cols, total, threads) = (x.cols as i32, (x.rows * x.cols) as i64, x.rows * x.cols);
        let bias_buf = self.buf(bias)?;
        let x_buf = self.buf_mut(x)?;
        let mut b = self.stream.launch_builder(&self.k.add_bias);
        b.arg(x_buf).arg(bias_buf).arg(&cols).arg(&total);
        self.launch_1d("add_bias", threads, &mut b)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        if (x.rows, x.cols) != (y.rows, y.cols) {
            let detail = format!("[{}, {}] vs [{}, {}]", x.rows, x.cols, y.rows, y.cols);
            return Err(shape_err("add_assign", detail));
        }
        let (rows, threads) = (x.rows, x.rows * x.cols);
        if let Some(p) = y.pending() {
            // Fused: the deferred product adds itself into x. Not when the
            // product reads x itself (the kernel would race with its own writes).
            let x_buf = self.buf_mut(x)?;
            let x_ptr = self.ptr(x_buf);
            if self.ptr(&p.x) != x_ptr {
                return self.launch_gemv(&p.w, &p.x, rows, x_ptr, GemvMode::Accumulate);
            }
        }
        let total = threads as i64;
        let y_buf = self.buf(y)?;
        let x_buf = self.buf_mut(x)?;
        let mut b = self.stream.launch_builder(&self.k.add_assign);
        b.arg(x_buf).arg(y_buf).arg(&total);
        self.launch_1d("add_assign", threads, &mut b)
    }

    fn swiglu(&self, gate_up: &CudaTensor) -> Result<CudaTensor> {
        if !gate_up.cols.is_multiple_of(2) {
            return Err(shape_err("swiglu", format!("odd width {}", gate_up.cols)));
        }
        let m = gate_up.cols / 2;
        let out = self.alloc::<f32>(gate_up.rows * m)?;
        if let Some(p) = gate_up.pending() {
            // Fused: each warp computes a gate row and its up row and gates them.
            self.launch_gemv(&p.w, &p.x, gate_up.rows, self.ptr(&out), GemvMode::SwiGlu)?;
            return Ok(CudaTensor::ready(gate_up.rows, m, out));
        }
        let mut out = out;
        let (m_i, total) = (m as i32, (gate_up.rows * m) as i64);
        let mut b = self.stream.launch_builder(&self.k.swiglu);
        b.arg(self.buf(gate_up)?)
            .arg(&m_i)
            .arg(&total)
            .arg(&mut out);
        self.launch_1d("swiglu", gate_up.rows * m, &mut b)?;
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
        let threads = x.rows * heads * (head_dim / 2);
        let (rows, h, hd, start) = (
            x.rows as i32,
            heads as i32,
            head_dim as i32,
            start_pos as i32,
        );
        let x_buf = self.buf_mut(x)?;
        let mut b = self.stream.launch_builder(&self.k.rope);
        b.arg(x_buf)
            .arg(&rows)
            .arg(&h)
            .arg(&hd)
            .arg(&start)
            .arg(&table);
        self.launch_1d("rope", threads, &mut b)
    }

    fn kv_cache(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<CudaKvCache> {
        let n = (layers * kv_heads * head_dim * capacity).max(1);
        let k = self.stream.alloc_zeros::<f32>(n).map_err(dev("kv_cache"))?;
        let v = self.stream.alloc_zeros::<f32>(n).map_err(dev("kv_cache"))?;
        Ok(CudaKvCache {
            layers,
            kv_heads,
            head_dim,
            capacity,
            k,
            v,
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
        let (hd, kvh, cap) = (cache.head_dim, cache.kv_heads, cache.capacity);
        checks::kv_store(
            &cache.geometry(),
            layer,
            start_pos,
            (k.rows, k.cols),
            (v.rows, v.cols),
        )?;
        let layer_off = (layer * kvh * cap * hd * 4) as u64;
        let (kc, vc) = (
            self.ptr(&cache.k) + layer_off,
            self.ptr(&cache.v) + layer_off,
        );
        let (n, kvh_i, hd_i, cap_i, start) = (
            k.rows as i32,
            kvh as i32,
            hd as i32,
            cap as i32,
            start_pos as i32,
        );
        let mut b = self.stream.launch_builder(&self.k.kv_store);
        b.arg(self.buf(k)?).arg(self.buf(v)?).arg(&kc).arg(&vc);
        b.arg(&n).arg(&kvh_i).arg(&hd_i).arg(&cap_i).arg(&start);
        self.launch_1d("kv_store", k.rows * kvh * hd, &mut b)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        cache: &CudaKvCache,
        layer: usize,
        start_pos: usize,
        shape: AttentionShape,
    ) -> Result<CudaTensor> {
        let AttentionShape {
            num_heads,
            num_kv_heads,
            head_dim,
        } = shape;
        checks::attention(&cache.geometry(), layer, start_pos, (q.rows, q.cols), shape)?;
        if head_dim > 256 {
            let detail = format!("head_dim {head_dim} > 256 is not supported on CUDA");
            return Err(shape_err("attention", detail));
        }
        let mut out = self.alloc::<f32>(q.rows * q.cols)?;
        if q.rows == 0 {
            return Ok(CudaTensor::ready(0, q.cols, out));
        }
        let cap = cache.capacity;
        let layer_off = (layer * num_kv_heads * cap * head_dim * 4) as u64;
        let (kc, vc) = (
            self.ptr(&cache.k) + layer_off,
            self.ptr(&cache.v) + layer_off,
        );
        let (h, kvh, hd) = (num_heads as i32, num_kv_heads as i32, head_dim as i32);
        let (cap_i, start) = (cap as i32, start_pos as i32);
        let scale = 1.0f32 / (head_dim as f32).sqrt();
        let f = if head_dim <= 128 {
            &self.k.attention_d128
        } else {
            &self.k.attention_d256
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(self.buf(q)?).arg(&kc).arg(&vc).arg(&mut out);
        b.arg(&h)
            .arg(&kvh)
            .arg(&hd)
            .arg(&cap_i)
            .arg(&start)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (q.rows as u32, num_heads as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: q/out are [rows, heads*hd]; the cache layer holds kvh*cap*hd
        // f32 each and positions up to start_pos+rows-1 < cap were stored.
        unsafe { b.launch(cfg) }.map_err(dev("attention"))?;
        Ok(CudaTensor::ready(q.rows, q.cols, out))
    }
}
