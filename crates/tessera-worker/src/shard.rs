//! One rank's loaded model and its sequences, behind a device-free interface.

use crate::device::{open_checkpoint, run_on, BackendJob, Device};
use crate::{Result, WorkerError};
use std::collections::HashMap;
use tessera_backend::cpu::CpuBackend;
use tessera_backend::{Backend, WeightDType};
use tessera_comm::Collective;
use tessera_engine::{BatchEntry, Logits, Model, Sampler, SamplingParams, Sequence};
use tessera_model::ShardPlan;
use tessera_offload::{load_streamed, PlanInput, StreamOptions};
use tessera_proto::worker::{SamplingSpec, SeqLogits, SeqStep, StepOutput, StepReply, StepRequest};

/// A loaded shard: runs steps, whatever the backend.
pub trait ShardEngine: Send {
    fn step(&mut self, req: &StepRequest, rank: usize) -> Result<StepReply>;
    /// Backend description, e.g. `cpu (avx512-vnni, 1 threads)`.
    fn backend_name(&self) -> String;
}

struct Loaded<B: Backend> {
    model: Model<B>,
    seqs: HashMap<u64, Sequence<B>>,
    /// Samplers of the sequences that pick their tokens here (`SeqStep.sampling`).
    pickers: HashMap<u64, Picker>,
}

/// A sequence's sampler on the worker, with every id the sequence was fed:
/// its prompt and generated tokens, the history a repetition penalty reads.
/// The launcher's scheduler used to sample from the logits it was sent; the
/// same sampler, seed and history give the same tokens here.
struct Picker {
    sampler: Sampler,
    history: Vec<u32>,
}

/// The wire's sampling values as the engine's, refused by name when they mean nothing.
fn sampler_from(spec: &SamplingSpec, seq_id: u64) -> Result<Sampler> {
    let params = SamplingParams {
        temperature: spec.temperature,
        top_k: spec.top_k as usize,
        top_p: spec.top_p,
        repetition_penalty: spec.repetition_penalty,
        seed: spec.seed,
    };
    Sampler::new(params).map_err(|e| WorkerError::BadRequest(format!("sequence {seq_id}: {e}")))
}

