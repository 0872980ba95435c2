#!/usr/bin/env python
"""The CUDA path checked end to end against the CPU path (issue #18, item 5): one prepared script for a
session that has a GPU.

  1. train a few epochs on --device (CIFAR-10 subset): images/s;
  2. extract the test images with that model on --device and on the CPU: images/s each, and how far the
     codes differ (bf16 on another backend may flip a bit whose activation sits at 0.5);
  3. search the device's query codes against the CPU-built index with Faiss on the CPU and, where the
     installed Faiss has GPUs (faiss-gpu), with GpuIndexBinaryFlat: queries/s, and whether the results match.

Writes a JSON summary to --out (and prints it). Runs on the CPU too (`--device cpu`), which is how it is
tested here; every step is timed in the same run as its CPU baseline.

    python tools/gpu_check.py --device cuda --out $OUT/gpu_check.json

On the lent H200 machine (the `device` tool; its python3 has torch, h5py, click, tqdm and Pillow, no Faiss),
as run on 2026-12-04 (docs/RESULTS.md "The GPU path"), with the data `tools/gpu_train.py --pack .gpudata`
writes (gzipped CIFAR-10 tars; a call carries at most 64 MiB):

    run(carry=[".gpudata"], command="PYTHONPATH=. python3 tools/gpu_check.py --device cuda
        --train .gpudata/train.tar.gz --test .gpudata/test.tar.gz --limit 10000 --queries 10000
        --out $OUT/gpu_check.json")

Without Faiss the search step is reported skipped. Faiss's GPU index cannot be checked there: faiss-gpu-cu12
(48 MB) needs the cuBLAS 12 wheel (581 MB measured), and even faiss-cpu's wheel (18.8 MB) no longer fits
beside the tracked tree and the data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import hashindex
from hashindex.checkpoint import read_checkpoint
from hashindex.store import ShardSet

try:
    import faiss
except ImportError:  # the lent GPU machine's image has none (tools/gpu_train.py carries the data instead)
    faiss = None


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def train_step(args, work: Path) -> tuple[str, dict]:
    ckpt = work / "model.pt"
    meta = hashindex.train(args.train, str(ckpt), val=args.test, bits=48, epochs=args.epochs, limit=args.limit,
                           val_limit=args.queries, device=args.device, progress=False)
    hist = read_checkpoint(str(ckpt))["history"]  # the first epoch includes warm-up (cuDNN autotuning)
    return str(ckpt), {"epochs": len(hist), "images_per_s_by_epoch": [round(h["img_per_s"], 1) for h in hist],
                       "val_acc": meta["accuracy"]}


def extract_both(args, ckpt: str, work: Path) -> dict:
    out = {}
    for device in dict.fromkeys([args.device, "cpu"]):
        _, s = timed(lambda: hashindex.extract(ckpt, args.test, work / f"q-{device}", device=device,
                                               limit=args.queries, progress=False, log=lambda m: None))
        out[device] = {"images_per_s": round(args.queries / s, 1)}
    a = ShardSet(work / f"q-{args.device}").load(("codes",))["codes"]
    b = ShardSet(work / "q-cpu").load(("codes",))["codes"]
    diff = np.unpackbits(a ^ b, axis=1).sum(axis=1)
    out["codes_identical"] = float((diff == 0).mean())
    out["bits_differing_mean"] = float(diff.mean())
    return out


def search_both(args, work: Path) -> dict:
    from hashindex.index import Index, pad_codes

    hashindex.build(str(work / "q-cpu"), str(work / "index"), binary="flat", rerank="none", progress=False,
                    log=lambda m: None)
    index = Index.load(work / "index")
    queries = pad_codes(ShardSet(work / f"q-{args.device}").load(("codes",))["codes"], 8)
    (cpu_d, _), s = timed(lambda: index.binary.search(queries, args.k))
    out = {"cpu": {"queries_per_s": round(len(queries) / s, 1)}, "faiss_gpus": faiss.get_num_gpus()}
    if faiss.get_num_gpus() > 0 and hasattr(faiss, "GpuIndexBinaryFlat"):
        res = faiss.StandardGpuResources()
        gpu = faiss.GpuIndexBinaryFlat(res, 64)
        gpu.add(pad_codes(ShardSet(work / "q-cpu").load(("codes",))["codes"], 8))
        gpu.search(queries[:10], args.k)  # warm up
        (gpu_d, _), s = timed(lambda: gpu.search(queries, args.k))
        out["gpu"] = {"queries_per_s": round(len(queries) / s, 1),
                      "same_distances_as_cpu": bool(np.array_equal(gpu_d, cpu_d))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--train", default="../shared/data/cifar10-jpeg/train.tar")
    ap.add_argument("--test", default="../shared/data/cifar10-jpeg/test.tar")
    ap.add_argument("--limit", type=int, default=20_000, help="training images")
    ap.add_argument("--queries", type=int, default=10_000, help="test images extracted and searched")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--out", default="runs/gpu_check.json")
    args = ap.parse_args()
    import torch

    summary: dict = {"device": args.device, "torch": torch.__version__, "faiss": faiss.__version__ if faiss else None,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, summary["train"] = train_step(args, work)
        summary["extract"] = extract_both(args, ckpt, work)
        summary["search"] = search_both(args, work) if faiss else {"skipped": "faiss is not installed"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
