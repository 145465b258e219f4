//! The control-plane gRPC service and the server loop.

use crate::device::Device;
use crate::shard::{self, LoadSpec, ShardEngine};
use crate::{peak_rss_bytes, Result, WorkerError};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_backend::{KvDType, WeightDType};
use tessera_comm::{Collective, Local};
use tessera_proto::worker::rendezvous_client::RendezvousClient;
use tessera_proto::worker::worker_server::{Worker, WorkerServer};
use tessera_proto::worker::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Where the control service listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A private unix socket; the launcher that spawned us connects to it.
    Unix(PathBuf),
    /// Started by an outside scheduler: listen on TCP `listen` and register
    /// with the launcher's rendezvous service at `launcher`.
    Join { launcher: String, listen: String },
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub rank: usize,
    pub world: usize,
    pub endpoint: Endpoint,
    /// The launcher's pid: the worker dies with it.
    pub parent_pid: Option<u32>,
    /// How long `--join` keeps trying to reach the launcher.
    pub join_timeout: Duration,
}

/// A collective endpoint between `PrepareComm` and `ConnectComm`.
enum PendingComm {
    Tcp(tessera_comm::tcp::PendingRing),
    Nccl { device: usize },
}

struct State {
    rank: usize,
    world: usize,
    pending: Mutex<Option<PendingComm>>,
    comm: Mutex<Option<Box<dyn Collective>>>,
    engine: Arc<Mutex<Option<Box<dyn ShardEngine>>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

struct Service(Arc<State>);

fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<std::sync::MutexGuard<'a, T>> {
    m.lock()
        .map_err(|_| WorkerError::State(format!("{what} is unusable after an earlier panic")))
}

fn blocking_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("worker task failed: {e}"))
}

