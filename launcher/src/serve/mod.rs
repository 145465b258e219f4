//! `tessera launch CONFIG` without a prompt: the public gRPC server.
//!
//! One tonic server on `server.grpc_address` carries the KServe v2 / Triton
//! inference service, `grpc.health.v1.Health`, server reflection and the
//! debug service. It starts before the workers load (health NOT_SERVING,
//! ServerReady false), turns SERVING when they are ready, NOT_SERVING again
//! while a failed group restarts or while draining on SIGTERM/SIGINT.

mod api;
mod request;
pub mod scheduler;

use crate::launch::group::{GroupSpec, WorkerGroup};
use crate::launch::progress::LoadBar;
use anyhow::{Context, Result};
use scheduler::{Scheduler, Stats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tessera_model::Tokenizer;
use tessera_proto::debug::debug_server::{Debug, DebugServer};
use tessera_proto::debug::{StatsReply, StatsRequest};
use tessera_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;

/// Everything the server needs besides the worker group.
pub struct ServeSpec {
    pub address: String,
    /// Where to serve Prometheus metrics (plain HTTP), if anywhere.
    pub metrics_address: Option<String>,
    pub model_name: String,
    pub max_queue: usize,
    pub max_batch: usize,
    pub max_context: usize,
    pub max_tokens: usize,
    pub eos_ids: Vec<u32>,
    pub tokenizer: Option<Tokenizer>,
    pub max_restarts: u32,
}

struct DebugApi(Arc<Mutex<Stats>>);

#[tonic::async_trait]
impl Debug for DebugApi {
    async fn stats(
        &self,
        _: tonic::Request<StatsRequest>,
    ) -> Result<tonic::Response<StatsReply>, tonic::Status> {
        Ok(tonic::Response::new(StatsReply {
            json: scheduler::stats_json(&self.0),
        }))
    }
}

const SERVICE: &str = "inference.GRPCInferenceService";

/// Health and readiness, switched together.
#[derive(Clone)]
struct Serving {
    health: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
}

impl Serving {
    async fn set(&self, on: bool) {
        self.ready.store(on, Ordering::SeqCst);
        let st = if on {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.health.set_service_status("", st).await;
        self.health.set_service_status(SERVICE, st).await;
    }
}

/// Serve until SIGTERM/SIGINT (exit 0 after draining) or until the worker
/// group fails beyond the restart policy (error).
pub async fn serve(spec: ServeSpec, group_spec: GroupSpec) -> Result<()> {
    let addr: std::net::SocketAddr = tokio::net::lookup_host(&spec.address)
        .await
        .with_context(|| format!("server.grpc_address `{}`", spec.address))?
        .next()
        .with_context(|| format!("server.grpc_address `{}` resolves to nothing", spec.address))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("server.grpc_address {addr}: cannot listen"))?;
    let local = listener
        .local_addr()
        .context("reading the server address")?;

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<GrpcInferenceServiceServer<api::InferenceApi>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    // Both reflection versions: grpcurl speaks v1, older clients (and
    // grpcio-reflection's descriptor database) v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tessera_proto::PUBLIC_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tessera_proto::PUBLIC_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;

    let stats = Arc::new(Mutex::new(Stats::default()));
    if let Some(m) = &spec.metrics_address {
        let l = std::net::TcpListener::bind(m.as_str())
            .with_context(|| format!("--metrics-address {m}: cannot listen"))?;
        let a = l.local_addr().context("reading the metrics address")?;
        note!("metrics: http://{a}/metrics");
        scheduler::serve_metrics(l, stats.clone());
    }
    let ready = Arc::new(AtomicBool::new(false));
    let tokenizer = spec.tokenizer.map(Arc::new);
    let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(spec.max_queue);
    let inference = api::InferenceApi {
        cfg: api::ApiConfig {
            model_name: spec.model_name.clone(),
            max_context: spec.max_context,
            max_tokens: spec.max_tokens,
            eos_ids: spec.eos_ids.clone(),
        },
        tokenizer: tokenizer.clone(),
        queue: queue_tx,
        ready: ready.clone(),
        stats: stats.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(DebugServer::new(DebugApi(stats.clone())))
        .add_service(GrpcInferenceServiceServer::new(inference).max_decoding_message_size(32 << 20))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let mut rx = stop_rx;
                let _ = rx.wait_for(|s| *s).await;
            },
        );
    let server = tokio::spawn(server);
    note!(
        "serving {SERVICE} for model `{}` on {local} (loading the workers)",
        spec.model_name
    );

    let mut bar = LoadBar::new(group_spec.devices.len());
    let group = WorkerGroup::start(&group_spec, &mut bar).await?;
    // Blocks: the whole context per batch slot.
    let kv_blocks = spec.max_batch * spec.max_context.div_ceil(scheduler::BLOCK_TOKENS);
    let mut sched = Scheduler {
        group,
        tokenizer,
        queue: queue_rx,
        stats,
        max_batch: spec.max_batch,
        kv_blocks,
        drain: None,
    };
    let set_serving = Serving {
        health: health.clone(),
        ready: ready.clone(),
    };
    set_serving.set(true).await;
    note!("ready: {SERVICE} on {local}");

    // SIGTERM/SIGINT: health NOT_SERVING, no new requests, finish the running ones.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    sched.drain = Some(drain_rx);
    {
        let set_serving = set_serving.clone();
        tokio::spawn(async move {
            let sig = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                Ok(mut term) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    "SIGINT"
                }
            };
            note!("{sig}: draining (health NOT_SERVING, finishing running requests)");
            set_serving.set(false).await;
            let _ = drain_tx.send(true);
        });
    }

    let mut restarts = 0;
    let outcome = loop {
        match sched.run().await {
            Ok(()) => break Ok(()),
            Err(e) if restarts < spec.max_restarts => {
                restarts += 1;
                set_serving.set(false).await;
                note!("error: {}", crate::error_line::one_line(&e));
                note!(
                    "restarting the workers ({restarts} of {}, restart_policy: on-failure)",
                    spec.max_restarts
                );
                sched.group.abort();
                let mut bar = LoadBar::new(group_spec.devices.len());
                match WorkerGroup::start(&group_spec, &mut bar).await {
                    Ok(g) => {
                        sched.group = g;
                        set_serving.set(true).await;
                    }
                    Err(e) => break Err(e),
                }
            }
            Err(e) => break Err(e),
        }
    };
    set_serving.set(false).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    match outcome {
        Ok(()) => {
            sched.group.shutdown().await;
            note!("stopped");
            Ok(())
        }
        Err(e) => {
            sched.group.abort();
            Err(e)
        }
    }
}
