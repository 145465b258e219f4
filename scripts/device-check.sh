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
DEV="${DEVICE_DIR:-$ROOT/.device}" # the built binaries (DEVICE_DIR: elsewhere, e.g. the CI's dry run)
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-400} # stay inside the caller's 420 s limit
# DEVICE_CHECK_ONLY=offload: only the offload section (environment and report included);
# DEVICE_CHECK_ONLY=offload-big: only its "bigger than the GPU" run (and the copy ceiling);
# DEVICE_CHECK_ONLY=cuda: everything but the offload section (about 3 minutes).
ONLY=${DEVICE_CHECK_ONLY:-}
SKIP_OFFLOAD=0
case "$ONLY" in
    "") OFFLOAD_ONLY=0 ;;
    cuda) OFFLOAD_ONLY=0 SKIP_OFFLOAD=1 ;;
    offload | offload-big) OFFLOAD_ONLY=1 ;;
    *) echo "DEVICE_CHECK_ONLY=$ONLY: expected cuda, offload or offload-big (or unset for everything)"; exit 2 ;;
esac
mkdir -p "$OUT/runs" "$OUT/speed"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
remaining() { echo $((BUDGET_S - $(elapsed))); }
say() { echo "== [$(elapsed)s] $*"; }

# ---------------------------------------------------------------- environment
# PY, the CUDA wheels on LD_LIBRARY_PATH, the kernel cache, GEMV choice logs.
. "$ROOT/scripts/device/env.sh"

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

if [ $OFFLOAD_ONLY = 0 ]; then
# ---------------------------------------------------------------- op tests
say "CUDA op tests"
if [ -x "$DEV/cuda-tests" ]; then
    timeout 150 "$DEV/cuda-tests" --test-threads=1 --nocapture >"$OUT/op_tests.txt" 2>&1
    echo $? >"$OUT/op_tests.rc"
    grep -E "^test |test result|skipped|panicked|FAILED|assert|left|right|launches per step" "$OUT/op_tests.txt" | cut -c1-400 | head -60
    if [ $HAVE_GPU = 1 ]; then
        # Per-variant GEMV GB/s on the 7B matrices (int8, bf16; 1 and 16 rows),
        # then 7B-shape decode steps (int8, bf16; each variant, PDL and fusion off)
        # and one step with each kernel timed alone (bench_decode_breakdown).
        say "kernel micro-benchmarks"
        timeout 120 "$DEV/cuda-tests" --ignored bench_gemv --test-threads=1 --nocapture >"$OUT/bench.txt" 2>&1
        say "decode-step benchmarks"
        timeout 180 "$DEV/cuda-tests" --ignored bench_decode --test-threads=1 --nocapture >>"$OUT/bench.txt" 2>&1
        grep -E "^(BENCH|TUNE|BREAKDOWN)|panicked" "$OUT/bench.txt"
    fi
else
    echo "missing $DEV/cuda-tests" | tee "$OUT/op_tests.txt"
fi

# ---------------------------------------------------------------- correctness
# The dummy weights lie exactly on the int8 grid, so CPU f32, CUDA f32 and CUDA
# int8 (W8A16: f32 activations) compute the same function; only summation order
# differs. CPU int8 is W8A8 (activations quantized too) and is shown for contrast.
# bf16 and int4 round the weights: CUDA bf16 / int4 are compared with CPU
# bf16 / int4 (the same rounded weights in f32), whose own distance from f32
# is shown too.
PROMPT=1,15,300,7,99,512,3,42,870,5
gen() { # shape device dtype tokens prompt outdir [timeout] [name suffix]; $GEN_EXTRA: more flags
    local base="$6/$1-${2%%:*}-$3${8:-}"
    # shellcheck disable=SC2086 # GEN_EXTRA is a list of flags
    timeout "${7:-90}" "$TESSERA" generate --model "dummy:$1:1" --device "$2" --dtype "$3" \
        --prompt-ids "$5" --max-new-tokens "$4" --json --dump-logits "$base.npy" ${GEN_EXTRA:-} >"$base.json" 2>"$base.err"
    local rc=$?
    [ $rc -eq 0 ] || { rm -f "$base.json"; echo "   $1 $2 $3 failed (rc $rc): $(tail -c 400 "$base.err")"; }
    return $rc
}
for shape in tiny small; do
    for cfg in "cpu f32" "cpu int8" "cpu bf16" "cpu int4" "cuda f32" "cuda int8" "cuda bf16" "cuda int4"; do
        set -- $cfg
        if [ "$1" = cuda ] && [ $HAVE_GPU = 0 ]; then continue; fi
        say "correctness: $shape on $1, $2"
        gen "$shape" "$1" "$2" 32 "$PROMPT" "$OUT/runs"
    done
