# Offload (stage-3 streaming) section of scripts/device-check.sh; sourced by it
# (uses TESSERA, PY, ROOT, OUT, HAVE_GPU, say, remaining). About 2-3 minutes:
#   1. the link's ceiling: plain pinned host-to-device copy (torch, 1 GiB);
#   2. tessera bench, llama2-7b shape int8 on cuda, streamed:
#      - half:  a 4.6 GB weight budget: 15 of 32 layers resident, 17 streamed;
#      - full:  a 1 GB budget: embedding + LM head + 3 slots, every layer streamed;
#      decode tok/s at batch 1 and 32, streaming GB/s vs the ceiling, stall time;
#   3. accelerate CPU offload of the same shape (bf16, device_map from
#      max_memory), a few decode tokens, for the baseline ratio.
# Figures go to OUT/offload/*.json; report.py summarises them.
mkdir -p "$OUT/offload"
offload_bench() { # name budget extra-args...
    local name=$1 budget=$2; shift 2
    say "offload: llama2-7b int8 streamed ($name, budget $budget)"
    timeout 150 "$TESSERA" bench --model dummy:llama2-7b:1 --device cuda --dtype int8 \
        --offload-budget "$budget" --prefetch 2 --prompt-lens 16 --decode-tokens 16 \
        --decode-batch 32 --reps 1 --json "$@" >"$OUT/offload/$name.json" 2>"$OUT/offload/$name.err"
    local rc=$?
    echo "   rc $rc"
    [ $rc -eq 0 ] || { rm -f "$OUT/offload/$name.json"; tail -c 600 "$OUT/offload/$name.err"; }
    grep "^offload:" "$OUT/offload/$name.err"
}
offload_same() { # device: streamed vs resident on dummy:small int8, tokens and logits must match exactly
    local dev=$1 d="$OUT/offload"
    say "offload: correctness on $dev (dummy:small int8: resident vs 2 of 8 layers resident, prefetch 2)"
    local common=(generate --model dummy:small:1 --device "$dev" --dtype int8 --prompt-ids 1,15,300,7,99
        --max-new-tokens 16 --json)
    timeout 90 "$TESSERA" "${common[@]}" --dump-logits "$d/same-resident-$dev.npy" \
        >"$d/same-resident-$dev.json" 2>"$d/same-resident-$dev.err" &&
    timeout 90 "$TESSERA" "${common[@]}" --dump-logits "$d/same-streamed-$dev.npy" \
        --offload-budget 1GB --resident-layers 2 --prefetch 2 \
        >"$d/same-streamed-$dev.json" 2>"$d/same-streamed-$dev.err"
    echo "   rc $?"
    "$PY" "$ROOT/scripts/device/offload_same.py" "$d" "$dev" 2>&1 | tail -n 2
}
if [ $HAVE_GPU = 1 ]; then
    offload_same cuda
    say "offload: pinned H2D ceiling (torch)"
    timeout 30 "$PY" "$ROOT/scripts/device/offload_baseline.py" "$OUT/offload/baseline.json" \
        --skip-accelerate >"$OUT/offload/ceiling.txt" 2>&1
    tail -n 3 "$OUT/offload/ceiling.txt"
    if [ "$(remaining)" -gt 160 ]; then offload_bench half 4.6GB; else say "offload: half-resident run skipped (seconds left: $(remaining))"; fi
    if [ "$(remaining)" -gt 160 ]; then offload_bench full 1GB; else say "offload: fully streamed run skipped (seconds left: $(remaining))"; fi
    left=$(remaining)
    if [ "$left" -gt 80 ]; then
        say "offload: accelerate CPU offload baseline (llama2-7b bf16, 4 GiB on the GPU)"
        timeout $((left > 150 ? 130 : left - 20)) "$PY" "$ROOT/scripts/device/offload_baseline.py" \
            "$OUT/offload/baseline.json" --gpu-mem 4GiB --tokens 4 >"$OUT/offload/accelerate.txt" 2>&1
        echo "   rc $?"; tail -n 20 "$OUT/offload/accelerate.txt"
    else
        echo "   accelerate baseline skipped (seconds left: $left)"
    fi
else
    # Dry run: the same commands on the CPU with a small model, so the section is exercised.
    offload_same cpu
    say "offload: dry run on cpu (dummy:tiny, budget 3.3MB: every layer streamed)"
    timeout 60 "$TESSERA" bench --model dummy:tiny:1 --device cpu --dtype int8 \
        --offload-budget 3.3MB --prefetch 2 --prompt-lens 4 --decode-tokens 4 \
        --decode-batch 4 --reps 1 --json >"$OUT/offload/dry-cpu.json" 2>"$OUT/offload/dry-cpu.err"
    echo "   rc $?"; grep "^offload:" "$OUT/offload/dry-cpu.err"
fi
