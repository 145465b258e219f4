//! One rank's loaded model and its sequences, behind a device-free interface.

use crate::device::{open_checkpoint, run_on, BackendJob, Device};
use crate::{Result, WorkerError};
use std::collections::HashMap;
use tessera_backend::cpu::CpuBackend;
use tessera_backend::{Backend, WeightDType};
use tessera_comm::Collective;
use tessera_engine::{BatchEntry, Model, Sequence};
use tessera_model::ShardPlan;
use tessera_offload::{load_streamed, PlanInput, StreamOptions};
use tessera_proto::worker::{SeqLogits, StepReply, StepRequest};

/// A loaded shard: runs steps, whatever the backend.
pub trait ShardEngine: Send {
    fn step(&mut self, req: &StepRequest, rank: usize) -> Result<StepReply>;
    /// Backend description, e.g. `cpu (avx512-vnni, 1 threads)`.
    fn backend_name(&self) -> String;
}

struct Loaded<B: Backend> {
    model: Model<B>,
    seqs: HashMap<u64, Sequence<B>>,
}

/// `(used, total)` blocks of the backend's KV pool. Only the CPU backend
/// pages its caches; asking through `Any` keeps the `Backend` trait as it is.
fn kv_blocks<B: Backend + 'static>(backend: &B) -> (u32, u32) {
    match (backend as &dyn std::any::Any).downcast_ref::<CpuBackend>() {
        Some(cpu) => {
            let s = cpu.kv_pool_stats();
            (s.blocks_used as u32, s.blocks_total as u32)
        }
        None => (0, 0),
    }
}

impl<B: Backend + 'static> ShardEngine for Loaded<B> {
    fn step(&mut self, req: &StepRequest, rank: usize) -> Result<StepReply> {
        for id in &req.drop {
            self.seqs.remove(id);
        }
        // Check the batch and make its new sequences before anything runs.
        let mut seen = std::collections::HashSet::new();
        for s in &req.seqs {
            if !seen.insert(s.seq_id) {
                return Err(WorkerError::BadRequest(format!(
                    "sequence {} appears twice in one step",
                    s.seq_id
                )));
            }
            if !self.seqs.contains_key(&s.seq_id) {
                let cap = s.capacity as usize;
                if cap == 0 {
                    return Err(WorkerError::BadRequest(format!(
                        "new sequence {} needs a capacity",
                        s.seq_id
                    )));
                }
                let seq = self.model.new_sequence(cap)?;
                self.seqs.insert(s.seq_id, seq);
            }
        }
        // Take the step's sequences out of the map so each gets its own `&mut`.
        let mut taken: Vec<(u64, Sequence<B>)> = Vec::with_capacity(req.seqs.len());
        for s in &req.seqs {
            if let Some(seq) = self.seqs.remove(&s.seq_id) {
                taken.push((s.seq_id, seq));
            }
        }
        let result = {
            let mut batch: Vec<BatchEntry<'_, B>> = taken
                .iter_mut()
                .zip(&req.seqs)
                .map(|((_, seq), s)| BatchEntry {
                    seq,
                    ids: &s.ids,
                    all_logits: s.all_logits,
                })
                .collect();
            self.model.forward_batch(&mut batch)
        };
        for (id, seq) in taken {
            self.seqs.insert(id, seq);
        }
        let logits = result?;
        let send = rank == 0 || req.logits_from_all_ranks;
        let seqs = req
            .seqs
            .iter()
            .zip(logits)
            .map(|(s, l)| SeqLogits {
                seq_id: s.seq_id,
                rows: l.shape[0] as u32,
                logits: if send {
                    l.data.iter().flat_map(|x| x.to_le_bytes()).collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        let (kv_blocks_used, kv_blocks_total) = kv_blocks(self.model.backend());
        let st = self.model.layer_weights().take_stats().unwrap_or_default();
        Ok(StepReply {
            seqs,
            live_sequences: self.seqs.len() as u32,
            kv_blocks_used,
            kv_blocks_total,
            offload_copies: st.copies as u32,
            offload_bytes: st.bytes as u64,
            offload_copy_us: st.copy_time.as_micros() as u64,
            offload_wait_us: st.wait_time.as_micros() as u64,
        })
    }

    fn backend_name(&self) -> String {
        let name = self.model.backend().name();
        // Streamed: say so, e.g. `cpu (...); streamed: 1 of 4 layers resident, ...`.
        match self.model.layer_weights().describe() {
            d if d == "resident" => name,
            d => format!("{name}; {d}"),
        }
    }
}

/// What `Load` asks for.
pub struct LoadSpec {
    pub model: String,
    pub dtype: WeightDType,
    pub device: Device,
    pub threads: usize,
    pub rank: usize,
    pub world: usize,
    /// Stream this rank's layers (tessera-offload) within this plan.
    pub offload: Option<tessera_proto::worker::OffloadSpec>,
}

struct LoadJob<'a, F: FnMut(usize, usize)> {
    spec: &'a LoadSpec,
    comm: Box<dyn Collective>,
    progress: F,
}

impl<F: FnMut(usize, usize)> BackendJob for LoadJob<'_, F> {
    type Output = Result<Box<dyn ShardEngine>>;
    fn run<B: Backend + 'static>(self, backend: B) -> Self::Output {
        let ckpt = open_checkpoint(&self.spec.model)?;
        let plan = ShardPlan::new(&ckpt.spec, self.spec.world, self.spec.rank)?;
        let model = match &self.spec.offload {
            None => Model::load_shard(
                backend,
                &ckpt.spec,
                ckpt.source.as_ref(),
                self.spec.dtype,
                plan,
                self.comm,
                self.progress,
            )?,
            Some(o) => {
                // Each rank streams its own shard within its own budget.
                let input = PlanInput::for_model(
                    &ckpt.spec,
                    &plan,
                    self.spec.dtype,
                    o.weight_budget as usize,
                    o.prefetch_depth as usize,
                    o.resident_layers.map(|r| r as usize),
                    tessera_offload::DEFAULT_LINK_GBPS,
                );
                let opts = StreamOptions {
                    plan: input,
                    pin_memory: o.pin_memory,
                    record: false,
                    synchronous: false,
                    dtype: self.spec.dtype,
                };
                load_streamed(
                    backend,
                    &ckpt.spec,
                    ckpt.source.as_ref(),
                    plan,
                    self.comm,
                    opts,
                    self.progress,
                )?
                .0
            }
        };
        model.warm_up()?;
        Ok(Box::new(Loaded {
            model,
            seqs: HashMap::new(),
        }))
    }
}

