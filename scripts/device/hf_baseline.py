#!/usr/bin/env python3
"""Baselines measured on the GPU in the same run as Tessera:

- device-to-device copy bandwidth (the HBM roofline's denominator) and a
  plain pinned host-to-device copy, with torch;
- transformers LlamaForCausalLM of the same shape, random-initialised in bf16
  on the GPU, greedy decode tokens/s with the KV cache.

Usage: hf_baseline.py OUT.json [--shape llama2-7b] [--prompt-len 128] [--new-tokens 64] [--skip-hf]
"""
import argparse
import json
import statistics
import sys
import time

SHAPES = {
    # vocab, hidden, intermediate, layers, heads, kv_heads, rope_theta
    "llama2-7b": (32000, 4096, 11008, 32, 32, 32, 10000.0),
    "llama3-8b": (128256, 4096, 14336, 32, 32, 8, 500000.0),
    "small": (32000, 1024, 2816, 8, 16, 8, 10000.0),
}


def bandwidth(torch):
    out = {}
    n = 1 << 30
    x = torch.empty(n, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    iters = 20
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    secs = start.elapsed_time(end) / 1e3
    # A copy reads and writes every byte: count both, as a weight stream only reads.
    out["d2d_copy_gb_per_s"] = 2 * n * iters / secs / 1e9
    del x, y
    h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    d = torch.empty(n, dtype=torch.uint8, device="cuda")
    d.copy_(h, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        d.copy_(h, non_blocking=True)
    torch.cuda.synchronize()
    out["h2d_pinned_gb_per_s"] = 5 * n / (time.perf_counter() - t0) / 1e9
    del h, d
    torch.cuda.empty_cache()
    return out


def hf_decode(torch, shape, prompt_len, new_tokens):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden, inter, layers, heads, kv, theta = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      rope_theta=theta, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      pad_token_id=0, bos_token_id=1, eos_token_id=None)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    init_s = time.perf_counter() - t0
    ids = torch.randint(3, vocab, (1, prompt_len), device="cuda")
    gen_kw = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)

    def timed(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **gen_kw)
        torch.cuda.synchronize()
        assert out.shape[1] == prompt_len + n, out.shape
        return time.perf_counter() - t

    timed(8)  # warm-up: kernels, allocator, cuBLAS heuristics
    prefill = statistics.median(timed(1) for _ in range(3))
    full = statistics.median(timed(new_tokens) for _ in range(2))
    return {
        "transformers": transformers.__version__,
        "shape": shape,
        "dtype": "bf16",
        "init_s": init_s,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": prompt_len / prefill,
        "decode_tokens_per_s": (new_tokens - 1) / (full - prefill),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--skip-hf", action="store_true")
    a = ap.parse_args()
    report = {}

    def save():
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)

    try:
        import torch
        report["torch"] = torch.__version__
        report["torch_cuda"] = torch.version.cuda
        report["device"] = torch.cuda.get_device_name(0)
        report.update(bandwidth(torch))
        save()  # the roofline's bandwidth survives a timeout in the slower part below
        if not a.skip_hf:
            report["hf"] = hf_decode(torch, a.shape, a.prompt_len, a.new_tokens)
    except Exception as e:  # noqa: BLE001 - the report says what failed
        report["error"] = repr(e)
    save()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
