//! The launcher's side of `tessera worker --join`: a `Rendezvous` service
//! that waits until every rank of the group has registered its address.

use anyhow::{anyhow, Context, Result};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_proto::worker::rendezvous_server::{Rendezvous, RendezvousServer};
use tessera_proto::worker::{JoinReply, JoinRequest};
use tokio::sync::mpsc;

/// The launcher's side of `--join`: records who registered.
struct Registry {
    world: usize,
    joined: Mutex<Vec<Option<JoinRequest>>>,
    tx: mpsc::UnboundedSender<()>,
}

struct RegistryService(Arc<Registry>);

#[tonic::async_trait]
impl Rendezvous for RegistryService {
    async fn join(
        &self,
        req: tonic::Request<JoinRequest>,
    ) -> Result<tonic::Response<JoinReply>, tonic::Status> {
        let j = req.into_inner();
        let me = &self.0;
        if j.world as usize != me.world || j.rank as usize >= me.world {
            return Err(tonic::Status::invalid_argument(format!(
                "worker says rank {} of {}, but this launch has tensor_parallel {}",
                j.rank, j.world, me.world
            )));
        }
        let mut joined = me
            .joined
            .lock()
            .map_err(|_| tonic::Status::internal("registry lock poisoned"))?;
        let slot = &mut joined[j.rank as usize];
        if let Some(prev) = slot {
            return Err(tonic::Status::already_exists(format!(
                "rank {} already joined from {} (pid {})",
                j.rank, prev.address, prev.pid
            )));
        }
        *slot = Some(j);
        let _ = me.tx.send(());
        Ok(tonic::Response::new(JoinReply {}))
    }
}

/// Serve the rendezvous at `addr` until all `world` ranks have joined.
pub(super) async fn accept_joins(
    addr: &str,
    world: usize,
    deadline: tokio::time::Instant,
    limit: Duration,
) -> Result<Vec<JoinRequest>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--join-listen {addr}: cannot listen"))?;
    note!(
        "waiting for {world} workers to join at {} (tessera worker --join {} --rank R --world {world})",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        addr
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let registry = Arc::new(Registry {
        world,
        joined: Mutex::new(vec![None; world]),
        tx,
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(RendezvousServer::new(RegistryService(registry.clone())))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stop_rx.await;
            },
        );
    let serving = tokio::spawn(server);
    let result = loop {
        let count = registry
            .joined
            .lock()
            .map(|j| j.iter().filter(|x| x.is_some()).count())
            .unwrap_or(0);
        if count == world {
            break Ok(());
        }
        tokio::select! {
            _ = rx.recv() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let missing: Vec<usize> = registry.joined.lock()
                    .map(|j| j.iter().enumerate().filter(|(_, x)| x.is_none()).map(|(r, _)| r).collect())
                    .unwrap_or_default();
                break Err(anyhow!("ranks {missing:?} did not join within {limit:?}"));
            }
        }
    };
    let _ = stop_tx.send(());
    let _ = serving.await;
    result?;
    let joined = registry
        .joined
        .lock()
        .map_err(|_| anyhow!("registry lock poisoned"))?
        .iter()
        .flatten()
        .cloned()
        .collect();
    Ok(joined)
}
