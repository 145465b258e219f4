#!/usr/bin/env python3
"""Reference values for crates/tessera-model/tests/gguf.rs, produced by transformers and gguf-py.

The Rust GGUF reader must tokenize exactly like `AutoTokenizer.from_pretrained(dir, gguf_file=...)`
and dequantize exactly like `gguf.quants.dequantize` / transformers' GGUF loader. This script
prints the values the test hardcodes, so they can be regenerated when the reference changes:

    /work/venv-ref/bin/python scripts/gguf-tokenizer-ids.py [models/SmolLM2-135M-Instruct.Q4_1.gguf]

Sections:
  1. token ids (and decoded text) of STRINGS with the SmolLM2 GGUF tokenizer (byte-level BPE);
  1b. the same with SmolLM2's vocabulary re-labelled `tokenizer.ggml.pre = llama-bpe` and `qwen2`,
     which switches transformers to a Split-regex pre-tokenizer (the Rust test rewrites the file the
     same way);
  2. token ids of SPM_STRINGS with a small synthetic SentencePiece (`tokenizer.ggml.model = llama`)
     GGUF written here with gguf.GGUFWriter; the Rust test writes the same vocabulary itself
     (see `spm_vocab()` there, which must stay in sync with `spm_vocab()` below);
  3. gguf-py dequantization of a few tensors (GGUF names, GGUF layout);
  4. transformers' state_dict tensors (Hugging Face names, Q/K un-permuted).

Checksums: `sum` is the plain f64 sum; `wsum` weights element i (row-major) by (i % 251 + 1), so
that a permutation of rows changes it. Exact values are printed as f32 bit patterns.
"""

import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Keep in sync with STRINGS in crates/tessera-model/tests/gguf.rs.
STRINGS = [
    "Hello, world! This is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "12345 and 3.14159",
    "a   b\n\n\tc",
    "   leading spaces",
    "trailing spaces   ",
    "naïve café Ελληνικά 日本語",
    "I ❤️ 🦀 and 👍🏽",
    "<|im_start|>user\nhi<|im_end|>",
    "don't won't I'm we've they'll she'd",
    'fn main() { println!("{}", x[0] + 1); }',
    "<|endoftext|>between<|im_start|>\n",
]

# Keep in sync with PRE_STRINGS in crates/tessera-model/tests/gguf.rs: text on which the split
# regexes of `tokenizer.ggml.pre` differ from GPT-2's (case-insensitive contractions, punctuation
# glued to words, digit runs, line breaks).
PRE_STRINGS = [
    "DON'T SHOUT, I'M HERE",
    'x="quoted" (paren) [brackets]',
    "$100,000 in 2024 and 1234567",
    "line\r\n\r\nbreaks\n\n\n  end",
    "Hello!!!\n\n\nWorld...   ok",
    "snake_case and camelCase; e.g. #hashtag @user",
]

# Keep in sync with SPM_STRINGS in crates/tessera-model/tests/gguf.rs.
SPM_STRINGS = [
    "hello world",
    "Hello World!",
    "the  weather",
    " leading",
    "héllo 日本",
    "<s>hello</s>",
    "hi<|eot|>there",
    "<tool>x",
    "<unk>",
    "trailing ",
    "a\nb",
]


