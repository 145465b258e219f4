#!/usr/bin/env bash
# NCCL check on a GPU machine (no Rust toolchain needed there).
# Build on the development machine first:
#   cargo build --release -p tessera-comm --example nccl_check
# then run from the repository root:  crates/tessera-comm/scripts/nccl-device-check.sh OUTDIR
# Writes env.txt, no-nccl.txt, world1.txt, pair.txt into OUTDIR; exit status 0 when all PASS.
set -u
OUT=${1:?usage: nccl-device-check.sh OUTDIR}
BIN=${BIN:-target/release/examples/nccl_check}
mkdir -p "$OUT"
status=0

# cudarc opens libnccl.so, the wheels ship libnccl.so.2: link it under the name cudarc tries.
NCCL_SO=$(find /opt/torch/.venv /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
LIBDIR=$(mktemp -d)
if [ -n "$NCCL_SO" ]; then ln -sf "$NCCL_SO" "$LIBDIR/libnccl.so"; fi
{
  echo "nccl library: ${NCCL_SO:-not found}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt"

# Without libnccl on the path the binary must report it, not panic.
LD_LIBRARY_PATH= timeout 60 "$BIN" > "$OUT/no-nccl.txt" 2>&1
if grep -q "libnccl was not found" "$OUT/no-nccl.txt"; then
  echo "PASS no-nccl: clear error"
elif grep -q "^PASS init" "$OUT/no-nccl.txt"; then
  # A libnccl.so is installed system-wide, so "not on the path" cannot be staged here.
  echo "SKIP no-nccl: a system libnccl was found without LD_LIBRARY_PATH ($(grep -o 'nccl_version=[0-9.]*' "$OUT/no-nccl.txt"))"
else
  echo "FAIL no-nccl"; cat "$OUT/no-nccl.txt"; status=1
fi

export LD_LIBRARY_PATH="$LIBDIR${NCCL_SO:+:$(dirname "$NCCL_SO")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
timeout 180 "$BIN" --timeout-s 20 > "$OUT/world1.txt" 2>&1 || status=1
cat "$OUT/world1.txt"
timeout 300 "$BIN" --pair --watchdog --timeout-s 10 > "$OUT/pair.txt" 2>&1 || status=1
cat "$OUT/pair.txt"
echo "exit status $status"
exit $status
