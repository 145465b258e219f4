# shellcheck shell=bash
# Sourced by the GPU scripts (device-check.sh, device/ab.sh): the Python with
# torch and the NVIDIA CUDA 13 wheels, those wheels' libraries on
# LD_LIBRARY_PATH for cudarc, one kernel cache for the whole run.
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo /nonexistent)
# cudarc dlopens libcublas/libnvrtc by their .so.13 names (NVRTC also opens its
# builtins itself), so LD_LIBRARY_PATH must hold the wheel folder; an rpath is not enough.
# cudarc never tries `libnccl.so.2`: give it a `libnccl.so` symlink.
# (Only where the wheel is: a dry run leaves no folder behind.)
NCCL_DIR=/nonexistent
if [ -e "$SITE/nvidia/nccl/lib/libnccl.so.2" ]; then
    NCCL_DIR=$(mktemp -d /tmp/tessera-nccl.XXXXXX)
    ln -sf "$SITE/nvidia/nccl/lib/libnccl.so.2" "$NCCL_DIR/libnccl.so"
fi
export LD_LIBRARY_PATH="$SITE/nvidia/cu13/lib:$NCCL_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TESSERA_CUDA_INCLUDE="/usr/local/cuda/include:$SITE/nvidia/cu13/include"
# Compile the kernels once for the whole run (NVRTC PTX on disk, the driver's
# JIT cache for the SASS); every later process loads them in well under a second.
export TESSERA_CACHE_DIR=/tmp/tessera-cache CUDA_CACHE_MAXSIZE=2147483648
# Each process times the GEMV variants once per shape: log the choices.
export TESSERA_GEMV_LOG=1
