"""Accuracy of a model under sets of test views (mirror image, shifts by s px), from one pass per view.

Each view's pooled features are computed once; a set's accuracy classifies the mean of its views'
features, as a checkpoint with test_flip / test_shift does (hashindex/model.py). Used to choose what
`hashindex derive --test-shift` offers (docs/RESULTS.md, "Ten views").

    python tools/test_views.py runs/table/cifar10-48-e100.pt --data ../shared/data/cifar10-jpeg/test.tar
"""

from __future__ import annotations

import argparse
import json

import torch

from hashindex.checkpoint import net_from_checkpoint, read_checkpoint
from hashindex.data import load_arrays, open_source
from hashindex.devices import autocast_for
from hashindex.model import shift_images


def _diag(s: int) -> list[tuple[int, int]]:
    return [(s, s), (-s, -s), (s, -s), (-s, s)]


def view_sets(shifts: list[int]) -> dict[str, list[tuple[int, int, int]]]:
    """Named sets of (flip, dy, dx) views."""
    both = lambda ds: [(f, *d) for f in (0, 1) for d in ds]  # noqa: E731
    sets = {"1 view": [(0, 0, 0)], "flip (2)": both([(0, 0)])}
    for s in shifts:
        sets[f"flip x centre + 4 diagonal shifts by {s} (10)"] = both([(0, 0)] + _diag(s))
        sets[f"flip x centre + 2 diagonal shifts by {s} (6)"] = both([(0, 0), (s, s), (-s, -s)])
        sets[f"flip x 2 diagonal shifts by {s} (4)"] = both([(s, s), (-s, -s)])
    return sets


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="labelled images (the test set)")
    ap.add_argument("--shifts", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ckpt = read_checkpoint(args.model)
    net = net_from_checkpoint(ckpt)
    net.test_flip, net.test_shift = False, 0  # one view per pass; the sets average them here
    src = open_source(args.data, "data", split="test")
    src.remap_labels(ckpt["class_names"])
    x, y, _ = load_arrays(src, ckpt["input_size"], ckpt["channels"], progress=False)
    x = torch.from_numpy(x)
    sets = view_sets(args.shifts)
    cache: dict[tuple[int, int, int], torch.Tensor] = {}
    for view in sorted({v for vs in sets.values() for v in vs}):
        flip, dy, dx = view
        v = shift_images(x.flip(3) if flip else x, dy, dx)
        with autocast_for(torch.device("cpu"), True):
            cache[view] = torch.cat([net(v[s:s + 1000].contiguous())[2].float() for s in range(0, len(v), 1000)])
    result = {}
    for name, views in sets.items():
        feature = torch.stack([cache[v] for v in views]).mean(0)
        logits = net.classifier(torch.sigmoid(net.latent(feature)))
        result[name] = float((logits.argmax(1).numpy() == y).mean())
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, acc in result.items():
            print(f"{acc:.4f}  {name}")


if __name__ == "__main__":
    main()
