//! The streamer's invariants on the CPU backend, on the fixture models and
//! SmolLM2, with 1, 2 and 5 streaming slots and 0, half and all-but-one
//! resident layers:
//! - outputs (every logit of prefill and decode) are bit-identical to the
//!   all-resident int8 run;
//! - the device arena's peak never exceeds the budget;
//! - while streamed layer `p` computes, the copies of `p+1 ..= p+depth` are in
//!   flight (issued before it started, consumed after), and copies really run
//!   during compute; with one slot, none is.

use std::path::{Path, PathBuf};
use tessera_backend::{cpu::CpuBackend, Backend, WeightDType};
use tessera_comm::Local;
use tessera_engine::Model;
use tessera_model::{Checkpoint, ShardPlan};
use tessera_offload::{load_streamed, PlanInput, StreamOptions, TraceEvent};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .to_path_buf()
}

fn smollm2() -> Option<PathBuf> {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else if std::env::var_os("CI").is_some() {
        panic!("{} is missing; run scripts/fetch-model.sh", p.display());
    } else {
        eprintln!(
            "skipped: {} is missing (run scripts/fetch-model.sh)",
            p.display()
        );
        None
    }
}

/// Streaming options of the plain (untraced, prefetching) int8 tests.
fn options(plan: PlanInput) -> StreamOptions {
    StreamOptions {
        plan,
        pin_memory: false,
        record: false,
        synchronous: false,
        dtype: WeightDType::Int8,
    }
}

/// Logits of a prefill then `decode` greedy steps, one forward each.
fn run(model: &Model<CpuBackend>, prompt: &[u32], decode: usize) -> Vec<Vec<f32>> {
    let mut seq = model.new_sequence(prompt.len() + decode + 1).unwrap();
    let mut out = vec![model.forward(&mut seq, prompt, true).unwrap().data];
    for _ in 0..decode {
        let last = out.last().unwrap();
        let vocab = model.spec().vocab_size;
        let row = &last[last.len() - vocab..];
        let next = tessera_engine::argmax(row);
        out.push(model.forward(&mut seq, &[next], false).unwrap().data);
    }
    out
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// Check the schedule recorded in `trace` for prefetch `depth`; returns how
/// many copies ran (partly) while a layer computed.
fn check_schedule(trace: &[TraceEvent], depth: u64, what: &str) -> usize {
    let issued: std::collections::HashMap<u64, std::time::Instant> = trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Issue { pos, at, .. } => Some((*pos, *at)),
            _ => None,
        })
        .collect();
    let computes: Vec<_> = trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Compute {
                pos, start, end, ..
            } => Some((*pos, *start, *end)),
            _ => None,
        })
        .collect();
    assert!(!computes.is_empty(), "{what}: nothing streamed");
    for &(p, start, end) in &computes {
        for ahead in 1..=depth {
            let at = issued
                .get(&(p + ahead))
                .unwrap_or_else(|| panic!("{what}: copy of position {} never issued", p + ahead));
            assert!(
                *at <= start,
                "{what}: copy of position {} was issued after position {p} started computing",
                p + ahead
            );
        }
        if depth == 0 {
            if let Some(at) = issued.get(&(p + 1)) {
                assert!(
                    *at >= end,
                    "{what}: one slot, yet a copy was issued during compute"
                );
            }
        }
    }
    let copies: Vec<_> = trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Copy(t) => Some(*t),
            _ => None,
        })
        .collect();
    copies
        .iter()
        .filter(|c| {
            computes
                .iter()
                .any(|&(_, s, e)| c.started < e && c.finished > s)
        })
        .count()
}

/// Every combination of slots and resident layers on one checkpoint.
fn check_model(path: &Path, prompt: &[u32], decode: usize, want_real_overlap: bool) {
    check_model_as(path, prompt, decode, want_real_overlap, WeightDType::Int8)
}

