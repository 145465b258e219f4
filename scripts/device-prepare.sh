#!/usr/bin/env bash
# Build what the GPU machine runs into .device/ (git-ignored). The GPU machine
# has no Rust toolchain and no network, so binaries are built here, stripped,
# and carried there with the working tree (`run` with carry: [".device"]).
#
# Usage:  scripts/device-prepare.sh          (from any directory)
# Output: .device/tessera          the CLI (release build)
#         .device/cuda-tests       the CUDA op tests (crates/tessera-backend/tests/cuda.rs)
#         .device/nccl_check     the NCCL collective check (world 1, two ranks, watchdog)
#         .device/BUILD            what was built, from which commit
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p .device
echo "device-prepare: building the tessera CLI (release)" >&2
cargo build --release -p tessera
cp target/release/tessera .device/tessera

echo "device-prepare: building the CUDA op tests" >&2
# --no-run prints the test executable's path in its JSON messages.
test_bin=$(cargo test -p tessera-backend --test cuda --no-run --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])
')
[ -n "$test_bin" ] || { echo "device-prepare: could not find the cuda test binary" >&2; exit 1; }
cp "$test_bin" .device/cuda-tests

echo "device-prepare: building the NCCL check (crates/tessera-comm/examples/nccl_check.rs)" >&2
cargo build --release -p tessera-comm --example nccl_check
cp target/release/examples/nccl_check .device/nccl_check

strip .device/tessera .device/cuda-tests .device/nccl_check
{
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "rustc: $(rustc --version)"
} > .device/BUILD
ls -l .device >&2
echo "device-prepare: done; run scripts/device-check.sh OUTDIR on the GPU machine" >&2
