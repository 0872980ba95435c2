#!/usr/bin/env python
"""Augmentation's cost per batch: crop + flip (the baseline), + cutout, + TrivialAugment, in one run.

Times `recipe.augment` on a uint8 batch of 32-px images (random pixels: every operation's cost is the same
for any content) on each device asked for, the arms interleaved round by round so that a busy machine slows
them alike; prints ms per batch and each arm's ratio to the baseline, and beside them the time of one training
step of the net on the same device (the scale the augmentation is paid against).

    python tools/bench_augment.py [--device cpu] [--batch-size 128] [--rounds 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench_train import step_throughput  # tools/ is on sys.path when run as a script
from hashindex.recipe import augment

ARMS = {"crop + flip": {}, "+ cutout 16": {"cutout": 16}, "+ TrivialAugment": {"trivial": True}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_arms(x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms per batch of each arm, the arms taking turns within every round."""
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    for r in range(rounds + 2):  # two warm-up rounds
        for name, opts in ARMS.items():
            _sync(x.device)
            t = time.perf_counter()
            augment(x, g, 4, True, **opts)
            _sync(x.device)
            if r >= 2:
                times[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", action="append", help="cpu, cuda (repeatable) [default: cpu, and cuda if there]")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = {}
    for name in devices:
        device = torch.device(name)
        x = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1)).to(device)
        ms = time_arms(x, args.rounds)
        base = ms["crop + flip"]
        out[name] = {"augment_ms": ms, "ratio": {k: v / base for k, v in ms.items()},
                     "train_step_ms": 1000 * args.batch_size / step_throughput(True, args.batch_size, 10,
                                                                               device=name)}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for name, r in out.items():
        print(f"{name}: batch {args.batch_size}, one training step {r['train_step_ms']:.1f} ms")
        for arm, v in r["augment_ms"].items():
            print(f"  {arm:18s} {v:8.2f} ms  {r['ratio'][arm]:5.2f}x  ({v / r['train_step_ms']:.1%} of a step)")


if __name__ == "__main__":
    main()
