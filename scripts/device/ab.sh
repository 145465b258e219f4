#!/usr/bin/env bash
# A/B of two builds on one GPU in one run: .device/base/ ("base") against
# .device/ ("new"), both made by `BASE=<commit> scripts/device-prepare.sh`.
# Rounds alternate base and new; each side runs the GEMV micro-benchmarks
# (int8, one activation row), the 7B-shape decode-step benchmarks (backend
# level, with the per-kernel breakdown) and `tessera generate` on the 7B shape
# in int8 (a 128-token prompt, 128 new tokens; on builds that have them, also
# with GEMV v5 forced and with greedy steps one at a time). Every line it keeps is
# prefixed with its side and round, so the two builds read side by side.
#
# Usage:  scripts/device/ab.sh OUTDIR [ROUNDS]   (default 1 round; ~1 min per side on an H200)
#         AB_GEMV=0 skips the GEMV micro-benchmarks (~35 s per side) when the
#         GEMV kernels are the same on both sides.
set -uo pipefail
OUT=${1:?usage: scripts/device/ab.sh OUTDIR [ROUNDS]}
ROUNDS=${2:-1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/ab.txt") 2>&1
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
say() { echo "== [$(elapsed)s] $*"; }
. "$ROOT/scripts/device/env.sh"
for side in base new; do
    dir="$ROOT/.device"
    [ $side = base ] && dir="$ROOT/.device/base"
    [ -x "$dir/tessera" ] && [ -x "$dir/cuda-tests" ] || { echo "missing $dir/{tessera,cuda-tests}: BASE=<commit> scripts/device-prepare.sh"; exit 2; }
    echo "$side: $(head -1 "$dir/BUILD" 2>/dev/null)"
done
LONG=$(seq 0 127 | awk '{printf "%s%d", (NR>1?",":""), ($1*7919)%31000+100}')
for round in $(seq 1 "$ROUNDS"); do
    for side in base new; do
        dir="$ROOT/.device"
        [ $side = base ] && dir="$ROOT/.device/base"
        tag="$side r$round"
        if [ "${AB_GEMV:-1}" != 0 ]; then
            say "$tag: bench_gemv"
            timeout 120 "$dir/cuda-tests" --ignored bench_gemv --test-threads=1 --nocapture 2>&1 \
                | grep -E '^BENCH gemv_int8_[0-9x]+_n1_|^TUNE|panicked|skipped' | sed "s/^/$tag /"
        fi
        say "$tag: bench_decode"
        timeout 180 "$dir/cuda-tests" --ignored bench_decode --test-threads=1 --nocapture 2>&1 \
            | grep -E '^BENCH|^BREAKDOWN|panicked|skipped' | sed "s/^/$tag /"
        say "$tag: generate llama2-7b int8"
        timeout 150 "$dir/tessera" generate --model dummy:llama2-7b:1 --device cuda --dtype int8 \
            --prompt-ids "$LONG" --max-new-tokens 128 --json >"$OUT/gen-$side-$round.json" 2>"$OUT/gen-$side-$round.err" \
            || echo "$tag generate failed: $(tail -c 300 "$OUT/gen-$side-$round.err")"
        grep -o '"timings":{[^}]*}' "$OUT/gen-$side-$round.json" 2>/dev/null | sed "s/^/$tag /"
        grep "tessera: GEMV" "$OUT/gen-$side-$round.err" 2>/dev/null | sed "s/^/$tag /"
        # Builds with GEMV v5 carry its kernel source (compiled at run time).
        if grep -qa gemv_v5_i8_n1_r2 "$dir/tessera"; then
            say "$tag: generate llama2-7b int8, GEMV v5 (TESSERA_GEMV=v5)"
            TESSERA_GEMV=v5 timeout 150 "$dir/tessera" generate --model dummy:llama2-7b:1 --device cuda --dtype int8 \
                --prompt-ids "$LONG" --max-new-tokens 128 --json >"$OUT/gen-$side-v5-$round.json" 2>"$OUT/gen-$side-v5-$round.err" \
                || echo "$tag v5 generate failed: $(tail -c 300 "$OUT/gen-$side-v5-$round.err")"
            grep -o '"timings":{[^}]*}' "$OUT/gen-$side-v5-$round.json" 2>/dev/null | sed "s/^/$tag v5 /"
        fi
        # Builds that decode greedy steps in groups on the device: the same run one step at a time.
        if grep -qa TESSERA_GREEDY_AHEAD "$dir/tessera"; then
            say "$tag: generate llama2-7b int8, one greedy step at a time (TESSERA_GREEDY_AHEAD=0)"
            TESSERA_GREEDY_AHEAD=0 timeout 150 "$dir/tessera" generate --model dummy:llama2-7b:1 --device cuda --dtype int8 \
                --prompt-ids "$LONG" --max-new-tokens 128 --json >"$OUT/gen-$side-single-$round.json" 2>"$OUT/gen-$side-single-$round.err" \
                || echo "$tag single-step generate failed: $(tail -c 300 "$OUT/gen-$side-single-$round.err")"
            grep -o '"timings":{[^}]*}' "$OUT/gen-$side-single-$round.json" 2>/dev/null | sed "s/^/$tag single /"
        fi
    done
done
rm -rf "$NCCL_DIR"
# One file for the raw generate outputs: a device call brings back at most 8 files.
(cd "$OUT" && tar czf gen.tar.gz gen-*.json gen-*.err 2>/dev/null && rm -f gen-*.json gen-*.err)
say "done"
