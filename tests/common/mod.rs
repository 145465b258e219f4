//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

pub fn expected(name: &str) -> Value {
    let p = fixture(name).join("expected.json");
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .expect("expected.json parses")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Read a 1-D little-endian float32 `.npy` file.
pub fn read_npy(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).expect("utf8 header");
    assert!(
        header.contains("'<f4'"),
        "{}: not float32: {header}",
        path.display()
    );
    b[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The default real model, fetched by scripts/fetch-model.sh.
pub fn smollm2_path() -> Option<PathBuf> {
    let p = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing; the test command runs scripts/fetch-model.sh first",
            p.display()
        );
    } else {
        eprintln!(
            "skipped: {} is missing (run scripts/fetch-model.sh)",
            p.display()
        );
        None
    }
}

/// Run the real `tessera` binary.
pub fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("spawn tessera")
}

/// Run `tessera generate ... --json` and parse its output.
pub fn generate_json(args: &[&str]) -> Value {
    generate_json_env(args, &[])
}

/// As [`generate_json`], with `env` added to the child's environment.
pub fn generate_json_env(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["generate", "--json"];
    all.extend_from_slice(args);
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(&all)
        .envs(env.iter().copied())
        .output()
        .expect("spawn tessera");
    assert!(
        out.status.success(),
        "tessera {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

/// `tessera launch CONFIG ARGS...`, run from the repository root.
pub fn launch_cmd(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.current_dir(repo_root())
        .arg("launch")
        .arg(config)
        .args(args);
    c
}

/// `tessera launch CONFIG --json ARGS...`, parsed; the launch must succeed and
/// its workers must stop when asked (not be killed after the grace period).
pub fn launch_json(config: &Path, args: &[&str]) -> Value {
    let out = launch_cmd(config, &[&["--json"], args].concat())
        .output()
        .expect("spawn tessera launch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tessera launch {} {args:?} failed: {err}",
        config.display(),
    );
    // Workers stop when asked (Shutdown ends their Attach stream) instead of
    // being killed after the launcher's grace period.
    assert!(
        !err.contains("did not stop"),
        "tessera launch {} {args:?}: {err}",
        config.display()
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

/// Fraction of positions where two token sequences agree (over the longer length).
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len().max(b.len()).max(1);
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64
}

/// Processes whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let ppid: u32 = rest
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            if ppid == pid {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `pid` runs; a zombie (still in /proc) counts as gone.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|x| x.1.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
