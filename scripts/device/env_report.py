#!/usr/bin/env python3
"""Which CUDA libraries the dynamic loader resolves with the current
LD_LIBRARY_PATH (the same search cudarc's dlopen does), and their versions.

Does not import torch: torch loads its own copies, which would hide ours.
Usage: env_report.py OUT.json
"""
import ctypes
import json
import subprocess
import sys


def loaded_path(fragment):
    """Resolved file of a loaded library, from /proc/self/maps."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and fragment in parts[-1]:
                return parts[-1]
    return None


def probe(name, version_fn):
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        return {"name": name, "loaded": False, "error": str(e)}
    out = {"name": name, "loaded": True, "path": loaded_path(name.split(".so")[0])}
    try:
        out["version"] = version_fn(lib)
    except Exception as e:  # noqa: BLE001 - report, never fail
        out["version_error"] = repr(e)
    return out


def driver_version(lib):
    v = ctypes.c_int()
    lib.cuDriverGetVersion(ctypes.byref(v))
    return f"{v.value // 1000}.{(v.value % 1000) // 10}"


def cublas_version(lib):
    parts = []
    for prop in range(3):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        v = ctypes.c_int()
        lib.cublasGetProperty(prop, ctypes.byref(v))
        parts.append(str(v.value))
    return ".".join(parts)


def nvrtc_version(lib):
    a, b = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b))
    return f"{a.value}.{b.value}"


def nccl_version(lib):
    v = ctypes.c_int()
    lib.ncclGetVersion(ctypes.byref(v))
    n = v.value
    return f"{n // 10000}.{(n % 10000) // 100}.{n % 100}"


def main():
    report = {}
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.memory",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30)
        fields = [x.strip() for x in q.stdout.strip().splitlines()[0].split(",")]
        report["gpu"] = dict(zip(["name", "driver", "memory_total", "max_memory_clock"], fields))
    except Exception as e:  # noqa: BLE001
        report["gpu"] = {"error": repr(e)}
    report["libraries"] = [
        probe("libcuda.so.1", driver_version),
        probe("libcublas.so.13", cublas_version),
        probe("libcublasLt.so.13", lambda lib: "see cuBLAS"),
        probe("libnvrtc.so.13", nvrtc_version),
        probe("libnccl.so", nccl_version),
    ]
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
