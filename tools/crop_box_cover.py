#!/usr/bin/env python
"""Which crop boxes find which crops: how the `uneven` and `corners` families of `hashindex/phash.py` were chosen.

Every ``--every``-th photo of ``--data`` (default: every second flowers test photo) is written with random crops
of three kinds, twice (seeds 0 and 1): `each` (0-10 % off each side, independently), `corner` (3-20 % off two
adjacent sides) and `free` (a window of 75-95 % of the width and of the height, anywhere). A crop is found by a
box when the box's hash of its photo is within `duplicates`' default radii of the crop's whole hash (8 of 64
bits and 64 of 256), or by the whole hash alone. For a grid of boxes (each side cut by 0 to ``--max-cut`` in
``--step`` steps, at least ``--min-area`` of the photo left) it prints, per kind, a greedy cover chosen on the
seed-0 crops (the box that finds most crops not yet found, ``--picks`` times, on top of the `centre` family)
and measured on the seed-1 crops; then, on all crops, each family of crop boxes.

    python tools/crop_box_cover.py                  # about 2.5 minutes on 2 cores
    python tools/crop_box_cover.py --json
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from hashindex.data import open_source
from hashindex.duplicates import DEFAULT_FINE_RADIUS, DEFAULT_RADIUS, _thumbnails
from hashindex.hash_groups import pair_distances
from hashindex.phash import CROP_FAMILIES, FINE_BLOCK, Box, perceptual_hashes

KINDS = ("each", "corner", "free")


def random_cuts(rng: np.random.Generator) -> dict[str, list[float]]:
    """The share cut off each side (left, top, right, bottom) for one crop of each kind."""
    corner = [0.0] * 4
    first = rng.integers(4)
    corner[first], corner[(first + 1) % 4] = rng.uniform(0.03, 0.20, 2)
    width, height = rng.uniform(0.75, 0.95, 2)
    left, top = rng.uniform(0, 1 - width), rng.uniform(0, 1 - height)
    return {"each": list(rng.uniform(0, 0.10, 4)), "corner": corner,
            "free": [left, top, 1 - width - left, 1 - height - top]}


def write_crops(data: str, out: Path, every: int) -> None:
    """The photos (``NAME.jpg``) and their crops (``NAME__KIND-SEED.jpg``), JPEG quality 88."""
    source = open_source(data)
    for i in range(0, len(source), every):
        img = Image.open(io.BytesIO(source.read_bytes(i))).convert("RGB")
        img.save(out / f"{i:06d}.jpg", quality=88)
        w, h = img.size
        for seed in (0, 1):
            for kind, (left, top, right, bottom) in random_cuts(np.random.default_rng(i * 10 + seed)).items():
                box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
                img.crop(box).save(out / f"{i:06d}__{kind}-{seed}.jpg", quality=88)


class Crops:
    """The crops of a folder written by `write_crops`, with their photos' thumbnails, to test boxes on."""

    def __init__(self, folder: Path):
        source = open_source(str(folder))
        batches = list(_thumbnails(source, 1))
        grey = np.concatenate([g for g, _, _ in batches])
        names = [Path(source.paths[int(i)]).stem for _, positions, _ in batches for i in positions]
        photo_row = {n: k for k, n in enumerate(n for n in names if "__" not in n)}
        self.photos = grey[[k for k, n in enumerate(names) if "__" not in n]]
        crops = [(k, n.split("__")[0], n.split("__")[1]) for k, n in enumerate(names) if "__" in n]
        self.of = np.array([photo_row[photo] for _, photo, _ in crops])  # each crop's photo
        self.kind = np.array([kind for _, _, kind in crops])
        rows = [k for k, _, _ in crops]
        self.whole = perceptual_hashes(grey[rows])
        self.whole_fine = perceptual_hashes(grey[rows], FINE_BLOCK)
        self.by_whole = self.found(None)

    def found(self, box: Box | None) -> np.ndarray:
        """Which crops the photo's hash cut to ``box`` (None: its whole hash) finds."""
        crops = np.arange(len(self.of))
        coarse = pair_distances(perceptual_hashes(self.photos, box=box), self.of, crops, self.whole)
        fine = pair_distances(perceptual_hashes(self.photos, FINE_BLOCK, box=box), self.of, crops, self.whole_fine)
        return (coarse <= DEFAULT_RADIUS) & (fine <= DEFAULT_FINE_RADIUS)

    def found_by(self, boxes: list[Box]) -> np.ndarray:
        hit = self.by_whole.copy()
        for box in boxes:
            hit |= self.found(box)
        return hit


def grid(step: float, max_cut: float, min_area: float) -> list[Box]:
    """Every box with each side cut by a multiple of ``step`` up to ``max_cut``, at least ``min_area`` left."""
    cuts = np.round(np.arange(0, max_cut + step / 2, step), 4)
    return [b for b in itertools.product(cuts.tolist(), repeat=4) if (1 - b[0] - b[2]) * (1 - b[1] - b[3]) >= min_area]


def greedy(hits: np.ndarray, start: np.ndarray, picks: int) -> list[int]:
    """``picks`` rows of ``hits`` (boxes x crops), each the one that finds most crops ``start`` and the rows
    before it do not."""
    covered, chosen = start.copy(), []
    for _ in range(picks):
        j = int((hits & ~covered).sum(1).argmax())
        chosen.append(j)
        covered |= hits[j]
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/flowers/test.tar")
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--step", type=float, default=0.025)
    ap.add_argument("--max-cut", type=float, default=0.2)
    ap.add_argument("--min-area", type=float, default=0.55)
    ap.add_argument("--picks", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="crop_box_cover.") as tmp:
        write_crops(args.data, Path(tmp), args.every)
        crops = Crops(Path(tmp))
    boxes = grid(args.step, args.max_cut, args.min_area)
    hits = np.stack([crops.found(b) for b in boxes])
    centre = crops.found_by(list(CROP_FAMILIES["centre"]))
    out: dict = {"photos": len(crops.photos), "crops": len(crops.kind), "grid_boxes": len(boxes), "greedy": {}}
    for kind in KINDS:
        train, test = crops.kind == f"{kind}-0", crops.kind == f"{kind}-1"
        chosen = greedy(hits[:, train], centre[train], args.picks)
        out["greedy"][kind] = [{"box": boxes[j], "test_found": round(float((centre | hits[chosen[:n + 1]].any(0))
                                                                            [test].mean()), 3)}
                               for n, j in enumerate(chosen)]
    families = {"none": [], **{name: list(b) for name, b in CROP_FAMILIES.items()}}
    out["families"] = {name: {"boxes": len(b), **{kind: round(float(crops.found_by(b)[np.char.startswith(
        crops.kind, kind)].mean()), 3) for kind in KINDS}} for name, b in families.items()}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['photos']} photos, {out['crops']} crops, {out['grid_boxes']} boxes in the grid")
    for kind, rows in out["greedy"].items():
        print(f"\ngreedy cover of '{kind}' crops (on top of centre; found among the seed-1 crops)")
        for n, r in enumerate(rows, 1):
            print(f"{n}\t{' '.join(f'{c:.3f}' for c in r['box'])}\t{r['test_found']}")
    print("\nfamily\tboxes\t" + "\t".join(KINDS) + "  (found, all crops)")
    for name, r in out["families"].items():
        print(f"{name}\t{r['boxes']}\t" + "\t".join(f"{r[k]:.3f}" for k in KINDS))


if __name__ == "__main__":
    main()
