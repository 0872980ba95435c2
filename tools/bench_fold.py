#!/usr/bin/env python
"""Batch norm folded into the convolutions for inference (`hashindex.model.fold_batch_norm`): the forward
passes that use it, timed with folding on and off in the same run, and what it changes in the outputs.

    python tools/bench_fold.py [--model nin-cifar10-48-v3] [--teachers 5] [--batch 256] [--repeat 5] [--json]

Rows: extraction's forward (`HashModel.encode_fields` on decoded images, the model's own test views), and a
consistent teacher step (`distill.ConsistentTeacher` on a training batch of 128, ``--teachers`` copies of the
model). The two settings alternate, best of ``--repeat`` each, so a noisy machine disturbs both alike.
Also printed: the largest change of a latent activation and the share of code bits that differ, against
float32 without folding, for bf16 with and without folding (is folding within bf16's own rounding?).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import hashindex.model as hm
from hashindex import load_model
from hashindex.distill import ConsistentTeacher
from timing import best_of  # tools/ is on sys.path when run as a script


def timed(fn, repeat: int) -> dict[str, float]:
    """Seconds of ``fn`` folded and not, alternating, best of ``repeat`` each (after one warm-up of each)."""
    best = {True: float("inf"), False: float("inf")}
    for fold in (True, False):
        hm.FOLD_BATCH_NORM = fold
        fn()
    for _ in range(repeat):
        for fold in (False, True):
            hm.FOLD_BATCH_NORM = fold
            best[fold] = min(best[fold], best_of(fn, 1))
    hm.FOLD_BATCH_NORM = True
    return {"folded_s": best[True], "unfolded_s": best[False], "ratio": best[True] / best[False]}


def bits_changed(model_name: str, images: np.ndarray) -> dict[str, float]:
    """Latent activations and code bits of bf16 (folded, unfolded) against float32 unfolded."""
    out = {}
    hm.FOLD_BATCH_NORM = False
    reference = load_model(model_name, "cpu", False).forward_numpy(images)[0]
    bf16 = load_model(model_name, "cpu", True)
    for fold in (False, True):
        hm.FOLD_BATCH_NORM = fold
        latent = bf16.forward_numpy(images)[0]
        name = "bf16_folded" if fold else "bf16"
        out[f"{name}_max_latent_change"] = float(np.abs(latent - reference).max())
        out[f"{name}_bits_changed"] = float(((latent > 0.5) != (reference > 0.5)).mean())
    hm.FOLD_BATCH_NORM = True
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nin-cifar10-48-v3")
    ap.add_argument("--teachers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256, help="images a forward pass of extraction")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    model = load_model(args.model, "cpu", None)
    size, channels = model.input_size, model.channels
    images = rng.integers(0, 256, (args.batch, channels, size, size), dtype=np.uint8)
    batch = torch.from_numpy(images[:128]).contiguous(memory_format=torch.channels_last)
    teacher = ConsistentTeacher([load_model(args.model, "cpu", None).net for _ in range(args.teachers)],
                                torch.device("cpu"), None)
    rows = {"extraction forward (model's test views, batch %d)" % args.batch:
            timed(lambda: model.encode_fields(images, batch_size=args.batch), args.repeat),
            "consistent teachers (%d, one view, batch 128)" % args.teachers: timed(lambda: teacher(batch), args.repeat)}
    result = {"model": args.model, "precision": model.precision, "threads": torch.get_num_threads(), "rows": rows,
              **bits_changed(args.model, images)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model {args.model}, {model.precision}, {torch.get_num_threads()} threads; best of {args.repeat}")
    print("| forward pass | unfolded s | folded s | folded / unfolded |\n| --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['unfolded_s']:.3f} | {r['folded_s']:.3f} | {r['ratio']:.2f}x |")
    print(f"against float32 unfolded: bf16 unfolded changes {result['bf16_bits_changed']:.5f} of code bits (latent "
          f"by {result['bf16_max_latent_change']:.4f} at most), bf16 folded {result['bf16_folded_bits_changed']:.5f} "
          f"({result['bf16_folded_max_latent_change']:.4f})")


if __name__ == "__main__":
    main()
