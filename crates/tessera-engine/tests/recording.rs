//! The engine's side of recorded decode steps (CUDA graphs), on the CPU: a
//! backend that delegates every op to `CpuBackend` and fails to record in a
//! chosen way. Whatever goes wrong while recording, the engine must abandon
//! the recording, run the step eagerly and give the tokens and logits of a
//! backend that never records; it must try once per sequence, only from the
//! second single-token step on, and say why recording failed. Replays
//! themselves need a GPU (crates/tessera-backend/tests/cuda/gemv.rs).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tessera_backend::cpu::{CpuBackend, CpuKvCache, CpuLinear, CpuTensor};
use tessera_backend::{AttentionShape, Backend, BackendError, Result, WeightDType};
use tessera_engine::Model;
use tessera_model::HostTensor;

/// How the mock's recording goes wrong.
#[derive(Clone, Copy, PartialEq)]
enum Failure {
    /// `begin_step_graph` says this backend does not record.
    Declines,
    /// An op fails while recording (as a synchronising op fails under capture).
    OpFails,
    /// Every op works, `end_step_graph` fails (as instantiation can).
    EndFails,
}

#[derive(Default)]
struct Counts {
    begins: AtomicUsize,
    aborts: AtomicUsize,
    ends: AtomicUsize,
    recording: AtomicBool,
    matmuls: AtomicUsize,
}

struct Mock {
    cpu: CpuBackend,
    failure: Failure,
    counts: Arc<Counts>,
    /// What `wants_warm_up` answers.
    warm: bool,
}

impl Mock {
    fn fail_if_recording(&self, op: &str) -> Result<()> {
        if self.failure == Failure::OpFails && self.counts.recording.load(Ordering::SeqCst) {
            return Err(BackendError::Device(format!("mock: {op} while recording")));
        }
        Ok(())
    }
}

impl Backend for Mock {
    type Tensor = CpuTensor;
    type Linear = CpuLinear;
    type KvCache = CpuKvCache;
    type StepGraph = ();

