#!/usr/bin/env python
"""A multi-label image set made from a single-label one: each image two source images side by side, labelled
with the set of their classes (one class when both share it), written as PNGs and a one-hot list,
``list.txt`` (the DeepHash-pytorch format NUS-WIDE and MS-COCO ship in); ``single.txt`` lists the same images
with their left half's class only (what a toolkit of one class per image would have to train on). A reproducible stand-in for a multi-label collection
when none is at hand (nothing here is downloaded), used by docs/RESULTS.md ("Multi-label collections").

    python tools/make_pairs.py --data ../shared/data/cifar10-jpeg/train.tar --out runs/pairs/train --n 8000

The list's columns are the source's classes in order, so the lists of two splits of one set agree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hashindex.data import open_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a labelled source (folder, tar, list, ...)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the PNGs and list.txt")
    ap.add_argument("--n", type=int, default=8000, help="images to make")
    ap.add_argument("--size", type=int, default=32, help="side each half is resized to")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = open_source(args.data)
    labelled = np.flatnonzero(src.labels >= 0)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(labelled, size=(args.n, 2))
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    lines, single = [], []
    for i, (a, b) in enumerate(tqdm(picks, desc="pairs", unit="img")):
        pair = Image.new("RGB", (2 * args.size, args.size))
        for j, pos in enumerate((a, b)):
            pair.paste(src.read(int(pos)).convert("RGB").resize((args.size, args.size), Image.BILINEAR),
                       (j * args.size, 0))
        name = f"images/{i:06d}.png"
        pair.save(args.out / name)
        cols = np.zeros(len(src.class_names), dtype=int)
        cols[src.labels[a]] = 1
        single.append(name + " " + " ".join(map(str, cols)))
        cols[src.labels[b]] = 1
        lines.append(name + " " + " ".join(map(str, cols)))
    (args.out / "list.txt").write_text("\n".join(lines) + "\n")
    (args.out / "single.txt").write_text("\n".join(single) + "\n")
    two = sum(line.count(" 1") == 2 for line in lines)
    print(f"wrote {args.n} images to {args.out} ({two} with two classes); classes: {', '.join(src.class_names)}")


if __name__ == "__main__":
    main()
