#!/usr/bin/env bash
# Build what the GPU machine runs into .device/ (git-ignored). The GPU machine
# has no Rust toolchain and no network, so binaries are built here, stripped,
# and carried there with the working tree (`run` with carry: [".device"]).
#
# Usage:  scripts/device-prepare.sh          (from any directory)
#         BASE=<commit> scripts/device-prepare.sh
#                                  also builds that commit into .device/base/ (from a
#                                  git worktree, in its own target folder
#                                  target/base-build/) for scripts/device/ab.sh
# Output: .device/tessera          the CLI (release build)
#         .device/cuda-tests       the CUDA op tests (crates/tessera-backend/tests/cuda.rs)
#         .device/nccl_check       the NCCL collective check (world 1, two ranks, watchdog)
#         .device/BUILD            what was built, from which commit
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# build SRC TARGET DEST: the three binaries of the checkout SRC, built in the
# target folder TARGET, stripped into DEST.
build() {
    local src=$1 target=$2 dest=$3
    mkdir -p "$dest"
    cd "$src"
    echo "device-prepare: building the tessera CLI (release) in $src" >&2
    CARGO_TARGET_DIR=$target cargo build --release -p tessera
    cp "$target/release/tessera" "$dest/tessera"
    echo "device-prepare: building the CUDA op tests" >&2
    # --no-run prints the test executable's path in its JSON messages.
    local test_bin
    test_bin=$(CARGO_TARGET_DIR=$target cargo test -p tessera-backend --test cuda --no-run --message-format=json \
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
    cp "$test_bin" "$dest/cuda-tests"
    echo "device-prepare: building the NCCL check (crates/tessera-comm/examples/nccl_check.rs)" >&2
    CARGO_TARGET_DIR=$target cargo build --release -p tessera-comm --example nccl_check
    cp "$target/release/examples/nccl_check" "$dest/nccl_check"
    strip "$dest/tessera" "$dest/cuda-tests" "$dest/nccl_check"
    {
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
        echo "rustc: $(rustc --version)"
    } >"$dest/BUILD"
    cd "$root"
}

if [ -n "${BASE:-}" ]; then
    wt=$(mktemp -d)/base
    git worktree add --detach "$wt" "$BASE" >&2
    rm -rf .device/base
    build "$wt" "$root/target/base-build" "$root/.device/base"
    git worktree remove --force "$wt"
fi
build "$root" "$root/target" "$root/.device"
ls -l .device >&2
echo "device-prepare: done; run scripts/device-check.sh OUTDIR on the GPU machine" >&2
