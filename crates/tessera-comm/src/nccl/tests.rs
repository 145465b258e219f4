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
