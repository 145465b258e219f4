//! A group of worker processes: spawn (or accept joins), rendezvous, load,
//! run steps fanned out to every rank, and supervise.
//!
//! A worker that dies is noticed at once, by its exit status (spawned
//! workers) or by its `Attach` stream closing (joined workers); the step in
//! flight fails with a message naming the rank, and the others are stopped.

use super::progress::LoadBar;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_proto::worker::worker_client::WorkerClient;
use tessera_proto::worker::*;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

/// What the launcher asks the group for.
pub struct GroupSpec {
    /// Checkpoint path or `dummy:SHAPE:SEED`.
    pub model: String,
    pub dtype: String,
    /// KV cache element type, `f32` or `bf16`.
    pub kv_dtype: String,
    /// One per rank: `cpu` or `cuda:N`.
    pub devices: Vec<String>,
    pub threads: usize,
    pub transport: Transport,
    pub start_timeout: Duration,
    pub step_timeout: Duration,
    pub collective_timeout: Duration,
    /// Wait for `tessera worker --join` processes at this address instead of spawning.
    pub join_listen: Option<String>,
    /// Per rank: stream its layers within this plan (offload enabled).
    pub offload: Option<Vec<tessera_proto::worker::OffloadSpec>>,
}

/// One rank as the launcher sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerInfo {
    pub rank: usize,
    pub pid: u32,
    /// `local` or the worker's control address.
    pub place: String,
    pub backend: String,
    pub peak_rss_bytes: u64,
}

pub struct WorkerGroup {
    clients: Vec<WorkerClient<Channel>>,
    pub info: Vec<WorkerInfo>,
    death: watch::Receiver<Option<String>>,
    closing: Arc<AtomicBool>,
    /// Spawned workers not yet reaped (only these may be signalled).
    alive: Arc<Mutex<HashSet<u32>>>,
    step_timeout: Duration,
    _dir: Option<tempfile::TempDir>,
}

