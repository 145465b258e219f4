#!/usr/bin/env bash
# A/B of two tessera binaries as gRPC servers on one config, on this machine,
# alternating rounds: each side's server is started, loaded with
# scripts/bench-serve.py (the real tritonclient, streaming), and stopped.
#
# Usage:  scripts/ab-serve.sh BASE_BIN NEW_BIN CONFIG OUTDIR [ROUNDS] [CONCURRENCY]
#         (from the repository root; needs .venv-client from scripts/test.sh)
# Output: OUTDIR/<side>-<round>.json (bench-serve.py's figures) and a table on stdout.
set -euo pipefail
base=$1 new=$2 config=$3 out=$4 rounds=${5:-2} conc=${6:-1,16}
mkdir -p "$out"
py=.venv-client/bin/python
model=$(basename "$(sed -n 's/^ *path: *//p' "$config" | head -1)")
model=${model%.gguf}

run_side() { # BIN SIDE ROUND
    local bin=$1 side=$2 round=$3 log="$out/$2-$3.log"
    "$bin" launch "$config" --grpc-address 127.0.0.1:0 >"$log" 2>&1 &
    local pid=$! addr=""
    for _ in $(seq 1 600); do
        addr=$(sed -n 's/^ready: inference.GRPCInferenceService on //p' "$log" | head -1)
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || { echo "ab-serve: $side server exited, see $log" >&2; exit 1; }
        sleep 0.2
    done
    [ -n "$addr" ] || { kill -TERM "$pid"; echo "ab-serve: $side server not ready" >&2; exit 1; }
    "$py" scripts/bench-serve.py --addr "$addr" --model "$model" --concurrency "$conc" \
        --max-tokens 32 --json "$out/$side-$round.json" >"$out/$side-$round.txt"
    # The launcher's own CPU time (user + system, clock ticks; its workers are
    # other processes): the router's share of the work.
    awk '{print $14 + $15}' "/proc/$pid/stat" >"$out/$side-$round.cpu"
    kill -TERM "$pid"
    wait "$pid" || true
}

for r in $(seq 1 "$rounds"); do
    run_side "$base" base "$r"
    run_side "$new" new "$r"
done
python3 - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = {(side, r): json.load(open(f"{out}/{side}-{r}.json"))
        for r in range(1, rounds + 1) for side in ("base", "new")}
print("| side | round | concurrency | errors | output tok/s | inter-token p50 / p99 ms | TTFT p50 ms |")
print("|---|---|---|---|---|---|---|")
for (side, r), rows in runs.items():
    for lv in rows:
        print(f"| {side} | {r} | {lv['concurrency']} | {lv['errors']} | {lv['output_tokens_per_s']:.1f} | "
              f"{lv['itl_p50_ms']:.1f} / {lv['itl_p99_ms']:.1f} | {lv['ttft_p50_ms']:.0f} |")
print()
import os
tick = os.sysconf("SC_CLK_TCK")
for side in ("base", "new"):
    cpu = [int(open(f"{out}/{side}-{r}.cpu").read()) / tick for r in range(1, rounds + 1)]
    toks = [sum(lv["output_tokens"] for lv in runs[(side, r)]) for r in range(1, rounds + 1)]
    per = [1e3 * c / t for c, t in zip(cpu, toks)]
    print(f"launcher CPU time, {side}: " + ", ".join(f"{c:.2f} s" for c in cpu)
          + " (" + ", ".join(f"{p:.2f}" for p in per) + " ms per output token)")
print()
print("| concurrency | base tok/s (mean) | new tok/s (mean) | new / base |")
print("|---|---|---|---|")
for i, lv in enumerate(runs[("base", 1)]):
    mean = lambda side: sum(runs[(side, r)][i]["output_tokens_per_s"] for r in range(1, rounds + 1)) / rounds
    b, n = mean("base"), mean("new")
    print(f"| {lv['concurrency']} | {b:.1f} | {n:.1f} | {n / b:.3f} |")
PY
