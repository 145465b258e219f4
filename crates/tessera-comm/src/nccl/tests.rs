//! NCCL tests: the no-library path runs everywhere; the GPU test is ignored.

use std::time::Duration;

use cudarc::driver::CudaContext;

use super::library::{ConfigPrefix, CONFIG_PREFIX_BYTES};
use super::{probe, version, NcclCollective, UNIQUE_ID_BYTES};
use crate::{Collective, CommError};

fn gpu_present() -> bool {
    probe().is_ok() && CudaContext::device_count().is_ok_and(|n| n > 0)
}

#[test]
fn without_libraries_every_entry_point_errors_instead_of_panicking() {
    if probe().is_ok() {
        eprintln!("CUDA and NCCL are present here; the no-library path is not exercised");
        return;
    }
    let e = probe().unwrap_err().to_string();
    assert!(e.contains("not found"), "{e}");
    assert!(matches!(version(), Err(CommError::Nccl(_))));
    assert!(matches!(
        NcclCollective::unique_id(),
        Err(CommError::Nccl(_))
    ));
    let r = NcclCollective::new(0, 0, 1, [0; UNIQUE_ID_BYTES], Duration::from_secs(1));
    match r {
        Err(CommError::Nccl(m)) => assert!(m.contains("not found"), "{m}"),
        other => panic!("expected an NCCL error, got {other:?}"),
    }
}

#[test]
fn config_prefix_matches_nccl_layout() {
    // size_t size; unsigned magic; unsigned version; int blocking.
    assert_eq!(std::mem::offset_of!(ConfigPrefix, magic), 8);
    assert_eq!(std::mem::offset_of!(ConfigPrefix, version), 12);
    assert_eq!(std::mem::offset_of!(ConfigPrefix, blocking), 16);
    assert_eq!(CONFIG_PREFIX_BYTES, 20);
}

#[test]
#[ignore = "needs a GPU, libcuda and libnccl"]
fn world_of_one_all_reduce_and_gather() {
    assert!(gpu_present(), "no GPU or NCCL here");
    let id = NcclCollective::unique_id().unwrap();
    let mut c = NcclCollective::new(0, 0, 1, id, Duration::from_secs(30)).unwrap();
    let mut v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let want = v.clone();
    c.all_reduce_sum(&mut v).unwrap();
    assert_eq!(v, want);
    let mut out = vec![0.0; 1000];
    c.all_gather(&want, &mut out).unwrap();
    assert_eq!(out, want);
    let mut b = vec![7u8; 10];
    c.broadcast(&mut b, 0).unwrap();
    assert_eq!(b, vec![7u8; 10]);
    c.barrier().unwrap();
}

/// Whether device 0 is the CPU emulator of scripts/cuda-emu.sh, whose NCCL
/// lets two ranks of one process share a device (a real GPU does not).
fn emulated() -> bool {
    gpu_present()
        && CudaContext::new(0)
            .ok()
            .and_then(|c| c.name().ok())
            .is_some_and(|n| n.contains("Tessera CUDA emulator"))
}

#[test]
fn two_ranks_sum_gather_and_broadcast() {
    if !emulated() {
        eprintln!("skipped: needs the CUDA emulator (two ranks on one device in one process)");
        return;
    }
    let id = NcclCollective::unique_id().unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let mut c = NcclCollective::new(0, rank, 2, id, Duration::from_secs(30)).unwrap();
                let mut v: Vec<f32> = (0..300).map(|i| (i * (rank + 1)) as f32).collect();
                c.all_reduce_sum(&mut v).unwrap();
                let mut all = vec![0.0; 6];
                c.all_gather(&[rank as f32; 3], &mut all).unwrap();
                let mut b = vec![rank as u8 + 10; 5];
                c.broadcast(&mut b, 1).unwrap();
                c.barrier().unwrap();
                (v, all, b)
            })
        })
        .collect();
    for h in ranks {
        let (v, all, b) = h.join().unwrap();
        assert!(
            v.iter().enumerate().all(|(i, &x)| x == (3 * i) as f32),
            "{v:?}"
        );
        assert_eq!(all, vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b, vec![11u8; 5]);
    }
}

#[test]
fn a_peer_that_never_joins_the_all_reduce_trips_the_watchdog() {
    if !emulated() {
        eprintln!("skipped: needs the CUDA emulator (two ranks on one device in one process)");
        return;
    }
    let id = NcclCollective::unique_id().unwrap();
    // Rank 1 joins the communicator, then never takes part in a collective.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let c = NcclCollective::new(0, 1, 2, id, Duration::from_secs(30)).unwrap();
        let _ = rx.recv_timeout(Duration::from_secs(30));
        drop(c);
    });
    let mut c = NcclCollective::new(0, 0, 2, id, Duration::from_secs(2)).unwrap();
    let t = std::time::Instant::now();
    let mut v = vec![1.0f32; 64];
    let e = c.all_reduce_sum(&mut v).unwrap_err();
    let waited = t.elapsed();
    assert!(
        matches!(e, CommError::Watchdog { .. }),
        "expected the watchdog, got {e}"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "the watchdog fired after {waited:?} (timeout 2 s)"
    );
    // The communicator is aborted: later calls fail at once instead of hanging.
    let t = std::time::Instant::now();
    assert!(c.all_reduce_sum(&mut v).is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
    tx.send(()).unwrap();
    peer.join().unwrap();
}
