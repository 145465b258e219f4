//! The public gRPC API served by `tessera launch configs/cpu-tp2.yaml`,
//! driven by real clients: Python `tritonclient[grpc]` and the
//! `grpcio-health-checking` client (tests/python/triton_client_check.py),
//! from the virtualenv `.venv-client` that scripts/test.sh creates.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn client_python() -> Option<PathBuf> {
    let py = repo_root().join(".venv-client/bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing; scripts/test.sh creates it",
        py.display()
    );
    eprintln!(
        "skipped: {} is missing (run scripts/test.sh once)",
        py.display()
    );
    None
}

/// Start the server on free ports; returns it, the gRPC address and the
/// metrics address it printed.
fn start_server() -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .current_dir(repo_root())
        .args([
            "launch",
            "configs/cpu-tp2.yaml",
            "--grpc-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera launch");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            if let Some(addr) = line.strip_prefix("metrics: http://") {
                let _ = tx.send(("metrics", addr.trim_end_matches("/metrics").to_string()));
            }
            if let Some(addr) = line.strip_prefix("ready: inference.GRPCInferenceService on ") {
                let _ = tx.send(("grpc", addr.trim().to_string()));
            }
        }
    });
    let (mut grpc, mut metrics) = (None, None);
    while grpc.is_none() || metrics.is_none() {
        let Ok((kind, addr)) = rx.recv_timeout(Duration::from_secs(120)) else {
            // Leave nothing behind: SIGTERM stops the launcher and its workers.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            panic!("the server did not report ready within 120 s");
        };
        match kind {
            "grpc" => grpc = Some(addr),
            _ => metrics = Some(addr),
        }
    }
    (child, grpc.unwrap(), metrics.unwrap())
}

/// `GET /metrics` over plain HTTP/1.1.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut out = String::new();
    match std::net::TcpStream::connect(addr) {
        Ok(mut s) => {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = s.read_to_string(&mut out);
        }
        Err(e) => out = format!("cannot connect to {addr}: {e}"),
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

#[test]
fn triton_client_against_cpu_tp2() {
    let Some(model) = smollm2_path() else { return };
    let Some(py) = client_python() else { return };
    let prompt = "The capital of France is";
    let n = 24;
    let want = generate_json(&[
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        &n.to_string(),
        "--ignore-eos",
    ]);
    // Sampled with a seed: the server's workers sample (rank 0, from the
    // sampling values the step carries) and must give the CLI's text.
    let sampled = generate_json(&[
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        &n.to_string(),
        "--ignore-eos",
        "--temperature",
        "0.9",
        "--top-k",
        "50",
        "--top-p",
        "0.95",
        "--repetition-penalty",
        "1.2",
        "--seed",
        "17",
    ]);
    assert_ne!(
        sampled["text"], want["text"],
        "the sampled text should differ from the greedy one, or the check below proves nothing"
    );
    let tmp = tempfile::tempdir().unwrap();
    let expected = tmp.path().join("expected.json");
    std::fs::write(
        &expected,
        serde_json::json!({
            "prompt": prompt,
            "max_tokens": n,
            "text": want["text"],
            "sampled": {
                "params": {"temperature": 0.9, "top_k": 50, "top_p": 0.95,
                           "repetition_penalty": 1.2, "seed": 17, "ignore_eos": true},
                "text": sampled["text"],
            },
        })
        .to_string(),
    )
    .unwrap();
    let (mut server, addr, metrics) = start_server();
    let out = Command::new(&py)
        .arg(repo_root().join("tests/python/triton_client_check.py"))
        .args([
            &addr,
            "SmolLM2-135M-Instruct.Q4_1",
            expected.to_str().unwrap(),
        ])
        .output()
        .expect("run the Python client");
    let log = String::from_utf8_lossy(&out.stdout);
    eprintln!("{log}{}", String::from_utf8_lossy(&out.stderr));
    let ok = out.status.success() && log.contains("ALL CHECKS PASSED");
    // Prometheus metrics reflect what the checks did (checked after the
    // server is stopped, so a failure leaves no server behind).
    let m = scrape(&metrics);
    // Graceful stop: SIGTERM drains and exits 0, leaving no worker.
    let workers = children_of(server.id());
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(15) {
            let _ = server.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ok, "the Triton client checks failed (see the log above)");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        metric(&m, "tessera_requests_completed_total") >= 20.0,
        "{m}"
    );
    assert!(metric(&m, "tessera_requests_cancelled_total") >= 1.0, "{m}");
    assert!(metric(&m, "tessera_steps_total") > 0.0, "{m}");
    assert_eq!(metric(&m, "tessera_kv_blocks_used"), 0.0, "{m}");
    assert!(metric(&m, "tessera_worker_kv_blocks_total") > 0.0, "{m}");
    assert_eq!(
        metric(&m, "tessera_offload_bytes_total"),
        0.0,
        "resident weights stream nothing"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not stop the server cleanly: {status:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    for w in workers {
        assert!(!alive(w), "worker {w} survived");
    }
}