    fn name(&self) -> String {
        "mock".into()
    }
    fn upload(&self, t: &HostTensor) -> Result<CpuTensor> {
        self.cpu.upload(t)
    }
    fn download(&self, t: &CpuTensor) -> Result<HostTensor> {
        self.cpu.download(t)
    }
    fn dims(&self, t: &CpuTensor) -> (usize, usize) {
        self.cpu.dims(t)
    }
    fn upload_linear(&self, w: &HostTensor, dtype: WeightDType) -> Result<CpuLinear> {
        self.cpu.upload_linear(w, dtype)
    }
    fn linear_dims(&self, w: &CpuLinear) -> (usize, usize) {
        self.cpu.linear_dims(w)
    }
    fn slice_rows(&self, x: &CpuTensor, start: usize, count: usize) -> Result<CpuTensor> {
        self.cpu.slice_rows(x, start, count)
    }
    fn split_cols(&self, x: &CpuTensor, widths: &[usize]) -> Result<Vec<CpuTensor>> {
        self.cpu.split_cols(x, widths)
    }
    fn concat_rows(&self, parts: &[&CpuTensor]) -> Result<CpuTensor> {
        self.cpu.concat_rows(parts)
    }
    fn embedding(&self, table: &CpuLinear, ids: &[u32]) -> Result<CpuTensor> {
        self.cpu.embedding(table, ids)
    }
    fn rms_norm(&self, x: &CpuTensor, w: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        self.cpu.rms_norm(x, w, eps)
    }
    fn matmul(&self, x: &CpuTensor, w: &CpuLinear) -> Result<CpuTensor> {
        self.counts.matmuls.fetch_add(1, Ordering::SeqCst);
        self.cpu.matmul(x, w)
    }
    fn add_bias(&self, x: &mut CpuTensor, bias: &CpuTensor) -> Result<()> {
        self.cpu.add_bias(x, bias)
    }
    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        self.cpu.add_assign(x, y)
    }
    fn swiglu(&self, gate_up: &CpuTensor) -> Result<CpuTensor> {
        self.cpu.swiglu(gate_up)
    }
    fn rope(
        &self,
        x: &mut CpuTensor,
        heads: usize,
        head_dim: usize,
        start_pos: usize,
        inv_freq: &[f32],
    ) -> Result<()> {
        self.cpu.rope(x, heads, head_dim, start_pos, inv_freq)
    }
    fn kv_cache(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<CpuKvCache> {
        self.cpu.kv_cache(layers, kv_heads, head_dim, capacity)
    }
    fn kv_store(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        start_pos: usize,
        k: &CpuTensor,
        v: &CpuTensor,
    ) -> Result<()> {
        self.cpu.kv_store(cache, layer, start_pos, k, v)
    }
    fn attention(
        &self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        start_pos: usize,
        shape: AttentionShape,
    ) -> Result<CpuTensor> {
        self.fail_if_recording("attention")?;
        self.cpu.attention(q, cache, layer, start_pos, shape)
    }

    fn wants_warm_up(&self) -> bool {
        self.warm
    }
    fn begin_step_graph(&self, _pos: usize, _token: u32, _cols: usize) -> Result<bool> {
        self.counts.begins.fetch_add(1, Ordering::SeqCst);
        if self.failure == Failure::Declines {
            return Ok(false);
        }
        self.counts.recording.store(true, Ordering::SeqCst);
        Ok(true)
    }
    fn end_step_graph(&self, _logits: CpuTensor) -> Result<()> {
        self.counts.ends.fetch_add(1, Ordering::SeqCst);
        self.counts.recording.store(false, Ordering::SeqCst);
        Err(BackendError::Device("mock: cannot instantiate".into()))
    }
    fn abort_step_graph(&self) {
        self.counts.aborts.fetch_add(1, Ordering::SeqCst);
        self.counts.recording.store(false, Ordering::SeqCst);
    }
}

/// Prefill, then `steps` single-token steps (greedy); every step's logits.
fn decode<B: Backend + 'static>(model: &Model<B>, steps: usize) -> Vec<Vec<f32>> {
    let mut seq = model.new_sequence(64).unwrap();
    let mut out = vec![model.forward(&mut seq, &[3, 17, 250, 9], false).unwrap()];
    for _ in 0..steps {
        let next = tessera_engine::argmax(&out.last().unwrap().data);
        out.push(model.forward(&mut seq, &[next], false).unwrap());
    }
    out.into_iter().map(|t| t.data).collect()
}

fn load<B: Backend + 'static>(backend: B) -> Model<B> {
    let ckpt = tessera_model::dummy::open("tiny", 11).unwrap();
    Model::load(
        backend,
        &ckpt.spec,
        ckpt.source.as_ref(),
        WeightDType::F32,
        |_, _| {},
    )
    .unwrap()
}

