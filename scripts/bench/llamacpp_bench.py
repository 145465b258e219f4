#!/usr/bin/env python3
"""Tessera vs llama.cpp (through llama-cpp-python) on one GGUF file.

Driven by scripts/bench-vs-llamacpp.sh; run inside the virtualenv that has
llama-cpp-python. Subcommands:

  quantize IN OUT       requantize a GGUF to Q8_0 with llama.cpp's own
                        llama_model_quantize (allow_requantize), no hub access
  worker ...            one llama.cpp measurement process (prints one JSON object)
  greedy ...            llama.cpp greedy continuation of a text prompt (JSON)
  compare ...           alternate llama.cpp and `tessera bench` processes, print
                        the table and the greedy texts side by side

Measurements mirror `tessera bench` exactly: prompts are the synthetic ids
id(i) = (i * 7919 + 1) mod n_vocab, prefill is one decode call with the whole
prompt into an empty cache, decode is N single-token calls from an empty
cache each fed the previous argmax. Wall time is taken around the calls.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def synthetic_ids(n, vocab):
    return [(i * 7919 + 1) % vocab for i in range(n)]


def stats(values):
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


# ---------------------------------------------------------------- llama.cpp side


def open_llama(path, threads, n_ctx, flash_attn=False):
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        logits_all=False,
        flash_attn=flash_attn,
        verbose=False,
    )
    return llm, time.perf_counter() - t0


def eval_fresh(llm, ids):
    """Evaluate `ids` into an empty cache (Llama.eval drops cache entries past n_tokens)."""
    llm.reset()
    llm.eval(ids)


def argmax_last(llm):
    """Greedy token from the last evaluated position (ties to the lowest id, like Tessera).

    Llama.eval keeps no logits unless logits_all, so read llama.cpp's buffer directly.
    """
    import numpy as np

    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def cmd_worker(a):
    prompt_lens = [int(x) for x in a.prompt_lens.split(",")]
    n_ctx = max(max(prompt_lens), a.decode_tokens) + 8
    llm, load_s = open_llama(a.model, a.threads, n_ctx, a.flash_attn)
    vocab = llm.n_vocab()
    # Warm-up, as in `tessera bench`: a short prefill and two decode steps.
    eval_fresh(llm, synthetic_ids(min(min(prompt_lens), 16), vocab))
    eval_fresh(llm, synthetic_ids(1, vocab))
    llm.eval([argmax_last(llm)])

    prefill = []
    for n in prompt_lens:
        ids = synthetic_ids(n, vocab)
        secs = []
        for _ in range(a.reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            secs.append(time.perf_counter() - t0)
        rates = [n / s for s in secs]
        prefill.append(
            {"prompt_len": n, "tokens": n, "tokens_per_s": stats(rates),
             "secs": stats(secs), "runs_tokens_per_s": rates}
        )
    secs = []
    for _ in range(a.reps):
        llm.reset()
        tok = synthetic_ids(1, vocab)[0]
        t0 = time.perf_counter()
        for _ in range(a.decode_tokens):
            llm.eval([tok])
            tok = argmax_last(llm)
        secs.append(time.perf_counter() - t0)
    rates = [a.decode_tokens / s for s in secs]
    out = {
        "engine": "llama.cpp",
        "model": a.model,
        "threads": a.threads,
        "load_s": load_s,
        "flash_attn": a.flash_attn,
        "prefill": prefill,
        "decode": {"batch": 1, "tokens": a.decode_tokens, "tokens_per_s": stats(rates),
                   "secs": stats(secs), "runs_tokens_per_s": rates},
        "system_info": llama_system_info(),
    }
    print(json.dumps(out))


def llama_system_info():
    import llama_cpp

    try:
        return llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    except Exception as e:  # noqa: BLE001 - informational only
        return f"unavailable: {e}"


def cmd_greedy(a):
    llm, _ = open_llama(a.model, a.threads, 256)
    ids = llm.tokenize(a.prompt.encode(), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    out_ids = []
    for i in range(a.tokens):
        tok = argmax_last(llm)
        out_ids.append(tok)
        if i + 1 < a.tokens:
            llm.eval([tok])
    text = llm.detokenize(out_ids).decode("utf-8", errors="replace")
    print(json.dumps({"prompt_ids": ids, "generated_ids": out_ids, "text": text}))


def cmd_quantize(a):
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = a.threads
    tmp = a.out + ".part"
    rc = llama_cpp.llama_model_quantize(a.inp.encode(), tmp.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed with status {rc}")
    os.replace(tmp, a.out)


# ---------------------------------------------------------------- the comparison


def run_json(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")
    return json.loads(res.stdout)


def merge_runs(results, key_fn):
    """All per-run tok/s of one row across processes."""
    runs = []
    for r in results:
        runs.extend(key_fn(r)["runs_tokens_per_s"])
    return runs


def load_avg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def cmd_compare(a):
    me = os.path.abspath(__file__)
    threads_list = [int(t) for t in a.threads.split(",")]
    prompt_lens = [int(x) for x in a.prompt_lens.split(",")]
    common = ["--prompt-lens", a.prompt_lens, "--decode-tokens", str(a.decode_tokens),
              "--reps", str(a.reps)]
    results = {}
    loads = []
    for t in threads_list:
        lc, ts = [], []
        for rnd in range(a.rounds):
            loads.append(load_avg())
            print(f"[threads {t}, round {rnd + 1}/{a.rounds}] llama.cpp ... (load {loads[-1]})",
                  file=sys.stderr, flush=True)
            lc.append(run_json([sys.executable, me, "worker", "--model", a.model,
                                "--threads", str(t)] + common
                               + (["--flash-attn"] if a.llama_flash_attn else [])))
            print(f"[threads {t}, round {rnd + 1}/{a.rounds}] tessera ...",
                  file=sys.stderr, flush=True)
            ts.append(run_json([a.tessera, "bench", "--json", "--model", a.model,
                                "--dtype", "int8", "--threads", str(t)] + common))
        results[t] = {"llama.cpp": lc, "tessera": ts}
    loads.append(load_avg())

    rows = []
    for t in threads_list:
        for i, n in enumerate(prompt_lens):
            rows.append((f"prefill-{n}", t, lambda r, i=i: r["prefill"][i]))
        rows.append((f"decode-{a.decode_tokens}", t, lambda r: r["decode"]))
    table = []
    for name, t, key in rows:
        lc = merge_runs(results[t]["llama.cpp"], key)
        ts = merge_runs(results[t]["tessera"], key)
        table.append({
            "row": name, "threads": t,
            "llama_cpp": stats(lc), "tessera": stats(ts),
            "ratio": statistics.median(ts) / statistics.median(lc),
        })

    greedy = []
    for t in threads_list:
        g_lc = run_json([sys.executable, me, "greedy", "--model", a.model, "--threads", str(t),
                         "--prompt", a.prompt, "--tokens", str(a.greedy_tokens)])
        g_ts = run_json([a.tessera, "generate", "--json", "--model", a.model, "--dtype", "int8",
                         "--threads", str(t), "--prompt", a.prompt, "--max-new-tokens",
                         str(a.greedy_tokens), "--ignore-eos"])
        same = sum(x == y for x, y in zip(g_lc["generated_ids"], g_ts["generated_ids"]))
        greedy.append({"threads": t, "prompt": a.prompt, "llama_cpp": g_lc, "tessera": g_ts,
                       "same_prompt_ids": g_lc["prompt_ids"] == g_ts["prompt_ids"],
                       "same_positions": same})

    n = a.rounds * a.reps
    print(f"\nmodel: {a.model}")
    print(f"llama.cpp: {results[threads_list[0]]['llama.cpp'][0]['system_info']} "
          f"flash_attn={a.llama_flash_attn}")
    ts0 = results[threads_list[0]]["tessera"][0]
    print(f"tessera: {ts0['backend']}, cpu features {ts0['cpu']['features']}, "
          f"int8 kernel {ts0['cpu']['int8_kernel']}")
    print(f"load average during the runs: {', '.join(loads)}")
    print(f"{a.rounds} alternating rounds x {a.reps} reps = {n} runs per cell; "
          "tok/s median [min-max]\n")
    print("| row | threads | llama.cpp tok/s | tessera int8 tok/s | ratio (tessera / llama.cpp) |")
    print("|---|---|---|---|---|")
    for r in table:
        lc, ts = r["llama_cpp"], r["tessera"]
        print(f"| {r['row']} | {r['threads']} | {lc['median']:.1f} [{lc['min']:.1f}-{lc['max']:.1f}] "
              f"| {ts['median']:.1f} [{ts['min']:.1f}-{ts['max']:.1f}] | {r['ratio']:.2f}x |")
    for g in greedy:
        print(f"\ngreedy, {a.greedy_tokens} tokens, {g['threads']} thread(s), prompt {g['prompt']!r} "
              f"(same prompt ids: {g['same_prompt_ids']}; "
              f"{g['same_positions']}/{a.greedy_tokens} generated ids equal position by position)")
        print(f"| llama.cpp | {json.dumps(g['llama_cpp']['text'])} |")
        print(f"| tessera   | {json.dumps(g['tessera']['text'])} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"table": table, "greedy": greedy, "raw": results, "load_avg": loads}, f,
                      indent=1)
        print(f"\nraw results: {a.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("quantize")
    q.add_argument("inp")
    q.add_argument("out")
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(fn=cmd_quantize)

    w = sub.add_parser("worker")
    w.add_argument("--model", required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--prompt-lens", default="128,512")
    w.add_argument("--decode-tokens", type=int, default=128)
    w.add_argument("--reps", type=int, default=3)
    w.add_argument("--flash-attn", action="store_true")
    w.set_defaults(fn=cmd_worker)

    g = sub.add_parser("greedy")
    g.add_argument("--model", required=True)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--prompt", required=True)
    g.add_argument("--tokens", type=int, default=32)
    g.set_defaults(fn=cmd_greedy)

    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--tessera", required=True)
    c.add_argument("--threads", default="1,2")
    c.add_argument("--prompt-lens", default="128,512")
    c.add_argument("--decode-tokens", type=int, default=128)
    c.add_argument("--reps", type=int, default=2)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--prompt", default="Once upon a time, in a small village,")
    c.add_argument("--greedy-tokens", type=int, default=32)
    c.add_argument("--out", default="")
    c.add_argument("--llama-flash-attn", action="store_true",
                   help="run llama.cpp with flash attention (llama-cpp-python's default is off)")
    c.set_defaults(fn=cmd_compare)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
