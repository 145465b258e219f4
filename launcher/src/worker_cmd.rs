//! `tessera worker`: one rank, serving the control plane until shut down.

use crate::cli::WorkerArgs;
use anyhow::{bail, Context, Result};
use std::time::Duration;
use tessera_worker::{Endpoint, WorkerOptions};

pub fn run(args: WorkerArgs) -> Result<()> {
    if args.world == 0 || args.rank >= args.world {
        bail!("--rank {} is not below --world {}", args.rank, args.world);
    }
    let endpoint = match (args.socket, args.join) {
        (Some(path), _) => Endpoint::Unix(path),
        (None, Some(launcher)) => Endpoint::Join {
            launcher,
            listen: args.listen,
        },
        (None, None) => bail!("give --socket PATH or --join HOST:PORT"),
    };
    let opts = WorkerOptions {
        rank: args.rank,
        world: args.world,
        endpoint,
        parent_pid: args.parent_pid,
        join_timeout: Duration::from_secs(args.join_timeout),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(tessera_worker::serve(opts))
        .with_context(|| format!("worker rank {}", args.rank))?;
    Ok(())
}
