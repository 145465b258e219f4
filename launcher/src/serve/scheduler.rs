//! Continuous batching: iteration-level scheduling of many requests over one
//! worker group.
//!
//! Every iteration builds one step from the running sequences: decoding ones
//! contribute their last token, prefilling ones a chunk of their prompt
//! (at most `PREFILL_CHUNK` prompt tokens per step in all, so a long prompt
//! never stalls the running streams for more than one chunk). New requests
//! join between steps when a batch slot and enough KV blocks are free;
//! finished and cancelled ones leave, and their sequences are dropped on the
//! workers with the next step.
//!
//! KV memory is accounted in blocks of `BLOCK_TOKENS` positions. A request is
//! admitted only when the blocks for its whole budget (prompt + max_tokens)
//! are free, so an admitted request never fails for lack of memory; blocks go
//! back to the pool the moment a request ends or its client goes away.

use crate::launch::group::WorkerGroup;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tessera_engine::{FinishReason, SamplingParams, TextStream};
use tessera_model::Tokenizer;
use tessera_proto::worker::{SamplingSpec, SeqStep, StepOutput, StepRequest};
use tokio::sync::mpsc;

/// Positions per KV block.
pub const BLOCK_TOKENS: usize = 16;
/// Prompt tokens prefilled per step, over all prefilling sequences.
pub const PREFILL_CHUNK: usize = 64;

/// A validated generation request.
pub struct GenRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub eos_ids: Vec<u32>,
    pub events: mpsc::UnboundedSender<Event>,
}

/// What a request's client receives.
#[derive(Debug)]
pub enum Event {
    /// Newly stable text.
    Text(String),
    /// The end: why, and the token counts.
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        output_tokens: usize,
    },
    /// The request failed (a worker died, a step failed).
    Failed(tonic::Status),
}

/// Shared counters for the debug service and metrics.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    pub kv_block_tokens: usize,
    /// Rank 0's KV block pool after the last step (CPU workers; 0 on CUDA):
    /// blocks its sequences really hold, next to the reservations above.
    pub worker_kv_blocks_used: usize,
    pub worker_kv_blocks_total: usize,
    /// Weight streaming on rank 0 since start (0 when resident).
    pub offload_copies: u64,
    pub offload_bytes: u64,
    pub offload_copy_seconds: f64,
    pub offload_wait_seconds: f64,
    pub running: usize,
    pub queued: usize,
    pub steps: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub max_batch: usize,
}

struct Running {
    id: u64,
    req: GenRequest,
    /// Prompt tokens already sent to the workers.
    prefilled: usize,
    generated: Vec<u32>,
    text: TextStream,
    blocks: usize,
    /// The ids sent in the step in flight (None: not in it).
    in_step: Option<usize>,
}

pub struct Scheduler {
    pub group: WorkerGroup,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub queue: mpsc::Receiver<GenRequest>,
    pub stats: Arc<Mutex<Stats>>,
    pub max_batch: usize,
    pub kv_blocks: usize,
    /// Set to true to drain: take no new requests, finish the running ones, return.
    pub drain: Option<tokio::sync::watch::Receiver<bool>>,
}

/// A request's sampling values as the worker protocol carries them.
pub(crate) fn sampling_spec(p: &SamplingParams) -> SamplingSpec {
    SamplingSpec {
        temperature: p.temperature,
        top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
        top_p: p.top_p,
        repetition_penalty: p.repetition_penalty,
        seed: p.seed,
    }
}

fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_TOKENS)
}

