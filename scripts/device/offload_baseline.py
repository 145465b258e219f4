#!/usr/bin/env python3
"""Baselines for the offload (stage-3 streaming) check, measured in the same run:

- the link's ceiling: a plain pinned host-to-device copy with torch (1 GiB);
- Hugging Face accelerate's CPU offload of the same model shape: a
  transformers LlamaForCausalLM (bf16, weights left uninitialised: speed does
  not depend on their values) dispatched with `device_map` from
  `infer_auto_device_map(max_memory=...)`, so the layers that do not fit the
  GPU's share run from CPU memory, copied synchronously on use. Greedy decode
  of a few tokens only: it is slow.

Usage: offload_baseline.py OUT.json [--shape llama2-7b] [--gpu-mem 4GiB] [--tokens 4] [--skip-accelerate]
"""
import argparse
import json
import sys
import time

SHAPES = {
    # vocab, hidden, intermediate, layers, heads, kv_heads, rope_theta
    "llama2-7b": (32000, 4096, 11008, 32, 32, 32, 10000.0),
    "llama3-8b": (128256, 4096, 14336, 32, 32, 8, 500000.0),
    "small": (32000, 1024, 2816, 8, 16, 8, 10000.0),
}


def pinned_h2d(torch):
    n = 1 << 30
    h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    d = torch.empty(n, dtype=torch.uint8, device="cuda")
    d.copy_(h, non_blocking=True)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        d.copy_(h, non_blocking=True)
    end.record()
    torch.cuda.synchronize()
    gbps = 5 * n / (start.elapsed_time(end) / 1e3) / 1e9
    del h, d
    torch.cuda.empty_cache()
    return gbps


def build_uninitialised(torch, cls, cfg):
    """The model in CPU memory without spending a minute on random init:
    built on the meta device, materialised empty, weights zeroed (speed does
    not depend on them), RoPE buffers rebuilt. Falls back to a plain build."""
    try:
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        rot = getattr(model.model, "rotary_emb", None)
        if rot is not None:
            model.model.rotary_emb = type(rot)(config=cfg)
        return model
    except Exception as e:  # noqa: BLE001 - any transformers version: build it the slow way
        print(f"meta-device build failed ({e!r}); building with random init", file=sys.stderr)
        return cls(cfg)


def accelerate_offload(torch, shape, gpu_mem, tokens):
    import accelerate
    import transformers
    from accelerate import dispatch_model, infer_auto_device_map
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden, inter, layers, heads, kv, theta = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      rope_theta=theta, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      pad_token_id=0, bos_token_id=1, eos_token_id=None)
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = build_uninitialised(torch, LlamaForCausalLM, cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    max_memory = {0: gpu_mem, "cpu": "200GiB"}
    device_map = infer_auto_device_map(model, max_memory=max_memory,
                                       no_split_module_classes=["LlamaDecoderLayer"])
    model = dispatch_model(model, device_map=device_map)
    init_s = time.perf_counter() - t0
    on_cpu = sorted({k for k, v in device_map.items() if v == "cpu"})
    layers_cpu = sum(1 for k in on_cpu if ".layers." in k)
    ids = torch.randint(3, vocab, (1, 16), device="cuda")
    gen_kw = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)

    def timed(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **gen_kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    one = timed(1)  # prefill + first token (also the warm-up)
    full = timed(tokens)
    per_token = (full - one) / max(tokens - 1, 1)
    return {
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "shape": shape,
        "dtype": "bf16",
        "max_memory": max_memory,
        "layers_on_cpu": layers_cpu,
        "layers": layers,
        "init_s": init_s,
        "tokens": tokens,
        "decode_s_per_token": per_token,
        "decode_tokens_per_s": 1.0 / per_token if per_token > 0 else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--gpu-mem", default="4GiB")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--skip-accelerate", action="store_true")
    a = ap.parse_args()
    report = {}

    def save():
        # After each stage, so a timeout keeps what was measured.
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)

    try:
        import torch
        report["device"] = torch.cuda.get_device_name(0)
        report["h2d_pinned_gb_per_s"] = pinned_h2d(torch)
        save()
        print(json.dumps(report), flush=True)
        if not a.skip_accelerate:
            report["accelerate"] = accelerate_offload(torch, a.shape, a.gpu_mem, a.tokens)
    except Exception as e:  # noqa: BLE001 - the report says what failed
        report["error"] = repr(e)
    save()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
