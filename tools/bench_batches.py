#!/usr/bin/env python
"""How decode workers hand batches back: numpy pickled through the pipe (ours) vs torch tensors in shared memory.

`hashindex.data.loading.collate` returns numpy arrays, so a batch never travels as a file descriptor through a
Unix socket in the temp folder (a path over 107 bytes there lost every batch). This times `iter_batches` over
the same items both ways, alternating, in one run, and prints the ratio (best of --repeats each):

    python tools/bench_batches.py [--data ../shared/data/flowers] [--size 96] [--limit 1500] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hashindex.data import loading, open_source

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flowers"


NUMPY_COLLATE = loading.collate


def tensor_collate(batch):
    """The former collate: the stacked images as a torch tensor (shared memory between processes)."""
    images, positions, bad = NUMPY_COLLATE(batch)
    return (None if images is None else torch.from_numpy(images)), positions, bad


def timed(source, size: int, workers: int, as_tensors: bool) -> float:
    """Seconds to decode every item of ``source`` with ``iter_batches``, tensors or numpy from the workers."""
    collate, from_numpy = loading.collate, torch.from_numpy
    if as_tensors:  # iter_batches wraps what the workers send; a tensor passes through as it is
        loading.collate, torch.from_numpy = tensor_collate, (lambda x: x)
    try:
        t = time.perf_counter()
        for _ in loading.iter_batches(source, size, 3, workers=workers):
            pass
        return time.perf_counter() - t
    finally:
        loading.collate, torch.from_numpy = collate, from_numpy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--limit", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    source = open_source(a.data).subset(a.limit)
    times: dict[str, list[float]] = {"numpy": [], "tensor": []}
    for _ in range(a.repeats):
        for name in times:
            times[name].append(timed(source, a.size, a.workers, name == "tensor"))
    best = {k: min(v) for k, v in times.items()}
    out = {"data": a.data, "items": len(source), "size": a.size, "workers": a.workers,
           "numpy_s": best["numpy"], "tensor_s": best["tensor"], "numpy_over_tensor": best["numpy"] / best["tensor"]}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['items']} items at {a.size} px, {a.workers} workers, best of {a.repeats}: "
              f"numpy {best['numpy']:.2f} s, tensor {best['tensor']:.2f} s, "
              f"time ratio numpy/tensor {out['numpy_over_tensor']:.3f}")


if __name__ == "__main__":
    main()