/// What `s` asks the answering ranks to return; an unknown value is an error.
fn output_of(s: &SeqStep) -> Result<StepOutput> {
    StepOutput::try_from(s.output).map_err(|_| {
        WorkerError::BadRequest(format!(
            "sequence {}: unknown step output {}",
            s.seq_id, s.output
        ))
    })
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
            self.pickers.remove(id);
        }
        // Check the batch and make its new sequences before anything runs.
        let mut seen = std::collections::HashSet::new();
        let mut outputs = Vec::with_capacity(req.seqs.len());
        let mut new_pickers = Vec::new();
        for s in &req.seqs {
            if !seen.insert(s.seq_id) {
                return Err(WorkerError::BadRequest(format!(
                    "sequence {} appears twice in one step",
                    s.seq_id
                )));
            }
            let output = output_of(s)?;
            let is_new = !self.seqs.contains_key(&s.seq_id);
            if is_new {
                if s.capacity == 0 {
                    return Err(WorkerError::BadRequest(format!(
                        "new sequence {} needs a capacity",
                        s.seq_id
                    )));
                }
                if let Some(spec) = &s.sampling {
                    new_pickers.push((
                        s.seq_id,
                        Picker {
                            sampler: sampler_from(spec, s.seq_id)?,
                            history: Vec::new(),
                        },
                    ));
                }
            }
            let has_picker =
                self.pickers.contains_key(&s.seq_id) || (is_new && s.sampling.is_some());
            if output == StepOutput::Token && !has_picker {
                return Err(WorkerError::BadRequest(format!(
                    "sequence {} asks for a sampled token but was made without sampling values",
                    s.seq_id
                )));
            }
            outputs.push(output);
        }
        for s in &req.seqs {
            if !self.seqs.contains_key(&s.seq_id) {
                let seq = self.model.new_sequence(s.capacity as usize)?;
                self.seqs.insert(s.seq_id, seq);
                self.pickers.remove(&s.seq_id);
            }
        }
        self.pickers.extend(new_pickers);
        // Take the step's sequences out of the map so each gets its own `&mut`.
        let mut taken: Vec<(u64, Sequence<B>)> = Vec::with_capacity(req.seqs.len());
        for s in &req.seqs {
            if let Some(seq) = self.seqs.remove(&s.seq_id) {
                taken.push((s.seq_id, seq));
            }
        }
        let result = {
            let pickers = &self.pickers;
            let mut batch: Vec<BatchEntry<'_, B>> = taken
                .iter_mut()
                .zip(&req.seqs)
                .zip(&outputs)
                .map(|(((_, seq), s), &output)| {
                    // A greedy token is picked where the logits are (on a GPU,
                    // only the id comes back); a chunk that returns nothing
                    // skips the LM head.
                    let greedy = pickers
                        .get(&s.seq_id)
                        .is_some_and(|p| p.sampler.params().is_greedy());
                    let logits = match (output, s.all_logits) {
                        (StepOutput::Nothing, _) => Logits::None,
                        (StepOutput::Token, false) if greedy => Logits::Argmax,
                        (_, true) => Logits::All,
                        (_, false) => Logits::Last,
                    };
                    BatchEntry {
                        seq,
                        ids: &s.ids,
                        logits,
                    }
                })
                .collect();
            self.model.forward_batch_picks(&mut batch)
        };
        for (id, seq) in taken {
            self.seqs.insert(id, seq);
        }
        let (logits, picks) = result?;
        let send = rank == 0 || req.logits_from_all_ranks;
        let mut seqs = Vec::with_capacity(req.seqs.len());
        for (((s, l), output), pick) in req.seqs.iter().zip(logits).zip(outputs).zip(picks) {
            let rows = l.shape[0];
            let mut reply = SeqLogits {
                seq_id: s.seq_id,
                rows: rows as u32,
                logits: Vec::new(),
                token: None,
            };
            if let Some(p) = self.pickers.get_mut(&s.seq_id) {
                p.history.extend_from_slice(&s.ids);
                if send && pick.is_some() {
                    reply.token = pick;
                } else if send && output == StepOutput::Token {
                    let vocab = l.data.len() / rows.max(1);
                    let last = &l.data[(rows.saturating_sub(1)) * vocab..];
                    reply.token = Some(p.sampler.sample(last, &p.history));
                }
            }
            if send && output == StepOutput::Logits {
                reply.logits = l.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            }
            seqs.push(reply);
        }
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
    pub kv_dtype: tessera_backend::KvDType,
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
        let mut model = model;
        model.set_kv_dtype(self.spec.kv_dtype)?;
        model.warm_up()?;
        Ok(Box::new(Loaded {
            model,
            seqs: HashMap::new(),
            pickers: HashMap::new(),
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

    fn seq(seq_id: u64, ids: Vec<u32>, capacity: u32) -> SeqStep {
        SeqStep {
            seq_id,
            ids,
            capacity,
            all_logits: false,
            sampling: None,
            output: StepOutput::Logits as i32,
        }
    }

    fn tiny_shard() -> Box<dyn ShardEngine> {
        let spec = LoadSpec {
            model: "dummy:tiny".into(),
            dtype: WeightDType::F32,
            kv_dtype: tessera_backend::KvDType::F32,
            device: Device::Cpu,
            threads: 1,
            rank: 0,
            world: 1,
            offload: None,
        };
        load(&spec, Box::new(tessera_comm::Local), |_, _| {}).unwrap()
    }

    fn step(seqs: Vec<SeqStep>) -> StepRequest {
        StepRequest {
            seqs,
            drop: vec![],
            logits_from_all_ranks: false,
        }
    }

    /// The wire form of `p` (what the launcher's scheduler sends).
    fn spec_of(p: &SamplingParams) -> SamplingSpec {
        SamplingSpec {
            temperature: p.temperature,
            top_k: p.top_k as u32,
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            seed: p.seed,
        }
    }

    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Sequence 1 returns logits and is sampled here, as the launcher did;
    /// sequence 2 is fed the same ids and samples on the worker with the same
    /// values. Temperature, top-k, top-p and a repetition penalty (which reads
    /// the history) are all on, so a wrong history or RNG changes the tokens.
    #[test]
    fn tokens_sampled_on_the_worker_equal_sampling_the_returned_logits() {
        let mut shard = tiny_shard();
        let params = SamplingParams {
            temperature: 1.3,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.5,
            seed: 11,
        };
        let spec = spec_of(&params);
        let mut here = Sampler::new(params).unwrap();
        let prompt: Vec<u32> = vec![3, 9, 27, 81, 5, 15, 45];
        // The prompt in two chunks: the first returns nothing at all (and
        // skips the LM head: no rows), first for sequence 2 alone, then for
        // both in one step.
        let mut second = seq(2, prompt[..2].to_vec(), 64);
        second.sampling = Some(spec);
        second.output = StepOutput::Nothing as i32;
        let reply = shard.step(&step(vec![second]), 0).unwrap();
        assert_eq!(reply.seqs[0].rows, 0);
        let mut first = seq(1, prompt[..4].to_vec(), 64);
        let mut second = seq(2, prompt[2..4].to_vec(), 0);
        second.output = StepOutput::Nothing as i32;
        first.output = StepOutput::Logits as i32;
        let reply = shard.step(&step(vec![first, second]), 0).unwrap();
        assert_eq!((reply.seqs[0].rows, reply.seqs[1].rows), (1, 0));
        assert!(!reply.seqs[0].logits.is_empty());
        assert!(reply.seqs[1].logits.is_empty() && reply.seqs[1].token.is_none());

        let mut history = prompt.clone();
        let mut feed = prompt[4..].to_vec();
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..12 {
            let mut second = seq(2, feed.clone(), 0);
            second.output = StepOutput::Token as i32;
            let reply = shard
                .step(&step(vec![seq(1, feed.clone(), 0), second]), 0)
                .unwrap();
            let logits = floats(&reply.seqs[0].logits);
            assert_eq!(reply.seqs[1].rows, 1);
            assert!(
                reply.seqs[1].logits.is_empty(),
                "a token step sends no logits"
            );
            let want = here.sample(&logits, &history);
            assert_eq!(reply.seqs[1].token, Some(want));
            distinct.insert(want);
            history.push(want);
            feed = vec![want];
        }
        // Sampling, not a constant: the seeded draws differ.
        assert!(distinct.len() > 3, "{distinct:?}");
    }

    /// Greedy sequences get their token from `Logits::Argmax` (picked where
    /// the logits are), a sampled one in the same step from the host
    /// sampler, a logits one its logits: all as sampling the logits here.
    #[test]
    fn greedy_tokens_from_the_device_choice_equal_the_logits_argmax() {
        let mut shard = tiny_shard();
        let greedy = spec_of(&SamplingParams::default());
        let params = SamplingParams {
            temperature: 0.9,
            top_k: 20,
            seed: 3,
            ..SamplingParams::default()
        };
        let sampled = spec_of(&params);
        let prompt: Vec<u32> = vec![7, 1, 8, 2, 8];
        let mut here = Sampler::new(params).unwrap();
        let mut history = prompt.clone();
        // Sequences 2 and 3 greedy, 4 sampled, 1 returns logits; all fed the
        // same ids, so they share logits and the greedy picks are their argmax.
        let mut feed = prompt.clone();
        for step_no in 0..6 {
            let mut seqs = vec![seq(1, feed.clone(), 32)];
            for (id, spec) in [(2, greedy), (3, greedy), (4, sampled)] {
                let mut s = seq(id, feed.clone(), 32);
                s.sampling = (step_no == 0).then_some(spec);
                s.output = StepOutput::Token as i32;
                seqs.push(s);
            }
            let reply = shard.step(&step(seqs), 0).unwrap();
            let logits = floats(&reply.seqs[0].logits);
            let best = tessera_backend::argmax(&logits);
            assert_eq!(reply.seqs[1].token, Some(best), "step {step_no}");
            assert_eq!(reply.seqs[2].token, Some(best), "step {step_no}");
            assert!(reply.seqs[1].logits.is_empty() && reply.seqs[2].logits.is_empty());
            assert_eq!(reply.seqs[3].token, Some(here.sample(&logits, &history)));
            history.push(best);
            feed = vec![best];
        }
    }

    #[test]
    fn bad_sampling_requests_are_refused_by_name_before_anything_runs() {
        let mut shard = tiny_shard();
        // A token from a sequence made without sampling values.
        let mut s = seq(1, vec![1, 2], 16);
        s.output = StepOutput::Token as i32;
        let e = shard.step(&step(vec![s]), 0).unwrap_err().to_string();
        assert!(
            e.contains("sequence 1") && e.contains("without sampling values"),
            "{e}"
        );
        // Values that mean nothing.
        let mut s = seq(2, vec![1, 2], 16);
        s.sampling = Some(SamplingSpec {
            temperature: 0.7,
            top_k: 0,
            top_p: 0.0,
            repetition_penalty: 1.0,
            seed: 1,
        });
        s.output = StepOutput::Token as i32;
        let e = shard.step(&step(vec![s]), 0).unwrap_err().to_string();
        assert!(e.contains("sequence 2") && e.contains("top_p"), "{e}");
        // An output this worker does not know.
        let mut s = seq(3, vec![1, 2], 16);
        s.output = 7;
        let e = shard.step(&step(vec![s]), 0).unwrap_err().to_string();
        assert!(e.contains("unknown step output 7"), "{e}");
        // None of them made a sequence.
        let reply = shard.step(&step(vec![]), 0).unwrap();
        assert_eq!(reply.live_sequences, 0);
    }

    #[test]
    fn step_replies_report_the_cpu_kv_pool() {
        let mut shard = tiny_shard();
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
