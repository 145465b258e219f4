//! One forward step of the model over a batch of sequences: the layers (with
//! the row-parallel all-reduces of tensor parallelism), the LM head on the
//! rows whose logits are wanted, and the greedy choices made where the
//! logits are.

use super::{Model, Sequence};
use crate::weights::{DOWN_PROJ, GATE_UP, O_PROJ, QKV};
use crate::{EngineError, Result};
use tessera_backend::{AttentionShape, Backend};
use tessera_model::HostTensor;

/// One sequence's part of a batched forward step.
pub struct BatchEntry<'a, B: Backend> {
    pub seq: &'a mut Sequence<B>,
    /// New token ids, appended after the positions already in `seq`.
    pub ids: &'a [u32],
    /// Which of the new positions' logits to return.
    pub logits: Logits,
}

/// The logits a [`BatchEntry`] wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last new position's (decode, the end of a prompt).
    Last,
    /// Every new position's (scoring, perplexity).
    All,
    /// None (a prompt chunk with more to come): its rows skip the LM head,
    /// and its result is `[0, vocab]`.
    None,
    /// The greedy choice ([`tessera_backend::argmax`]) of the last position,
    /// made where the logits are (`Backend::argmax_rows`: on a GPU only the
    /// id is copied back). [`Model::forward_batch_picks`] returns it; the
    /// logits come back as `[0, vocab]`.
    Argmax,
}

impl<B: Backend> Model<B> {
    /// Run `ids` through the model after the positions already in `seq`, and
    /// return the logits of the last position (`all_logits == false`) or of
    /// every new position, as a host tensor `[rows, vocab]`.
    pub fn forward(
        &self,
        seq: &mut Sequence<B>,
        ids: &[u32],
        all_logits: bool,
    ) -> Result<HostTensor> {
        let mut batch = [BatchEntry {
            seq,
            ids,
            logits: if all_logits {
                Logits::All
            } else {
                Logits::Last
            },
        }];
        let mut out = self.forward_batch(&mut batch)?;
        Ok(out.remove(0))
    }

    /// Check one entry before anything runs, so a bad entry changes no state.
    fn check_entry(&self, e: &BatchEntry<'_, B>) -> Result<()> {
        if e.ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if e.seq.len + e.ids.len() > e.seq.capacity {
            return Err(EngineError::ContextExceeded {
                prompt: e.seq.len,
                new: e.ids.len(),
                context: e.seq.capacity,
            });
        }
        if let Some(&bad) = e.ids.iter().find(|&&i| i as usize >= self.spec.vocab_size) {
            return Err(EngineError::TokenOutOfRange {
                id: bad,
                vocab: self.spec.vocab_size,
            });
        }
        Ok(())
    }

    /// Embedding and every layer over the stacked rows of `batch`; `rows`
    /// holds each entry's (first row, rows, start position), `ids` every
    /// entry's new ids end to end. Returns the last hidden state.
    pub(super) fn run_layers(
        &self,
        batch: &mut [BatchEntry<'_, B>],
        rows: &[(usize, usize, usize)],
        ids: &[u32],
    ) -> Result<B::Tensor> {
        let b = &self.backend;
        let s = &self.spec;
        let hd = s.head_dim;
        let (nh, nkv) = (self.plan.local_heads(), self.plan.local_kv_heads());
        let shape = AttentionShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        };
        let mut comm = self
            .comm
            .lock()
            .map_err(|_| EngineError::Poisoned("the collective"))?;
        let tp = comm.world() > 1;
        let mut x = b.embedding(&self.embed, ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            self.weights.with_layer(l, &mut |w: &[B::Linear]| {
                let hn = b.rms_norm(&x, &layer.attn_norm, s.rms_norm_eps)?;
                let mut qkv = b.matmul(&hn, &w[QKV])?;
                if let Some(bias) = &layer.qkv_bias {
                    b.add_bias(&mut qkv, bias)?;
                }
                let mut parts = b
                    .split_cols(&qkv, &[nh * hd, nkv * hd, nkv * hd])?
                    .into_iter();
                let (mut q, mut k, v) = match (parts.next(), parts.next(), parts.next()) {
                    (Some(q), Some(k), Some(v)) => (q, k, v),
                    _ => unreachable!("split_cols returns one tensor per width"),
                };
                let attn = if batch.len() == 1 {
                    let start = rows[0].2;
                    b.rope(&mut q, nh, hd, start, &self.inv_freq)?;
                    b.rope(&mut k, nkv, hd, start, &self.inv_freq)?;
                    b.kv_store(&mut batch[0].seq.cache, l, start, &k, &v)?;
                    b.attention(&q, &batch[0].seq.cache, l, start, shape)?
                } else {
                    let mut caches: Vec<&mut B::KvCache> =
                        batch.iter_mut().map(|e| &mut e.seq.cache).collect();
                    let inv = &self.inv_freq;
                    if rows.iter().all(|&(_, n, _)| n == 1) {
                        // A decode step of several sequences: one call (one
                        // launch on the GPU) for all of them.
                        let starts: Vec<usize> = rows.iter().map(|r| r.2).collect();
                        b.attention_batch(&q, &k, &v, &mut caches, l, &starts, inv, shape)?
                    } else {
                        let spans: Vec<(usize, usize)> =
                            rows.iter().map(|&(_, n, start)| (start, n)).collect();
                        tessera_backend::attention_spans(
                            b,
                            &q,
                            &k,
                            &v,
                            &mut caches,
                            l,
                            &spans,
                            inv,
                            shape,
                        )?
                    }
                };
                let mut o = b.matmul(&attn, &w[O_PROJ])?;
                if tp {
                    b.all_reduce_sum(&mut o, comm.as_mut())?;
                }
                b.add_assign(&mut x, &o)?;
                let hn = b.rms_norm(&x, &layer.mlp_norm, s.rms_norm_eps)?;
                let gu = b.matmul(&hn, &w[GATE_UP])?;
                let m = b.swiglu(&gu)?;
                let mut d = b.matmul(&m, &w[DOWN_PROJ])?;
                if tp {
                    b.all_reduce_sum(&mut d, comm.as_mut())?;
                }
                b.add_assign(&mut x, &d)?;
                Ok(())
            })?;
        }
        drop(comm);
        Ok(x)
    }

