#!/usr/bin/env python3
"""Collect the device check's outputs into OUTDIR/report.json and report.md.

Inputs (written by scripts/device-check.sh):
  env.json                      libraries and GPU (env_report.py)
  op_tests.txt, op_tests.rc     the CUDA op test binary's output
  runs/SHAPE-DEVICE-DTYPE.json  `tessera generate --json` (+ .npy prompt logits)
  speed/SHAPE-cuda-int8.json    the same, long run, for tokens/s
  baseline.json                 bandwidth and transformers (hf_baseline.py)
Standard library only (the dry run on a build machine has no numpy).
"""
import ast
import glob
import json
import os
import re
import struct
import sys
from array import array

# vocab, hidden, intermediate, layers, heads, kv_heads (as tessera_model::dummy)
SHAPES = {
    "tiny": (1024, 256, 688, 4, 8, 4),
    "small": (32000, 1024, 2816, 8, 16, 8),
    "llama2-7b": (32000, 4096, 11008, 32, 32, 32),
    "llama3-8b": (128256, 4096, 14336, 32, 32, 8),
}


# tessera_model::INT8_GROUP: inputs per int8 scale.
INT8_GROUP = 32


def int8_bytes_per_token(shape):
    """Weight bytes one decode step streams: int8 rows padded to 16 bytes plus
    one f32 scale per INT8_GROUP inputs, for every layer's matrices and the LM head."""
    vocab, h, inter, layers, heads, kv = SHAPES[shape]
    hd = h // heads

    def mat(m, k):
        return m * ((k + 15) // 16 * 16) + m * ((k + INT8_GROUP - 1) // INT8_GROUP) * 4

    layer = mat((heads + 2 * kv) * hd, h) + mat(h, heads * hd) + mat(2 * inter, h) + mat(h, inter)
    return layers * layer + mat(vocab, h)


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_npy(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    hlen = struct.unpack("<H", data[8:10])[0]
    header = ast.literal_eval(data[10:10 + hlen].decode())
    assert header["descr"] == "<f4", header
    a = array("f")
    a.frombytes(data[10 + hlen:])
    return a


def compare(out, shape, ref="cpu-f32"):
    runs = {}
    for p in glob.glob(os.path.join(out, "runs", f"{shape}-*.json")):
        runs[os.path.basename(p)[len(shape) + 1:-5]] = load_json(p)
    base = runs.get(ref)
    result = {"reference": ref, "runs": {}}
    for name, r in sorted(runs.items()):
        entry = {"ok": r is not None}
        if r is not None:
            entry["generated_ids"] = r["generated_ids"]
            entry["backend"] = r.get("backend")
        if r is not None and base is not None and name != ref:
            a, b = base["generated_ids"], r["generated_ids"]
            entry["tokens_identical"] = a == b
            entry["first_divergence"] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            try:
                la = load_npy(os.path.join(out, "runs", f"{shape}-{ref}.npy"))
                lb = load_npy(os.path.join(out, "runs", f"{shape}-{name}.npy"))
                diff = max(abs(x - y) for x, y in zip(la, lb))
                scale = max(abs(x) for x in la)
                entry["max_abs_logit_diff"] = diff
                entry["max_abs_logit"] = scale
            except (OSError, ValueError, AssertionError) as e:
                entry["logits_error"] = str(e)
        result["runs"][name] = entry
    return result


def main():
    out = sys.argv[1]
    rep = {"env": load_json(os.path.join(out, "env.json")), "build": None}
    try:
        with open(os.path.join(out, "BUILD")) as f:
            rep["build"] = f.read().strip()
    except OSError:
        pass
    try:
        with open(os.path.join(out, "op_tests.txt")) as f:
            txt = f.read()
        m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", txt)
        rep["op_tests"] = {
            "result": m.group(1) if m else "did not finish",
            "passed": int(m.group(2)) if m else 0,
            "failed": int(m.group(3)) if m else None,
            "skipped_no_device": txt.count("skipped: no CUDA device"),
        }
    except OSError:
        rep["op_tests"] = {"result": "not run"}
    base = load_json(os.path.join(out, "baseline.json")) or {}
    bw = base.get("d2d_copy_gb_per_s")
    rep["micro"] = {}
    try:
        with open(os.path.join(out, "bench.txt")) as f:
            # libtest may print "test NAME ... " before a BENCH line.
            for m in re.finditer(r"BENCH (\S+) ([-+0-9.eE]+)", f.read()):
                rep["micro"][m.group(1)] = float(m.group(2))
    except (OSError, ValueError):
        pass
    for tag in ("", "_unfused"):
        step = rep["micro"].get(f"decode_step_7b_shape{tag}_tokens_per_s")
        if step and bw:
            roof = bw * 1e9 / int8_bytes_per_token("llama2-7b")
            rep["micro"][f"decode_step_7b_shape{tag}_roofline_fraction"] = round(step / roof, 4)
    rep["correctness"] = {s: compare(out, s) for s in ("tiny", "small")
                          if glob.glob(os.path.join(out, "runs", f"{s}-*.json"))}
    rep["baseline"] = base
    rep["speed"] = {}
    for p in sorted(glob.glob(os.path.join(out, "speed", "*.json"))):
        name = os.path.basename(p)[:-5]
        r = load_json(p)
        if r is None:
            rep["speed"][name] = {"error": "run failed (see log)"}
            continue
        shape = name.split("-cuda")[0].split("-cpu")[0]
        t = r["timings"]
        e = {"backend": r.get("backend"), "dtype": r.get("dtype"),
             "prompt_tokens": len(r["prompt_ids"]), "generated": len(r["generated_ids"]),
             "load_s": t["load_s"], "prefill_tokens_per_s": t["prefill_tokens_per_s"],
             "decode_tokens_per_s": t["decode_tokens_per_s"]}
        if shape in SHAPES and r.get("dtype") == "int8":
            b = int8_bytes_per_token(shape)
            e["weight_bytes_per_token"] = b
            if bw:
                e["roofline_tokens_per_s"] = bw * 1e9 / b
                e["roofline_fraction"] = t["decode_tokens_per_s"] / e["roofline_tokens_per_s"]
                e["achieved_weight_gb_per_s"] = b * t["decode_tokens_per_s"] / 1e9
        hf = base.get("hf") or {}
        if hf.get("shape") == shape and hf.get("decode_tokens_per_s"):
            e["vs_transformers_bf16"] = t["decode_tokens_per_s"] / hf["decode_tokens_per_s"]
        rep["speed"][name] = e
    rep["offload"] = offload_summary(out)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=2)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(rep))
    print(markdown(rep))


