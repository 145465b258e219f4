//! GEMV v6 (int8 weights, 2..16 activation rows, activations as 22-bit fixed
//! point per 32 elements, integer tensor-core products, split over the
//! inputs): opt-in like v5, so it is held to the f64 product of the
//! dequantized weights, row by row; and fusion and PDL must not change a bit
//! of its results. On the emulator the tensor-core product runs as the
//! kernel's shuffle fallback, which follows the PTX fragment layout; the
//! device check runs these tests on the real instruction.

use crate::support::{
    assert_close, assert_falls_back_to_v2, backend, dequant_i4, dequant_i8, fused_layer_products,
    get, host, matmul_f64, round_bf16, worst_error,
};
use tessera_backend::cuda::GemvVariant;
use tessera_backend::{reference, Backend, WeightDType};
use tessera_model::HostTensor;

/// Each activation replaced by the largest |x| of its 32-element group (of
/// its row): the bound v6's rounding obeys is 2^-22 of sum(|w| * this).
fn group_max(x: &HostTensor) -> Vec<f32> {
    let k = x.shape[1];
    let mut out = vec![0f32; x.data.len()];
    for (r, row) in x.data.chunks(k).enumerate() {
        for j in 0..k {
            let g = j / 32 * 32;
            out[r * k + j] = row[g..(g + 32).min(k)]
                .iter()
                .map(|v| v.abs())
                .fold(0f32, f32::max);
        }
    }
    out
}

/// Activations with a few outliers per row, values near zero and a group
/// of zeros, different per row.
fn spread_activations(n: usize, k: usize, seed: u64) -> HostTensor {
    let mut x = host(n, k, seed);
    for (i, v) in x.data.iter_mut().enumerate() {
        let (r, j) = (i / k, i % k);
        if j % 89 == 5 + r {
            *v *= 300.0;
        } else if j % 13 == 7 {
            *v *= 1e-4;
        } else if (64..96).contains(&j) {
            *v = 0.0;
        }
    }
    x
}

