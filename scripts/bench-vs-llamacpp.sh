#!/usr/bin/env bash
# Tessera int8 vs llama.cpp Q8_0 on the same GGUF file, machine and thread counts.
# Not part of CI: it installs llama.cpp from source and takes minutes.
#
# Usage:  scripts/bench-vs-llamacpp.sh [extra args for `llamacpp_bench.py compare`]
#         e.g. --threads 1,2 --rounds 3 --reps 2 --prompt-lens 128,512 --decode-tokens 128
# Env:    VENV=<dir>                 cached virtualenv (default: .venv-llamacpp, git-ignored)
#         LLAMA_CPP_PYTHON=<spec>    pip requirement (default: llama-cpp-python==0.3.36)
#         PYTHON=<python3>           interpreter that creates the virtualenv
#         CMAKE_ARGS=<flags>         llama.cpp build flags (default: this CPU's ISA, no AMX)
#
# What it does:
#   1. creates or reuses the virtualenv and `pip install`s llama-cpp-python from PyPI
#      (sdist: builds llama.cpp for this CPU; see CMAKE_ARGS below; override with CMAKE_ARGS);
#   2. fetches models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model.sh) and makes
#      a Q8_0 copy of it with llama.cpp's own llama_model_quantize (allow_requantize);
#      both engines then read that same Q8_0 file: llama.cpp runs its Q8_0 kernels,
#      Tessera loads it and requantizes to its int8 format (same 32-wide symmetric groups);
#   3. builds `tessera` (release) and, for each thread count, alternates processes
#      llama.cpp, tessera, llama.cpp, tessera, ... on the same synthetic prompts;
#   4. prints a table (prefill-128, prefill-512, decode-128; tok/s and ratio) and the
#      32-token greedy texts of both engines side by side; raw JSON goes to
#      target/bench-vs-llamacpp.json.
set -euo pipefail

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "${repo_root}"

VENV="${VENV:-.venv-llamacpp}"
LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}"
PYTHON="${PYTHON:-python3}"

# llama.cpp's build flags. GGML_NATIVE=ON (-march=native) also compiles ggml's AMX
# path wherever CPUID lists AMX; on VMs that list AMX without enabling it (this
# project's 2-core development VM) the first matmul dies with SIGILL on `tilezero`.
# So on AVX-512 machines the ISA is named explicitly, without AMX; llama.cpp's
# AVX-512 / VNNI Q8_0 kernels and its weight repacking are still built.
if [[ -z "${CMAKE_ARGS:-}" ]]; then
    if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
        CMAKE_ARGS+=" -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON"
        CMAKE_ARGS+=" -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
        CMAKE_ARGS+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    else
        CMAKE_ARGS="-DGGML_NATIVE=ON"
    fi
fi
stamp="${VENV}/.tessera-llamacpp-build"
want="${LLAMA_CPP_PYTHON} ${CMAKE_ARGS}"
if ! "${VENV}/bin/python" -c "import llama_cpp" >/dev/null 2>&1 \
        || [[ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]]; then
    echo "bench-vs-llamacpp: installing ${LLAMA_CPP_PYTHON} into ${VENV} (builds llama.cpp; several minutes)" >&2
    echo "bench-vs-llamacpp: CMAKE_ARGS=${CMAKE_ARGS}" >&2
    [[ -x "${VENV}/bin/python" ]] || "${PYTHON}" -m venv "${VENV}"
    "${VENV}/bin/python" -m pip install --upgrade pip >&2
    CMAKE_ARGS="${CMAKE_ARGS}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "${VENV}/bin/python" -m pip install --force-reinstall --no-cache-dir "${LLAMA_CPP_PYTHON}" >&2
    echo "${want}" >"${stamp}"
fi
py="${VENV}/bin/python"
echo "bench-vs-llamacpp: llama-cpp-python $("${py}" -c 'import llama_cpp; print(llama_cpp.__version__)')" >&2

q4="$(bash scripts/fetch-model.sh)"
q8="${q4%.Q4_1.gguf}.Q8_0.gguf"
if [[ ! -s "${q8}" ]]; then
    echo "bench-vs-llamacpp: requantizing $(basename "${q4}") to Q8_0 with llama.cpp" >&2
    "${py}" scripts/bench/llamacpp_bench.py quantize "${q4}" "${q8}" >&2
fi

cargo build --release -p tessera >&2

echo "bench-vs-llamacpp: $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "${py}" scripts/bench/llamacpp_bench.py compare \
    --model "${q8}" --tessera target/release/tessera \
    --out target/bench-vs-llamacpp.json "$@"
