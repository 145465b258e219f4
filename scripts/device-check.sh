#!/usr/bin/env bash
# The GPU check: one script, a few minutes, every figure written to OUTDIR.
#
# Usage:  scripts/device-check.sh OUTDIR
# Needs:  .device/ from scripts/device-prepare.sh (the GPU machine has no Rust
#         toolchain), python3 with torch + transformers + the NVIDIA CUDA 13
#         wheels (cuBLAS, NVRTC, NCCL) for the baseline and the libraries.
# Writes: OUTDIR/report.json, OUTDIR/report.md, OUTDIR/log.txt and the raw
#         outputs (env.json, op_tests.txt, runs/, speed/, baseline.json).
#
# Without a GPU (a dry run on a build machine) the CUDA steps are skipped and
# the CPU runs, comparisons and report still run, so the script itself is tested.
set -uo pipefail

OUT=${1:?usage: scripts/device-check.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV="$ROOT/.device"
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-400} # stay inside the caller's 420 s limit
# DEVICE_CHECK_ONLY=offload: only the offload section (environment and report included).
ONLY=${DEVICE_CHECK_ONLY:-}
mkdir -p "$OUT/runs" "$OUT/speed"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
remaining() { echo $((BUDGET_S - $(elapsed))); }
say() { echo "== [$(elapsed)s] $*"; }

# ---------------------------------------------------------------- environment
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo /nonexistent)
# cudarc dlopens libcublas/libnvrtc by their .so.13 names (NVRTC also opens its
# builtins itself), so LD_LIBRARY_PATH must hold the wheel folder; an rpath is not enough.
# cudarc never tries `libnccl.so.2`: give it a `libnccl.so` symlink.
NCCL_DIR=$(mktemp -d /tmp/tessera-nccl.XXXXXX)
[ -e "$SITE/nvidia/nccl/lib/libnccl.so.2" ] && ln -sf "$SITE/nvidia/nccl/lib/libnccl.so.2" "$NCCL_DIR/libnccl.so"
export LD_LIBRARY_PATH="$SITE/nvidia/cu13/lib:$NCCL_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TESSERA_CUDA_INCLUDE="/usr/local/cuda/include:$SITE/nvidia/cu13/include"

say "Tessera device check -> $OUT (python: $PY)"
cp "$DEV/BUILD" "$OUT/BUILD" 2>/dev/null || echo "no .device/BUILD (run scripts/device-prepare.sh first)"
[ -x "$DEV/tessera" ] || { echo "missing $DEV/tessera: run scripts/device-prepare.sh first"; exit 2; }
TESSERA="$DEV/tessera"

HAVE_GPU=0
if nvidia-smi -L >/dev/null 2>&1; then
    HAVE_GPU=1
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$OUT/nvidia-smi.txt"
else
    say "no GPU (nvidia-smi failed): CUDA steps are skipped (dry run)"
fi
"$PY" "$ROOT/scripts/device/env_report.py" "$OUT/env.json" >/dev/null 2>&1 || say "env_report.py failed"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); [print("  ", l["name"], l.get("version", l.get("error", ""))[:120], l.get("path") or "") for l in d["libraries"]]' "$OUT/env.json" 2>/dev/null

if [ "$ONLY" != offload ]; then
# ---------------------------------------------------------------- op tests
say "CUDA op tests"
if [ -x "$DEV/cuda-tests" ]; then
    timeout 120 "$DEV/cuda-tests" --test-threads=1 --nocapture >"$OUT/op_tests.txt" 2>&1
    echo $? >"$OUT/op_tests.rc"
    grep -E "^test |test result|skipped|panicked|FAILED|assert|left|right" "$OUT/op_tests.txt" | cut -c1-400 | head -60
    if [ $HAVE_GPU = 1 ]; then
        say "kernel micro-benchmarks"
        timeout 90 "$DEV/cuda-tests" --ignored bench --test-threads=1 --nocapture >"$OUT/bench.txt" 2>&1
        grep BENCH "$OUT/bench.txt"
    fi
else
    echo "missing $DEV/cuda-tests" | tee "$OUT/op_tests.txt"
