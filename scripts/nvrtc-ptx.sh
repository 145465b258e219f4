#!/usr/bin/env bash
# Compile the CUDA kernels to PTX with the real NVRTC (compute_90 and
# compute_80), without a GPU: NVRTC 13.0 comes from its PyPI wheel, unpacked
# into target/nvrtc/ (about 90 MB, downloaded once). This checks what the CUDA
# emulator cannot: the kernels' CUDA-only paths (inline PTX for cp.async and
# programmatic dependent launch) as NVRTC sees them.
#
#   bash scripts/nvrtc-ptx.sh      # part of scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VERSION=13.0.88 # keep at 13.0.x: the GPU machines' driver (580) rejects newer PTX
dir=target/nvrtc
lib="$dir/nvidia/cu13/lib"
if [ ! -e "$lib/libnvrtc.so.13" ]; then
    pip=pip
    [ -x .venv-client/bin/pip ] && pip=.venv-client/bin/pip
    rm -rf "$dir" && mkdir -p "$dir/dl"
    "$pip" download -q --disable-pip-version-check --no-deps -d "$dir/dl" "nvidia-cuda-nvrtc==$VERSION"
    python3 -m zipfile -e "$dir"/dl/nvidia_cuda_nvrtc-*.whl "$dir"
    rm -rf "$dir/dl"
fi
[ -e "$lib/libnvrtc.so.13" ] || { echo "nvrtc-ptx.sh: $lib/libnvrtc.so.13 missing after unpacking" >&2; exit 1; }
export LD_LIBRARY_PATH="$(pwd)/$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# TESSERA_REQUIRE_NVRTC: the test fails instead of skipping when NVRTC cannot be opened.
export TESSERA_REQUIRE_NVRTC=1
# --workspace: the test command's build (a -p selection would rebuild).
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --cargo-profile test --no-capture \
        -E 'binary_id(tessera-backend::cuda) & test(kernels_compile_to_ptx_with_nvrtc)'
else
    cargo test --workspace --test cuda kernels_compile_to_ptx_with_nvrtc -- --nocapture
fi