impl Scheduler {
    fn stats(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Run until the queue closes (server shutdown) and nothing is running.
    /// Returns an error when the worker group fails.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let mut running: Vec<Running> = Vec::new();
        let mut waiting: VecDeque<GenRequest> = VecDeque::new();
        let mut drop_ids: Vec<u64> = Vec::new();
        let mut next_id: u64 = 1;
        let mut used_blocks = 0usize;
        let mut queue_open = true;
        self.stats(|s| {
            s.kv_blocks_total = self.kv_blocks;
            s.kv_block_tokens = BLOCK_TOKENS;
            s.max_batch = self.max_batch;
        });
        loop {
            if queue_open && self.drain.as_ref().is_some_and(|d| *d.borrow()) {
                // Requests already queued are still served; nothing new gets in.
                self.queue.close();
            }
            // Leave: clients that went away free their blocks now.
            running.retain(|r| {
                if r.req.events.is_closed() {
                    used_blocks -= r.blocks;
                    drop_ids.push(r.id);
                    if let Ok(mut s) = self.stats.lock() {
                        s.cancelled += 1;
                    }
                    false
                } else {
                    true
                }
            });
            waiting.retain(|w| !w.events.is_closed());
            // Join: admit in arrival order while a batch slot and the blocks
            // are free. Requests stay in the bounded queue until admitted
            // (at most one waits outside it, for blocks), so a full queue
            // pushes back on clients.
            while running.len() < self.max_batch {
                let req = match waiting.pop_front() {
                    Some(r) => r,
                    None if queue_open => match self.queue.try_recv() {
                        Ok(r) => r,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            queue_open = false;
                            break;
                        }
                    },
                    None => break,
                };
                if req.events.is_closed() {
                    continue;
                }
                let need = blocks_for(req.prompt_ids.len() + req.max_tokens);
                if used_blocks + need > self.kv_blocks {
                    waiting.push_front(req);
                    break;
                }
                used_blocks += need;
                // Rank 0 samples (`SeqStep.sampling`); refuse bad values here,
                // before the request takes a batch slot.
                if let Err(e) = req.sampling.validate() {
                    used_blocks -= need;
                    let _ = req
                        .events
                        .send(Event::Failed(tonic::Status::invalid_argument(
                            e.to_string(),
                        )));
                    continue;
                }
                running.push(Running {
                    id: next_id,
                    text: TextStream::new(req.stop.clone()),
                    req,
                    prefilled: 0,
                    generated: Vec::new(),
                    blocks: need,
                    in_step: None,
                });
                next_id += 1;
            }
            let (nrun, nwait) = (running.len(), waiting.len() + self.queue.len());
            self.stats(|s| {
                s.kv_blocks_used = used_blocks;
                s.running = nrun;
                s.queued = nwait;
            });
            if running.is_empty() {
                if !queue_open && waiting.is_empty() {
                    return Ok(());
                }
                // Idle: wait for work, or notice a dead worker.
                let drained = async {
                    match self.drain.as_mut() {
                        Some(d) => {
                            let _ = d.wait_for(|v| *v).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    r = self.queue.recv(), if queue_open => match r {
                        Some(r) => waiting.push_back(r),
                        None => queue_open = false,
                    },
                    d = self.group.died() => {
                        anyhow::bail!("{d}");
                    }
                    _ = drained, if queue_open => {}
                }
                continue;
            }

            // Build one step: decodes first, then prompt chunks up to the budget.
            let mut seqs = Vec::with_capacity(running.len());
            let mut budget = PREFILL_CHUNK;
            for r in running.iter_mut() {
                r.in_step = None;
                let ids: Vec<u32> = if r.prefilled < r.req.prompt_ids.len() {
                    if budget == 0 {
                        continue;
                    }
                    let end = (r.prefilled + budget).min(r.req.prompt_ids.len());
                    let chunk = r.req.prompt_ids[r.prefilled..end].to_vec();
                    budget -= chunk.len();
                    chunk
                } else {
                    match r.generated.last() {
                        Some(&t) => vec![t],
                        None => continue,
                    }
                };
                r.in_step = Some(ids.len());
                // The worker samples the next token once the prompt is in; a
                // chunk with more prompt to come returns nothing.
                let output = if r.prefilled + ids.len() < r.req.prompt_ids.len() {
                    StepOutput::Nothing
                } else {
                    StepOutput::Token
                };
                seqs.push(SeqStep {
                    seq_id: r.id,
                    ids,
                    capacity: (r.req.prompt_ids.len() + r.req.max_tokens) as u32,
                    all_logits: false,
                    sampling: (r.prefilled == 0).then(|| sampling_spec(&r.req.sampling)),
                    output: output as i32,
                });
            }
            let step = StepRequest {
                seqs,
                drop: std::mem::take(&mut drop_ids),
                logits_from_all_ranks: false,
            };
            let reply = match self.group.step(step).await {
                Ok(r) => r,
                Err(e) => {
                    let status = tonic::Status::unavailable(crate::error_line::one_line(&e));
                    for r in running.drain(..) {
                        let _ = r.req.events.send(Event::Failed(status.clone()));
                    }
                    self.stats(|s| s.failed += nrun as u64);
                    return Err(e);
                }
            };
            self.stats(|s| {
                s.steps += 1;
                s.worker_kv_blocks_used = reply.kv_blocks_used as usize;
                s.worker_kv_blocks_total = reply.kv_blocks_total as usize;
                s.offload_copies += reply.offload_copies as u64;
                s.offload_bytes += reply.offload_bytes;
                s.offload_copy_seconds += reply.offload_copy_us as f64 * 1e-6;
                s.offload_wait_seconds += reply.offload_wait_us as f64 * 1e-6;
            });

            // Take the token of every sequence whose prompt is complete.
            let mut logits = reply.seqs.into_iter();
            let mut finished = Vec::new();
            for (i, r) in running.iter_mut().enumerate() {
                let Some(sent) = r.in_step.take() else {
                    continue;
                };
                let Some(out) = logits.next() else {
                    anyhow::bail!("a step returned fewer logits than sequences");
                };
                if r.prefilled < r.req.prompt_ids.len() {
                    r.prefilled += sent;
                    if r.prefilled < r.req.prompt_ids.len() {
                        continue; // more prompt to go: these logits are not used
                    }
                }
                let Some(next) = out.token else {
                    anyhow::bail!("a step returned no token for sequence {}", r.id);
                };
                r.generated.push(next);
                let eos = r.req.eos_ids.contains(&next);
                let at_limit = r.generated.len() >= r.req.max_tokens;
                let piece =
                    match r
                        .text
                        .update(self.tokenizer.as_deref(), &r.generated, eos || at_limit)
                    {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = r
                                .req
                                .events
                                .send(Event::Failed(tonic::Status::internal(e.to_string())));
                            finished.push(i);
                            continue;
                        }
                    };
                if !piece.is_empty() {
                    let _ = r.req.events.send(Event::Text(piece));
                }
                let finish = if eos {
                    Some(FinishReason::Eos)
                } else if r.text.stopped() {
                    Some(FinishReason::Stop)
                } else if at_limit {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                if let Some(finish) = finish {
                    let _ = r.req.events.send(Event::Done {
                        finish,
                        prompt_tokens: r.req.prompt_ids.len(),
                        output_tokens: r.generated.len(),
                    });
                    finished.push(i);
                }
            }
            let done = finished.len() as u64;
            for i in finished.into_iter().rev() {
                let r = running.remove(i);
                used_blocks -= r.blocks;
                drop_ids.push(r.id);
            }
            self.stats(|s| s.completed += done);
        }
    }
}

/// The stats as the debug service returns them.
pub fn stats_json(stats: &Mutex<Stats>) -> String {
    match stats.lock() {
        Ok(s) => json!(*s).to_string(),
        Err(_) => "{}".into(),
    }
}

/// The stats in the Prometheus text format (version 0.0.4).
pub fn prometheus(stats: &Mutex<Stats>) -> String {
    let Ok(s) = stats.lock() else {
        return String::new();
    };
    let s = s.clone();
    let rows: [(&str, &str, &str, f64); 16] = [
        (
            "tessera_requests_running",
            "gauge",
            "Sequences in the running batch.",
            s.running as f64,
        ),
        (
            "tessera_requests_queued",
            "gauge",
            "Requests waiting for a batch slot or KV blocks.",
            s.queued as f64,
        ),
        (
            "tessera_max_batch",
            "gauge",
            "Batch slots (server.max_batch).",
            s.max_batch as f64,
        ),
        (
            "tessera_kv_blocks_used",
            "gauge",
            "KV blocks reserved by admitted requests (router accounting).",
            s.kv_blocks_used as f64,
        ),
        (
            "tessera_kv_blocks_total",
            "gauge",
            "KV blocks the router admits against.",
            s.kv_blocks_total as f64,
        ),
        (
            "tessera_kv_block_tokens",
            "gauge",
            "Positions per KV block.",
            s.kv_block_tokens as f64,
        ),
        (
            "tessera_worker_kv_blocks_used",
            "gauge",
            "KV pool blocks holding positions on rank 0 (0 where the backend has no pool).",
            s.worker_kv_blocks_used as f64,
        ),
        (
            "tessera_worker_kv_blocks_total",
            "gauge",
            "KV pool blocks allocated on rank 0.",
            s.worker_kv_blocks_total as f64,
        ),
        (
            "tessera_steps_total",
            "counter",
            "Engine steps run.",
            s.steps as f64,
        ),
        (
            "tessera_requests_completed_total",
            "counter",
            "Requests finished (length, eos or stop).",
            s.completed as f64,
        ),
        (
            "tessera_requests_cancelled_total",
            "counter",
            "Requests whose client went away.",
            s.cancelled as f64,
        ),
        (
            "tessera_requests_failed_total",
            "counter",
            "Requests failed by a worker or step error.",
            s.failed as f64,
        ),
        (
            "tessera_offload_copies_total",
            "counter",
            "Layers copied to the device by weight streaming (rank 0).",
            s.offload_copies as f64,
        ),
        (
            "tessera_offload_bytes_total",
            "counter",
            "Bytes copied to the device by weight streaming (rank 0).",
            s.offload_bytes as f64,
        ),
        (
            "tessera_offload_copy_seconds_total",
            "counter",
            "Copy-engine busy time of weight streaming (rank 0).",
            s.offload_copy_seconds,
        ),
        (
            "tessera_offload_wait_seconds_total",
            "counter",
            "Time compute waited for a weight copy (rank 0).",
            s.offload_wait_seconds,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    out
}

/// Serve `GET /metrics` (Prometheus text) over plain HTTP/1.1 on `listener`,
/// one short connection at a time, on a thread of its own.
pub fn serve_metrics(listener: std::net::TcpListener, stats: Arc<Mutex<Stats>>) {
    use std::io::{BufRead, BufReader, Write};
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut line = String::new();
            let Ok(reader) = conn.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(reader);
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let (status, body) = if line.starts_with("GET /metrics") {
                ("200 OK", prometheus(&stats))
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}
