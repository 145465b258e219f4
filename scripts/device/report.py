#!/usr/bin/env python3
"""Collect the device check's outputs into OUTDIR/report.json and report.md.

Inputs (written by scripts/device-check.sh):
  env.json                      libraries and GPU (env_report.py)
  op_tests.txt, op_tests.rc     the CUDA op test binary's output
  runs/SHAPE-DEVICE-DTYPE.json  `tessera generate --json` (+ .npy prompt logits)
  speed/SHAPE-cuda-DTYPE.json   the same, long run, for tokens/s (+ .err: GEMV timings)
  bench.txt                     `cuda-tests --ignored bench` (BENCH and TUNE lines)
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


def bytes_per_token(shape, mat):
    """Weight bytes one decode step streams: every layer's matrices and the LM
    head, `mat(m, k)` being the bytes of an [m, k] weight in the format."""
    vocab, h, inter, layers, heads, kv = SHAPES[shape]
    hd = h // heads
    layer = mat((heads + 2 * kv) * hd, h) + mat(h, heads * hd) + mat(2 * inter, h) + mat(h, inter)
    return layers * layer + mat(vocab, h)


def scales(m, k):
    """One f32 scale per INT8_GROUP inputs (int8 and int4)."""
    return m * ((k + INT8_GROUP - 1) // INT8_GROUP) * 4


def int8_bytes_per_token(shape):
    """int8 rows padded to 16 bytes, plus the scales."""
    return bytes_per_token(shape, lambda m, k: m * ((k + 15) // 16 * 16) + scales(m, k))


def bf16_bytes_per_token(shape):
    """bf16 rows padded to 8 elements."""
    return bytes_per_token(shape, lambda m, k: m * ((k + 7) // 8 * 8) * 2)


def int4_bytes_per_token(shape):
    """Two int4 values per byte, rows padded to 32 values (16 bytes), plus the scales."""
    return bytes_per_token(shape, lambda m, k: m * ((k + 31) // 32 * 16) + scales(m, k))


BYTES_PER_TOKEN = {"int8": int8_bytes_per_token, "bf16": bf16_bytes_per_token,
                   "int4": int4_bytes_per_token}


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


def reference_for(name, runs):
    """CUDA bf16 and int4 are compared with CPU bf16 / int4 (the same rounded
    weights, f32 products); runs with a bf16 KV cache ("-kvbf16") with CPU f32
    with a bf16 KV cache; everything else with CPU f32."""
    if name.endswith("-kvbf16") and name != "cpu-f32-kvbf16" and "cpu-f32-kvbf16" in runs:
        return "cpu-f32-kvbf16"
    for dt in ("bf16", "int4"):
        if name.startswith(f"cuda-{dt}") and f"cpu-{dt}" in runs:
            return f"cpu-{dt}"
    return "cpu-f32"


def compare(out, shape):
    runs = {}
    for p in glob.glob(os.path.join(out, "runs", f"{shape}-*.json")):
        runs[os.path.basename(p)[len(shape) + 1:-5]] = load_json(p)
    result = {"reference": "cpu-f32", "runs": {}}
    for name, r in sorted(runs.items()):
        ref = reference_for(name, runs)
        base = runs.get(ref)
        entry = {"ok": r is not None, "reference": ref}
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


def gemv_table(micro, bw):
    """Rows of per-variant GEMV GB/s from BENCH gemv_DTYPE_MxK_nN_VARIANT_gb_per_s."""
    rows = {}
    for k, v in micro.items():
        m = re.fullmatch(r"gemv_(int8|bf16)_(\d+)x(\d+)_n(\d+)_(v\d)_gb_per_s", k)
        if m:
            key = (m.group(1), f"{m.group(2)}x{m.group(3)}", int(m.group(4)))
            rows.setdefault(key, {})[m.group(5)] = v
    out = []
    for (dtype, shape, n), by in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        best = max(by, key=by.get)
        out.append({"dtype": dtype, "matrix": shape, "rows": n, "gb_per_s": by, "best": best,
                    "best_fraction_of_copy_bw": by[best] / bw if bw else None})
    return out


def decode_table(micro, bw):
    """Rows of backend-level 7B decode figures from BENCH decode_7b_DTYPE[_CONFIG]_*."""
    out = []
    for k, v in micro.items():
        m = re.fullmatch(r"decode_7b_(int8|bf16)(_\w+?)?_tokens_per_s", k)
        if not m:
            continue
        dtype, tag = m.group(1), m.group(2) or ""
        b = micro.get(f"decode_7b_{dtype}_weight_bytes_per_step")
        roof = bw * 1e9 / b if bw and b else None
        out.append({"dtype": dtype, "config": tag.lstrip("_") or "default (auto GEMV, fused, PDL)",
                    "tokens_per_s": v, "launches_per_step": micro.get(f"decode_7b_{dtype}{tag}_launches_per_step"),
                    "weight_bytes_per_step": b, "roofline_tokens_per_s": roof,
                    "roofline_fraction": v / roof if roof else None})
    return out


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
    rep["micro"], rep["tuning"] = {}, []
    try:
        with open(os.path.join(out, "bench.txt")) as f:
            txt = f.read()
        # libtest may print "test NAME ... " before a BENCH line.
        for m in re.finditer(r"BENCH (\S+) ([-+0-9.eE]+)", txt):
            rep["micro"][m.group(1)] = float(m.group(2))
        rep["tuning"] = re.findall(r"^TUNE (.*)$", txt, re.M)
        rep["breakdown"] = re.findall(r"^BREAKDOWN (.*)$", txt, re.M)
    except (OSError, ValueError):
        pass
    rep["gemv"] = gemv_table(rep["micro"], bw)
    rep["decode_steps"] = decode_table(rep["micro"], bw)
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
        # "-eager" runs: the same with recorded decode steps (CUDA graphs) off.
        t = r["timings"]
        e = {"backend": r.get("backend"), "dtype": r.get("dtype"),
             "prompt_tokens": len(r["prompt_ids"]), "generated": len(r["generated_ids"]),
             "load_s": t["load_s"], "prefill_tokens_per_s": t["prefill_tokens_per_s"],
             "decode_tokens_per_s": t["decode_tokens_per_s"],
             "graph_steps": (r.get("step_graphs") or {}).get("replayed"),
             # The generation loop's own host time per decode step (sampling,
             # text, stop checks): decode time outside the forward steps.
             "host_us_per_token": ((t["decode_s"] - t["decode_step_s"]) * 1e6 / (len(r["generated_ids"]) - 1)
                                   if "decode_step_s" in t and len(r["generated_ids"]) > 1 else None),
             "graph_failure": (r.get("step_graphs") or {}).get("last_failure")}
        if shape in SHAPES and r.get("dtype") in BYTES_PER_TOKEN:
            b = BYTES_PER_TOKEN[r["dtype"]](shape)
            e["weight_bytes_per_token"] = b
            if bw:
                e["roofline_tokens_per_s"] = bw * 1e9 / b
                e["roofline_fraction"] = t["decode_tokens_per_s"] / e["roofline_tokens_per_s"]
                e["achieved_weight_gb_per_s"] = b * t["decode_tokens_per_s"] / 1e9
        hf = base.get("hf") or {}
        if hf.get("shape") == shape and hf.get("decode_tokens_per_s"):
            e["vs_transformers_bf16"] = t["decode_tokens_per_s"] / hf["decode_tokens_per_s"]
        try:
            with open(p[:-5] + ".err") as f:
                e["gemv_tuning"] = [l.split("tessera: ", 1)[1].strip() for l in f if "tessera: GEMV" in l]
        except OSError:
            pass
        rep["speed"][name] = e
    for key, fname in (("decode_batch16", "b16"), ("decode_batch16_dp4a", "b16_dp4a"),
                       ("decode_batch16_per_sequence_attention", "b16_perseq")):
        b16 = load_json(os.path.join(out, fname + ".json"))
        if b16:
            rep[key] = {
                "decode_b1_tokens_per_s": b16["decode"]["tokens_per_s"]["median"],
                "decode_b16_tokens_per_s": (b16.get("decode_batch") or {}).get("tokens_per_s", {}).get("median"),
                "prefill_16_tokens_per_s": b16["prefill"][0]["tokens_per_s"]["median"] if b16.get("prefill") else None,
                "prefill_b16_tokens_per_s": (b16.get("prefill_batch") or {}).get("tokens_per_s", {}).get("median"),
            }
            try:
                with open(os.path.join(out, fname + ".err")) as f:
                    rep[key]["gemv_tuning"] = [l.split("tessera: ", 1)[1].strip() for l in f if "tessera: GEMV" in l]
            except OSError:
                pass
    try:
        with open(os.path.join(out, "nccl.txt")) as f:
            txt = f.read()
        rep["nccl"] = {"pass": txt.count("PASS"), "fail": txt.count("FAIL"),
                       "lines": [l.strip() for l in txt.splitlines() if re.search(r"PASS|FAIL|GB/s", l)][:40]}
    except OSError:
        pass
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
    for name in ("half", "full", "full-int4", "half-int4", "dry-cpu", "dry-cpu-int4"):
        r = load_json(os.path.join(d, f"{name}.json"))
        if r is None:
            if os.path.exists(os.path.join(d, f"{name}.err")):
                runs[name] = {"error": "run failed (see log)"}
            continue
        o = r.get("offload") or {}
        e = {"layers": o.get("layers"), "dtype": r.get("dtype")}
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
    big = {}
    for p in sorted(glob.glob(os.path.join(d, "*-decision.json"))):
        name = os.path.basename(p)[:-len("-decision.json")]
        big[name] = bigger_than_gpu(d, name, load_json(p), ceiling)
    return {"h2d_pinned_gb_per_s": ceiling, "accelerate": acc or None,
            "error": base.get("error"), "runs": runs,
            "streamed_vs_resident": {k: v for k, v in same.items() if v is not None},
            "bigger_than_gpu": big}


def bigger_than_gpu(d, name, decision, ceiling):
    """A "bigger than the GPU" run (offload-check.sh, offload_big): the decision
    and its numbers, and when it ran: load time, resident layers, decode speed,
    streaming rate against the pinned ceiling, host memory."""
    if decision is None:
        return {"error": f"offload/{name}-decision.json unreadable"}
    e = dict(decision)
    if not e.get("run"):
        return e
    try:
        with open(os.path.join(d, f"{name}.rc")) as f:
            e["rc"] = int(f.read().strip())
    except (OSError, ValueError):
        e["rc"] = None
    r = load_json(os.path.join(d, f"{name}.json"))
    if r is None:
        e["error"] = (f"timed out after {e.get('limit_s')} s" if e["rc"] == 124
                      else f"run failed (rc {e['rc']}, see offload/{name}.err)")
        return e
    o = r.get("offload") or {}
    s = o.get("decode") or {}
    tok = ((r.get("decode") or {}).get("tokens_per_s") or {}).get("median")
    gbps = s.get("bytes_per_step", 0) * tok / 1e9 if tok else None
    m = re.search(r"(\d+) of (\d+) layers resident", o.get("layers") or "")
    try:
        with open(os.path.join(d, f"{name}-memavail.txt")) as f:
            samples = [int(l) for l in f if l.strip().isdigit()]
    except OSError:
        samples = []
    before = e.get("host_mem_available_bytes")
    e.update({
        "layers": o.get("layers"),
        "resident_layers": int(m.group(1)) if m else None,
        "num_layers": int(m.group(2)) if m else None,
        "load_s": r.get("load_s"),
        "decode_tokens": (r.get("decode") or {}).get("tokens"),
        "decode_tokens_per_s": tok,
        "bytes_per_step": s.get("bytes_per_step"),
        "stream_gb_per_s": gbps,
        "copy_gb_per_s": s.get("copy_gbps"),
        "stall_ms_per_step": s.get("wait_ms_per_step"),
        "fraction_of_pinned_ceiling": gbps / ceiling if ceiling and gbps else None,
        "peak_rss_bytes": r.get("peak_rss_bytes"),
        # Pinned memory may not count in a process's RSS; the host's MemAvailable drop does.
        "host_mem_used_peak_bytes": before - min(samples) if samples and before else None,
        "host_mem_samples": len(samples),
    })
    return e


def offload_markdown(o):
    if not o:
        return ["Offloaded (stage-3 streaming) decode: not run."]
    lines = ["## Offload (stage-3 streaming), llama2-7b shape (int8; `-int4` runs: int4)", "",
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
    lines += big_markdown(o.get("bigger_than_gpu") or {}, o.get("h2d_pinned_gb_per_s"))
    return lines


def big_markdown(big, ceiling):
    if not big:
        return ["", "Bigger than the GPU: not run (no decision recorded)."]
    lines = ["", "### Bigger than the GPU", "",
             "Int8 weights larger than the device's memory, streamed with a weight budget of the "
             "device's free memory less a margin; batch 1, 8-token prompt, 8 decode tokens. "
             f"Ceiling: {fmt(ceiling)} GB/s (above).", ""]
    ran = {k: e for k, e in big.items() if e.get("run")}
    for name, e in big.items():
        if e.get("run"):
            continue
        lines.append(f"- {name}: dummy:{e.get('shape')} int8 on {e.get('device')}: **SKIP**: {e.get('skip_reason') or e.get('error')} "
                     f"(model {gb(e.get('model_int8_bytes'))} GB, device {gb(e.get('device_total_bytes'))} GB, "
                     f"host MemAvailable {gb(e.get('host_mem_available_bytes'))} GB)")
    if ran:
        if len(ran) < len(big):
            lines.append("")
        lines += ["| run | model | model GB | device GB | weight budget GB | resident layers | load s | "
                  "decode tok/s | GB streamed/token | streaming GB/s | % of ceiling | stall ms/token | "
                  "peak RSS GB | host memory used GB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in ran.items():
            head = (f"| {name} | dummy:{e.get('shape')} on {e.get('device')} | {gb(e.get('model_int8_bytes'))} | "
                    f"{gb(e.get('device_total_bytes'))} | {gb(e.get('budget_bytes'))} |")
            if e.get("error"):
                lines.append(f"{head} {e['error']} | | | | | | | | |")
                continue
            frac = e.get("fraction_of_pinned_ceiling")
            lines.append(f"{head} {e.get('resident_layers')} of {e.get('num_layers')} | {fmt(e.get('load_s'))} | "
                         f"{fmt(e.get('decode_tokens_per_s'), '.2f')} | {gb(e.get('bytes_per_step'))} | "
                         f"{fmt(e.get('stream_gb_per_s'))} | {fmt(frac * 100 if frac else None)} | "
                         f"{fmt(e.get('stall_ms_per_step'), '.1f')} | {gb(e.get('peak_rss_bytes'))} | "
                         f"{gb(e.get('host_mem_used_peak_bytes'))} |")
    return lines


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def gb(b):
    """Bytes as GB (10^9), one decimal."""
    return fmt(b / 1e9 if b is not None else None)


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
              "| shape | run | vs | tokens identical | first divergence | max abs logit diff | max abs logit |",
              "|---|---|---|---|---|---|---|"]
    for shape, c in rep.get("correctness", {}).items():
        for name, e in c["runs"].items():
            if name == e.get("reference", c["reference"]):
                continue
            lines.append(f"| {shape} | {name} | {e.get('reference', '-')} | {e.get('tokens_identical', '-')} | "
                         f"{e.get('first_divergence', '-')} | {fmt(e.get('max_abs_logit_diff'), '.2e')} | "
                         f"{fmt(e.get('max_abs_logit'), '.3f')} |")
    base = rep.get("baseline", {})
    hf = base.get("hf") or {}
    lines += ["", "## Speed (batch 1)", "",
              f"Device-to-device copy: {fmt(base.get('d2d_copy_gb_per_s'))} GB/s (read + write counted); "
              f"pinned host-to-device: {fmt(base.get('h2d_pinned_gb_per_s'))} GB/s", "",
              "Decode steps replayed from a recorded CUDA graph per run in the last column "
              "(`-eager` runs: TESSERA_CUDA_GRAPH=0).", "",
              "Loop host us/token: decode time outside the forward steps (sampling, text) per step.", "",
              "| run | prompt | prefill tok/s | decode tok/s | weight GB/token | roofline tok/s | % of roofline | vs transformers bf16 | loop host us/token | graph steps |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in rep.get("speed", {}).items():
        if "error" in e:
            lines.append(f"| {name} | {e['error']} | | | | | | | | |")
            continue
        frac = e.get("roofline_fraction")
        vs = f"{e['vs_transformers_bf16']:.2f}x" if e.get("vs_transformers_bf16") else "-"
        lines.append(f"| {name} | {e['prompt_tokens']} | {fmt(e['prefill_tokens_per_s'])} | {fmt(e['decode_tokens_per_s'])} | "
                     f"{fmt(e.get('weight_bytes_per_token', 0) / 1e9, '.2f')} | {fmt(e.get('roofline_tokens_per_s'))} | "
                     f"{fmt(frac * 100 if frac else None)} | {vs} | {fmt(e.get('host_us_per_token'))} | {e.get('graph_steps', '-')}"
                     f"{' (recording failed: ' + e['graph_failure'] + ')' if e.get('graph_failure') else ''} |")
    if hf:
        lines.append(f"| transformers {hf.get('transformers')} {hf.get('shape')} bf16 | {hf.get('prompt_len')} | "
                     f"{fmt(hf.get('prefill_tokens_per_s'))} | {fmt(hf.get('decode_tokens_per_s'))} | | | | 1.00x | | |")
    elif base.get("error"):
        lines.append(f"| transformers | failed: {base['error']} | | | | | | | | |")
    for name, e in rep.get("speed", {}).items():
        if e.get("gemv_tuning"):
            lines += ["", f"GEMV variant timing in `{name}` (once per shape, L2 flushed):", ""]
            lines += [f"- {t}" for t in e["gemv_tuning"]]
    if rep.get("decode_steps"):
        lines += ["", "## Decode step, llama2-7b shape, backend level (`cuda-tests --ignored bench_decode`)", "",
                  "One layer's weights reused for all 32 layers (each layer still streams from HBM), "
                  "128-token context, the engine's op sequence; % of roofline uses the copy bandwidth above.", "",
                  "| weights | configuration | tok/s | launches/step | weight GB/step | roofline tok/s | % of roofline |",
                  "|---|---|---|---|---|---|---|"]
        for d in rep["decode_steps"]:
            frac = d.get("roofline_fraction")
            lines.append(f"| {d['dtype']} | {d['config']} | {fmt(d['tokens_per_s'])} | {fmt(d['launches_per_step'], '.0f')} | "
                         f"{fmt((d['weight_bytes_per_step'] or 0) / 1e9, '.2f')} | {fmt(d['roofline_tokens_per_s'])} | "
                         f"{fmt(frac * 100 if frac else None)} |")
    if rep.get("gemv"):
        lines += ["", "## GEMV weight bandwidth per variant (GB/s of weight bytes; `bench_gemv`)", "",
                  "Consecutive products read different copies of the matrix (> 256 MB), as in a decode step. "
                  "% = best variant / device-to-device copy bandwidth.", "",
                  "v5 (one row) and v6 (2+ rows) compute on fixed-point activations (opt-in, `TESSERA_INT8_DECODE=dp4a`).", "",
                  "| weights | matrix | rows | v1 | v2 | v3 | v4 | v5 | v6 | best | % of copy BW |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in rep["gemv"]:
            by, frac = g["gb_per_s"], g["best_fraction_of_copy_bw"]
            cols = " | ".join(fmt(by.get(v), '.0f') for v in ("v1", "v2", "v3", "v4", "v5", "v6"))
            lines.append(f"| {g['dtype']} | {g['matrix']} | {g['rows']} | {cols} | {g['best']} | "
                         f"{fmt(frac * 100 if frac else None)} |")
    if rep.get("tuning"):
        lines += ["", "GEMV variant timing during `bench_decode` (per shape):", ""]
        lines += [f"- {t}" for t in rep["tuning"]]
    micro = rep.get("micro", {})
    if rep.get("breakdown"):
        lines += ["", "## Decode step breakdown, llama2-7b shape (`bench_decode_breakdown`)", "",
                  "One step with every kernel timed alone (events around each launch, so no PDL overlap), "
                  "summed per op and grid, beside the untimed step.", ""]
        for dt in ("int8", "bf16"):
            if f"breakdown_7b_{dt}_step_us" in micro:
                lines.append(f"- {dt}: untimed step {fmt(micro[f'breakdown_7b_{dt}_step_us'])} us; sum of the "
                             f"kernels timed alone {fmt(micro.get(f'breakdown_7b_{dt}_sum_of_kernels_us'))} us over "
                             f"{fmt(micro.get(f'breakdown_7b_{dt}_launches'), '.0f')} launches")
        lines += [""] + [f"- {l}" for l in rep["breakdown"]]
    other = {k: v for k, v in micro.items() if not k.startswith(("gemv_", "decode_7b_", "breakdown_"))}
    if other:
        lines += ["", "Other micro-benchmarks (microseconds per small op):", ""]
        lines += [f"- {k}: {v}" for k, v in other.items()]
    b = rep.get("decode_batch16")
    if b:
        lines += ["", "## Batched decode, llama2-7b int8 (`tessera bench --decode-batch 16`, 32 tokens per sequence)", "",
                  f"- batch 1: {fmt(b['decode_b1_tokens_per_s'])} tok/s; batch 16: {fmt(b['decode_b16_tokens_per_s'])} tok/s "
                  f"(all sequences together)",
                  f"- prefill of 16-token prompts: batch 1 {fmt(b['prefill_16_tokens_per_s'])} tok/s; "
                  f"batch 16 {fmt(b.get('prefill_b16_tokens_per_s'))} tok/s (16 prompts in one step)"]
        d = rep.get("decode_batch16_dp4a")
        if d:
            lines += [f"- `TESSERA_INT8_DECODE=dp4a` (GEMV v5 at one row, v6 on integer tensor cores at 2..16 rows): "
                      f"batch 1: {fmt(d['decode_b1_tokens_per_s'])} tok/s; batch 16: {fmt(d['decode_b16_tokens_per_s'])} tok/s"]
            lines += [f"  - {l}" for l in d.get("gemv_tuning", []) if "n=16" in l]
        d = rep.get("decode_batch16_per_sequence_attention")
        if d:
            lines += [f"- `TESSERA_BATCH_ATTENTION=per-sequence` (attention one sequence at a time, the path "
                      f"before the one-launch kernel): batch 16: {fmt(d['decode_b16_tokens_per_s'])} tok/s"]
    else:
        lines += ["", "Batch 16 in the engine: not measured in this run (see log)."]
    n = rep.get("nccl")
    if n:
        lines += ["", f"## NCCL (`nccl_check`): {n['pass']} PASS, {n['fail']} FAIL", ""]
        lines += [f"- {l}" for l in n["lines"]]
    else:
        lines += ["", "NCCL: not run in this check (see log)."]
    lines += offload_markdown(rep.get("offload")) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
