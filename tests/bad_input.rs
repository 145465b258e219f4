//! Bad input gives a clear error naming the file and what is wrong, a non-zero
//! exit status, and never a panic.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Run `tessera generate` on `model` and return stderr, asserting a clean failure.
fn fails(model: &Path) -> String {
    let out = tessera(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure for {}, got success",
        model.display()
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status for {}: {err}",
        model.display()
    );
    assert!(
        !err.contains("panicked"),
        "panic for {}: {err}",
        model.display()
    );
    assert!(
        err.starts_with("error: "),
        "error line for {}: {err}",
        model.display()
    );
    assert_said_once(&err);
    err
}

/// The error line does not end by repeating itself ("...: A: A"), as it would
/// if a cause were printed both inside its parent's message and after it.
fn assert_said_once(err: &str) {
    let line = err.lines().next().unwrap_or_default();
    for (i, _) in line.match_indices(": ") {
        let tail = &line[i + 2..];
        assert!(
            tail.is_empty() || !line[..i].ends_with(tail),
            "`{tail}` is printed twice: {err}"
        );
    }
}

/// A copy of a fixture directory we may damage.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (tmp, dst)
}

#[test]
fn missing_path() {
    let err = fails(Path::new("/nonexistent/model.gguf"));
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn directory_without_weights() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("llama-gqa-tied").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let err = fails(tmp.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn truncated_safetensors() {
    let (_t, dir) = copy_fixture("llama-gqa-tied");
    let f = dir.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = fails(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn safetensors_header_length_lies() {
    let (_t, dir) = copy_fixture("llama-gqa-tied");
    let f = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&f, bytes).unwrap();
    let err = fails(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("header"),
        "{err}"
    );
}

#[test]
fn safetensors_offsets_lie() {
    let (_t, dir) = copy_fixture("llama-gqa-tied");
    let f = dir.join("model.safetensors");
    // A valid-looking header whose one tensor claims bytes far past the end.
    let header =
        br#"{"model.norm.weight":{"dtype":"F32","shape":[96],"data_offsets":[0,1000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 384]);
    std::fs::write(&f, bytes).unwrap();
    let err = fails(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn missing_tensor() {
    let (_t, dir) = copy_fixture("llama-gqa-tied");
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.down_proj.weight")
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&f, out).unwrap();
    let err = fails(&dir);
    assert!(
        err.contains("model.layers.1.mlp.down_proj.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn wrong_shape() {
    let (_t, dir) = copy_fixture("llama-gqa-tied");
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"intermediate_size\": 160", "\"intermediate_size\": 176");
    std::fs::write(&cfg, text).unwrap();
    let err = fails(&dir);
    assert!(
        err.contains("gate_proj.weight") && err.contains("[160, 96]") && err.contains("[176, 96]"),
        "{err}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let (_t, dir) = copy_fixture("llama-gqa-tied");
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("LlamaForCausalLM", "GPTBigCodeForCausalLM");
    std::fs::write(&cfg, text).unwrap();
    let err = fails(&dir);
    assert!(
        err.contains("GPTBigCodeForCausalLM") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn config_value_of_wrong_type() {
    let (_t, dir) = copy_fixture("llama-gqa-tied");
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"hidden_size\": 96", "\"hidden_size\": \"wide\"");
    std::fs::write(&cfg, text).unwrap();
    let err = fails(&dir);
    assert!(
        err.contains("hidden_size") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn not_a_gguf_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("model.gguf");
    std::fs::write(&f, b"this is not a model at all, just text").unwrap();
    let err = fails(&f);
    assert!(
        err.contains("model.gguf") && err.to_lowercase().contains("gguf"),
        "{err}"
    );
}

#[test]
fn truncated_gguf() {
    let Some(model) = smollm2_path() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("cut.gguf");
    // Keep the header and tensor table, lose most of the data.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    let err = fails(&f);
    assert!(err.contains("cut.gguf"), "{err}");
    // Cut inside the metadata as well.
    std::fs::write(&f, &bytes[..5000]).unwrap();
    let err = fails(&f);
    assert!(err.contains("cut.gguf"), "{err}");
}

#[test]
fn token_id_outside_vocabulary() {
    let out = tessera(&[
        "generate",
        "--model",
        fixture("llama-gqa-tied").to_str().unwrap(),
        "--prompt-ids",
        "1,99999",
        "--max-new-tokens",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("99999") && err.contains("vocabulary"), "{err}");
}

#[test]
fn prompt_text_without_tokenizer_says_what_to_do() {
    let out = tessera(&[
        "generate",
        "--model",
        fixture("llama-gqa-tied").to_str().unwrap(),
        "--prompt",
        "hello",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("no tokenizer") && err.contains("--prompt-ids"),
        "{err}"
    );
}

#[test]
fn a_gpu_that_is_not_there_is_named_by_its_flag() {
    // cuda:99: no machine has it, so this fails with or without a GPU (no
    // driver library, or no such device).
    let out = tessera(&[
        "generate",
        "--model",
        "dummy:tiny:1",
        "--device",
        "cuda:99",
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: --device cuda:99: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_said_once(&err);
}