done
# A bf16 KV cache (--kv-dtype bf16): CUDA stores bf16, the CPU keeps the
# rounded values in f32; CUDA int8 is compared with CPU f32, both with bf16 caches.
say "correctness: small on cpu, f32, --kv-dtype bf16"
GEN_EXTRA="--kv-dtype bf16" gen small cpu f32 32 "$PROMPT" "$OUT/runs" 90 -kvbf16
if [ $HAVE_GPU = 1 ]; then
    say "correctness: small on cuda, int8, --kv-dtype bf16"
    GEN_EXTRA="--kv-dtype bf16" gen small cuda int8 32 "$PROMPT" "$OUT/runs" 90 -kvbf16
fi
# Decode steps 3.. of the CUDA runs above replay a recorded CUDA graph; the
# same int8 run launched kernel by kernel must give the same tokens.
if [ $HAVE_GPU = 1 ]; then
    say "correctness: small on cuda, int8, recorded steps off"
    TESSERA_CUDA_GRAPH=0 gen small cuda int8 32 "$PROMPT" "$OUT/runs" 90 -eager
    # GEMV v5 (opt-in: activations as 22-bit fixed point, dp4a) on every
    # one-row int8 product: products within 2^-22 of the f32 ones.
    say "correctness: small on cuda, int8, GEMV v5 (TESSERA_GEMV=v5)"
    TESSERA_GEMV=v5 gen small cuda int8 32 "$PROMPT" "$OUT/runs" 90 -v5
    # Every int8 product on fixed-point activations where the per-shape
    # timing picks it (v5 at one row, v6 on integer tensor cores for the
    # prompt's rows).
    say "correctness: small on cuda, int8, TESSERA_INT8_DECODE=dp4a"
    TESSERA_INT8_DECODE=dp4a gen small cuda int8 32 "$PROMPT" "$OUT/runs" 90 -dp4a
fi

# ---------------------------------------------------------------- speed
# A 128-token prompt (prefill) then 128 greedy tokens (decode), batch 1.
LONG=$(seq 0 127 | awk '{printf "%s%d", (NR>1?",":""), ($1*7919)%31000+100}')
if [ $HAVE_GPU = 1 ]; then
    for dt in int8 bf16; do
        say "speed: llama2-7b $dt on cuda"
        gen llama2-7b cuda $dt 128 "$LONG" "$OUT/speed" 150
        grep -o '"timings":{[^}]*}' "$OUT/speed/llama2-7b-cuda-$dt.json" 2>/dev/null
        grep "tessera: GEMV" "$OUT/speed/llama2-7b-cuda-$dt.err" 2>/dev/null
        grep -o '"step_graphs":{[^}]*}' "$OUT/speed/llama2-7b-cuda-$dt.json" 2>/dev/null
    done
    # A/B: the same int8 run with every decode step launched kernel by kernel.
    say "speed: llama2-7b int8 on cuda, recorded steps off (TESSERA_CUDA_GRAPH=0)"
    TESSERA_CUDA_GRAPH=0 gen llama2-7b cuda int8 128 "$LONG" "$OUT/speed" 150 -eager
    grep -o '"timings":{[^}]*}' "$OUT/speed/llama2-7b-cuda-int8-eager.json" 2>/dev/null
    # The same int8 run with fixed-point activations offered (TESSERA_INT8_DECODE=dp4a:
    # GEMV v5 where the per-shape timing picks it, prefill on GEMV v6).
    say "speed: llama2-7b int8 on cuda, TESSERA_INT8_DECODE=dp4a"
    TESSERA_INT8_DECODE=dp4a TESSERA_GEMV_LOG=1 gen llama2-7b cuda int8 128 "$LONG" "$OUT/speed" 150 -dp4a
    grep -o '"timings":{[^}]*}' "$OUT/speed/llama2-7b-cuda-int8-dp4a.json" 2>/dev/null
    grep "tessera: GEMV" "$OUT/speed/llama2-7b-cuda-int8-dp4a.err" 2>/dev/null
fi

# ---------------------------------------------------------------- baselines
say "baselines: copy bandwidth + transformers bf16 llama2-7b shape"
left=$(remaining)
if [ $HAVE_GPU = 1 ]; then
    # The copy bandwidth (the roofline) is written first and always measured;
    # transformers only when there is time for it.
    hf_args=(--shape llama2-7b --prompt-len 128 --new-tokens 64)
    [ "$left" -gt 60 ] || hf_args+=(--skip-hf)
    timeout $((left > 110 ? 90 : (left > 60 ? left - 20 : 40))) "$PY" "$ROOT/scripts/device/hf_baseline.py" "$OUT/baseline.json" \
        "${hf_args[@]}" >"$OUT/baseline.txt" 2>&1
    echo "   rc $?"; tail -n 25 "$OUT/baseline.txt"
else
    echo "   skipped (no GPU)"
fi

