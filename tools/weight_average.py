"""Test accuracy of the weight average of checkpoints of one net (the ends of two cosine cycles, or sibling
fine-tunes from one start: a "soup", Wortsman et al. 2022), BatchNorm's statistics measured again on augmented
training images (hashindex.averaging), single view, float32.

    python tools/weight_average.py runs/table/cifar10-48-e100.pt runs/table/cifar10-48-e100-cutout-restart.pt \
        --alpha 0.5 --train ../shared/data/cifar10-jpeg/train.tar --val ../shared/data/cifar10-jpeg/test.tar

Two checkpoints: A weighted ``alpha`` (repeatable), B ``1 - alpha``; three or more: their uniform mean; one: the
net itself, its BatchNorm statistics measured again (``--clean``: on training images as test images are seen,
without the crop and flip).
``--out`` writes the (last) average as a checkpoint of its own (A's metadata, the average's weights and
measured accuracy, a new model id), for `hashindex derive`, `eval` or `tools/ensemble_accuracy.py`.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from hashindex.averaging import recompute_batchnorm
from hashindex.checkpoint import atomic_torch_save, build_meta, load_model, read_checkpoint
from hashindex.data import load_arrays, open_source
from hashindex.recipe import augment
from hashindex.training import val_accuracy


def averaged(nets: list[nn.Module], weights: list[float]) -> nn.Module:
    """A copy of ``nets[0]`` whose floating-point tensors are the ``weights``-weighted sum of the nets' (integer
    ones, BatchNorm's batch counts, are the last net's)."""
    states = [n.state_dict() for n in nets]
    net = copy.deepcopy(nets[0])
    net.load_state_dict({k: sum(w * s[k] for w, s in zip(weights, states)) if states[0][k].is_floating_point()
                         else states[-1][k] for k in states[0]})
    return net


def write_average(net: nn.Module, first: str, paths: list[str], weights: list[float], accuracy: float,
                  out: str) -> str:
    """Save ``net`` as a checkpoint carrying ``first``'s metadata (classes, input, training record) with a note of
    what was averaged; returns its model id."""
    ckpt = read_checkpoint(first)
    meta = build_meta(net, **{k: v for k, v in ckpt.items() if k not in ("path", "state_dict", "model_id")})
    meta["derived_from"] = {"model": " + ".join(f"{w:g} x {Path(p).name}" for w, p in zip(weights, paths)),
                            "model_id": ckpt["model_id"], "test_flip": ckpt.get("test_flip", False),
                            "test_shift": ckpt.get("test_shift", 0), "accuracy": ckpt["accuracy"], "map": ckpt["map"]}
    meta["accuracy"], meta["map"], meta["map_protocol"] = accuracy, None, ""
    atomic_torch_save(meta, out)
    return meta["model_id"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="checkpoints of one architecture (one: BatchNorm measured again)")
    ap.add_argument("--alpha", type=float, action="append", help="with two: weight of A (repeatable) [0.5]")
    ap.add_argument("--train", required=True, help="training images for the BatchNorm pass")
    ap.add_argument("--val", required=True, help="labelled test images")
    ap.add_argument("--out", help="write the (last) average here as a checkpoint")
    ap.add_argument("--train-limit", type=int, default=10_000, help="training images of the BatchNorm pass")
    ap.add_argument("--clean", action="store_true", help="the BatchNorm pass on un-augmented training images")
    args = ap.parse_args()
    if args.alpha and len(args.models) != 2:
        ap.error("--alpha weighs A against B: give exactly two checkpoints")
    models = [load_model(p, bf16=False) for p in args.models]
    size, channels, device = models[0].input_size, models[0].channels, torch.device("cpu")
    tx, _, _ = load_arrays(open_source(args.train).subset(args.train_limit), size, channels, 2, False)
    vx, vy, _ = load_arrays(open_source(args.val), size, channels, 2, False)
    print("  ".join(f"{Path(p).name} {val_accuracy(m.net, vx, vy, device, False):.4f}"
                    for p, m in zip(args.models, models)))
    mixes = ([[a, 1 - a] for a in args.alpha or [0.5]] if len(models) == 2
             else [[1 / len(models)] * len(models)])
    for weights in mixes:
        net = averaged([m.net for m in models], weights)
        g, sample = torch.Generator().manual_seed(0), torch.from_numpy(tx)
        batches = (sample[s:s + 500].clone() if args.clean else augment(sample[s:s + 500].clone(), g, 4, True)
                   for s in range(0, len(sample), 500))
        recompute_batchnorm(net, batches, device, False)
        accuracy = val_accuracy(net, vx, vy, device, False)
        print(f"weights {' '.join(f'{w:.3g}' for w in weights)}: {accuracy:.4f}")
    if args.out:
        model_id = write_average(net, args.models[0], args.models, weights, accuracy, args.out)
        print(f"wrote {args.out}: model {model_id}, accuracy {accuracy:.4f} (single view, float32)")


if __name__ == "__main__":
    main()
