//! Recorded decode steps: a single-token forward step of one sequence is
//! captured once as a CUDA graph and replayed for every later token, so a
//! step costs one graph launch instead of ~200 kernel launches, their
//! allocations and the host time between them.
//!
//! What makes a recording replayable at another position:
//! - Positions and the token come from device memory. While recording, every
//!   op that takes a position (RoPE, KV store, attention, column gathers)
//!   passes it as an offset from the step's device scalar `desc[0]`
//!   (`step_pos` in kernels/common.cuh), and the embedding reads its id from
//!   `desc[1]`. The host writes both before each replay.
//! - Memory. Temporaries allocated while recording come from the
//!   stream-ordered allocator under capture, so they become the graph's own
//!   allocations, at the same addresses on every replay, freed inside it.
//!   The logits are copied into `out`, allocated before recording, so no
//!   graph allocation outlives a replay.
//! - No host synchronisation while recording. Ops that would synchronise
//!   (timing a GEMV shape seen for the first time, the first upload of a RoPE
//!   table) have run in an earlier eager step; if one runs anyway, capture
//!   fails, the engine abandons the recording and stays eager.
//!
//! A graph bakes in the addresses of the sequence's KV cache and of the
//! model's weights: it belongs to one sequence of one loaded model (the
//! engine keeps it with the sequence and checks the model). Turned off with
//! `TESSERA_CUDA_GRAPH=0` (A/B timing).
//!
//! Greedy steps without the host: a recording ends with `argmax_step`, which
//! writes the step's greedy choice into `desc[1]` (the next step's token),
//! advances `desc[0]` and appends the choice to `tokens`. So
//! `replay_step_graph_greedy` launches n replays back to back and reads the n
//! tokens once, instead of a logits copy, a host argmax and a launch per
//! token. Plain replays (any other sampling) rewrite `desc` every time.

use super::launch::{Args, Dims};
use super::{dev, CudaBackend, CudaTensor};
use crate::{BackendError, Result};
use cudarc::driver::{result, sys, CudaGraph, CudaSlice, PinnedHostSlice};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use tessera_model::HostTensor;

/// Greedy tokens one `replay_step_graph_greedy` call may produce.
pub const GREEDY_STEPS_MAX: usize = 64;

/// A recording in progress.
pub(crate) struct Capture {
    /// `[position, token, greedy count]`: the recorded kernels read the first
    /// two; the recorded argmax updates all three.
    desc: CudaSlice<i32>,
    /// Where the recorded step leaves its logits.
    out: CudaSlice<f32>,
    /// Where the recorded argmax appends its choices.
    tokens: CudaSlice<i32>,
    /// The position the step was recorded at; ops pass positions relative to it.
    base: usize,
    /// This recording's id (work deferred while recording belongs to it).
    serial: u64,
}

/// A recorded decode step (see the module doc).
pub struct CudaStepGraph {
    graph: CudaGraph,
    desc: CudaSlice<i32>,
    out: CudaSlice<f32>,
    /// The greedy choices of the replays since `desc[2]` was last zeroed.
    tokens: CudaSlice<i32>,
    /// Page-locked host copies of `desc`, `out` and `tokens`, so each
    /// replay's copies are plain DMA (a pageable 128 KB logits copy is staged
    /// by the driver, tens of microseconds per token).
    host: Mutex<StepHost>,
}

struct StepHost {
    desc: PinnedHostSlice<i32>,
    out: PinnedHostSlice<f32>,
    tokens: PinnedHostSlice<i32>,
}

// SAFETY: the graph handles are plain driver objects; the engine uses a
// step graph only through `&mut Sequence`, so never from two threads at once
// (the driver's requirement for graph objects).
unsafe impl Send for CudaStepGraph {}

fn poisoned() -> BackendError {
    BackendError::Device("internal: capture lock poisoned".into())
}

