#!/usr/bin/env python
"""What the thread count costs when the cores are shared: Faiss and torch steps at 1 thread and at one per
core, on idle cores and next to a competing job (a torch training loop started here, using every core, as a
`hashindex train` run does).

    python tools/bench_threads.py [--pause-pid PID] [--reps 3] [--json]

Steps: Faiss IVF list assignment (200,000 codes against 4,096 centroids, k 1, the heap search Faiss's IVF
`add` runs), a flat Hamming search (64 queries, 1M codes, k 100, by counting as hashindex opens flat indexes)
and the shipped net's forward pass (batch of 64 at 32x32). Best of ``--reps`` per cell; the ratio is to
1 thread on the same cores in the same run (docs/RESULTS.md "Threads on a shared machine").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import faiss
import numpy as np
import torch

from bench_hamming import best_of  # tools/ is on sys.path when run as a script
from bench_sublinear import paused
from hashindex.checkpoint import load_model
from hashindex.runtime import set_threads

COMPETITOR = """
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 192, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(192, 160, 1))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.randn(128, 3, 32, 32)
while True:
    opt.zero_grad(); net(x).square().mean().backward(); opt.step()
"""


def steps() -> dict:
    """name -> a function running one step."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (200_000, 8), dtype=np.uint8)
    quantizer = faiss.IndexBinaryFlat(64)
    quantizer.add(rng.integers(0, 256, (4096, 8), dtype=np.uint8))
    flat = faiss.IndexBinaryFlat(64)
    flat.add(rng.integers(0, 256, (1_000_000, 8), dtype=np.uint8))
    flat.use_heap = False
    model = load_model("nin-cifar10-48-v2")
    images = torch.rand(64, 3, 32, 32)

    def forward():
        with torch.no_grad():
            model.net(images)

    return {"ivf assignment": lambda: quantizer.search(codes, 1),
            "flat search": lambda: flat.search(codes[:64], 100),
            "net forward": forward}


@contextmanager
def competitor(on: bool):
    """A training loop on every core in another process, for the duration (nothing when ``on`` is false)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR],
                            env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    time.sleep(5)  # past its start-up
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pause-pid", type=int, help="a background job to stop while this runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    run = steps()
    rows = []
    with paused(args.pause_pid):
        for shared in (False, True):
            with competitor(shared):
                for name, step in run.items():
                    got = {}
                    for n in (1, cores):
                        set_threads(n)
                        step()  # warm
                        got[n] = best_of(step, args.reps)
                    rows.append({"cores": "shared" if shared else "idle", "step": name, "one_thread_s": got[1],
                                 "per_core_s": got[cores], "ratio": got[cores] / got[1]})
    if args.json:
        print(json.dumps({"cores": cores, "rows": rows}))
        return
    print(f"| cores | step | 1 thread (s) | {cores} threads (s) | {cores} threads / 1 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['cores']} | {r['step']} | {r['one_thread_s']:.3f} | {r['per_core_s']:.3f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
