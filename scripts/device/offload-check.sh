# Offload (stage-3 streaming) section of scripts/device-check.sh; sourced by it
# (uses TESSERA, PY, ROOT, OUT, HAVE_GPU, ONLY, say, remaining). About 2-3 minutes:
#   1. the link's ceiling: plain pinned host-to-device copy (torch, 1 GiB);
#   2. tessera bench, llama2-7b shape int8 on cuda, streamed:
#      - half:  a 4.6 GB weight budget: 15 of 32 layers resident, 17 streamed;
#      - full:  a 1 GB budget: embedding + LM head + 3 slots, every layer streamed;
#      decode tok/s at batch 1 and 32, streaming GB/s vs the ceiling, stall time;
#      the same with int4 weights (full-int4, half-int4), time allowing;
#   3. accelerate CPU offload of the same shape (bf16, device_map from
#      max_memory), a few decode tokens, for the baseline ratio;
#   4. bigger than the GPU: dummy llama2-70b-deep96 int8 (93.0e9 bytes), only
#      where it exceeds the GPU's memory and host RAM holds it (up to 3 minutes;
#      DEVICE_CHECK_ONLY=offload-big runs 1 and 4 only).
# Figures go to OUT/offload/*.json; report.py summarises them.
mkdir -p "$OUT/offload"
offload_bench() { # name budget extra-args... (OB_DTYPE=int4: int4 weights, default int8)
    local name=$1 budget=$2 dtype=${OB_DTYPE:-int8}; shift 2
    say "offload: llama2-7b $dtype streamed ($name, budget $budget)"
    timeout 150 "$TESSERA" bench --model dummy:llama2-7b:1 --device cuda --dtype "$dtype" \
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
offload_ceiling() {
    say "offload: pinned H2D ceiling (torch)"
    timeout 30 "$PY" "$ROOT/scripts/device/offload_baseline.py" "$OUT/offload/baseline.json" \
        --skip-accelerate >"$OUT/offload/ceiling.txt" 2>&1
    tail -n 3 "$OUT/offload/ceiling.txt"
}

# ---------------------------------------------------------------- bigger than the GPU
# The synthetic shape of tessera_model::dummy::DEEP_SHAPE: Llama-2-70B's widths, 96 layers.
BIG_SHAPE=llama2-70b-deep96
BIG_LIMIT_S=180              # the run's timeout: load (93 GB generated and quantized) + 12 passes
BIG_HOST_MARGIN=$((12 << 30)) # host RAM beyond the model's bytes: OS, page cache, the load's buffers
BIG_DEVICE_MARGIN=$((8 << 30)) # GPU memory left out of the weight budget: CUDA context, the
                              # load's f32 upload of one matrix (1.9 GB), KV cache, activations
mem_available() { awk '/^MemAvailable:/ {printf "%.0f\n", $2 * 1024}' /proc/meminfo; }
model_int8_bytes() { # shape: int8 bytes of every weight (values + scales, norms f32), from `tessera plan`
    local cfg="$OUT/offload/plan-$1.yaml"
    printf 'model: {format: dummy, dtype: int8, dummy: {shape: %s}}\n' "$1" >"$cfg"
    "$TESSERA" plan "$cfg" >"$OUT/offload/plan-$1.txt" 2>&1
    sed -n 's/.*(\([0-9]*\) bytes) as int8.*/\1/p' "$OUT/offload/plan-$1.txt" | head -n 1
}
# Run only when the model is bigger than the device's total memory, host RAM
# holds it with BIG_HOST_MARGIN to spare, and the check's budget has the time;
# otherwise print SKIP with the numbers. Either way OUT/offload/NAME-decision.json
# says what was decided (report.py), and a run writes NAME.json (tessera bench),
# NAME.err, NAME.rc and NAME-memavail.txt (host MemAvailable every 0.5 s).
offload_big() { # name shape device device-total-bytes device-free-bytes device-margin-bytes
    local name=$1 shape=$2 dev=$3 total=$4 free=$5 margin=$6 d="$OUT/offload"
    local model avail budget=0 reason=""
    model=$(model_int8_bytes "$shape")
    avail=$(mem_available)
    if [ -z "$model" ]; then
        reason="tessera plan gave no model size (see offload/plan-$shape.txt)"
    elif [ -z "$total" ]; then
        reason="no GPU (nvidia-smi gave no memory figure)"
    elif [ "$total" -ge "$model" ]; then
        reason="the device's $total bytes hold the model's $model bytes: not bigger than the device"
    elif [ "$avail" -le $((model + BIG_HOST_MARGIN)) ]; then
        reason="host MemAvailable $avail bytes is not above the model's $model bytes + $((BIG_HOST_MARGIN >> 30)) GiB"
    elif [ "$(remaining)" -lt $((BIG_LIMIT_S + 20)) ]; then
        reason="$(remaining) s left of the check's budget, the run may take $BIG_LIMIT_S s (DEVICE_CHECK_ONLY=offload-big runs it alone)"
    else
        budget=$((free - margin))
    fi
    printf '{"name": "%s", "shape": "%s", "device": "%s", "model_int8_bytes": %s, "device_total_bytes": %s, "device_free_bytes": %s, "host_mem_available_bytes": %s, "host_margin_bytes": %s, "budget_bytes": %s, "run": %s, "skip_reason": "%s", "limit_s": %s}\n' \
        "$name" "$shape" "$dev" "${model:-null}" "${total:-null}" "${free:-null}" "${avail:-null}" \
        "$BIG_HOST_MARGIN" "$budget" "$([ -z "$reason" ] && echo true || echo false)" "$reason" "$BIG_LIMIT_S" \
        >"$d/$name-decision.json"
    if [ -n "$reason" ]; then
        say "offload: bigger than the GPU ($name, dummy:$shape int8): SKIP: $reason"
        return 0
    fi
    say "offload: bigger than the GPU ($name): dummy:$shape int8, $model bytes, on $dev ($total bytes), weight budget $budget"
    (while :; do mem_available; sleep 0.5; done) >"$d/$name-memavail.txt" &
    local sampler=$!
    timeout "$BIG_LIMIT_S" "$TESSERA" bench --model "dummy:$shape:1" --device "$dev" --dtype int8 \
        --offload-budget "$budget" --prefetch 2 --prompt-lens 8 --decode-tokens 8 --decode-batch 1 \
        --reps 1 --json >"$d/$name.json" 2>"$d/$name.err"
    local rc=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    echo "$rc" >"$d/$name.rc"
    echo "   rc $rc$([ $rc -eq 124 ] && echo " (timed out after $BIG_LIMIT_S s)")"
    [ $rc -eq 0 ] || { rm -f "$d/$name.json"; tail -c 600 "$d/$name.err"; }
    grep "^offload:" "$d/$name.err"
}
offload_big_gpu() { # GPU 0's total and free memory (nvidia-smi, MiB), before anything of ours runs on it
    local mib total="" free=""
    mib=$(nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | tr -d ' ')
    if [[ $mib =~ ^([0-9]+),([0-9]+)$ ]]; then
        total=$((BASH_REMATCH[1] << 20))
        free=$(((BASH_REMATCH[1] - BASH_REMATCH[2]) << 20))
    fi
    offload_big big "$BIG_SHAPE" cuda "$total" "$free" "$BIG_DEVICE_MARGIN"
}

if [ "$ONLY" = offload-big ]; then
    if [ $HAVE_GPU = 1 ]; then
        offload_ceiling
        offload_big_gpu
    else
        offload_big big "$BIG_SHAPE" cuda "" "" 0
    fi
elif [ $HAVE_GPU = 1 ]; then
    offload_same cuda
    offload_ceiling
    if [ "$(remaining)" -gt 160 ]; then offload_bench half 4.6GB; else say "offload: half-resident run skipped (seconds left: $(remaining))"; fi
    if [ "$(remaining)" -gt 160 ]; then offload_bench full 1GB; else say "offload: fully streamed run skipped (seconds left: $(remaining))"; fi
    # Int4 (docs/int8.md): 0.625 instead of 1.125 bytes per weight cross the link.
    if [ "$(remaining)" -gt 150 ]; then OB_DTYPE=int4 offload_bench full-int4 1GB; else say "offload: int4 fully streamed run skipped (seconds left: $(remaining))"; fi
    left=$(remaining)
    if [ "$left" -gt 80 ]; then
        say "offload: accelerate CPU offload baseline (llama2-7b bf16, 4 GiB on the GPU)"
        timeout $((left > 150 ? 130 : left - 20)) "$PY" "$ROOT/scripts/device/offload_baseline.py" \
            "$OUT/offload/baseline.json" --gpu-mem 4GiB --tokens 4 >"$OUT/offload/accelerate.txt" 2>&1
        echo "   rc $?"; tail -n 20 "$OUT/offload/accelerate.txt"
    else
        echo "   accelerate baseline skipped (seconds left: $left)"
    fi
    # After the baseline: the int4 half-resident case, time allowing.
    if [ "$(remaining)" -gt 100 ]; then OB_DTYPE=int4 offload_bench half-int4 2.6GB; else say "offload: int4 half-resident run skipped (seconds left: $(remaining))"; fi
    offload_big_gpu
else
    # Dry run: the same commands on the CPU with a small model, so the section is exercised.
    offload_same cpu
    say "offload: dry run on cpu (dummy:tiny, budget 3.3MB: every layer streamed)"
    timeout 60 "$TESSERA" bench --model dummy:tiny:1 --device cpu --dtype int8 \
        --offload-budget 3.3MB --prefetch 2 --prompt-lens 4 --decode-tokens 4 \
        --decode-batch 4 --reps 1 --json >"$OUT/offload/dry-cpu.json" 2>"$OUT/offload/dry-cpu.err"
    echo "   rc $?"; grep "^offload:" "$OUT/offload/dry-cpu.err"
    # (the CPU keeps int4 weights as f32: 2.8 MiB per tiny layer, hence the budget)
    timeout 60 "$TESSERA" bench --model dummy:tiny:1 --device cpu --dtype int4 \
        --offload-budget 9.1MB --prefetch 2 --prompt-lens 4 --decode-tokens 4 \
        --decode-batch 4 --reps 1 --json >"$OUT/offload/dry-cpu-int4.json" 2>"$OUT/offload/dry-cpu-int4.err"
    echo "   int4 rc $?"; grep "^offload:" "$OUT/offload/dry-cpu-int4.err"
    # Bigger than the GPU: the real shape skips (no GPU); a stand-in runs the same
    # steps on the CPU: dummy:small against a pretend device of 3/4 of its bytes.
    offload_big big "$BIG_SHAPE" cuda "" "" 0
    small=$(model_int8_bytes small)
    offload_big big-dry-cpu small cpu $((small * 3 / 4)) $((small * 3 / 4)) 0
fi