def offload_summary(out):
    """Stage-3 streaming runs (scripts/device/offload-check.sh) beside the
    pinned-copy ceiling and accelerate's CPU offload, all from this run."""
    d = os.path.join(out, "offload")
    if not os.path.isdir(d):
        return None
    base = load_json(os.path.join(d, "baseline.json")) or {}
    ceiling = base.get("h2d_pinned_gb_per_s")
    acc = base.get("accelerate") or {}
    runs = {}
    for name in ("half", "full", "dry-cpu"):
        r = load_json(os.path.join(d, f"{name}.json"))
        if r is None:
            if os.path.exists(os.path.join(d, f"{name}.err")):
                runs[name] = {"error": "run failed (see log)"}
            continue
        o = r.get("offload") or {}
        e = {"layers": o.get("layers")}
        for key, bench_key in (("b1", "decode"), ("batch", "decode_batch")):
            s = o.get(bench_key) or {}
            tok = ((r.get(bench_key) or {}).get("tokens_per_s") or {}).get("median")
            if not tok:
                continue
            batch = (r.get("decode_batch") or {}).get("batch", 1) if key == "batch" else 1
            steps_per_s = tok / batch
            gbps = s.get("bytes_per_step", 0) * steps_per_s / 1e9
            e[key] = {"batch": batch, "tokens_per_s": tok, "bytes_per_step": s.get("bytes_per_step"),
                      "stream_gb_per_s": gbps, "copy_gb_per_s": s.get("copy_gbps"),
                      "stall_ms_per_step": s.get("wait_ms_per_step"),
                      "fraction_of_pinned_ceiling": gbps / ceiling if ceiling else None,
                      "vs_accelerate": tok / acc["decode_tokens_per_s"]
                      if key == "b1" and acc.get("decode_tokens_per_s") else None}
        runs[name] = e
    same = {dev: load_json(os.path.join(d, f"same-{dev}.json")) for dev in ("cuda", "cpu")}
    return {"h2d_pinned_gb_per_s": ceiling, "accelerate": acc or None,
            "error": base.get("error"), "runs": runs,
            "streamed_vs_resident": {k: v for k, v in same.items() if v is not None}}


