#!/usr/bin/env python
"""Which test views a model should average (issue #13): accuracy of sets of shifted and mirrored views.

The shipped test views are the image, its 4 diagonal shifts by 2 px and each one's mirror image (10 views,
`derive --test-shift 2`). This computes the pooled feature of every view in a grid of shifts (each with its
mirror image) once, then the accuracy of each set of views as the model would give it (the classifier on the
views' mean pooled feature, as `NINHash._mean_over_views` does).

    python tools/tta_views.py checkpoints/cifar10-48-e200-kd.pt [--data TEST] [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from hashindex.checkpoint import load_model
from hashindex.data import load_arrays, open_source
from hashindex.devices import autocast_for
from hashindex.model import shift_images

SETS = {  # name -> shifts (dy, dx); every shift with its mirror image
    "flip (2 views)": [(0, 0)],
    "diagonal 2 px (10 views, shipped)": [(0, 0), (2, 2), (-2, -2), (2, -2), (-2, 2)],
    "axis 2 px (10 views)": [(0, 0), (0, 2), (0, -2), (2, 0), (-2, 0)],
    "3x3 grid 2 px (18 views)": [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)],
    "diagonal 1 px (10 views)": [(0, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)],
    "3x3 grid 1 px (18 views)": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
    "grids 1 and 2 px (34 views)": sorted({(dy, dx) for s in (1, 2) for dy in (-s, 0, s) for dx in (-s, 0, s)}),
}


@torch.inference_mode()
def view_features(net, images: np.ndarray, shifts, batch: int = 500) -> dict:
    """(dy, dx) -> summed pooled feature of the shifted image and its mirror image, for every image."""
    out = {}
    dev = torch.device("cpu")
    for dy, dx in shifts:
        parts = []
        for s in range(0, len(images), batch):
            x = shift_images(torch.from_numpy(images[s:s + batch]), dy, dx)
            with autocast_for(dev, None):
                f, _ = net._pooled(torch.cat([x, x.flip(3)]))
            parts.append((f[:len(x)] + f[len(x):]).float())
        out[(dy, dx)] = torch.cat(parts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg/test.tar")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = load_model(args.model)
    net = model.net.eval()
    src = open_source(args.data, "data", split="test")
    src.remap_labels(model.meta["class_names"])
    if args.limit:
        src = src.subset(args.limit)
    images, labels, _ = load_arrays(src, model.input_size, model.channels, 2, True)
    shifts = sorted({s for v in SETS.values() for s in v})
    feats = view_features(net, images, shifts)
    result = {}
    for name, views in SETS.items():
        mean = sum(feats[s] for s in views) / (2 * len(views))
        logits, _ = net.hash_layers(mean)
        result[name] = float((logits.argmax(1).numpy() == labels).mean())
    if args.json:
        print(json.dumps({"model": model.meta["model_id"], "images": len(images), "accuracy": result}, indent=1))
    else:
        for name, acc in result.items():
            print(f"{acc:.4f}  {name}")


if __name__ == "__main__":
    main()