#[test]
fn failed_recordings_fall_back_to_eager_steps_with_the_same_logits() {
    let want = decode(&load(CpuBackend::new(2).unwrap()), 6);
    for failure in [Failure::Declines, Failure::OpFails, Failure::EndFails] {
        let counts = Arc::new(Counts::default());
        let mock = Mock {
            cpu: CpuBackend::new(2).unwrap(),
            failure,
            counts: counts.clone(),
            warm: false,
        };
        let model = load(mock);
        // The first single-token step is eager: no recording yet.
        let mut seq = model.new_sequence(64).unwrap();
        model.forward(&mut seq, &[3, 17, 250, 9], false).unwrap();
        model.forward(&mut seq, &[5], false).unwrap();
        assert_eq!(counts.begins.load(Ordering::SeqCst), 0);
        model.forward(&mut seq, &[6], false).unwrap();
        assert_eq!(counts.begins.load(Ordering::SeqCst), 1);
        drop(seq);

        let got = decode(&model, 6);
        assert!(
            got == want,
            "logits differ from a backend that never records"
        );
        // One attempt per sequence (two sequences so far), none replayed.
        assert_eq!(counts.begins.load(Ordering::SeqCst), 2);
        let stats = model.recording_stats();
        assert_eq!(stats.replayed, 0);
        match failure {
            Failure::Declines => {
                assert_eq!(counts.ends.load(Ordering::SeqCst), 0);
                assert_eq!(counts.aborts.load(Ordering::SeqCst), 0);
                assert_eq!(stats.last_failure, None);
            }
            Failure::OpFails => {
                assert_eq!(counts.aborts.load(Ordering::SeqCst), 2);
                assert_eq!(counts.ends.load(Ordering::SeqCst), 0);
                let why = stats.last_failure.expect("a reason");
                assert!(why.contains("attention while recording"), "{why}");
            }
            Failure::EndFails => {
                assert_eq!(counts.ends.load(Ordering::SeqCst), 2);
                assert_eq!(counts.aborts.load(Ordering::SeqCst), 0);
                let why = stats.last_failure.expect("a reason");
                assert!(why.contains("cannot instantiate"), "{why}");
            }
        }
    }
}

#[test]
fn batches_prefill_and_all_logits_steps_are_never_recorded() {
    let counts = Arc::new(Counts::default());
    let mock = Mock {
        cpu: CpuBackend::new(2).unwrap(),
        failure: Failure::EndFails,
        counts: counts.clone(),
        warm: false,
    };
    let model = load(mock);
    let mut seq = model.new_sequence(64).unwrap();
    model.forward(&mut seq, &[3, 17, 250, 9], false).unwrap();
    for t in [5, 6, 7] {
        // Logits of every position (perplexity) are never recorded.
        model.forward(&mut seq, &[t], true).unwrap();
    }
    let (mut a, mut b) = (
        model.new_sequence(64).unwrap(),
        model.new_sequence(64).unwrap(),
    );
    for t in [1u32, 2, 3, 4] {
        let mut batch = [
            tessera_engine::BatchEntry {
                seq: &mut a,
                ids: &[t],
                logits: tessera_engine::Logits::Last,
            },
            tessera_engine::BatchEntry {
                seq: &mut b,
                ids: &[t + 1],
                logits: tessera_engine::Logits::Last,
            },
        ];
        model.forward_batch(&mut batch).unwrap();
    }
    assert_eq!(counts.begins.load(Ordering::SeqCst), 0);
}

/// `Model::warm_up` runs one single-token step exactly when the backend asks
/// for one, and leaves nothing behind: later sequences give the logits of a
/// model that never warmed up, and no step counts as replayed.
#[test]
fn warm_up_runs_one_throwaway_step_only_where_the_backend_wants_it() {
    let cpu_model = load(CpuBackend::new(2).unwrap());
    assert!(
        !cpu_model.warm_up().unwrap(),
        "the CPU backend has nothing to warm"
    );
    let want = decode(&cpu_model, 4);
    for warm in [false, true] {
        let counts = Arc::new(Counts::default());
        let mock = Mock {
            cpu: CpuBackend::new(2).unwrap(),
            failure: Failure::Declines,
            counts: counts.clone(),
            warm,
        };
        let model = load(mock);
        assert_eq!(model.warm_up().unwrap(), warm);
        let ran = counts.matmuls.load(Ordering::SeqCst);
        if warm {
            // Q/K/V, O, gate/up, down per layer and the LM head, one row each.
            let layers = model.spec().num_layers;
            assert_eq!(ran, 4 * layers + 1, "matmuls of the warm-up step");
        } else {
            assert_eq!(ran, 0, "no warm-up wanted, none run");
        }
        assert!(
            decode(&model, 4) == want,
            "warm-up changed later logits (warm {warm})"
        );
        assert_eq!(model.recording_stats().replayed, 0);
        assert_eq!(
            counts.begins.load(Ordering::SeqCst),
            1,
            "one recording attempt, by decode"
        );
    }
}