def spm_vocab():
    """(tokens, scores, token_types) of the synthetic SentencePiece vocabulary."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    pieces = [
        "\u2581", "\u2581t", "he", "\u2581the", "\u2581a", "in", "er", "\u2581w", "or", "ld",
        "\u2581wor", "\u2581world", "\u2581h", "el", "lo", "ll", "llo", "\u2581hel", "\u2581hello",
        "at", "ea", "\u2581we", "ther", "\u2581weather", "ing", "\u2581lead", "ad", "\u2581\u2581",
    ]
    for i, p in enumerate(pieces):
        tokens.append(p)
        scores.append(-1.0 - i)
        types.append(1)
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz!"):
        tokens.append(c)
        scores.append(-100.0 - i)
        types.append(1)
    tokens += ["<|eot|>", "<tool>"]
    scores += [0.0, 0.0]
    types += [3, 4]
    return tokens, scores, types


def bits(values):
    return [f"0x{int(v):08x}" for v in np.asarray(values, dtype=np.float32).view(np.uint32)]


def checksums(arr):
    flat = np.asarray(arr, dtype=np.float64).ravel()
    weights = (np.arange(flat.size) % 251) + 1
    return {"sum": float(flat.sum()), "wsum": float((flat * weights).sum())}


def section_smollm(model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path))
    print("## 1. SmolLM2 tokenizer (transformers AutoTokenizer, gguf_file)")
    for s in STRINGS:
        ids = tok(s)["input_ids"]
        back = tok.decode(ids)
        print(json.dumps({"text": s, "ids": ids, "roundtrip": back == s}, ensure_ascii=False))


def section_pre_regex(model_path):
    import gguf
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(model_path)
    field = lambda key: reader.fields[key].contents()
    print("## 1b. SmolLM2 vocabulary with another tokenizer.ggml.pre")
    for pre in ["smollm", "llama-bpe", "qwen2"]:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "pre.gguf")
            w = gguf.GGUFWriter(path, arch="llama")
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(pre)
            w.add_token_list(field("tokenizer.ggml.tokens"))
            w.add_token_types(field("tokenizer.ggml.token_type"))
            w.add_token_merges(field("tokenizer.ggml.merges"))
            w.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
            w.add_eos_token_id(field("tokenizer.ggml.eos_token_id"))
            w.add_add_bos_token(False)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            tok = AutoTokenizer.from_pretrained(d, gguf_file="pre.gguf")
            for s in PRE_STRINGS:
                ids = tok(s)["input_ids"]
                print(json.dumps({"pre": pre, "text": s, "ids": ids, "roundtrip": tok.decode(ids) == s},
                                 ensure_ascii=False))


def section_spm():
    import gguf
    from transformers import AutoTokenizer

    tokens, scores, types = spm_vocab()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "spm.gguf")
        w = gguf.GGUFWriter(path, arch="llama")
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tok = AutoTokenizer.from_pretrained(d, gguf_file="spm.gguf")
        print("## 2. synthetic SentencePiece GGUF tokenizer")
        for s in SPM_STRINGS:
            ids = tok(s)["input_ids"]
            print(json.dumps({"text": s, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)},
                             ensure_ascii=False))


def section_dequant(model_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(model_path)
    by_name = {t.name: t for t in reader.tensors}
    print("## 3. gguf-py dequantize (GGUF names and layout)")
    for name in ["token_embd.weight", "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.29.attn_v.weight"]:
        t = by_name[name]
        w = dequantize(t.data, t.tensor_type)
        print(json.dumps({"name": name, "type": t.tensor_type.name, "shape": list(w.shape),
                          "first": bits(w.ravel()[:8]), "last": bits(w.ravel()[-4:]), **checksums(w)}))


def section_transformers(model_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32
    )
    sd = model.state_dict()
    print("## 4. transformers state_dict (HF names, Q/K un-permuted)")
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.0.mlp.down_proj.weight"]:
        w = sd[name].float().numpy()
        picks = [(0, 0), (1, 0), (31, 5), (32, 5), (63, 575), (64, 1), (w.shape[0] - 1, w.shape[1] - 1)]
        print(json.dumps({"name": name, "shape": list(w.shape),
                          "picks": [[r, c, bits([w[r, c]])[0]] for r, c in picks], **checksums(w)}))


def main():
    model_path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL)
    section_smollm(model_path)
    section_pre_regex(model_path)
    section_spm()
    section_dequant(model_path)
    section_transformers(model_path)


if __name__ == "__main__":
    main()
