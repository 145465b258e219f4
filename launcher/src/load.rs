//! Opening a checkpoint named on the command line and loading it onto a backend.

use crate::cli::ModelArgs;
use anyhow::{Context, Result};
use std::io::Write;
use std::time::Instant;
use tessera_backend::{Backend, WeightDType};
use tessera_engine::Model;
use tessera_model::Checkpoint;

/// Open `--model`: a path, or `dummy:SHAPE[:SEED]`.
pub fn open_checkpoint(model: &str) -> Result<Checkpoint> {
    tessera_worker::open_checkpoint(model).with_context(|| format!("loading model {model}"))
}

/// Load the checkpoint's weights onto `backend`; returns the model and the seconds it took.
/// Progress goes to stderr when it is a terminal.
pub fn load_model<B: Backend>(
    backend: B,
    ckpt: &Checkpoint,
    args: &ModelArgs,
) -> Result<(Model<B>, f64)> {
    let dtype: WeightDType = args.dtype.parse().map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let model = Model::load(
        backend,
        &ckpt.spec,
        ckpt.source.as_ref(),
        dtype,
        |done, total| {
            if show {
                eprint!("\rloading layers {done}/{total}");
                if done == total {
                    eprintln!();
                }
                let _ = std::io::stderr().flush();
            }
        },
    )
    .with_context(|| format!("loading weights from {}", ckpt.path.display()))?;
    Ok((model, t0.elapsed().as_secs_f64()))
}