impl CudaBackend {
    /// `start` as the kernels take it: relative to the recorded step's
    /// position plus the address of its device scalar while recording,
    /// absolute with a null address otherwise.
    pub(crate) fn step_pos(&self, start: usize) -> Result<(usize, u64)> {
        let g = self.capture.lock().map_err(|_| poisoned())?;
        match g.as_ref() {
            None => Ok((start, 0)),
            Some(c) => {
                let rel = start.checked_sub(c.base).ok_or_else(|| {
                    BackendError::Device(format!(
                        "internal: position {start} before the recorded step's {}",
                        c.base
                    ))
                })?;
                Ok((rel, self.ptr(&c.desc)))
            }
        }
    }

    /// The id of the recording in progress; `None` when not recording.
    pub(crate) fn capture_id(&self) -> Result<Option<u64>> {
        let g = self.capture.lock().map_err(|_| poisoned())?;
        Ok(g.as_ref().map(|c| c.serial))
    }

    /// While recording: the device address of the step's token id.
    pub(crate) fn step_token_ptr(&self) -> Result<Option<u64>> {
        let g = self.capture.lock().map_err(|_| poisoned())?;
        Ok(g.as_ref().map(|c| self.ptr(&c.desc) + 4))
    }

    pub(crate) fn begin_step_graph_impl(
        &self,
        pos: usize,
        token: u32,
        cols: usize,
    ) -> Result<bool> {
        if !self.graphs || !self.ctx.has_async_alloc() {
            return Ok(false);
        }
        let pos_i = i32::try_from(pos).map_err(|_| {
            BackendError::Device(format!("position {pos} does not fit a recorded step"))
        })?;
        let mut g = self.capture.lock().map_err(|_| poisoned())?;
        if g.is_some() {
            return Err(BackendError::Device(
                "internal: a step is already being recorded".into(),
            ));
        }
        // Allocated (and written) before capture: they outlive every replay.
        let desc = self
            .stream
            .clone_htod(&[pos_i, token as i32, 0])
            .map_err(dev("record step"))?;
        let out = self.alloc::<f32>(cols)?;
        let tokens = self.alloc::<i32>(GREEDY_STEPS_MAX)?;
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(dev("begin recording a step"))?;
        *g = Some(Capture {
            desc,
            out,
            tokens,
            base: pos,
            serial: self.capture_serial.fetch_add(1, Ordering::Relaxed),
        });
        Ok(true)
    }

