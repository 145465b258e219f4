#!/usr/bin/env python3
"""Load test for a running `tessera launch` gRPC server (or any Triton server
with the vLLM-style text_input/text_output model): streams a fixed prompt set
at several concurrencies with the real tritonclient and prints output tokens/s,
time to first token and inter-token latency (p50/p99), and errors.

Usage: scripts/bench-serve.py --addr 127.0.0.1:8001 --model NAME
           [--concurrency 1,4,16,64] [--requests-per-level 2x] [--max-tokens 64]
           [--json OUT.json]
Needs: pip install "tritonclient[grpc]" (scripts/test.sh makes .venv-client).

Token counts come from the server's num_output_tokens; inter-token latency
is measured between streamed responses (one per new text chunk, which is
one per token except where a token completes no character).
"""

import argparse
import json
import queue
import statistics
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as tc

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "What are three uses of a paperclip?",
    "Summarize the plot of a detective story in two sentences.",
    "List five fruits and their colors.",
    "How does a bicycle stay upright?",
    "Give advice to a new programmer.",
    "Describe a sunrise over the mountains.",
]


def make_inputs(prompt, max_tokens):
    t = tc.InferInput("text_input", [1], "BYTES")
    t.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    s = tc.InferInput("stream", [1], "BOOL")
    s.set_data_from_numpy(np.array([True]))
    p = tc.InferInput("sampling_parameters", [1], "BYTES")
    p.set_data_from_numpy(np.array([json.dumps({"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}).encode()], dtype=object))
    return [t, s, p]


def one_client(addr, model, jobs, max_tokens, out):
    """Run requests from `jobs` one at a time on its own stream."""
    client = tc.InferenceServerClient(addr)
    events = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((time.perf_counter(), result, error)))
    while True:
        try:
            i = jobs.get_nowait()
        except queue.Empty:
            break
        t0 = time.perf_counter()
        client.async_stream_infer(model, make_inputs(PROMPTS[i % len(PROMPTS)], max_tokens),
                                  request_id=str(i), enable_empty_final_response=True)
        stamps, tokens, error = [], 0, None
        while True:
            t, result, err = events.get(timeout=600)
            if err is not None:
                error = str(err)
                break
            r = result.get_response()
            piece = result.as_numpy("text_output")
            if piece is not None and len(piece) and len(piece[0]):
                stamps.append(t)
            if r.parameters["triton_final_response"].bool_param:
                n = result.as_numpy("num_output_tokens")
                tokens = int(n[0]) if n is not None else len(stamps)
                break
        out.append({"start": t0, "stamps": stamps, "tokens": tokens, "error": error})
    client.stop_stream()


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def level(addr, model, conc, n_requests, max_tokens):
    jobs = queue.Queue()
    for i in range(n_requests):
        jobs.put(i)
    out = []
    threads = [threading.Thread(target=one_client, args=(addr, model, jobs, max_tokens, out)) for _ in range(conc)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ok = [r for r in out if r["error"] is None and r["stamps"]]
    ttft = [r["stamps"][0] - r["start"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["stamps"], r["stamps"][1:])]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "concurrency": conc, "requests": len(out), "errors": len(out) - len(ok),
        "wall_s": wall, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
        "itl_p50_ms": 1e3 * pct(itl, 50), "itl_p99_ms": 1e3 * pct(itl, 99),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:8001")
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--requests-per-level", type=int, default=0, help="default: 2 x concurrency (at least 4)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    print(f"{'conc':>5} {'reqs':>5} {'err':>4} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}  (ms)")
    for c in [int(x) for x in a.concurrency.split(",")]:
        n = a.requests_per_level or max(4, 2 * c)
        r = level(a.addr, a.model, c, n, a.max_tokens)
        rows.append(r)
        print(f"{c:>5} {r['requests']:>5} {r['errors']:>4} {r['output_tokens_per_s']:>10.1f} {r['ttft_p50_ms']:>9.0f} "
              f"{r['ttft_p99_ms']:>9.0f} {r['itl_p50_ms']:>8.1f} {r['itl_p99_ms']:>8.1f}", flush=True)
    base = rows[0]["output_tokens_per_s"]
    for r in rows:
        r["speedup_vs_first_level"] = r["output_tokens_per_s"] / base if base else None
    print("throughput vs concurrency %d: %s" % (rows[0]["concurrency"],
          ", ".join(f"{r['concurrency']}: {r['speedup_vs_first_level']:.2f}x" for r in rows)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