/// [`check_model`] with weights of `dtype` (int8 or int4).
fn check_model_as(
    path: &Path,
    prompt: &[u32],
    decode: usize,
    want_real_overlap: bool,
    dtype: WeightDType,
) {
    let ckpt = Checkpoint::open(path).expect("checkpoint opens");
    let spec = &ckpt.spec;
    let resident = Model::load(
        CpuBackend::new(2).unwrap(),
        spec,
        ckpt.source.as_ref(),
        dtype,
        |_, _| {},
    )
    .expect("loads resident");
    let want = bits(&run(&resident, prompt, decode));
    // Real bytes of one layer's matrices on this backend.
    let mut layer_bytes = 0;
    resident
        .layer_weights()
        .with_layer(0, &mut |w| {
            for m in w {
                layer_bytes += resident.backend().linear_image(m)?.len();
            }
            Ok(())
        })
        .unwrap();
    drop(resident);
    let n = spec.num_layers;
    let shard = ShardPlan::new(spec, 1, 0).unwrap();
    let mut overlaps = 0;
    for slots in [1usize, 2, 5] {
        for r in [0, n / 2, n - 1] {
            let what = format!("{} {dtype} slots={slots} resident={r}", path.display());
            let mut input = PlanInput::for_model(spec, &shard, dtype, 0, slots - 1, Some(r), 25.0);
            input.budget = input.fixed_bytes + (r + slots) * layer_bytes;
            let opts = StreamOptions {
                plan: input.clone(),
                pin_memory: false,
                record: true,
                synchronous: slots == 1,
                dtype,
            };
            let (model, probe) = load_streamed(
                CpuBackend::new(2).unwrap(),
                spec,
                ckpt.source.as_ref(),
                shard.clone(),
                Box::new(Local),
                opts,
                |_, _| {},
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let plan = probe.plan().expect("plan");
            assert_eq!(plan.resident_count(), r, "{what}");
            // A ring holds at most as many slots as there are streamed layers.
            assert_eq!(plan.slots, slots.min(n - r), "{what}");
            let got = bits(&run(&model, prompt, decode));
            assert!(
                got == want,
                "{what}: logits differ from the all-resident run"
            );
            let arena = probe.arena();
            assert!(
                arena.peak <= arena.budget,
                "{what}: arena peak {} > budget {}",
                arena.peak,
                arena.budget
            );
            assert_eq!(
                arena.peak,
                input.fixed_bytes + (r + plan.slots) * layer_bytes,
                "{what}"
            );
            let stats = model.layer_weights().take_stats().expect("streaming stats");
            let passes = decode + 1;
            assert!(
                stats.bytes >= (passes - 1) * (n - r) * layer_bytes,
                "{what}: copied {} bytes in {passes} passes",
                stats.bytes
            );
            let trace = probe.take_trace();
            overlaps += check_schedule(&trace, plan.prefetch_depth as u64, &what);
        }
    }
    eprintln!("{}: {overlaps} copies overlapped compute", path.display());
    if want_real_overlap {
        assert!(
            overlaps > 0,
            "{}: no copy ever ran during compute",
            path.display()
        );
    }
}

#[test]
fn fixtures_stream_bit_identically_within_budget() {
    for name in [
        "llama-gqa-tied",
        "llama3-untied-bf16-sharded",
        "qwen2-bias-f16",
    ] {
        check_model(
            &root().join("tests/fixtures").join(name),
            &[1, 5, 9, 2, 7],
            4,
            false,
        );
    }
}

#[test]
fn int4_fixtures_stream_bit_identically_within_budget() {
    for name in ["llama-gqa-tied", "qwen2-bias-f16"] {
        check_model_as(
            &root().join("tests/fixtures").join(name),
            &[1, 5, 9, 2, 7],
            4,
            false,
            WeightDType::Int4,
        );
    }
}

#[test]
fn smollm2_streams_bit_identically_with_overlapping_copies() {
    let Some(path) = smollm2() else { return };
    check_model(&path, &[1, 504, 3303, 282, 260, 2030, 30], 3, true);
}

#[test]
fn planner_keeps_what_fits_and_refuses_what_cannot_work() {
    let ckpt = Checkpoint::open(&root().join("tests/fixtures/llama-gqa-tied")).unwrap();
    let spec = &ckpt.spec;
    let shard = ShardPlan::new(spec, 1, 0).unwrap();
    let mut input = PlanInput::for_model(spec, &shard, WeightDType::Int8, 0, 1, None, 25.0);
    let lb = input.layer_bytes;
    assert_eq!(spec.num_layers, 3);
    input.budget = input.fixed_bytes + 2 * lb + lb / 2;
    let (model, probe) = load_streamed(
        CpuBackend::new(1).unwrap(),
        spec,
        ckpt.source.as_ref(),
        shard.clone(),
        Box::new(Local),
        options(input.clone()),
        |_, _| {},
    )
    .unwrap();
    let plan = probe.plan().unwrap();
    assert_eq!((plan.slots, plan.resident_count()), (2, 0));
    assert!(probe.arena().peak <= input.budget);
    assert!(model.layer_weights().describe().contains("streamed"));
    input.budget = input.fixed_bytes + lb;
    let err = load_streamed(
        CpuBackend::new(1).unwrap(),
        spec,
        ckpt.source.as_ref(),
        shard,
        Box::new(Local),
        options(input),
        |_, _| {},
    )
    .err()
    .expect("a budget of one layer is refused")
    .to_string();
    assert!(err.contains("at least"), "{err}");
}

/// A step that stops half way (an error inside a layer) leaves the ring
/// pointing mid-pass; the next step asks for layer 0 again. The streamer must
/// let its copies land, restart at the layer asked for, and stay exact.
#[test]
fn out_of_order_layers_resync_the_ring() {
    let path = root().join("tests/fixtures/llama-gqa-tied");
    let ckpt = Checkpoint::open(&path).unwrap();
    let spec = &ckpt.spec;
    let load = || {
        Model::load(
            CpuBackend::new(1).unwrap(),
            spec,
            ckpt.source.as_ref(),
            WeightDType::Int8,
            |_, _| {},
        )
        .unwrap()
    };
    let want = bits(&run(&load(), &[3, 1, 4], 2));
    let shard = ShardPlan::new(spec, 1, 0).unwrap();
    let mut input = PlanInput::for_model(
        spec,
        &shard,
        WeightDType::Int8,
        usize::MAX / 2,
        1,
        Some(0),
        25.0,
    );
    input.budget = usize::MAX / 2;
    let (model, _probe) = load_streamed(
        CpuBackend::new(1).unwrap(),
        spec,
        ckpt.source.as_ref(),
        shard,
        Box::new(Local),
        options(input),
        |_, _| {},
    )
    .unwrap();
    let w = model.layer_weights();
    // Layer 0, then a failure in layer 1 (the ring moves on past it)...
    w.with_layer(0, &mut |_| Ok(())).unwrap();
    let failed = w.with_layer(1, &mut |_| {
        Err(tessera_engine::EngineError::Streaming("injected".into()))
    });
    assert!(failed.is_err());
    // ...then out of order: 0 again (the ring expected 2), and 1 after 0 skipping 2.
    let mut seen = Vec::new();
    for l in [0, 2, 1] {
        w.with_layer(l, &mut |m| {
            seen.push(m.len());
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(seen, vec![4, 4, 4]);
    assert!(
        bits(&run(&model, &[3, 1, 4], 2)) == want,
        "logits differ after a resync"
    );
}
