#!/usr/bin/env bash
# A short follow-up to the offload section of scripts/device-check.sh: the fully
# streamed 7B int8 run beside accelerate's CPU offload with a matched GPU budget
# (1 GiB: nearly every layer on the CPU), in one run. Usage: offload-matched.sh OUTDIR
set -uo pipefail
OUT=${1:?usage: offload-matched.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export LD_LIBRARY_PATH="$SITE/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TESSERA_CUDA_INCLUDE="/usr/local/cuda/include:$SITE/nvidia/cu13/include"
echo "== tessera: llama2-7b int8, every layer streamed (budget 1GB)"
timeout 100 "$ROOT/.device/tessera" bench --model dummy:llama2-7b:1 --device cuda --dtype int8 \
    --offload-budget 1GB --prefetch 2 --prompt-lens 16 --decode-tokens 16 --decode-batch 1 --reps 1 --json \
    >"$OUT/full.json" 2>"$OUT/full.err"
echo "   rc $?"; grep "^offload:" "$OUT/full.err"
grep -o '"decode":{[^}]*}' "$OUT/full.json" | head -c 300; echo
grep -o '"offload":{.*' "$OUT/full.json" | head -c 600; echo
echo "== accelerate CPU offload, llama2-7b bf16, 1 GiB on the GPU"
timeout 90 "$PY" "$ROOT/scripts/device/offload_baseline.py" "$OUT/baseline.json" --gpu-mem 1GiB --tokens 3 \
    >"$OUT/accelerate.txt" 2>&1
echo "   rc $?"; tail -n 22 "$OUT/accelerate.txt"
