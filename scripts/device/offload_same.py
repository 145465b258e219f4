#!/usr/bin/env python3
"""Compare a streamed run with the resident run of the same model (written by
offload-check.sh): generated tokens and the dumped logits must be identical.

Usage: offload_same.py DIR DEVICE   (reads DIR/same-{resident,streamed}-DEVICE.{json,npy})
"""
import json
import sys


def main():
    d, dev = sys.argv[1], sys.argv[2]

    def ids(n):
        with open(f"{d}/same-{n}-{dev}.json") as f:
            return json.load(f)["generated_ids"]

    def raw(n):
        with open(f"{d}/same-{n}-{dev}.npy", "rb") as f:
            return f.read()

    r = {"device": dev, "tokens_identical": ids("resident") == ids("streamed"),
         "logits_bit_identical": raw("resident") == raw("streamed")}
    with open(f"{d}/same-{dev}.json", "w") as f:
        json.dump(r, f)
    print("  ", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