# ---------------------------------------------------------------- batch 16, NCCL
if [ $HAVE_GPU = 1 ] && [ "$(remaining)" -gt 150 ]; then
    # Batched decode: 16 sequences stepped together (tokens/s of the whole batch).
    say "speed: llama2-7b int8 decode at batch 16 (tessera bench)"
    timeout 100 "$TESSERA" bench --model dummy:llama2-7b:1 --device cuda --dtype int8 \
        --prompt-lens 16 --decode-tokens 32 --reps 1 --decode-batch 16 --json \
        >"$OUT/b16.json" 2>"$OUT/b16.err"
    echo "   rc $?"; grep -o '"decode_batch":{[^}]*}' "$OUT/b16.json" | head -c 400; echo
    if [ "$(remaining)" -gt 170 ]; then
        # The same with fixed-point activations (GEMV v5 for one row, v6 on
        # integer tensor cores for 2..16 rows; docs/gpu.md, "GEMV v6").
        say "speed: llama2-7b int8 decode at batch 16, TESSERA_INT8_DECODE=dp4a"
        TESSERA_INT8_DECODE=dp4a TESSERA_GEMV_LOG=1 timeout 100 "$TESSERA" bench --model dummy:llama2-7b:1 \
            --device cuda --dtype int8 --prompt-lens 16 --decode-tokens 32 --reps 1 --decode-batch 16 --json \
            >"$OUT/b16_dp4a.json" 2>"$OUT/b16_dp4a.err"
        echo "   rc $?"; grep -o '"decode_batch":{[^}]*}' "$OUT/b16_dp4a.json" | head -c 400; echo
    fi
    if [ "$(remaining)" -gt 160 ]; then
        # The same-run baseline of the one-launch batched attention: the
        # default run with attention one sequence at a time (the old path).
        say "speed: llama2-7b int8 decode at batch 16, TESSERA_BATCH_ATTENTION=per-sequence"
        TESSERA_BATCH_ATTENTION=per-sequence timeout 100 "$TESSERA" bench --model dummy:llama2-7b:1 \
            --device cuda --dtype int8 --prompt-lens 16 --decode-tokens 32 --reps 1 --decode-batch 16 --json \
            >"$OUT/b16_perseq.json" 2>"$OUT/b16_perseq.err"
        echo "   rc $?"; grep -o '"decode_batch":{[^}]*}' "$OUT/b16_perseq.json" | head -c 400; echo
    fi
fi
if [ $HAVE_GPU = 1 ] && [ -x "$DEV/nccl_check" ] && [ "$(remaining)" -gt 120 ]; then
    say "NCCL: world 1, two ranks on one GPU (NCCL_HOSTID), watchdog"
    BIN="$DEV/nccl_check" timeout 100 bash "$ROOT/crates/tessera-comm/scripts/nccl-device-check.sh" "$OUT/nccl" \
        >"$OUT/nccl.txt" 2>&1
    echo "   rc $?"; grep -E "PASS|FAIL|GB/s|us" "$OUT/nccl.txt" | head -30
fi

fi # OFFLOAD_ONLY = 0

# ---------------------------------------------------------------- offload
# Stage-3 streaming: see scripts/device/offload-check.sh (DEVICE_CHECK_ONLY=offload
# or offload-big runs only the environment set-up, this section and the report).
if [ $SKIP_OFFLOAD = 0 ]; then
    # shellcheck source=device/offload-check.sh
    . "$ROOT/scripts/device/offload-check.sh"
fi

if [ $OFFLOAD_ONLY = 0 ]; then
if [ $HAVE_GPU = 1 ] && [ "$(remaining)" -gt 120 ]; then
    say "speed: llama3-8b int8 on cuda (time allowing)"
    gen llama3-8b cuda int8 128 "$LONG" "$OUT/speed" $(($(remaining) - 15))
fi

fi # OFFLOAD_ONLY = 0

# ---------------------------------------------------------------- report
say "report"
"$PY" "$ROOT/scripts/device/report.py" "$OUT" || python3 "$ROOT/scripts/device/report.py" "$OUT"
rm -rf "$NCCL_DIR" /tmp/tessera-cache
# Few files at the top (the device tool returns a limited number): the report,
# the log, the op-test output; everything else in one archive.
RAW=$(mktemp /tmp/tessera-raw.XXXXXX)
(cd "$OUT" && tar czf "$RAW" --exclude=report.json --exclude=report.md --exclude=log.txt \
    --exclude=op_tests.txt . && rm -rf runs speed offload env.json baseline.json baseline.txt bench.txt b16.json b16.err b16_dp4a.json b16_dp4a.err b16_perseq.json b16_perseq.err nccl nccl.txt \
    nvidia-smi.txt op_tests.rc BUILD && mv "$RAW" raw.tar.gz)
say "done"