def offload_markdown(o):
    if not o:
        return ["Offloaded (stage-3 streaming) decode: not run."]
    lines = ["## Offload (stage-3 streaming), llama2-7b shape int8", "",
             f"Pinned host-to-device ceiling: {fmt(o.get('h2d_pinned_gb_per_s'))} GB/s (torch, 1 GiB copies)", ""]
    for dev, r in (o.get("streamed_vs_resident") or {}).items():
        lines += [f"Streamed vs resident on {dev} (dummy:small int8, 16 greedy tokens): tokens identical "
                  f"{r.get('tokens_identical')}, logits bit-identical {r.get('logits_bit_identical')}", ""]
    lines += [
             "| run | layers | batch | decode tok/s | MB streamed/step | streaming GB/s | % of ceiling | "
             "copy GB/s while copying | stall ms/step | vs accelerate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in o.get("runs", {}).items():
        if "error" in e:
            lines.append(f"| {name} | {e['error']} | | | | | | | | |")
            continue
        for key in ("b1", "batch"):
            m = e.get(key)
            if not m:
                continue
            frac = m.get("fraction_of_pinned_ceiling")
            vs = f"{m['vs_accelerate']:.1f}x" if m.get("vs_accelerate") else "-"
            lines.append(f"| {name} | {e.get('layers')} | {m['batch']} | {fmt(m['tokens_per_s'], '.2f')} | "
                         f"{fmt((m.get('bytes_per_step') or 0) / 1e6, '.0f')} | {fmt(m['stream_gb_per_s'])} | "
                         f"{fmt(frac * 100 if frac else None)} | {fmt(m.get('copy_gb_per_s'))} | "
                         f"{fmt(m.get('stall_ms_per_step'), '.2f')} | {vs} |")
    acc = o.get("accelerate")
    if acc:
        lines.append(f"| accelerate {acc.get('accelerate')} CPU offload, bf16, {acc.get('layers_on_cpu')} of "
                     f"{acc.get('layers')} layers on CPU | | 1 | {fmt(acc.get('decode_tokens_per_s'), '.3f')} | | | | | | 1x |")
    elif o.get("error"):
        lines.append(f"| accelerate | failed: {o['error']} | | | | | | | | |")
    return lines


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def markdown(rep):
    env = rep.get("env") or {}
    gpu = env.get("gpu") or {}
    lines = [f"# Tessera device check: {gpu.get('name', 'no GPU')} (driver {gpu.get('driver', '-')})", ""]
    libs = [f"{l['name']} {l.get('version', '-')}" for l in env.get("libraries", []) if l.get("loaded")]
    lines += [f"Libraries loaded: {', '.join(libs) or 'none'}", ""]
    if rep.get("build"):
        lines += ["Build: " + rep["build"].replace("\n", "; "), ""]
    ot = rep.get("op_tests", {})
    lines += [f"CUDA op tests: {ot.get('result')} ({ot.get('passed')} passed, {ot.get('failed')} failed, "
              f"{ot.get('skipped_no_device', 0)} skipped for lack of a device)", ""]
    lines += ["## Correctness (greedy, 32 tokens, reference: CPU f32)", "",
              "| shape | run | tokens identical | first divergence | max abs logit diff | max abs logit |",
              "|---|---|---|---|---|---|"]
    for shape, c in rep.get("correctness", {}).items():
        for name, e in c["runs"].items():
            if name == c["reference"]:
                continue
            lines.append(f"| {shape} | {name} | {e.get('tokens_identical', '-')} | {e.get('first_divergence', '-')} | "
                         f"{fmt(e.get('max_abs_logit_diff'), '.2e')} | {fmt(e.get('max_abs_logit'), '.3f')} |")
    base = rep.get("baseline", {})
    hf = base.get("hf") or {}
    lines += ["", "## Speed (batch 1)", "",
              f"Device-to-device copy: {fmt(base.get('d2d_copy_gb_per_s'))} GB/s (read + write counted); "
              f"pinned host-to-device: {fmt(base.get('h2d_pinned_gb_per_s'))} GB/s", "",
              "| run | prompt | prefill tok/s | decode tok/s | weight GB/token | roofline tok/s | % of roofline | vs transformers bf16 |",
              "|---|---|---|---|---|---|---|---|"]
    for name, e in rep.get("speed", {}).items():
        if "error" in e:
            lines.append(f"| {name} | {e['error']} | | | | | | |")
            continue
        frac = e.get("roofline_fraction")
        vs = f"{e['vs_transformers_bf16']:.2f}x" if e.get("vs_transformers_bf16") else "-"
        lines.append(f"| {name} | {e['prompt_tokens']} | {fmt(e['prefill_tokens_per_s'])} | {fmt(e['decode_tokens_per_s'])} | "
                     f"{fmt(e.get('weight_bytes_per_token', 0) / 1e9, '.2f')} | {fmt(e.get('roofline_tokens_per_s'))} | "
                     f"{fmt(frac * 100 if frac else None)} | {vs} |")
    if hf:
        lines.append(f"| transformers {hf.get('transformers')} {hf.get('shape')} bf16 | {hf.get('prompt_len')} | "
                     f"{fmt(hf.get('prefill_tokens_per_s'))} | {fmt(hf.get('decode_tokens_per_s'))} | | | | 1.00x |")
    elif base.get("error"):
        lines.append(f"| transformers | failed: {base['error']} | | | | | | |")
    if rep.get("micro"):
        lines += ["", "Kernel micro-benchmarks (weight GB/s of one int8 product; microseconds per small op):", ""]
        lines += [f"- {k}: {v}" for k, v in rep["micro"].items()]
    lines += ["", "Batch 16: not measured, the engine runs one sequence per step (no batching yet).",
              "NCCL: not exercised by this check.", ""]
    lines += offload_markdown(rep.get("offload")) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