    /// One forward step over several sequences at once: the linear layers see
    /// the rows of every sequence together (one weight pass for the batch),
    /// RoPE, the KV cache and attention run per sequence. Returns, per entry,
    /// its logits as in [`Model::forward`]. Every rank of a tensor-parallel
    /// group must call this with the same batch.
    pub fn forward_batch(&self, batch: &mut [BatchEntry<'_, B>]) -> Result<Vec<HostTensor>> {
        Ok(self.forward_batch_picks(batch)?.0)
    }

    /// [`Model::forward_batch`], also returning per entry the greedy choice
    /// of the entries that asked for one ([`Logits::Argmax`]; `None` for the
    /// others).
    pub fn forward_batch_picks(
        &self,
        batch: &mut [BatchEntry<'_, B>],
    ) -> Result<(Vec<HostTensor>, Vec<Option<u32>>)> {
        if batch.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        for e in batch.iter() {
            self.check_entry(e)?;
        }
        let vocab = self.spec.vocab_size;
        if let Some(out) = self.recorded_step(batch)? {
            // A replay copies the logits back already: pick on the host.
            return Ok(if batch[0].logits == Logits::Argmax {
                let pick = tessera_backend::argmax(&out.data);
                (
                    vec![HostTensor::new(vec![0, vocab], Vec::new())],
                    vec![Some(pick)],
                )
            } else {
                (vec![out], vec![None])
            });
        }
        let b = &self.backend;
        let s = &self.spec;
        // Row range of each entry in the stacked activations.
        let mut rows = Vec::with_capacity(batch.len());
        let mut ids = Vec::new();
        for e in batch.iter() {
            rows.push((ids.len(), e.ids.len(), e.seq.len));
            ids.extend_from_slice(e.ids);
        }
        let x = self.run_layers(batch, &rows, &ids)?;
        self.weights.end_step();
        for (e, &(_, n, _)) in batch.iter_mut().zip(&rows) {
            e.seq.len += n;
        }
        // The rows whose logits are wanted, per entry.
        let wanted: Vec<(usize, usize)> = batch
            .iter()
            .zip(&rows)
            .map(|(e, &(r0, n, _))| match e.logits {
                Logits::All => (r0, n),
                Logits::Last | Logits::Argmax => (r0 + n - 1, 1),
                Logits::None => (r0, 0),
            })
            .collect();
        let empty = || HostTensor::new(vec![0, vocab], Vec::new());
        if wanted.iter().all(|&(_, n)| n == 0) {
            // Nothing wanted (prompt chunks only): no LM head at all.
            return Ok((
                wanted.iter().map(|_| empty()).collect(),
                vec![None; wanted.len()],
            ));
        }
        let wanted_rows: Vec<(usize, usize)> =
            wanted.iter().copied().filter(|&(_, n)| n > 0).collect();
        let total_rows = ids.len();
        // The wanted rows are every row in order (a decode batch, or one
        // entry wanting all): no copies.
        let all_rows = wanted_rows
            .iter()
            .try_fold(0, |at, &(r0, n)| (r0 == at).then_some(at + n))
            == Some(total_rows);
        let x = if all_rows {
            x
        } else if wanted_rows.len() == 1 {
            b.slice_rows(&x, wanted_rows[0].0, wanted_rows[0].1)?
        } else {
            let parts = wanted_rows
                .iter()
                .map(|&(r0, n)| b.slice_rows(&x, r0, n))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            b.concat_rows(&parts.iter().collect::<Vec<_>>())?
        };
        let hn = b.rms_norm(&x, &self.norm, s.rms_norm_eps)?;
        let logits = b.matmul(&hn, self.lm_head.as_ref().unwrap_or(&self.embed))?;
        let kinds: Vec<Logits> = batch.iter().map(|e| e.logits).collect();
        // The greedy choices where the logits are; the logits themselves
        // only when some entry wants them.
        let row_picks = if kinds.contains(&Logits::Argmax) {
            b.argmax_rows(&logits)?
        } else {
            Vec::new()
        };
        let host = if kinds
            .iter()
            .any(|k| matches!(k, Logits::Last | Logits::All))
        {
            Some(b.download(&logits)?)
        } else {
            None
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut picks = Vec::with_capacity(wanted.len());
        let mut at = 0;
        for (&(_, n), kind) in wanted.iter().zip(kinds) {
            match (kind, &host) {
                (Logits::Argmax, _) => {
                    out.push(empty());
                    picks.push(Some(row_picks[at]));
                }
                (_, Some(h)) => {
                    let data = h.data[at * vocab..(at + n) * vocab].to_vec();
                    out.push(HostTensor::new(vec![n, vocab], data));
                    picks.push(None);
                }
                (_, None) => {
                    out.push(empty());
                    picks.push(None);
                }
            }
            at += n;
        }
        Ok((out, picks))
    }
}
