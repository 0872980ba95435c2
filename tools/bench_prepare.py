#!/usr/bin/env python
"""Decode once: training images/s from the JPEG source vs from a prepared store vs the net alone, in one run.

For each collection and input size it measures, on this machine and in the same run:
  decode   load_arrays over the source (what every train run did before prepare), img/s
  prepare  hashindex prepare (decode + write the store, paid once), img/s
  read     loading the prepared store, img/s
  net      the training step alone on in-memory tensors (forward + backward + SGD, bf16), img/s
and from them the end-to-end training throughput of an E-epoch run: N*E / (load + E * N / net), from the
source and from the store, with their ratio. Collections: flowers/train.tar (2,934 photos, ~240-500 px), and
the same photos upscaled to ~2000 px JPEGs (made here in a temp folder, --big N of them), as users' photos are.

    python tools/bench_prepare.py [--sizes 32 64] [--epochs 6] [--big 400] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hashindex.data import load_arrays, open_source
from hashindex.data.prepared import prepare
from hashindex.devices import autocast_for
from hashindex.model import NINHash

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def make_big_photos(n: int, folder: Path, side: int = 2000) -> Path:
    """n flowers photos upscaled to ``side`` px on the long edge, JPEG q90, in class folders."""
    src = open_source(DATA / "flowers" / "train.tar")
    pick = np.linspace(0, len(src) - 1, n).round().astype(int)
    for i in pick:
        img = src.read(int(i)).convert("RGB")
        scale = side / max(img.size)
        big = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        out = folder / src.class_names[src.labels[i]] / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        big.save(out, quality=90)
    return folder


def net_img_s(size: int, classes: int, batch: int = 128, steps: int = 6) -> float:
    """Training-step throughput on in-memory uint8 tensors (bf16 autocast, channels_last, as train runs)."""
    torch.manual_seed(0)
    net = NINHash(48, classes).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, classes, (batch,))

    def step():
        with autocast_for(torch.device("cpu"), True):
            logits, _, _ = net(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def measure(name: str, spec: Path, size: int, epochs: int, workers: int, tmp: Path) -> dict:
    source = open_source(spec)
    n = len(source)
    t0 = time.perf_counter()
    load_arrays(source, size, 3, workers=workers, progress=False)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare(source, tmp / f"{name}-{size}", size, 3, workers=workers, progress=False, log=lambda s: None)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stored = open_source(tmp / f"{name}-{size}")
    load_arrays(stored, size, 3, progress=False)
    read_s = time.perf_counter() - t0
    net = net_img_s(size, len(source.class_names))
    epoch_s = n / net
    from_source = n * epochs / (decode_s + epochs * epoch_s)
    from_store = n * epochs / (read_s + epochs * epoch_s)
    return {"collection": name, "images": n, "size": size, "decode_img_s": n / decode_s,
            "prepare_img_s": n / prepare_s, "read_img_s": n / read_s, "net_img_s": net,
            f"train_{epochs}ep_from_source_img_s": from_source, f"train_{epochs}ep_from_store_img_s": from_store,
            "store_vs_source": from_store / from_source, "store_vs_net": from_store / net}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--big", type=int, default=400, help="upscaled ~2000 px photos to make (0: skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sets = [("flowers", DATA / "flowers" / "train.tar")]
        if args.big:
            sets.append((f"flowers-2000px-x{args.big}", make_big_photos(args.big, tmp / "big")))
        for name, spec in sets:
            for size in args.sizes:
                rows.append(measure(name, spec, size, args.epochs, args.workers, tmp))
                if not args.json:
                    r = rows[-1]
                    print(f"{name:>22} {size:>4}px  decode {r['decode_img_s']:7.0f}  prepare {r['prepare_img_s']:7.0f}"
                          f"  read {r['read_img_s']:9.0f}  net {r['net_img_s']:6.0f}  {args.epochs}-epoch run: "
                          f"source {r[f'train_{args.epochs}ep_from_source_img_s']:5.0f}  store "
                          f"{r[f'train_{args.epochs}ep_from_store_img_s']:5.0f} img/s  "
                          f"(x{r['store_vs_source']:.2f}; {r['store_vs_net']:.0%} of the net alone)", flush=True)
    res = {"threads": torch.get_num_threads(), "workers": args.workers, "epochs": args.epochs, "rows": rows}
    if args.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
