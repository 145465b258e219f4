//! CUDA backend vs the reference ops, on odd shapes. Without a GPU every test
//! prints "skipped: no CUDA device" and passes; on a GPU machine the device
//! script runs this binary (built here with `cargo test --no-run`).
//! GEMV variants and fusion: `cuda/gemv.rs`; attention and the KV cache:
//! `cuda/attention.rs`; timings (ignored): `cuda/bench.rs`.

#[path = "cuda/attention.rs"]
mod attention;
#[path = "cuda/bench.rs"]
mod bench;
#[path = "cuda/gemv.rs"]
mod gemv;
#[path = "cuda/gemv_v5.rs"]
mod gemv_v5;
#[path = "cuda/gemv_v6.rs"]
mod gemv_v6;
#[path = "cuda/support.rs"]
mod support;

use support::{assert_close, backend, get, host};
use tessera_backend::cuda::{module, CudaBackend};
use tessera_backend::{reference, AttentionShape, Backend, BackendError, WeightDType};
use tessera_model::{HostTensor, Int8Matrix, INT8_GROUP};

#[test]
fn kernels_compile_to_ptx_with_nvrtc() {
    // Needs only libnvrtc (e.g. the nvidia-cuda-nvrtc wheel on LD_LIBRARY_PATH), no GPU.
    // compute_90 (H100: PDL and cp.async) and compute_80 (A100: cp.async, no PDL).
    let cache = std::env::temp_dir().join(format!("tessera-ptx-test-{}", std::process::id()));
    std::env::set_var("TESSERA_CACHE_DIR", &cache);
    for arch in ["compute_90", "compute_80"] {
        let t = std::time::Instant::now();
        // compute_90 through the caches (NVRTC, then the file it writes).
        let got = if arch == "compute_90" {
            module::ptx(arch)
        } else {
            module::compile_ptx(arch)
        };
        match got {
            Ok(ptx) => {
                let mut kernels = vec![
                    "gemv_i8_1_r1",
                    "gemv_i8_16",
                    "gemv_v2_i8_n1_r4",
                    "gemv_v2_bf16_n16",
                    "gemv_v3_i8_n1",
                    "gemv_v3_bf16_n16",
                    "attention_d128",
                    "kv_store",
                    "gemv_v2_i4_n1_r2",
                    "gemv_v4_i8_n1_r4",
                    "gemv_v4_i4_n1_r2",
                    "gemv_v5_i8_n1_r2",
                    "gemv_v5_i8_n1_r4",
                    "gemv_v6_quantize",
                    "gemv_v6_i8_t2",
                    "gemv_v6_i4_t8",
                    "gemv_v6_bf16_t2",
                    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                    "mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32",
                    "dp4a.s32.s32",
                    "embedding_i4",
                    "dequantize_i4",
                    "quantize_i8",
                    "to_bf16",
                    "split_bf16",
                    "gather_cols",
                    "l2_flush",
                    "argmax_step",
                    "embedding_bf16",
                    "cp.async.cg.shared.global",
                ];
                if arch == "compute_90" {
                    kernels.extend(["griddepcontrol.wait", "griddepcontrol.launch_dependents"]);
                } else {
                    assert!(!ptx.contains("griddepcontrol"), "PDL on {arch}");
                }
                for k in kernels {
                    assert!(ptx.contains(k), "PTX for {arch} lacks {k}");
                }
                println!(
                    "NVRTC compiled {} bytes of PTX for {arch} in {:.1} s",
                    ptx.len(),
                    t.elapsed().as_secs_f64()
                );
                if arch == "compute_90" {
                    let file = module::cache_file(arch).expect("cache folder set");
                    assert!(file.starts_with(&cache), "{}", file.display());
                    // When another test of this process compiled first, the PTX
                    // came from the process cache and no file was written here.
                    if file.exists() {
                        assert_eq!(std::fs::read_to_string(&file).unwrap(), ptx, "disk cache");
                    } else {
                        println!("disk cache not exercised: the PTX came from the process cache");
                    }
                    assert_eq!(module::ptx(arch).unwrap(), ptx, "process cache");
                }
                // For inspection with ptxas (registers, spills) on a build machine.
                if let Ok(path) = std::env::var("TESSERA_PTX_OUT") {
                    std::fs::write(format!("{path}.{arch}"), &ptx).unwrap();
                }
            }
            Err(BackendError::Unavailable(what, why)) => {
                // scripts/nvrtc-ptx.sh (the test command) provides NVRTC and
                // sets this, so there the test cannot pass by skipping.
                if std::env::var("TESSERA_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                    panic!("TESSERA_REQUIRE_NVRTC=1 but {what} is unavailable: {why}");
                }
                println!("skipped: no NVRTC ({what}: {why})");
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn new_without_gpu_is_a_clean_error() {
    match CudaBackend::new(0) {
        Ok(b) => println!("GPU present: {}", b.name()),
        Err(e) => {
            assert!(matches!(e, BackendError::Unavailable(..)), "{e}");
            println!("skipped: no CUDA device ({e})");
        }
    }
}

#[test]
fn upload_download_slice_split() {
    let Some(mut b) = backend("upload_download_slice_split") else {
        return;
    };
    let x = host(5, 21, 1);
    for fused in [true, false] {
        // Fused: split_cols returns column views, computed when read.
        b.set_fusion(fused);
        let d = b.upload(&x).unwrap();
        assert_eq!(b.dims(&d), (5, 21));
        assert_eq!(b.download(&d).unwrap(), x);
        let s = b.download(&b.slice_rows(&d, 2, 3).unwrap()).unwrap();
        assert_eq!(s.data, x.data[2 * 21..5 * 21]);
        assert_eq!(b.download(&b.slice_rows(&d, 0, 5).unwrap()).unwrap(), x);
        assert!(b.slice_rows(&d, 4, 2).is_err());
        let widths = [3, 5, 7, 2, 4];
        let parts = b.split_cols(&d, &widths).unwrap();
        let mut c0 = 0;
        for (p, w) in parts.iter().zip(widths) {
            let got = b.download(p).unwrap();
            for r in 0..5 {
                assert_eq!(
                    got.data[r * w..(r + 1) * w],
                    x.data[r * 21 + c0..r * 21 + c0 + w]
                );
            }
            c0 += w;
        }
        assert!(b.split_cols(&d, &[3, 3]).is_err());
        // A view with RoPE deferred, then read, and a view changed in place:
        // neither may disturb the parent or the other views.
        let (heads, hd) = (2usize, 8usize);
        let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / (1.0 + i as f32)).collect();
        let qkv = host(3, 3 * heads * hd, 2);
        let dq = b.upload(&qkv).unwrap();
        let mut p = b.split_cols(&dq, &[heads * hd; 3]).unwrap();
        b.rope(&mut p[0], heads, hd, 7, &inv).unwrap();
        b.add_assign(&mut p[1], &b.upload(&host(3, heads * hd, 3)).unwrap())
            .unwrap();
        let col = |t: usize| -> Vec<f32> {
            (0..3)
                .flat_map(|r| qkv.data[r * 48 + t * 16..r * 48 + t * 16 + 16].to_vec())
                .collect()
        };
        let mut want = col(0);
        reference::rope(&mut want, heads, hd, 7, &inv);
        assert_close(&b.download(&p[0]).unwrap().data, &want, 2e-6, "roped view");
        assert_eq!(b.download(&p[2]).unwrap().data, col(2), "untouched view");
        assert_eq!(
            b.download(&dq).unwrap(),
            qkv,
            "parent after in-place ops on views"
        );
    }
}

#[test]
fn timeline_times_each_launch_and_changes_nothing() {
    let Some(b) = backend("timeline_times_each_launch_and_changes_nothing") else {
        return;
    };
    let (x, w) = (host(1, 300, 1), host(64, 300, 2));
    let (dx, dw) = (
        b.upload(&x).unwrap(),
        b.upload_linear(&w, WeightDType::Int8).unwrap(),
    );
    let untimed = get(&b, &b.matmul(&dx, &dw).unwrap());
    assert!(
        b.take_timeline().unwrap().is_empty(),
        "no timeline was started"
    );
    b.start_timeline().unwrap();
    let before = b.launch_count();
    let timed = get(&b, &b.matmul(&dx, &dw).unwrap());
    let t = b.take_timeline().unwrap();
    assert_eq!(timed, untimed, "timing a launch changed its result");
    assert_eq!(
        t.len() as u64,
        b.launch_count() - before,
        "one entry per launch"
    );
    assert!(
        t.iter().any(|l| l.op.starts_with("gemv") && l.grid >= 1),
        "{t:?}"
    );
    assert!(
        t.iter().all(|l| l.micros >= 0.0 && l.micros.is_finite()),
        "{t:?}"
    );
    // Stopped: later launches are not timed.
    get(&b, &b.matmul(&dx, &dw).unwrap());
    assert!(b.take_timeline().unwrap().is_empty());
}

#[test]
fn elementwise_ops_match_reference() {
    let Some(b) = backend("elementwise_ops_match_reference") else {
        return;
    };
    for (rows, cols) in [(3usize, 7usize), (3, 1000), (3, 4099), (20, 300)] {
        let x = host(rows, cols, 2);
        let w = host(1, cols, 3);
        // Up to 16 rows the norm stays lazy (computed here on download).
        let got = b
            .download(
                &b.rms_norm(&b.upload(&x).unwrap(), &b.upload(&w).unwrap(), 1e-5)
                    .unwrap(),
            )
            .unwrap();
        assert_close(
            &got.data,
            &reference::rms_norm(&x.data, cols, &w.data, 1e-5),
            1e-5,
            "rms_norm",
        );
    }
    let (x, y, bias) = (host(4, 37, 4), host(4, 37, 5), host(1, 37, 6));
    let mut dx = b.upload(&x).unwrap();
    b.add_assign(&mut dx, &b.upload(&y).unwrap()).unwrap();
    b.add_bias(&mut dx, &b.upload(&bias).unwrap()).unwrap();
    let want: Vec<f32> = (0..x.data.len())
        .map(|i| x.data[i] + y.data[i] + bias.data[i % 37])
        .collect();
    assert_close(
        &b.download(&dx).unwrap().data,
        &want,
        1e-6,
        "add_assign + add_bias",
    );
    assert!(b
        .add_assign(&mut dx, &b.upload(&host(4, 36, 1)).unwrap())
        .is_err());

    let gu = host(3, 2 * 45, 7);
    let got = b
        .download(&b.swiglu(&b.upload(&gu).unwrap()).unwrap())
        .unwrap();
    assert_eq!(got.shape, vec![3, 45]);
    assert_close(&got.data, &reference::swiglu(&gu.data, 90), 1e-5, "swiglu");

    for (heads, hd, start) in [(3usize, 10usize, 5usize), (4, 128, 1000)] {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let x = host(5, heads * hd, 8);
        let mut dx = b.upload(&x).unwrap();
        b.rope(&mut dx, heads, hd, start, &inv).unwrap();
        let mut want = x.data.clone();
        reference::rope(&mut want, heads, hd, start, &inv);
        assert_close(&b.download(&dx).unwrap().data, &want, 2e-5, "rope");
    }
}

#[test]
fn embedding_and_quantizer_are_exact() {
    let Some(b) = backend("embedding_and_quantizer_are_exact") else {
        return;
    };
    let table = host(50, 300, 9); // 300 = two groups + a ragged one, not a multiple of 16
    let ids: Vec<u32> = vec![49, 0, 7, 7, 23];
    let f = b.upload_linear(&table, WeightDType::F32).unwrap();
    let got = b.download(&b.embedding(&f, &ids).unwrap()).unwrap();
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            got.data[r * 300..(r + 1) * 300],
            table.data[id as usize * 300..(id as usize + 1) * 300]
        );
    }
    // Device quantization must equal the host quantizer bit for bit.
    let q = Int8Matrix::quantize(&table, INT8_GROUP);
    let i8w = b.upload_linear(&table, WeightDType::Int8).unwrap();
    let all: Vec<u32> = (0..50).collect();
    let got = b.download(&b.embedding(&i8w, &all).unwrap()).unwrap();
    let mut row = vec![0f32; 300];
    for r in 0..50 {
        q.dequantize_row(r, &mut row);
        assert_eq!(got.data[r * 300..(r + 1) * 300], row[..], "row {r}");
    }
    let one = b.download(&b.embedding(&i8w, &[17]).unwrap()).unwrap();
    assert_eq!(one.data, got.data[17 * 300..18 * 300]);
    assert!(b.embedding(&f, &[50]).is_err());
    // Device bf16 rounding must equal half::bf16::from_f32 bit for bit.
    let bw = b.upload_linear(&table, WeightDType::BF16).unwrap();
    let got = b.download(&b.embedding(&bw, &all).unwrap()).unwrap();
    assert_eq!(got.data, support::round_bf16(&table), "bf16 embedding");
    let one = b.download(&b.embedding(&bw, &[17]).unwrap()).unwrap();
    assert_eq!(one.data, got.data[17 * 300..18 * 300]);
    // Int4: the host quantizer's values, unpacked on the device.
    let i4w = b.upload_linear(&table, WeightDType::Int4).unwrap();
    let got = b.download(&b.embedding(&i4w, &all).unwrap()).unwrap();
    assert_eq!(got.data, support::dequant_i4(&table), "int4 embedding");
    let one = b.download(&b.embedding(&i4w, &[17]).unwrap()).unwrap();
    assert_eq!(one.data, got.data[17 * 300..18 * 300]);
    // Prefill (more rows than the GEMVs take) dequantizes int4 for cuBLAS.
    let x = host(40, 300, 12);
    let want = reference::matmul_f32(&x.data, 40, 300, &support::dequant_i4(&table), 50);
    let got = b
        .download(&b.matmul(&b.upload(&x).unwrap(), &i4w).unwrap())
        .unwrap();
    assert_close(&got.data, &want, 2e-4, "int4 prefill product");
}

/// The decode layer's attention half as the engine issues it (split, RoPE on
/// Q and K, KV store, attention): fused (views read in place, RoPE applied on
/// load) equals unfused bit for bit, and both match the reference.
#[test]
fn fused_qkv_views_match_unfused_and_reference() {
    let Some(mut b) = backend("fused_qkv_views_match_unfused_and_reference") else {
        return;
    };
    let (heads, kvh, hd) = (6usize, 2usize, 64usize);
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let shape = AttentionShape {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let width = (heads + 2 * kvh) * hd;
    let chunks = [9usize, 1, 1, 4];
    let mut results = Vec::new();
    for fused in [true, false] {
        b.set_fusion(fused);
        let mut cache = b.kv_cache(1, kvh, hd, 20).unwrap();
        let (mut ks, mut vs, mut outs) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        for (c, &n) in chunks.iter().enumerate() {
            let qkv = host(n, width, 77 + c as u64);
            let d = b.upload(&qkv).unwrap();
            let mut p = b
                .split_cols(&d, &[heads * hd, kvh * hd, kvh * hd])
                .unwrap()
                .into_iter();
            let (mut q, mut k, v) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            b.rope(&mut q, heads, hd, start, &inv).unwrap();
            b.rope(&mut k, kvh, hd, start, &inv).unwrap();
            b.kv_store(&mut cache, 0, start, &k, &v).unwrap();
            let got = b
                .download(&b.attention(&q, &cache, 0, start, shape).unwrap())
                .unwrap();
            // Reference: the same pieces, RoPE on the host.
            let cols = |lo: usize, w: usize| -> Vec<f32> {
                (0..n)
                    .flat_map(|r| qkv.data[r * width + lo..r * width + lo + w].to_vec())
                    .collect()
            };
            let (mut hq, mut hk) = (cols(0, heads * hd), cols(heads * hd, kvh * hd));
            reference::rope(&mut hq, heads, hd, start, &inv);
            reference::rope(&mut hk, kvh, hd, start, &inv);
            ks.extend_from_slice(&hk);
            vs.extend_from_slice(&cols((heads + kvh) * hd, kvh * hd));
            let want = reference::attention(&hq, &ks, &vs, start, heads, kvh, hd);
            assert_close(&got.data, &want, 2e-5, &format!("fused={fused} chunk {c}"));
            outs.push(got.data);
            start += n;
        }
        results.push(outs);
    }
    assert_eq!(results[0], results[1], "fusion must not change a bit");
}

/// The greedy choice recorded steps end with (`argmax_step`, also behind
/// `CudaBackend::argmax_row`) picks as the engine's host sampler does: the
/// largest value, the lowest id on ties, never a NaN unless at id 0.
#[test]
fn device_argmax_picks_as_the_host_sampler() {
    let Some(b) = backend("device_argmax_picks_as_the_host_sampler") else {
        return;
    };
    // The host rule (tessera_engine::sampler::argmax), written out.
    let host_rule = |v: &[f32]| -> u32 {
        if v[0].is_nan() {
            return 0;
        }
        let top = v.iter().fold(v[0], |m, &x| if x > m { x } else { m });
        v.iter().position(|&x| x == top).unwrap() as u32
    };
    let mut cases: Vec<(&str, Vec<f32>)> = vec![
        ("one value", vec![-3.0]),
        ("tie, lowest id wins", vec![1.0, 5.0, 2.0, 5.0, 5.0]),
        ("NaN never wins", vec![1.0, f32::NAN, 0.5, f32::NAN]),
        ("NaN at id 0", vec![f32::NAN, 3.0, 9.0]),
        ("all -inf", vec![f32::NEG_INFINITY; 300]),
        ("-0 ties +0", vec![-1.0, -0.0, 0.0, -2.0]),
        ("+inf late", vec![1.0, 2.0, f32::INFINITY, 3.0]),
    ];
    let mut last = vec![0.25f32; 32000];
    last[31999] = 0.5;
    cases.push(("largest at the end", last));
    let mut spread = host(1, 32000 + 77, 9).data;
    spread[12345] = 7.0;
    spread[30001] = 7.0; // tie across threads and warps
    spread[5] = f32::NAN;
    cases.push(("tie across blocks of the stride", spread));
    cases.push(("random", host(1, 49152, 3).data));
    for (what, v) in &cases {
        let x = b
            .upload(&HostTensor::new(vec![1, v.len()], v.clone()))
            .unwrap();
        let got = b.argmax_row(&x).unwrap();
        assert_eq!(got, host_rule(v), "{what}");
        assert_eq!(got, tessera_backend::argmax(v), "{what}: the host function");
    }
    assert!(b.argmax_row(&b.upload(&host(2, 8, 1)).unwrap()).is_err());
    // `Backend::argmax_rows` (one block per row: the served greedy path): the
    // cases of one length stacked as rows, each row picked as alone.
    let n = 4;
    let rows: Vec<&Vec<f32>> = cases
        .iter()
        .map(|c| &c.1)
        .filter(|v| v.len() == n)
        .collect();
    assert!(rows.len() >= 2, "cases of {n} values");
    let stacked: Vec<f32> = rows.iter().flat_map(|v| v.iter().copied()).collect();
    let x = b
        .upload(&HostTensor::new(vec![rows.len(), n], stacked))
        .unwrap();
    let want: Vec<u32> = rows.iter().map(|v| host_rule(v)).collect();
    assert_eq!(b.argmax_rows(&x).unwrap(), want, "stacked rows");
    let many = host(33, 49152, 4);
    let want: Vec<u32> = many.data.chunks_exact(49152).map(host_rule).collect();
    let got = b.argmax_rows(&b.upload(&many).unwrap()).unwrap();
    assert_eq!(got, want, "33 random rows");
}
