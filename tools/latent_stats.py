#!/usr/bin/env python
"""How binary and how balanced are a model's latent activations on some images?

For each model: the mean distance of the sigmoid activations from the 0.5 threshold (0.5 = all at 0 or 1),
the share of activations within 0.1 of it (the bits a small perturbation flips), how far each code's share
of bits on is from half, how far each bit's share of images is from half, and the bits that are constant.

    python tools/latent_stats.py nin-cifar10-48 runs/table/cifar10-48-ssdh.pt \\
        --data ../shared/data/cifar10-jpeg/test.tar --limit 2000 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from hashindex.checkpoint import load_model
from hashindex.data import load_arrays, open_source
from hashindex.errors import HashindexError
from hashindex.codes import code_statistics
from hashindex.model import pack_codes


def latent_stats(latent: np.ndarray) -> dict:
    """Statistics of (N, K) sigmoid activations in [0, 1]."""
    on = latent > 0.5
    return {"items": int(len(latent)), "bits": int(latent.shape[1]),
            "margin": float(np.abs(latent - 0.5).mean()),
            "within_0.1_of_threshold": float((np.abs(latent - 0.5) < 0.1).mean()),
            "code_on_share_deviation": float(np.abs(on.mean(axis=1) - 0.5).mean()),
            "bit_on_share_deviation": float(np.abs(on.mean(axis=0) - 0.5).mean()),
            "constant_bits": code_statistics(pack_codes(latent), latent.shape[1])["constant_bits"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        src = open_source(args.data, "--data")
        src = src.subset(args.limit) if args.limit and args.limit < len(src) else src
        rows, decoded = {}, {}  # images decoded once per (input size, channels)
        for name in args.models:
            model = load_model(name)
            shape = (model.input_size, model.channels)
            if shape not in decoded:
                decoded[shape] = load_arrays(src, *shape, progress=False)[0]
            latent, _, _ = model.forward_numpy(decoded[shape])
            rows[name] = latent_stats(latent)
    except HashindexError as e:
        sys.exit(f"latent_stats.py: error: {e}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | images | margin | within 0.1 | code on-share dev. | bit on-share dev. | constant bits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['items']:,} | {r['margin']:.3f} | {r['within_0.1_of_threshold']:.4f} | "
              f"{r['code_on_share_deviation']:.3f} | {r['bit_on_share_deviation']:.3f} | {r['constant_bits']} of {r['bits']} |")


if __name__ == "__main__":
    main()