    pub(crate) fn end_step_graph_impl(&self, logits: CudaTensor) -> Result<CudaStepGraph> {
        let cap = self.capture.lock().map_err(|_| poisoned())?.take();
        let Some(mut cap) = cap else {
            return Err(BackendError::Device(
                "internal: end of a recording that never began".into(),
            ));
        };
        let n = logits.rows * logits.cols;
        let copied = if logits.rows != 1 || n != cap.out.len() {
            Err(BackendError::Device(format!(
                "internal: recorded logits are [{}, {}], expected [1, {}]",
                logits.rows,
                logits.cols,
                cap.out.len()
            )))
        } else {
            self.buf(&logits).and_then(|src| {
                self.stream
                    .memcpy_dtod(&src.slice(..n), &mut cap.out.slice_mut(..n))
                    .map_err(dev("record step"))
            })
        };
        // The greedy choice, feeding the next replay (module doc).
        let chose = match &copied {
            Ok(()) => self.launch_argmax(&cap.out, n, &cap.desc, &cap.tokens),
            Err(_) => Ok(()),
        };
        // Freed inside the graph: nothing allocated while recording outlives it.
        drop(logits);
        // Frees that failed against an invalidated capture leave an error in
        // the context; it belongs to this recording. Take it before ending
        // the capture: every driver call of cudarc reports a pending error
        // first, so end_capture would fail without ending the capture and
        // leave the stream recording for good.
        let stale = self.ctx.check_err();
        let ended = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(dev("finish recording a step"));
        let stale = stale.and(self.ctx.check_err());
        copied?;
        chose?;
        let graph = ended?
            .ok_or_else(|| BackendError::Device("recording a step produced no graph".into()))?;
        stale.map_err(dev("record step"))?;
        graph.upload().map_err(dev("upload a recorded step"))?;
        // Plain page-locked memory (not write-combined: the host reads the logits).
        // SAFETY: each is written before it is read (the replays below).
        let pinned = |n: usize| unsafe { self.ctx.alloc_pinned_with_flags::<i32>(n, 0) };
        let out_h = unsafe { self.ctx.alloc_pinned_with_flags::<f32>(cap.out.len(), 0) };
        let host = match (pinned(3), out_h, pinned(GREEDY_STEPS_MAX)) {
            (Ok(desc), Ok(out), Ok(tokens)) => StepHost { desc, out, tokens },
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Err(dev("cuMemHostAlloc (recorded step)")(e))
            }
        };
        Ok(CudaStepGraph {
            graph,
            desc: cap.desc,
            out: cap.out,
            tokens: cap.tokens,
            host: Mutex::new(host),
        })
    }

    pub(crate) fn abort_step_graph_impl(&self) {
        let Ok(mut g) = self.capture.lock() else {
            return;
        };
        let Some(cap) = g.take() else {
            return;
        };
        // Errors the failed recording left in the context (ops refused by an
        // invalidated capture) go first: cudarc reports a pending error from
        // the next driver call instead of making it, and the capture must end.
        let _ = self.ctx.check_err();
        if let Ok(status) = self.stream.capture_status() {
            if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                // Drops the partial graph (if any) at once.
                let _ = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
            }
        }
        let _ = self.ctx.check_err();
        // The step's scalars were allocated before recording: free them only
        // now, on a stream that no longer records (a free queued during the
        // capture would belong to the discarded graph and never run).
        drop(cap);
    }

    /// Write `[pos, token, 0]` into the graph's `desc` (ordered before what
    /// is launched next on the stream). The caller holds the host buffers.
    fn set_step(
        &self,
        g: &CudaStepGraph,
        host: &mut StepHost,
        pos: usize,
        token: u32,
    ) -> Result<()> {
        let pos_i = i32::try_from(pos).map_err(|_| {
            BackendError::Device(format!("position {pos} does not fit a recorded step"))
        })?;
        self.ctx.bind_to_thread().map_err(dev("replay step"))?;
        // Every replay ends synchronised, so the previous copy out of this
        // buffer is done.
        let vals = host.desc.as_mut_slice().map_err(dev("replay step"))?;
        vals.copy_from_slice(&[pos_i, token as i32, 0]);
        // SAFETY: desc holds three i32; the copy is ordered before the launch
        // on the same stream, and its page-locked source is not written again
        // before this replay has synchronised.
        unsafe { result::memcpy_htod_async(self.ptr(&g.desc), &vals[..], self.stream.cu_stream()) }
            .map_err(dev("replay step"))
    }

    pub(crate) fn replay_step_graph_impl(
        &self,
        g: &CudaStepGraph,
        pos: usize,
        token: u32,
    ) -> Result<HostTensor> {
        let mut host = g.host.lock().map_err(|_| poisoned())?;
        self.set_step(g, &mut host, pos, token)?;
        g.graph.launch().map_err(dev("replay step"))?;
        self.stream
            .memcpy_dtoh(&g.out, &mut host.out)
            .map_err(dev("replay step"))?;
        self.synchronize()?;
        let data = host.out.as_slice().map_err(dev("replay step"))?.to_vec();
        Ok(HostTensor::new(vec![1, data.len()], data))
    }

    /// Launch `argmax_step` over the first `n` values of `src`: the choice
    /// goes to `desc` (`[position, token, count]`) and `tokens[count]`.
    fn launch_argmax(
        &self,
        src: &CudaSlice<f32>,
        n: usize,
        desc: &CudaSlice<i32>,
        tokens: &CudaSlice<i32>,
    ) -> Result<()> {
        if n > src.len() || desc.len() < 3 || tokens.is_empty() {
            return Err(BackendError::Device(
                "internal: argmax buffers too small".into(),
            ));
        }
        let args = Args::new()
            .ptr(self.ptr(src))
            .int(n)
            .ptr(self.ptr(desc))
            .ptr(self.ptr(tokens))
            .int(tokens.len());
        // SAFETY: src holds at least n floats, desc three ints, and the
        // kernel writes at most tokens.len() tokens (checked above).
        unsafe { self.launch("argmax", &self.k.argmax_step, Dims::blocks(1, 256), args) }
    }

    /// The greedy choice of a `[1, n]` row by the kernel recorded steps end
    /// with (`argmax_step`): the id of the largest value, ties to the lowest
    /// id, a NaN never winning except at id 0.
    pub fn argmax_row(&self, x: &CudaTensor) -> Result<u32> {
        if x.rows != 1 || x.cols == 0 || i32::try_from(x.cols).is_err() {
            return Err(BackendError::Device(format!(
                "argmax of a [{}, {}] tensor: expected one non-empty row",
                x.rows, x.cols
            )));
        }
        let src = self.buf(x)?;
        let desc = self
            .stream
            .clone_htod(&[0i32, 0, 0])
            .map_err(dev("argmax"))?;
        let tokens = self.alloc::<i32>(1)?;
        self.launch_argmax(src, x.cols, &desc, &tokens)?;
        let got = self.stream.clone_dtoh(&tokens).map_err(dev("argmax"))?;
        Ok(got[0] as u32)
    }

    /// `Backend::argmax_rows`: one block per row (`argmax_rows`, the rule of
    /// `argmax_step`), then only the ids are copied back.
    pub(crate) fn argmax_rows_impl(&self, x: &CudaTensor) -> Result<Vec<u32>> {
        if x.cols == 0 || i32::try_from(x.cols).is_err() {
            return Err(BackendError::Device(format!(
                "argmax of [{}, {}] rows: expected non-empty rows",
                x.rows, x.cols
            )));
        }
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        let src = self.buf(x)?;
        let ids = self.alloc::<i32>(x.rows)?;
        let args = Args::new()
            .ptr(self.ptr(src))
            .int(x.cols)
            .ptr(self.ptr(&ids));
        // SAFETY: src holds rows x cols floats (a materialised tensor), ids
        // rows ints; block r reads row r and writes ids[r].
        unsafe {
            self.launch(
                "argmax_rows",
                &self.k.argmax_rows,
                Dims::blocks(x.rows, 256),
                args,
            )
        }?;
        let got = self.stream.clone_dtoh(&ids).map_err(dev("argmax_rows"))?;
        Ok(got.into_iter().map(|i| i as u32).collect())
    }

    /// `n` greedy steps from `pos` for `token`: n replays back to back, each
    /// fed the previous one's choice on the device; the n choices.
    pub(crate) fn replay_step_graph_greedy_impl(
        &self,
        g: &CudaStepGraph,
        pos: usize,
        token: u32,
        n: usize,
    ) -> Result<Vec<u32>> {
        if n == 0 || n > GREEDY_STEPS_MAX {
            return Err(BackendError::Device(format!(
                "{n} greedy steps in one call (1..={GREEDY_STEPS_MAX})"
            )));
        }
        if pos
            .checked_add(n)
            .is_none_or(|end| i32::try_from(end).is_err())
        {
            return Err(BackendError::Device(format!(
                "positions {pos}+{n} do not fit a recorded step"
            )));
        }
        let mut host = g.host.lock().map_err(|_| poisoned())?;
        self.set_step(g, &mut host, pos, token)?;
        for _ in 0..n {
            g.graph.launch().map_err(dev("replay greedy steps"))?;
        }
        self.stream
            .memcpy_dtoh(
                &g.tokens.slice(..n),
                &mut host
                    .tokens
                    .as_mut_slice()
                    .map_err(dev("replay greedy steps"))?[..n],
            )
            .map_err(dev("replay greedy steps"))?;
        self.synchronize()?;
        let got = host.tokens.as_slice().map_err(dev("replay greedy steps"))?;
        Ok(got[..n].iter().map(|&t| t as u32).collect())
    }
}
