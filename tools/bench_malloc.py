#!/usr/bin/env python
"""Training steps and encoding with glibc's malloc as it is vs `runtime.keep_freed_memory`, in one run.

Each arm runs in a fresh process (the setting is per process), alternating, ``--rounds`` times: N training
steps of the net (batch 128, augmentation and loss as `train` runs them) and the shipped model's encoding of
random images (as `extract` runs it), with the process's system CPU time. Prints the medians and the ratios.
``--in-thread`` runs both in a thread other than the main one, as the service's batcher runs the net.

    python tools/bench_malloc.py [--steps 10] [--rounds 2] [--in-thread] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKER = r"""
import json, resource, sys, threading, time
import torch
from hashindex.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
steps = int(sys.argv[2])
from hashindex import load_model
from hashindex.model import NINHash
from hashindex.recipe import TrainConfig, augment, batch_loss
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (128 * (steps + 2), 3, 32, 32), dtype=torch.uint8)
y = torch.randint(0, 10, (len(x),))
net = NINHash(48, 10).train().to(memory_format=torch.channels_last)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
cfg = TrainConfig(data="-", out="-", bf16=False)
def step(i):
    sl = slice(128 * i, 128 * (i + 1))
    loss = batch_loss(net, cfg, augment(x[sl], g, 4, True), y[sl], None, torch.device("cpu"))[0]
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
def timed(fn):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
    fn()
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0
def measure():
    step(0); step(1)
    train_s, train_sys = timed(lambda: [step(2 + i) for i in range(steps)])
    model = load_model("nin-cifar10-48-v3", bf16=False)
    images = x[:128 * steps].permute(0, 2, 3, 1).numpy()
    model.encode(images[:256], batch_size=256)
    enc_s, enc_sys = timed(lambda: model.encode(images, batch_size=256))
    print(json.dumps({"kept": kept, "train_img_s": 128 * steps / train_s, "train_sys_frac": train_sys / train_s,
                      "encode_img_s": len(images) / enc_s, "encode_sys_frac": enc_sys / enc_s}))
if sys.argv[3] == "thread":  # as the service's batcher runs the net: not in the main thread
    t = threading.Thread(target=measure); t.start(); t.join()
else:
    measure()
"""


def run_arm(arm: str, steps: int, in_thread: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, arm, str(steps), "thread" if in_thread else "main"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="training steps per arm (encoding: 128 x steps images)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--in-thread", action="store_true",
                    help="run the net in a thread other than the main one (as the service's batcher does)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"default": [], "kept": []}
    for _ in range(args.rounds):
        for arm in runs:
            runs[arm].append(run_arm(arm, args.steps, args.in_thread))
    res = {arm: {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "kept"}
           for arm, rows in runs.items()}
    res["applied"] = all(r["kept"] for r in runs["kept"])
    res["train_ratio"] = res["kept"]["train_img_s"] / res["default"]["train_img_s"]
    res["encode_ratio"] = res["kept"]["encode_img_s"] / res["default"]["encode_img_s"]
    if args.json:
        print(json.dumps(res, indent=2))
        return
    for arm in ("default", "kept"):
        r = res[arm]
        print(f"{arm:8s} train {r['train_img_s']:6.1f} img/s (system time {r['train_sys_frac']:.0%})   "
              f"encode {r['encode_img_s']:6.1f} img/s (system time {r['encode_sys_frac']:.0%})")
    print(f"ratio kept/default: train {res['train_ratio']:.2f}x, encode {res['encode_ratio']:.2f}x "
          f"(applied: {res['applied']})")


if __name__ == "__main__":
    main()
