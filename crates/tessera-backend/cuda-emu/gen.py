#!/usr/bin/env python3
"""Generate the emulator's kernel translation unit from the backend's kernels.

Reads the kernel files in the order src/cuda/module.rs concatenates them
(KERNELS_SRC), hashes that exact text (FNV-1a 64, as emu.cpp checks what the
backend hands to NVRTC), rewrites the one construct the host compiler cannot
take (dynamic `extern __shared__` arrays), and appends one registration per
`extern "C" __global__` kernel, found in the preprocessed source.

usage: gen.py MODULE_RS OUT_CPP   (prints the hash)
"""
import os
import re
import subprocess
import sys


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def kernel_files(module_rs: str) -> list:
    """The kernel files, in the order KERNELS_SRC concatenates them into the
    text the backend hands to NVRTC (also used by scripts/sass_gemv.py)."""
    text = open(module_rs, encoding="utf-8").read()
    block = re.search(r"KERNELS_SRC: &str = concat!\((.*?)\);", text, re.S)
    if not block:
        sys.exit("gen.py: KERNELS_SRC not found in " + module_rs)
    files = re.findall(r'include_str!\("([^"]+)"\)', block.group(1))
    if not files:
        sys.exit("gen.py: KERNELS_SRC names no files")
    return files


def kernel_source(module_rs: str) -> bytes:
    base = os.path.dirname(module_rs)
    return b"".join(open(os.path.join(base, f), "rb").read() for f in kernel_files(module_rs))


def main() -> None:
    module_rs, out = sys.argv[1], sys.argv[2]
    files = kernel_files(module_rs)
    src = kernel_source(module_rs)
    h = fnv1a(src)

    body = src.decode("utf-8")
    body, n = re.subn(
        r"extern __shared__ __align__\(\d+\) (\w+) (\w+)\[\];",
        r"\1* \2 = (\1*)emu::dyn_smem();",
        body,
    )
    if "extern __shared__" in body:
        sys.exit("gen.py: an `extern __shared__` declaration the emulator cannot rewrite")
    here = os.path.dirname(os.path.abspath(__file__))
    unit = '#include "emu_kernel.h"\n#line 1 "tessera_kernels.cu"\n' + body
    pre = subprocess.run(
        ["g++", "-std=c++20", "-E", "-P", "-x", "c++", "-I", here, "-"],
        input=unit.encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = re.findall(r'extern "C"\s+void\s+(\w+)\s*\(', pre)
    if len(names) < 10 or len(set(names)) != len(names):
        sys.exit(f"gen.py: found {len(names)} kernels ({len(set(names))} distinct); expected at least 10")
    reg = "".join(f"EMU_KERNEL({k})\n" for k in names)
    with open(out, "w", encoding="utf-8") as f:
        f.write(unit + '\n#include "emu_register.h"\n' + reg)
    print(f"0x{h:016x}")
    print(f"gen.py: {len(names)} kernels from {', '.join(files)} ({n} dynamic shared arrays)", file=sys.stderr)


if __name__ == "__main__":
    main()
