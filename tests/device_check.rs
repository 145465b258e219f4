//! `scripts/device-check.sh` in its dry run (no GPU): the CUDA steps are
//! skipped, the CPU runs, their comparisons, the offload dry run and the
//! report still run. The script is what a GPU session gets to run once, so
//! CI keeps it working.

mod common;
use common::*;
use std::process::Command;

#[test]
fn device_check_dry_run_writes_the_report() {
    if Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: a GPU is present, so the script would not be a dry run");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("device");
    std::fs::create_dir(&dev).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tessera"), dev.join("tessera")).unwrap();
    let out = tmp.path().join("out");
    let run = Command::new("bash")
        .arg(repo_root().join("scripts/device-check.sh"))
        .arg(&out)
        .env("DEVICE_DIR", &dev)
        .current_dir(repo_root())
        .output()
        .expect("run the device check");
    let log = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "device check failed: {log}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(log.contains("dry run"), "{log}");
    assert!(!log.contains("Traceback"), "a report script failed:\n{log}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    for shape in ["tiny", "small"] {
        let runs = &report["correctness"][shape]["runs"];
        for name in ["cpu-f32", "cpu-int8", "cpu-bf16", "cpu-int4"] {
            assert_eq!(runs[name]["ok"], true, "{shape} {name}: {}", runs[name]);
        }
    }
    // The bf16 KV cache run, compared with the f32 one.
    let kv = &report["correctness"]["small"]["runs"]["cpu-f32-kvbf16"];
    assert_eq!(kv["reference"], "cpu-f32", "{kv}");
    let diff = kv["max_abs_logit_diff"]
        .as_f64()
        .expect("a logit difference");
    assert!(
        diff > 0.0 && diff < 0.05 * kv["max_abs_logit"].as_f64().unwrap(),
        "{kv}"
    );
    assert!(report["offload"].is_object(), "{}", report["offload"]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("cpu-f32-kvbf16"), "{md}");
}