/// "exited with status 1" / "was killed by signal 9 (SIGKILL)".
fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
            _ => format!("ended ({s})"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

fn report_death(tx: &watch::Sender<Option<String>>, msg: String) {
    tx.send_if_modified(|d| {
        if d.is_none() {
            *d = Some(msg);
            true
        } else {
            false
        }
    });
}

async fn connect_unix(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://worker.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}

fn client(ch: Channel) -> WorkerClient<Channel> {
    WorkerClient::new(ch)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

impl WorkerGroup {
    /// Start every rank and bring the group to ready: spawn or accept joins,
    /// connect the collective, load the shards (progress on `bar`), and check
    /// readiness with a deadline.
    pub async fn start(spec: &GroupSpec, bar: &mut LoadBar) -> Result<WorkerGroup> {
        let world = spec.devices.len();
        let (death_tx, death) = watch::channel(None::<String>);
        let death_tx = Arc::new(death_tx);
        let closing = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(Mutex::new(HashSet::new()));
        let deadline = tokio::time::Instant::now() + spec.start_timeout;

        let (clients, places, dir) = match &spec.join_listen {
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("tessera-")
                    .tempdir()
                    .context("creating the folder for the workers' control sockets")?;
                let mut clients = Vec::with_capacity(world);
                for rank in 0..world {
                    let sock = dir.path().join(format!("rank-{rank}.sock"));
                    let pid = spawn_worker(rank, world, &sock, &death_tx, &closing, &alive)?;
                    let ch = loop {
                        if let Some(d) = death.borrow().clone() {
                            bail!("{d} while starting");
                        }
                        match connect_unix(sock.clone()).await {
                            Ok(ch) => break ch,
                            Err(e) if tokio::time::Instant::now() >= deadline => bail!(
                                "worker rank {rank} (pid {pid}) did not open its control socket within {:?}: {e}",
                                spec.start_timeout
                            ),
                            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
                        }
                    };
                    clients.push((client(ch), pid));
                }
                let places = vec!["local".to_string(); world];
                (clients, places, Some(dir))
            }
            Some(addr) => {
                let joined =
                    super::join::accept_joins(addr, world, deadline, spec.start_timeout).await?;
                let mut clients = Vec::with_capacity(world);
                let mut places = Vec::with_capacity(world);
                for j in joined {
                    let ch = Endpoint::from_shared(format!("http://{}", j.address))
                        .with_context(|| format!("rank {} address `{}`", j.rank, j.address))?
                        .connect()
                        .await
                        .with_context(|| {
                            format!("connecting to rank {} at {}", j.rank, j.address)
                        })?;
                    clients.push((client(ch), j.pid));
                    places.push(j.address);
                }
                (clients, places, None)
            }
        };

        let mut info = Vec::with_capacity(world);
        let mut plain = Vec::with_capacity(world);
        for (rank, ((mut c, _pid), place)) in clients.into_iter().zip(places).enumerate() {
            let hello = c
                .hello(HelloRequest {})
                .await
                .with_context(|| format!("worker rank {rank}: hello"))?
                .into_inner();
            if hello.rank as usize != rank || hello.world as usize != world {
                bail!(
                    "worker at {place} says it is rank {} of {}, expected rank {rank} of {world}",
                    hello.rank,
                    hello.world
                );
            }
            // The keep-alive: the worker exits when this stream closes, and we
            // learn of a dead worker when it ends.
            let mut stream = c
                .attach(AttachRequest {})
                .await
                .with_context(|| format!("worker rank {rank}: attach"))?
                .into_inner();
            let (tx, cl, pl) = (death_tx.clone(), closing.clone(), place.clone());
            tokio::spawn(async move {
                let why = loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break "closed its connection".to_string(),
                        Err(s) => break format!("connection lost: {}", s.message()),
                    }
                };
                // Let a spawned worker's exit status (more precise) arrive first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if !cl.load(Ordering::SeqCst) {
                    report_death(
                        &tx,
                        format!("worker rank {rank} ({pl}, pid {}) {why}", hello.pid),
                    );
                }
            });
            info.push(WorkerInfo {
                rank,
                pid: hello.pid,
                place,
                backend: String::new(),
                peak_rss_bytes: 0,
            });
            plain.push(c);
        }
        let mut group = WorkerGroup {
            clients: plain,
            info,
            death,
            closing,
            alive,
            step_timeout: spec.step_timeout,
            _dir: dir,
        };
        if let Err(e) = group.bring_up(spec, bar).await {
            group.abort();
            return Err(e);
        }
        Ok(group)
    }

    async fn bring_up(&mut self, spec: &GroupSpec, bar: &mut LoadBar) -> Result<()> {
        let world = self.clients.len();
        // Rendezvous: every rank opens its endpoint, then all connect at once.
        let mut peers = Vec::with_capacity(world);
        let mut nccl_id = Vec::new();
        for (rank, c) in self.clients.iter_mut().enumerate() {
            let bind_host = match &spec.join_listen {
                None => "127.0.0.1".to_string(),
                Some(_) => host_of(&self.info[rank].place),
            };
            let cuda_device = spec.devices[rank]
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let r = c
                .prepare_comm(PrepareCommRequest {
                    transport: spec.transport as i32,
                    bind_host,
                    cuda_device,
                })
                .await
                .map_err(|s| {
                    anyhow!(
                        "worker rank {rank}: preparing the collective: {}",
                        s.message()
                    )
                })?
                .into_inner();
            peers.push(r.address);
            if rank == 0 {
                nccl_id = r.nccl_id;
            }
        }
        let run_token = (std::process::id() as u64) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        let req = ConnectCommRequest {
            transport: spec.transport as i32,
            peers,
            nccl_id,
            timeout_ms: spec.collective_timeout.as_millis() as u64,
            run_token,
        };
        let calls = self.clients.iter().enumerate().map(|(rank, c)| {
            let (mut c, req) = (c.clone(), req.clone());
            tokio::spawn(async move {
                c.connect_comm(req).await.map_err(|s| {
                    anyhow!(
                        "worker rank {rank}: connecting the collective: {}",
                        s.message()
                    )
                })
            })
        });
        let calls: Vec<_> = calls.collect();
        self.watch(
            async {
                for h in calls {
                    h.await??;
                }
                Ok(())
            },
            spec.collective_timeout + Duration::from_secs(5),
            "connecting the collective",
        )
        .await?;

        // Load all shards at once, merging progress into one bar.
        let (ptx, mut prx) = mpsc::unbounded_channel::<(usize, Result<LoadProgress>)>();
        for (rank, c) in self.clients.iter().enumerate() {
            let mut c = c.clone();
            let ptx = ptx.clone();
            let req = LoadRequest {
                model: spec.model.clone(),
                dtype: spec.dtype.clone(),
                kv_dtype: spec.kv_dtype.clone(),
                device: spec.devices[rank].clone(),
                threads: spec.threads as u32,
                offload: spec.offload.as_ref().and_then(|o| o.get(rank).cloned()),
            };
            tokio::spawn(async move {
                match c.load(req).await {
                    Ok(resp) => {
                        let mut s = resp.into_inner();
                        loop {
                            match s.message().await {
                                Ok(Some(p)) => {
                                    let _ = ptx.send((rank, Ok(p)));
                                }
                                Ok(None) => break,
                                Err(st) => {
                                    let _ = ptx.send((rank, Err(anyhow!("{}", st.message()))));
                                    break;
                                }
                            }
                        }
                    }
                    Err(st) => {
                        let _ = ptx.send((rank, Err(anyhow!("{}", st.message()))));
                    }
                }
            });
        }
        drop(ptx);
        let mut finished = 0;
        let mut death = self.death.clone();
        while finished < world {
            let msg = tokio::select! {
                m = prx.recv() => m,
                _ = death.changed() => None,
            };
            if let Some(d) = self.death.borrow().clone() {
                bail!("{d} while loading");
            }
            let Some((rank, p)) = msg else {
                bail!("loading ended before every rank reported");
            };
            let p = p.map_err(|e| anyhow!("worker rank {rank}: loading {}: {e}", spec.model))?;
            if p.finished {
                finished += 1;
                self.info[rank].backend = p.backend;
                self.info[rank].peak_rss_bytes = p.peak_rss_bytes;
            } else {
                bar.update(rank, p.layers_done, p.layers_total);
            }
        }

        // Explicit readiness, each with a deadline.
        for (rank, c) in self.clients.iter_mut().enumerate() {
            let mut req = tonic::Request::new(ReadyRequest {});
            req.set_timeout(Duration::from_secs(10));
            let r = c
                .ready(req)
                .await
                .map_err(|s| anyhow!("worker rank {rank}: readiness: {}", s.message()))?
                .into_inner();
            if !r.ready {
                bail!("worker rank {rank} reports not ready after loading");
            }
            self.info[rank].peak_rss_bytes = r.peak_rss_bytes;
        }
        Ok(())
    }

    /// Run `fut` unless a worker dies or `limit` passes first.
    async fn watch<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T>>,
        limit: Duration,
        what: &str,
    ) -> Result<T> {
        let dead = self.died();
        tokio::select! {
            r = fut => {
                match r {
                    // A failing collective is usually a symptom: name the dead rank if there is one.
                    Err(e) => {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        match self.death.borrow().clone() {
                            Some(d) => Err(anyhow!("{d} during {what}")),
                            None => Err(e),
                        }
                    }
                    ok => ok,
                }
            }
            d = dead => Err(anyhow!("{d} during {what}")),
            _ = tokio::time::sleep(limit) => Err(anyhow!("{what} did not finish within {limit:?}")),
        }
    }

    /// Resolves when a worker of the group dies, with what happened.
    pub async fn died(&self) -> String {
        let mut death = self.death.clone();
        loop {
            if let Some(d) = death.borrow_and_update().clone() {
                return d;
            }
            if death.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// One engine step on every rank; returns rank 0's reply.
    pub async fn step(&self, req: StepRequest) -> Result<StepReply> {
        let calls: Vec<_> =
            self.clients
                .iter()
                .enumerate()
                .map(|(rank, c)| {
                    let (mut c, req) = (c.clone(), req.clone());
                    tokio::spawn(async move {
                        c.step(req).await.map(|r| r.into_inner()).map_err(|s| {
                            anyhow!("worker rank {rank}: step failed: {}", s.message())
                        })
                    })
                })
                .collect();
        self.watch(
            async {
                let mut first = None;
                for h in calls {
                    let r = h.await??;
                    first.get_or_insert(r);
                }
                first.ok_or_else(|| anyhow!("the group has no workers"))
            },
            self.step_timeout,
            "a step",
        )
        .await
    }

    /// Ask every worker to exit, wait briefly, then kill what is left.
    pub async fn shutdown(self) {
        self.closing.store(true, Ordering::SeqCst);
        for c in &self.clients {
            let mut c = c.clone();
            let mut req = tonic::Request::new(ShutdownRequest {});
            req.set_timeout(Duration::from_secs(2));
            let _ = c.shutdown(req).await;
        }
        for _ in 0..60 {
            if self.alive.lock().map(|a| a.is_empty()).unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(alive) = self.alive.lock() {
            if !alive.is_empty() {
                eprintln!(
                    "tessera: worker process(es) {:?} did not stop within 3 s of the shutdown request; killing them",
                    alive
                );
            }
        }
        self.abort();
    }

    /// Kill every spawned worker still running (joined workers exit when
    /// their connection to us closes).
    pub fn abort(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Ok(alive) = self.alive.lock() {
            for &pid in alive.iter() {
                // SAFETY: `pid` is our child and not yet reaped, so it names no other process.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// The host part of `host:port`.
fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|| addr.to_string())
}

/// Spawn `tessera worker` for `rank` and watch its exit.
fn spawn_worker(
    rank: usize,
    world: usize,
    sock: &Path,
    death_tx: &Arc<watch::Sender<Option<String>>>,
    closing: &Arc<AtomicBool>,
    alive: &Arc<Mutex<HashSet<u32>>>,
) -> Result<u32> {
    let exe = std::env::current_exe().context("finding the tessera binary to start workers")?;
    let mut child = tokio::process::Command::new(&exe)
        .arg("worker")
        .arg("--socket")
        .arg(sock)
        .args(["--rank", &rank.to_string(), "--world", &world.to_string()])
        .args(["--parent-pid", &std::process::id().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting worker rank {rank} ({})", exe.display()))?;
    let pid = child.id().unwrap_or(0);
    if let Ok(mut a) = alive.lock() {
        a.insert(pid);
    }
    let (tx, cl, al) = (death_tx.clone(), closing.clone(), alive.clone());
    tokio::spawn(async move {
        let status = child.wait().await;
        if let Ok(mut a) = al.lock() {
            a.remove(&pid);
        }
        if !cl.load(Ordering::SeqCst) {
            report_death(
                &tx,
                format!("worker rank {rank} (pid {pid}) {}", describe(status)),
            );
        }
    });
    Ok(pid)
}
