#!/usr/bin/env bash
# Nsight Compute counters of the batch-1 GEMV kernels, on the GPU machine.
#
# Usage:  bash scripts/device/ncu-gemv.sh OUTDIR [KERNEL...]   (after scripts/device-prepare.sh)
# Writes: OUTDIR/ncu-KERNEL.txt for each kernel named (default: the v2 int8 and
#         bf16 kernels below; names are regular expressions), the 7th launch of each in
#         `cuda-tests --ignored bench_gemv`) and prints the key counters: duration,
#         DRAM throughput, issue-slot use, warps per scheduler, registers, stalls.
# About a minute: NVRTC compiles the kernels once (into the device check's
# cache, /tmp/tessera-cache), then one bench_gemv run per kernel with ncu
# attached. ncu must leave the clocks alone
# on these machines (--clock-control none).
set -uo pipefail
OUT=${1:?usage: scripts/device/ncu-gemv.sh OUTDIR}
cd "$(dirname "$0")/../.." || exit 2
# The CUDA wheels and the kernel cache, as the device check sets them.
. scripts/device/env.sh
trap 'rm -rf "$NCCL_DIR"' EXIT
NCU=$(command -v ncu || find /opt/nvidia/nsight-compute -name ncu -type f 2>/dev/null | head -n 1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 2; }
mkdir -p "$OUT"
sections=(SpeedOfLight WarpStateStats SchedulerStats Occupancy InstructionStats LaunchStats
    MemoryWorkloadAnalysis ComputeWorkloadAnalysis)
args=()
for s in "${sections[@]}"; do args+=(--section "$s"); done
kernels=("${@:2}")
[ ${#kernels[@]} -gt 0 ] || kernels=(gemv_v2_i8_n1_r2 gemv_v2_bf16_n1_r2 gemv_v2_i8_n1_r4)
for k in "${kernels[@]}"; do
    timeout 100 "$NCU" --clock-control none -k "regex:$k" --launch-skip 6 -c 1 "${args[@]}" \
        .device/cuda-tests --ignored bench_gemv --test-threads=1 --nocapture >"$OUT/ncu-$k.txt" 2>&1
    echo "$k rc $?"
    grep -E "Duration|DRAM Throughput|Issue Slots Busy|Active Warps Per Scheduler|Eligible Warps|Registers Per|Warp Cycles Per Issued|Executed Instructions  |Theoretical Occ" \
        "$OUT/ncu-$k.txt" | head -20
done
