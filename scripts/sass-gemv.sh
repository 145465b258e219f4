#!/usr/bin/env bash
# Static SASS figures of the GEMV kernels, without a GPU: the kernels compiled
# to PTX by the real NVRTC (as the CUDA backend does at run time), assembled
# for sm_90 by ptxas, disassembled by cuobjdump. Prints, per kernel, the
# registers (which set the blocks per SM) and, per basic block that computes
# a step (PRMT-, FFMA-, IDP- or IMMA-heavy) or loads one (LDG), its instruction count. The tools
# come from their PyPI wheels into target/sass-tools/ (~45 MB, once).
#
#   bash scripts/sass-gemv.sh [KERNEL...]    # default: the int8 v4 kernels
#
# Not part of the tests: a tool for kernel work (docs/gpu.md, "GEMV v4, full steps").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -e target/nvrtc/nvidia/cu13/lib/libnvrtc.so.13 ] || bash scripts/nvrtc-ptx.sh >/dev/null # unpacks NVRTC into target/nvrtc/
nvrtc=target/nvrtc/nvidia/cu13/lib
[ -e "$nvrtc/libnvrtc.so.13" ] || { echo "sass-gemv.sh: NVRTC missing in $nvrtc" >&2; exit 1; }
tools=target/sass-tools
bin="$tools/nvidia/cu13/bin"
if [ ! -x "$bin/ptxas" ] || [ ! -x "$bin/cuobjdump" ] || [ ! -x "$bin/nvdisasm" ]; then
    pip=pip
    [ -x .venv-client/bin/pip ] && pip=.venv-client/bin/pip
    rm -rf "$tools" && mkdir -p "$tools/dl"
    # ptxas 13.0 as the GPU machines' driver (580) takes; the disassemblers read any cubin.
    "$pip" download -q --disable-pip-version-check --no-deps -d "$tools/dl" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.5.37
    for whl in "$tools"/dl/*.whl; do python3 -m zipfile -e "$whl" "$tools"; done
    rm -rf "$tools/dl"
    chmod +x "$bin"/* 2>/dev/null || true
fi
LD_LIBRARY_PATH="$(pwd)/$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PATH="$(pwd)/$bin:$PATH" python3 scripts/sass_gemv.py "$@"
