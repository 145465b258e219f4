#!/usr/bin/env bash
# Build the CPU stand-in for the CUDA driver, NVRTC and cuBLAS
# (crates/tessera-backend/cuda-emu, docs/cuda-emu.md) into target/cuda-emu/,
# and with `test`, run the CUDA backend's tests on it.
#
#   bash scripts/cuda-emu.sh          # build only; prints the library folder
#   bash scripts/cuda-emu.sh test     # build, then the CUDA tests on the emulator
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
src=crates/tessera-backend/cuda-emu
out=target/cuda-emu
mkdir -p "$out"
if ! command -v g++ >/dev/null 2>&1; then
    echo "cuda-emu.sh: g++ is missing; installing it" >&2
    (apt-get update -qq && apt-get install -y -qq g++) >&2
fi
hash=$(python3 "$src/gen.py" crates/tessera-backend/src/cuda/module.rs "$out/kernels.cpp")
g++ -std=c++20 -O2 -g -fPIC -shared -fvisibility=hidden -ffp-contract=off -fno-strict-aliasing \
    -Wall -Wno-unknown-pragmas -Wno-unused-function -Wno-unused-variable \
    -DEMU_SOURCE_HASH="${hash}ull" -I "$src" \
    -Wl,-soname,libtessera_cuda_emu.so \
    -o "$out/libtessera_cuda_emu.so.tmp" "$src/emu.cpp" "$out/kernels.cpp" -lpthread
mv "$out/libtessera_cuda_emu.so.tmp" "$out/libtessera_cuda_emu.so"
for name in libcuda.so libcuda.so.1 libnvrtc.so libnvrtc.so.13 libcublas.so libcublas.so.13 libnccl.so libnccl.so.2; do
    ln -sfn libtessera_cuda_emu.so "$out/$name"
done
echo "$(pwd)/$out"

if [ "${1:-}" = test ]; then
    shift
    # TESSERA_REQUIRE_CUDA: a test that cannot open the (emulated) GPU fails
    # instead of skipping. The NVRTC test checks real PTX; the emulator makes none.
    export LD_LIBRARY_PATH="$(pwd)/$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export TESSERA_REQUIRE_CUDA=1 TESSERA_CACHE_DIR=none
    # The backend's op tests (tests/cuda.rs) and the binary on the CUDA
    # backend (tests/cuda_cli.rs); the NCCL collective (tessera-comm) on the
    # emulator's NCCL: two ranks, the watchdog, the GPU-only world of one.
    # Then the streamed-offload tests twice more, with the compute stream's
    # work deferred until something waits for it, and with the copy stream's
    # deferred: a missing copy -> compute or compute -> slot-reuse event then
    # changes the tokens (docs/cuda-emu.md).
    # --workspace everywhere: the same build as the test command's (selecting
    # packages with -p would unify features differently and rebuild).
    if cargo nextest --version >/dev/null 2>&1; then
        run() { cargo nextest run --workspace --cargo-profile test --no-fail-fast "$@"; }
        run -E 'binary_id(tessera-backend::cuda) & not test(kernels_compile_to_ptx_with_nvrtc)' \
            -E 'binary_id(tessera::cuda_cli)' "$@"
        run --run-ignored all -E 'binary_id(tessera-comm) & test(/nccl::tests/)' "$@"
        for order in defer-first defer-others; do
            TESSERA_CUDA_EMU_ORDER=$order run -E 'binary_id(tessera::cuda_cli) & test(cuda_streamed_offload)' "$@"
        done
    else
        cargo test --workspace --test cuda --no-fail-fast -- --skip kernels_compile_to_ptx_with_nvrtc "$@"
        cargo test --workspace --test cuda_cli --no-fail-fast "$@"
        cargo test --workspace --lib --no-fail-fast nccl::tests -- --include-ignored "$@"
        for order in defer-first defer-others; do
            TESSERA_CUDA_EMU_ORDER=$order cargo test --workspace --test cuda_cli --no-fail-fast cuda_streamed_offload "$@"
        done
    fi
fi
