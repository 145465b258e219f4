"""Static SASS figures of GEMV kernels (run by scripts/sass-gemv.sh, which puts
NVRTC on LD_LIBRARY_PATH and ptxas, cuobjdump, nvdisasm on PATH)."""
import ctypes
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ROOT / "crates/tessera-backend"
# The emulator's generator reads the kernel source as module.rs assembles it.
sys.path.insert(0, str(BACKEND / "cuda-emu"))
from gen import kernel_source  # noqa: E402


def ptx() -> bytes:
    src = kernel_source(str(BACKEND / "src/cuda/module.rs"))
    lib = ctypes.CDLL("libnvrtc.so.13")
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"tessera_kernels.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    opts = [b"--gpu-architecture=compute_90", b"--std=c++17"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    if rc:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit(log.value.decode())
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    out = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, out)
    return out.value


def blocks(sass: str):
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    starts = {0}
    for i, (_, t) in enumerate(ins):
        if "BRA" in t or "BSSY" in t:
            starts.update(int(x, 16) for x in re.findall(r"0x([0-9a-f]+)", t))
        if ("BRA" in t or "BSYNC" in t or "EXIT" in t) and i + 1 < len(ins):
            starts.add(ins[i + 1][0])
    out, cur = [], []
    for a, t in ins:
        if a in starts and cur:
            out.append(cur)
            cur = []
        cur.append((a, t))
    out.append(cur)
    return out


def main():
    names = sys.argv[1:] or ["gemv_v4_i8_n1_r2", "gemv_v4_i8_n1_r4"]
    with tempfile.TemporaryDirectory() as d:
        p, cubin = Path(d) / "k.ptx", Path(d) / "k.cubin"
        p.write_bytes(ptx())
        log = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(p), "-o", str(cubin)],
                             capture_output=True, text=True, check=True).stderr
        regs, spills, cur = {}, {}, None
        for line in log.splitlines():
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                cur = m.group(1)
            m = re.search(r"(\d+) bytes spill stores", line)
            if m and cur:
                spills[cur] = int(m.group(1))
            m = re.search(r"Used (\d+) registers", line)
            if m and cur:
                regs[cur] = int(m.group(1))
        for name in names:
            sass = subprocess.run(["cuobjdump", "-sass", "-fun", name, str(cubin)],
                                  capture_output=True, text=True, check=True).stdout
            total = sum(1 for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line))
            print(f"{name}: {regs.get(name, '?')} registers, {spills.get(name, '?')} bytes spilled, "
                  f"{total} instructions")
            for b in blocks(sass):
                ops = Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for _, t in b)
                prmt = sum(v for k, v in ops.items() if k.startswith("PRMT"))
                ffma = sum(v for k, v in ops.items() if k.startswith("FFMA"))
                ldg = sum(v for k, v in ops.items() if k.startswith("LDG"))
                idp = sum(v for k, v in ops.items() if k.startswith("IDP"))
                lds = sum(v for k, v in ops.items() if k.startswith("LDS"))
                imma = sum(v for k, v in ops.items() if k.startswith("IMMA"))
                hmma = sum(v for k, v in ops.items() if k.startswith("HMMA"))
                pred = sum(1 for _, t in b if t.startswith("@") and "LDG" in t)
                if prmt + ffma >= 64 or ldg >= 8 or idp >= 24 or imma + hmma >= 3:
                    print(f"  block {b[0][0]:#07x}: {len(b):4d} instructions, PRMT {prmt:3d}, FFMA {ffma:3d}, "
                          f"IDP {idp:3d}, IMMA {imma:2d}, HMMA {hmma:2d}, LDS {lds:2d}, LDG {ldg:2d} ({pred} predicated)")


if __name__ == "__main__":
    main()
