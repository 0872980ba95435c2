#!/usr/bin/env python
"""Extraction throughput: end-to-end `extract` vs the bare forward pass, in one run.

Bare forward = model.encode_fields on images already decoded in memory (the ceiling: the arrays extraction
stores, mid features included).
End to end = hashindex.extract over the same collection (tar reading, JPEG
decoding in worker processes, the net, HDF5 writing). Prints both and the ratio,
and the single-core decode rate (what each decode worker can feed a GPU).

    python tools/bench_extract.py --model runs/m.pt [--data ../shared/data/cifar10-jpeg/test.tar] [--device cuda]

--baseline MODEL also times another model's bare forward on the same images in the same run, and prints
--model's speed as a ratio of it (e.g. a test-flip checkpoint against its single-view original).
--precisions also times --model's bare forward forced to bf16 autocast and to float32, and names the one
the default (bf16=None) picks on this machine; e.g. on an AVX2-only CPU, where bf16 is the slow one:

    python tools/bench_extract.py --model nin-cifar10-48-v2 --limit 1000 --precisions

--mid-cost also times the bare forward without the mid feature (`encode`, codes and pooled features only)
and prints the cost of the mid feature as a ratio.

--fold-gain also times the end-to-end extraction with batch norm left unfolded (`hashindex.model.
FOLD_BATCH_NORM = False`, the trunk as trained: how extraction ran before folding) and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import hashindex.model as hm
from hashindex import extract, load_model
from hashindex.data import open_source

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg" / "test.tar"


def bare_forward(model, images: np.ndarray, batch_size: int, mid: bool = True) -> float:
    """Images/s of model.encode_fields on decoded images: best of two runs after a warm-up batch."""
    model.encode_fields(images[:batch_size], batch_size=batch_size, mid=mid)
    best = 0.0
    for _ in range(2):  # best of two: the ceiling should not be low by accident
        t0 = time.perf_counter()
        model.encode_fields(images, batch_size=batch_size, mid=mid)
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


def end_to_end(model, src, args) -> float:
    """Images/s of `hashindex.extract` over ``src`` into a temporary folder."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        extract(model, src, Path(d) / "shards", batch_size=args.batch_size, workers=args.workers,
                device=args.device, progress=False, log=lambda s: None)
        return len(src) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline", default=None, help="another model whose bare forward is timed alongside")
    ap.add_argument("--precisions", action="store_true", help="also time the bare forward in bf16 and in float32")
    ap.add_argument("--mid-cost", action="store_true", help="also time the bare forward without mid features")
    ap.add_argument("--fold-gain", action="store_true", help="also time extraction with batch norm unfolded")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    model = load_model(args.model, args.device)
    src = open_source(args.data).subset(args.limit)
    t0 = time.perf_counter()
    images = np.stack([src.read_array(i, model.input_size, model.channels) for i in range(len(src))])
    decode = len(src) / (time.perf_counter() - t0)
    bare = bare_forward(model, images, args.batch_size)
    no_mid = bare_forward(model, images, args.batch_size, mid=False) if args.mid_cost else None
    base = bare_forward(load_model(args.baseline, args.device), images, args.batch_size) if args.baseline else None
    forced = {p: bare_forward(load_model(args.model, args.device, bf16=p == "bfloat16"), images, args.batch_size)
              for p in ("float32", "bfloat16")} if args.precisions else None

    e2e = end_to_end(model, src, args)
    unfolded = None
    if args.fold_gain:
        hm.FOLD_BATCH_NORM = False
        unfolded = end_to_end(model, src, args)
        hm.FOLD_BATCH_NORM = True
    res = {"images": len(src), "batch_size": args.batch_size, "workers": args.workers, "device": args.device,
           "decode_1_core_img_s": decode, "bare_forward_img_s": bare, "extract_img_s": e2e, "ratio": e2e / bare}
    if base is not None:
        res.update(baseline=args.baseline, baseline_bare_forward_img_s=base, ratio_to_baseline=bare / base)
    if unfolded is not None:
        res.update(extract_unfolded_img_s=unfolded, ratio_folded_to_unfolded=e2e / unfolded)
    if no_mid is not None:
        res.update(bare_forward_without_mid_img_s=no_mid, ratio_mid_to_without=bare / no_mid)
    if forced is not None:
        res.update(default_precision=model.precision, float32_img_s=forced["float32"],
                   bfloat16_img_s=forced["bfloat16"], ratio_bfloat16_to_float32=forced["bfloat16"] / forced["float32"])
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{len(src)} images, batch {args.batch_size}, {args.workers} decode workers, {args.device}")
        print(f"decode only, one core          : {decode:8.1f} img/s")
        print(f"bare forward (decoded in memory): {bare:8.1f} img/s")
        print(f"hashindex extract end to end    : {e2e:8.1f} img/s")
        print(f"ratio extract/bare              : {e2e / bare:8.2f}x")
        if base is not None:
            print(f"bare forward of {args.baseline}: {base:8.1f} img/s; --model runs at {bare / base:.2f}x it")
        if unfolded is not None:
            print(f"extract, batch norm unfolded   : {unfolded:8.1f} img/s; folded runs at {e2e / unfolded:.2f}x it")
        if no_mid is not None:
            print(f"bare forward without mid features: {no_mid:8.1f} img/s; with them at {bare / no_mid:.3f}x")
        if forced is not None:
            print(f"bare forward, float32 / bf16    : {forced['float32']:8.1f} / {forced['bfloat16']:.1f} img/s "
                  f"(bf16 at {res['ratio_bfloat16_to_float32']:.2f}x float32; the default here: {model.precision})")


if __name__ == "__main__":
    main()