/// Open the checkpoint and load this rank's shard onto the requested device.
pub fn load(
    spec: &LoadSpec,
    comm: Box<dyn Collective>,
    progress: impl FnMut(usize, usize),
) -> Result<Box<dyn ShardEngine>> {
    run_on(
        spec.device,
        spec.threads,
        LoadJob {
            spec,
            comm,
            progress,
        },
    )?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::worker::SeqStep;

    fn seq(seq_id: u64, ids: Vec<u32>, capacity: u32) -> SeqStep {
        SeqStep {
            seq_id,
            ids,
            capacity,
            all_logits: false,
        }
    }

    #[test]
    fn step_replies_report_the_cpu_kv_pool() {
        let spec = LoadSpec {
            model: "dummy:tiny".into(),
            dtype: WeightDType::F32,
            device: Device::Cpu,
            threads: 1,
            rank: 0,
            world: 1,
            offload: None,
        };
        let mut shard = load(&spec, Box::new(tessera_comm::Local), |_, _| {}).unwrap();
        // Two sequences reserving 1000 positions each hold blocks only for
        // what they stored: 20 positions (2 blocks) and 3 (1 block).
        let step = StepRequest {
            seqs: vec![seq(1, (1..21).collect(), 1000), seq(2, vec![5, 6, 7], 1000)],
            drop: vec![],
            logits_from_all_ranks: false,
        };
        let reply = shard.step(&step, 0).unwrap();
        assert_eq!((reply.kv_blocks_used, reply.kv_blocks_total), (3, 3));
        // Dropping sequence 1 returns its blocks; the pool keeps them.
        let step = StepRequest {
            seqs: vec![seq(2, vec![8], 0)],
            drop: vec![1],
            logits_from_all_ranks: false,
        };
        let reply = shard.step(&step, 0).unwrap();
        assert_eq!((reply.kv_blocks_used, reply.kv_blocks_total), (1, 3));
    }
}
