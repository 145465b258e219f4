//! Recorded decode steps on the engine's side (see `StepRecording`); the
//! backend's part is `Backend::begin_step_graph` and its siblings
//! (`tessera-backend`'s cuda/graph.rs).

use super::{BatchEntry, Model, Sequence};
use crate::{EngineError, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use tessera_backend::Backend;
use tessera_model::HostTensor;

/// Distinct ids for loaded models.
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

/// An id no other loaded model has (tells recordings of different models apart).
pub(super) fn next_model_id() -> u64 {
    NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed)
}

/// How a sequence's single-token decode steps run. Backends that can record a
/// step (CUDA graphs) run the first one eagerly (it warms up per-shape kernel
/// choices and tables), record the second and replay the recording from then
/// on; recording reads position and token from device memory, so one
/// recording serves every later position of the sequence.
pub(super) enum StepRecording<G> {
    /// Eager single-token steps so far.
    Eager(u32),
    /// Recorded by the model with this id (it bakes in that model's weights
    /// and this sequence's cache).
    Recorded { model: u64, graph: G },
    /// Recording is impossible or failed for this sequence: always eager.
    Off,
}

/// Decode steps replayed from recordings (CUDA graphs), for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingStats {
    /// Steps replayed from a recording since the model was loaded.
    pub replayed: u64,
    /// Why the last attempt to record a step failed (the step then ran eagerly).
    pub last_failure: Option<String>,
    /// Of `replayed`, the steps run in groups on the device with their
    /// greedy choice made there (`Model::decode_greedy`), and the groups.
    pub greedy_steps: u64,
    pub greedy_groups: u64,
}

impl<B: Backend> Model<B> {
    /// Decode steps replayed from recordings (CUDA graphs) so far.
    pub fn recording_stats(&self) -> RecordingStats {
        RecordingStats {
            replayed: self.replayed.load(Ordering::Relaxed),
            greedy_steps: self.greedy_steps.load(Ordering::Relaxed),
            greedy_groups: self.greedy_groups.load(Ordering::Relaxed),
            last_failure: self
                .recording_failure
                .lock()
                .map(|g| g.clone())
                .unwrap_or_default(),
        }
    }

    /// A single-token step of a lone sequence, replayed from (or recorded
    /// into) the sequence's recording when the backend records steps; `None`
    /// when the step must run eagerly (see `StepRecording`).
    pub(super) fn recorded_step(
        &self,
        batch: &mut [BatchEntry<'_, B>],
    ) -> Result<Option<HostTensor>> {
        if batch.len() != 1 || self.plan.world() != 1 || !self.weights.recordable() {
            return Ok(None);
        }
        let e = &mut batch[0];
        if e.ids.len() != 1 || !matches!(e.logits, super::Logits::Last | super::Logits::Argmax) {
            return Ok(None);
        }
        let (pos, token) = (e.seq.len, e.ids[0]);
        match std::mem::replace(&mut e.seq.graph, StepRecording::Off) {
            StepRecording::Recorded { model, graph } if model == self.id => {
                let out = self.backend.replay_step_graph(&graph, pos, token)?;
                e.seq.graph = StepRecording::Recorded { model, graph };
                self.finish_recorded(e);
                return Ok(Some(out));
            }
            StepRecording::Off => return Ok(None),
            StepRecording::Eager(n) if n >= 1 => {}
            // The first eager step, or a recording of another model (dropped).
            _ => {
                e.seq.graph = StepRecording::Eager(1);
                return Ok(None);
            }
        }
        // Record this step; the sequence stays `Off` (eager) if that fails.
        let graph = match self
            .backend
            .begin_step_graph(pos, token, self.spec.vocab_size)
        {
            Ok(false) => return Ok(None),
            Ok(true) => {
                let rows = [(0, 1, pos)];
                let logits = self.run_layers(batch, &rows, &[token]).and_then(|x| {
                    let b = &self.backend;
                    let hn = b.rms_norm(&x, &self.norm, self.spec.rms_norm_eps)?;
                    Ok(b.matmul(&hn, self.lm_head.as_ref().unwrap_or(&self.embed))?)
                });
                match logits {
                    Ok(l) => self.backend.end_step_graph(l).map_err(EngineError::from),
                    Err(err) => {
                        self.backend.abort_step_graph();
                        Err(err)
                    }
                }
            }
            Err(err) => Err(err.into()),
        };
        let graph = match graph {
            Ok(g) => g,
            Err(err) => {
                if let Ok(mut f) = self.recording_failure.lock() {
                    *f = Some(err.to_string());
                }
                return Ok(None);
            }
        };
        let e = &mut batch[0];
        let out = self.backend.replay_step_graph(&graph, pos, token)?;
        e.seq.graph = StepRecording::Recorded {
            model: self.id,
            graph,
        };
        self.finish_recorded(e);
        Ok(Some(out))
    }

    /// Account a step that ran from a recording.
    fn finish_recorded(&self, e: &mut BatchEntry<'_, B>) {
        self.weights.end_step();
        e.seq.len += 1;
        self.replayed.fetch_add(1, Ordering::Relaxed);
    }
}

impl<B: Backend> Model<B> {
    /// Up to `n` greedy decode steps of a lone sequence from its recording,
    /// run back to back on the device (`Backend::replay_step_graph_greedy`):
    /// the first step appends `token`, each later one the previous step's
    /// choice; returns the n choices. `Ok(None)` when they cannot run that
    /// way (no recording yet, another backend, tensor parallelism): then
    /// step one token at a time. The sequence grows by n positions.
    pub fn decode_greedy(
        &self,
        seq: &mut Sequence<B>,
        token: u32,
        n: usize,
    ) -> Result<Option<Vec<u32>>> {
        if n == 0 || self.plan.world() != 1 || !self.weights.recordable() {
            return Ok(None);
        }
        if seq.len + n > seq.capacity {
            return Err(EngineError::ContextExceeded {
                prompt: seq.len,
                new: n,
                context: seq.capacity,
            });
        }
        if token as usize >= self.spec.vocab_size {
            return Err(EngineError::TokenOutOfRange {
                id: token,
                vocab: self.spec.vocab_size,
            });
        }
        let StepRecording::Recorded { model, graph } = &seq.graph else {
            return Ok(None);
        };
        if *model != self.id {
            return Ok(None);
        }
        let Some(tokens) = self
            .backend
            .replay_step_graph_greedy(graph, seq.len, token, n)?
        else {
            return Ok(None);
        };
        for _ in 0..n {
            self.weights.end_step();
        }
        seq.len += n;
        self.replayed.fetch_add(n as u64, Ordering::Relaxed);
        self.greedy_steps.fetch_add(n as u64, Ordering::Relaxed);
        self.greedy_groups.fetch_add(1, Ordering::Relaxed);
        Ok(Some(tokens))
    }
}