fi

# ---------------------------------------------------------------- correctness
# The dummy weights lie exactly on the int8 grid, so CPU f32, CUDA f32 and CUDA
# int8 (W8A16: f32 activations) compute the same function; only summation order
# differs. CPU int8 is W8A8 (activations quantized too) and is shown for contrast.
PROMPT=1,15,300,7,99,512,3,42,870,5
gen() { # shape device dtype tokens prompt outdir
    local base="$6/$1-${2%%:*}-$3"
    timeout "${7:-90}" "$TESSERA" generate --model "dummy:$1:1" --device "$2" --dtype "$3" \
        --prompt-ids "$5" --max-new-tokens "$4" --json --dump-logits "$base.npy" >"$base.json" 2>"$base.err"
    local rc=$?
    [ $rc -eq 0 ] || { rm -f "$base.json"; echo "   $1 $2 $3 failed (rc $rc): $(tail -c 400 "$base.err")"; }
    return $rc
}
for shape in tiny small; do
    for cfg in "cpu f32" "cpu int8" "cuda f32" "cuda int8"; do
        set -- $cfg
        if [ "$1" = cuda ] && [ $HAVE_GPU = 0 ]; then continue; fi
        say "correctness: $shape on $1, $2"
        gen "$shape" "$1" "$2" 32 "$PROMPT" "$OUT/runs"
    done
done

# ---------------------------------------------------------------- speed
# A 128-token prompt (prefill) then 128 greedy tokens (decode), batch 1.
LONG=$(seq 0 127 | awk '{printf "%s%d", (NR>1?",":""), ($1*7919)%31000+100}')
if [ $HAVE_GPU = 1 ]; then
    say "speed: llama2-7b int8 on cuda"
    gen llama2-7b cuda int8 128 "$LONG" "$OUT/speed" 200
    grep -o '"timings":{[^}]*}' "$OUT/speed/llama2-7b-cuda-int8.json" 2>/dev/null
fi

fi # ONLY != offload

# ---------------------------------------------------------------- offload
# Stage-3 streaming: see scripts/device/offload-check.sh (DEVICE_CHECK_ONLY=offload
# runs only the environment set-up, this section and the report).
# shellcheck source=device/offload-check.sh
. "$ROOT/scripts/device/offload-check.sh"

if [ "$ONLY" != offload ]; then
# ---------------------------------------------------------------- baselines
say "baselines: copy bandwidth + transformers bf16 llama2-7b shape"
left=$(remaining)
if [ $HAVE_GPU = 1 ] && [ "$left" -gt 60 ]; then
    timeout $((left - 20)) "$PY" "$ROOT/scripts/device/hf_baseline.py" "$OUT/baseline.json" \
        --shape llama2-7b --prompt-len 128 --new-tokens 64 >"$OUT/baseline.txt" 2>&1
    echo "   rc $?"; tail -n 25 "$OUT/baseline.txt"
else
    echo "   skipped (GPU: $HAVE_GPU, seconds left: $left)"
fi

if [ $HAVE_GPU = 1 ] && [ "$(remaining)" -gt 110 ]; then
    say "speed: llama3-8b int8 on cuda (time allowing)"
    gen llama3-8b cuda int8 128 "$LONG" "$OUT/speed" $(($(remaining) - 15))
fi

fi # ONLY != offload

# ---------------------------------------------------------------- report
say "report"
"$PY" "$ROOT/scripts/device/report.py" "$OUT" || python3 "$ROOT/scripts/device/report.py" "$OUT"
rm -rf "$NCCL_DIR"
# Few files at the top (the device tool returns a limited number): the report,
# the log, the op-test output; everything else in one archive.
RAW=$(mktemp /tmp/tessera-raw.XXXXXX)
(cd "$OUT" && tar czf "$RAW" --exclude=report.json --exclude=report.md --exclude=log.txt \
    --exclude=op_tests.txt . && rm -rf runs speed offload env.json baseline.json baseline.txt bench.txt \
    nvidia-smi.txt op_tests.rc BUILD && mv "$RAW" raw.tar.gz)
say "done"