#[test]
fn gemv_v6_is_as_close_to_the_exact_product_as_the_f32_variants() {
    let Some(mut b) = backend("gemv_v6_is_as_close_to_the_exact_product_as_the_f32_variants")
    else {
        return;
    };
    // The emulator reports 4 SMs, so products under 1024 rows split their
    // inputs (up to 8 slices) and larger ones run one slice.
    for (shape, dtype) in [
        (77usize, 333usize, 2usize), // 11 groups, the last ragged; 8 slices
        (130, 1000, 5),
        (40, 4096 + 144, 8), // rows padded to 16 bytes: a half group at the end
        (300, 11008, 9),     // two tiles of 8 activation rows
        (1500, 96, 16),      // 12 row tiles: one slice
        (33, 202, 3),        // k % 4 != 0
    ]
    .into_iter()
    .flat_map(|s| {
        [
            (s, WeightDType::Int8),
            (s, WeightDType::Int4),
            (s, WeightDType::BF16),
        ]
    })
    // bf16 on the smaller shapes only: its emulated tensor-core product is
    // the slowest part of the emulator run.
    .filter(|&((m, k, _), dtype)| dtype != WeightDType::BF16 || m * k <= 200_000)
    {
        let (m, k, n) = shape;
        let w = host(m, k, 20 + m as u64);
        let deq = match dtype {
            WeightDType::Int4 => dequant_i4(&w),
            WeightDType::BF16 => round_bf16(&w),
            _ => dequant_i8(&w),
        };
        let wd = b.upload_linear(&w, dtype).unwrap();
        let abs_w: Vec<f32> = deq.iter().map(|v| v.abs()).collect();
        for (name, x) in [
            ("uniform", host(n, k, 7 + k as u64)),
            ("spread", spread_activations(n, k, 8 + k as u64)),
        ] {
            let want = matmul_f64(&x.data, n, k, &deq, m);
            let abs_x: Vec<f32> = x.data.iter().map(|v| v.abs()).collect();
            let terms = matmul_f64(&abs_x, n, k, &abs_w, m);
            let bound = matmul_f64(&group_max(&x), n, k, &abs_w, m);
            let dx = b.upload(&x).unwrap();
            b.set_gemv_variant(Some(GemvVariant::V2));
            let f32_out = get(&b, &b.matmul(&dx, &wd).unwrap());
            let f32_err = worst_error(&f32_out, &want, &terms);
            b.set_gemv_variant(Some(GemvVariant::V6));
            let got = get(&b, &b.matmul(&dx, &wd).unwrap());
            let v6_err = worst_error(&got, &want, &terms);
            let v6_bound = worst_error(&got, &want, &bound);
            println!(
                "{dtype} {m}x{k} n={n} {name}: worst error / sum|x w|: v2 (f32) {f32_err:.2e}, v6 {v6_err:.2e}; \
                 v6 error / sum(|w| group max|x|) {v6_bound:.2e}"
            );
            assert!(
                got != f32_out,
                "{dtype} {m}x{k} n={n} {name}: v6 gave v2's bits"
            );
            if dtype == WeightDType::BF16 {
                // Exact activations (three bf16) and products: only the
                // summation order differs from the f32 chains.
                assert!(
                    v6_err <= 1e-7_f64.max(4.0 * f32_err),
                    "{dtype} {m}x{k} n={n} {name}: v6 error {v6_err:.2e} (v2: {f32_err:.2e})"
                );
            } else {
                // 2^-22 = 2.4e-7 from the activations, plus the f32 rounding
                // of the group sums.
                assert!(
                    v6_bound <= 2.4e-7 + 2.0 * f32_err,
                    "{dtype} {m}x{k} n={n} {name}: v6 error {v6_bound:.2e} of its bound (v2: {f32_err:.2e})"
                );
            }
            if name == "uniform" {
                assert!(
                    v6_err <= 2.4e-7_f64.max(4.0 * f32_err),
                    "{dtype} {m}x{k} n={n} {name}: v6 error {v6_err:.2e} (v2: {f32_err:.2e})"
                );
                // Every row and column lands where it belongs (the error
                // bound above is the precision check).
                let want32: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                assert_close(&got, &want32, 1e-4, &format!("v6 {m}x{k} n={n} {name}"));
            }
            // The same launch again: the slices add up in the same order.
            assert!(
                got == get(&b, &b.matmul(&dx, &wd).unwrap()),
                "{dtype} {m}x{k} n={n} {name}: v6 differs between two runs"
            );
        }
        // One row does not run v6; the forced choice falls back to v2.
        let dx1 = b.upload(&host(1, k, 3)).unwrap();
        assert_falls_back_to_v2(
            &mut b,
            GemvVariant::V6,
            &dx1,
            &wd,
            &format!("{m}x{k}, one row"),
        );
    }
    // More than 16 rows (prefill) with dp4a on: 4 and 8 tiles per launch,
    // 64 rows per launch; staged 12 groups at a time at 64 rows.
    b.set_gemv_variant(None);
    b.set_int8_decode_dp4a(true);
    for (m, k, n, dtype) in [
        (70usize, 1000usize, 24usize, WeightDType::Int8),
        (130, 4096 + 16, 64, WeightDType::Int8),
        (40, 333, 100, WeightDType::Int8),
        (90, 1000, 40, WeightDType::Int4),
    ] {
        let w = host(m, k, 90 + m as u64);
        let deq = if dtype == WeightDType::Int4 {
            dequant_i4(&w)
        } else {
            dequant_i8(&w)
        };
        let wd = b.upload_linear(&w, dtype).unwrap();
        let abs_w: Vec<f32> = deq.iter().map(|v| v.abs()).collect();
        let x = spread_activations(n, k, 5 + n as u64);
        let want = matmul_f64(&x.data, n, k, &deq, m);
        let bound = matmul_f64(&group_max(&x), n, k, &abs_w, m);
        let got = get(&b, &b.matmul(&b.upload(&x).unwrap(), &wd).unwrap());
        let err = worst_error(&got, &want, &bound);
        println!("{m}x{k} n={n} (prefill): v6 error / sum(|w| group max|x|) {err:.2e}");
        assert!(
            err <= 4e-7,
            "{m}x{k} n={n}: prefill v6 error {err:.2e} of its bound"
        );
        // Row r's result does not depend on the rows around it (same
        // quantization per row, same slices): the last row alone agrees.
        let last = HostTensor::new(vec![1, k], x.data[(n - 1) * k..].to_vec());
        b.set_gemv_variant(Some(GemvVariant::V2));
        let lone = get(&b, &b.matmul(&b.upload(&last).unwrap(), &wd).unwrap());
        b.set_gemv_variant(None);
        let want_last: Vec<f32> = want[(n - 1) * m..].iter().map(|v| *v as f32).collect();
        assert_close(
            &got[(n - 1) * m..],
            &want_last,
            1e-4,
            &format!("{m}x{k} n={n} last row"),
        );
        assert_close(&lone, &want_last, 1e-4, &format!("{m}x{k} one row"));
    }
    b.set_int8_decode_dp4a(false);
    // A NaN or an infinity in one activation row makes that row's products
    // NaN and leaves the other rows alone.
    b.set_gemv_variant(Some(GemvVariant::V6));
    let w = host(20, 100, 4);
    let wd = b.upload_linear(&w, WeightDType::Int8).unwrap();
    let deq = dequant_i8(&w);
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = host(3, 100, 5);
        x.data[100 + 50] = bad;
        let got = get(&b, &b.matmul(&b.upload(&x).unwrap(), &wd).unwrap());
        assert!(
            got[20..40].iter().all(|v| v.is_nan()),
            "{bad} in row 1: {got:?}"
        );
        let want = reference::matmul_f32(&x.data, 3, 100, &deq, 20);
        assert_close(
            &got[..20],
            &want[..20],
            1e-5,
            &format!("row 0 beside {bad}"),
        );
        assert_close(
            &got[40..],
            &want[40..],
            1e-5,
            &format!("row 2 beside {bad}"),
        );
    }
    b.set_gemv_variant(None);
}