/// Ends the process when the launcher's `Attach` stream goes away, unless
/// the launcher asked for a shutdown (then the server stops by itself).
struct AttachGuard {
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        if *self.shutdown.borrow() {
            return;
        }
        // Not eprintln!: stderr may be a pipe nobody reads any more.
        let _ = writeln!(
            std::io::stderr(),
            "tessera worker: the launcher's connection closed; exiting"
        );
        std::process::exit(0);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for Service {
    async fn hello(
        &self,
        _: Request<HelloRequest>,
    ) -> std::result::Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            rank: self.0.rank as u32,
            world: self.0.world as u32,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    type AttachStream = BoxStream<AttachEvent>;

    async fn attach(
        &self,
        _: Request<AttachRequest>,
    ) -> std::result::Result<Response<Self::AttachStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<AttachEvent, Status>>(1);
        let _ = tx
            .send(Ok(AttachEvent {
                message: format!("rank {} attached", self.0.rank),
            }))
            .await;
        let guard = AttachGuard {
            shutdown: self.0.shutdown.subscribe(),
        };
        // The stream stays open until `Shutdown`: this task holds the sender
        // until then, and dropping it ends the stream, so the server's
        // graceful stop (which waits for open streams) can finish.
        let mut stop = self.0.shutdown.subscribe();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            drop(tx);
        });
        let stream = async_stream(rx, guard);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn prepare_comm(
        &self,
        req: Request<PrepareCommRequest>,
    ) -> std::result::Result<Response<PrepareCommReply>, Status> {
        let req = req.into_inner();
        let st = &self.0;
        let mut reply = PrepareCommReply::default();
        let pending = match Transport::try_from(req.transport) {
            Ok(Transport::Local) => None,
            Ok(Transport::Tcp) => {
                let ip: std::net::IpAddr = req.bind_host.parse().map_err(|_| {
                    Status::invalid_argument(format!(
                        "bind_host `{}` is not an IP address",
                        req.bind_host
                    ))
                })?;
                let ring = tessera_comm::TcpRing::bind(st.rank, st.world, SocketAddr::new(ip, 0))
                    .map_err(WorkerError::from)?;
                reply.address = ring.local_addr().to_string();
                Some(PendingComm::Tcp(ring))
            }
            Ok(Transport::Nccl) => {
                if st.rank == 0 {
                    let id = tessera_comm::nccl::NcclCollective::unique_id()
                        .map_err(WorkerError::from)?;
                    reply.nccl_id = id.to_vec();
                }
                Some(PendingComm::Nccl {
                    device: req.cuda_device as usize,
                })
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown transport {}",
                    req.transport
                )))
            }
        };
        *lock(&st.pending, "the collective")? = pending;
        Ok(Response::new(reply))
    }

    async fn connect_comm(
        &self,
        req: Request<ConnectCommRequest>,
    ) -> std::result::Result<Response<ConnectCommReply>, Status> {
        let req = req.into_inner();
        let st = self.0.clone();
        let pending = lock(&st.pending, "the collective")?.take();
        let timeout = Duration::from_millis(req.timeout_ms.max(1));
        let comm = tokio::task::spawn_blocking(move || -> Result<Box<dyn Collective>> {
            match pending {
                None => Ok(Box::new(Local)),
                Some(PendingComm::Tcp(ring)) => {
                    let peers = req
                        .peers
                        .iter()
                        .map(|p| {
                            p.parse::<SocketAddr>().map_err(|_| {
                                WorkerError::BadRequest(format!(
                                    "peer address `{p}` is not host:port"
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Box::new(ring.connect(&peers, req.run_token, timeout)?))
                }
                Some(PendingComm::Nccl { device }) => {
                    let id: [u8; 128] = req.nccl_id.as_slice().try_into().map_err(|_| {
                        WorkerError::BadRequest(format!(
                            "NCCL id has {} bytes, expected 128",
                            req.nccl_id.len()
                        ))
                    })?;
                    Ok(Box::new(tessera_comm::nccl::NcclCollective::new(
                        device, st.rank, st.world, id, timeout,
                    )?))
                }
            }
        })
        .await
        .map_err(blocking_err)?
        .map_err(Status::from)?;
        *lock(&self.0.comm, "the collective")? = Some(comm);
        Ok(Response::new(ConnectCommReply {}))
    }

    type LoadStream = BoxStream<LoadProgress>;

    async fn load(
        &self,
        req: Request<LoadRequest>,
    ) -> std::result::Result<Response<Self::LoadStream>, Status> {
        let req = req.into_inner();
        let st = self.0.clone();
        let dtype: WeightDType = req
            .dtype
            .parse()
            .map_err(|e: String| Status::invalid_argument(e))?;
        let device: Device = req.device.parse()?;
        let kv_dtype: KvDType = match req.kv_dtype.as_str() {
            "" => KvDType::F32,
            s => s.parse().map_err(|e: String| Status::invalid_argument(e))?,
        };
        let spec = LoadSpec {
            model: req.model,
            dtype,
            kv_dtype,
            device,
            threads: req.threads as usize,
            rank: st.rank,
            world: st.world,
            offload: req.offload,
        };
        let comm: Box<dyn Collective> = match lock(&st.comm, "the collective")?.take() {
            Some(c) => c,
            None if st.world == 1 => Box::new(Local),
            None => return Err(Status::failed_precondition(
                "Load before ConnectComm: the collective of a multi-rank group is not connected",
            )),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::task::spawn_blocking(move || {
            let progress_tx = tx.clone();
            let result = shard::load(&spec, comm, |done, total| {
                let _ = progress_tx.blocking_send(Ok(LoadProgress {
                    layers_done: done as u32,
                    layers_total: total as u32,
                    ..Default::default()
                }));
            });
            let msg = match result {
                Ok(engine) => {
                    let backend = engine.backend_name();
                    match st.engine.lock() {
                        Ok(mut slot) => *slot = Some(engine),
                        Err(_) => {
                            let _ = tx.blocking_send(Err(Status::internal("engine lock poisoned")));
                            return;
                        }
                    }
                    Ok(LoadProgress {
                        finished: true,
                        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
                        backend,
                        ..Default::default()
                    })
                }
                Err(e) => Err(Status::from(e)),
            };
            let _ = tx.blocking_send(msg);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ready(
        &self,
        _: Request<ReadyRequest>,
    ) -> std::result::Result<Response<ReadyReply>, Status> {
        let engine = lock(&self.0.engine, "the model")?;
        Ok(Response::new(ReadyReply {
            ready: engine.is_some(),
            peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
            backend: engine
                .as_ref()
                .map(|e| e.backend_name())
                .unwrap_or_default(),
        }))
    }

    async fn step(
        &self,
        req: Request<StepRequest>,
    ) -> std::result::Result<Response<StepReply>, Status> {
        let req = req.into_inner();
        let st = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || -> Result<StepReply> {
            let mut engine = lock(&st.engine, "the model")?;
            let engine = engine
                .as_mut()
                .ok_or_else(|| WorkerError::State("Step before Load: no model is loaded".into()))?;
            engine.step(&req, st.rank)
        })
        .await
        .map_err(blocking_err)?
        .map_err(Status::from)?;
        Ok(Response::new(reply))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> std::result::Result<Response<ShutdownReply>, Status> {
        let _ = self.0.shutdown.send(true);
        Ok(Response::new(ShutdownReply {}))
    }
}

/// The `Attach` stream: yields what arrives on `rx` (it ends when the
/// sender goes, at `Shutdown`) and holds `guard` until the client drops it.
fn async_stream(
    rx: tokio::sync::mpsc::Receiver<std::result::Result<AttachEvent, Status>>,
    guard: AttachGuard,
) -> impl Stream<Item = std::result::Result<AttachEvent, Status>> + Send {
    let inner = tokio_stream::wrappers::ReceiverStream::new(rx);
    HeldStream {
        inner,
        _held: guard,
    }
}

struct HeldStream<S, H> {
    inner: S,
    _held: H,
}

impl<S: Stream + Unpin, H: Unpin> Stream for HeldStream<S, H> {
    type Item = S::Item;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Die with the launcher: on Linux the kernel sends SIGKILL when the parent exits.
fn die_with_parent(parent: u32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
        }
    }
    // The parent may have died before the prctl: then we were re-parented.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        let _ = writeln!(
            std::io::stderr(),
            "tessera worker: launcher (pid {parent}) is already gone; exiting"
        );
        std::process::exit(1);
    }
}

/// Serve the control plane until `Shutdown`, or until the launcher goes away.
pub async fn serve(opts: WorkerOptions) -> Result<()> {
    if let Some(p) = opts.parent_pid {
        die_with_parent(p);
    }
    let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(State {
        rank: opts.rank,
        world: opts.world,
        pending: Mutex::new(None),
        comm: Mutex::new(None),
        engine: Arc::new(Mutex::new(None)),
        shutdown,
    });
    let svc = WorkerServer::new(Service(state))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let stop = async move {
        let _ = shutdown_rx.wait_for(|s| *s).await;
    };
    let server = tonic::transport::Server::builder().add_service(svc);
    match &opts.endpoint {
        Endpoint::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| WorkerError::Io {
                    what: format!("binding control socket {}", path.display()),
                    source,
                })?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            server.serve_with_incoming_shutdown(incoming, stop).await?;
        }
        Endpoint::Join { launcher, listen } => {
            let listener = tokio::net::TcpListener::bind(listen.as_str())
                .await
                .map_err(|source| WorkerError::Io {
                    what: format!("binding control address {listen}"),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| WorkerError::Io {
                what: "reading the control address".into(),
                source,
            })?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let serving = tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop));
            join_launcher(launcher, addr, &opts).await?;
            serving
                .await
                .map_err(|e| WorkerError::State(format!("server task failed: {e}")))??;
        }
    }
    Ok(())
}

/// Register with the launcher's rendezvous service, retrying until it is up.
async fn join_launcher(launcher: &str, addr: SocketAddr, opts: &WorkerOptions) -> Result<()> {
    let url = format!("http://{launcher}");
    let deadline = tokio::time::Instant::now() + opts.join_timeout;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    loop {
        let attempt = async {
            let mut client = RendezvousClient::connect(url.clone())
                .await
                .map_err(|e| e.to_string())?;
            client
                .join(JoinRequest {
                    rank: opts.rank as u32,
                    world: opts.world as u32,
                    address: addr.to_string(),
                    pid: std::process::id(),
                    hostname: hostname.clone(),
                })
                .await
                .map_err(|s| s.message().to_string())
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(WorkerError::State(format!(
                    "could not join the launcher at {launcher} within {:?}: {e}",
                    opts.join_timeout
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