/// SwiGLU and the residual add fused into v6, and RMSNorm fused into its
/// quantizer, give the bits of the separate kernels; PDL changes nothing.
#[test]
fn gemv_v6_fused_epilogues_and_norm_match_unfused() {
    let Some(mut b) = backend("gemv_v6_fused_epilogues_and_norm_match_unfused") else {
        return;
    };
    b.set_gemv_variant(Some(GemvVariant::V6));
    for (k, inter, n, dtype) in [
        (200usize, 90usize, 3usize, WeightDType::Int8),
        (203, 64, 2, WeightDType::Int8),
        (512, 700, 12, WeightDType::Int8),
        (200, 90, 5, WeightDType::BF16),
        (203, 64, 9, WeightDType::BF16),
    ] {
        let wgu = host(2 * inter, k, 31);
        let wo = host(k, k, 32);
        let nw = host(1, k, 33);
        let (dgu, dwo) = if dtype == WeightDType::BF16 {
            (round_bf16(&wgu), round_bf16(&wo))
        } else {
            (dequant_i8(&wgu), dequant_i8(&wo))
        };
        let x = host(n, k, 41);
        let mut results = Vec::new();
        for (fused, pdl) in [(true, true), (false, true), (true, false)] {
            b.set_fusion(fused);
            b.set_pdl(pdl);
            let what = format!("{dtype} k={k} n={n} fused={fused} pdl={pdl}");
            let dv = (dgu.as_slice(), dwo.as_slice());
            results.push(fused_layer_products(
                &b, &wgu, &wo, &nw, &x, dv, dtype, &what,
            ));
        }
        assert!(
            results[0] == results[1],
            "{dtype} k={k} n={n}: fused and unfused v6 differ in bits"
        );
        assert!(
            results[0] == results[2],
            "{dtype} k={k} n={n}: v6 with and without PDL differ in bits"
        );
    }
    b.set_fusion(true);
    b.set_pdl(true);
    b.set_gemv_variant(None);
}

/// With `set_int8_decode_dp4a`, the per-shape timing includes v6 for int8
/// products of 2..16 rows (only those), and its result passes the check
/// against the baseline.
#[test]
fn autotune_includes_v6_when_opted_in() {
    let Some(mut b) = backend("autotune_includes_v6_when_opted_in") else {
        return;
    };
    b.set_gemv_variant(None);
    b.set_int8_decode_dp4a(true);
    let w = host(300, 768, 5);
    let wd = b.upload_linear(&w, WeightDType::Int8).unwrap();
    let x = host(6, 768, 6);
    let auto = get(&b, &b.matmul(&b.upload(&x).unwrap(), &wd).unwrap());
    get(
        &b,
        &b.matmul(&b.upload(&host(1, 768, 6)).unwrap(), &wd).unwrap(),
    );
    let wb = b.upload_linear(&w, WeightDType::BF16).unwrap();
    get(&b, &b.matmul(&b.upload(&x).unwrap(), &wb).unwrap());
    let t = b.gemv_tunings();
    assert_eq!(t.len(), 3, "{t:?}");
    let variants = |i: usize| t[i].micros.iter().map(|(v, _)| *v).collect::<Vec<_>>();
    assert!(variants(0).contains(&GemvVariant::V6), "{}", t[0]);
    assert!(t[0].micros.iter().all(|(_, us)| us.is_some()), "{}", t[0]);
    assert!(!variants(1).contains(&GemvVariant::V6), "1 row: {}", t[1]);
    assert!(variants(1).contains(&GemvVariant::V5), "1 row: {}", t[1]);
    assert!(!variants(2).contains(&GemvVariant::V6), "bf16: {}", t[2]);
    b.set_gemv_variant(Some(t[0].chosen));
    assert_eq!(
        auto,
        get(&b, &b.matmul(&b.upload(&x).unwrap(), &wd).unwrap()),
        "auto ran its choice {}",
        t[0].chosen
    );
    b.set_int8_decode_dp4a(false);
    b.set_gemv_variant(None);
    // bf16 products are offered v6 by their own switch, and it agrees with
    // the baseline.
    b.set_bf16_decode_tc(true);
    let wb2 = b
        .upload_linear(&host(200, 512, 7), WeightDType::BF16)
        .unwrap();
    get(
        &b,
        &b.matmul(&b.upload(&host(5, 512, 8)).unwrap(), &wb2)
            .unwrap(),
    );
    let t = b.gemv_tunings();
    let last = t.last().unwrap();
    assert!(
        last.micros
            .iter()
            .any(|(v, us)| *v == GemvVariant::V6 && us.is_some()),
        "bf16 with TESSERA_BF16_DECODE=tc: {last}"
    );
    b.set_bf16_decode_tc(false);
}
