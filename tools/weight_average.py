"""Test accuracy of the weight average of two checkpoints of one net (e.g. the ends of two cosine cycles),
BatchNorm's statistics measured again on augmented training images (hashindex.averaging), single view.

    python tools/weight_average.py runs/table/cifar10-48-e100.pt runs/table/cifar10-48-e100-cutout-restart.pt \
        --alpha 0.5 --train ../shared/data/cifar10-jpeg/train.tar --val ../shared/data/cifar10-jpeg/test.tar
"""

from __future__ import annotations

import argparse
import copy

import torch

from hashindex.averaging import recompute_batchnorm
from hashindex.checkpoint import load_model
from hashindex.data import load_arrays, open_source
from hashindex.recipe import augment
from hashindex.training import val_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--alpha", type=float, action="append", help="weight of A (repeatable) [0.5]")
    ap.add_argument("--train", required=True, help="training images for the BatchNorm pass (10,000 of them)")
    ap.add_argument("--val", required=True, help="labelled test images")
    args = ap.parse_args()
    ma, mb = load_model(args.a, bf16=False), load_model(args.b, bf16=False)
    size, channels, device = ma.input_size, ma.channels, torch.device("cpu")
    tx, _, _ = load_arrays(open_source(args.train).subset(10_000), size, channels, 2, False)
    vx, vy, _ = load_arrays(open_source(args.val), size, channels, 2, False)
    print(f"A {val_accuracy(ma.net, vx, vy, device, False):.4f}  B {val_accuracy(mb.net, vx, vy, device, False):.4f}")
    sa, sb = ma.net.state_dict(), mb.net.state_dict()
    for alpha in args.alpha or [0.5]:
        net = copy.deepcopy(ma.net)
        net.load_state_dict({k: alpha * sa[k] + (1 - alpha) * sb[k] if sa[k].is_floating_point() else sb[k]
                             for k in sa})
        g, sample = torch.Generator().manual_seed(0), torch.from_numpy(tx)
        batches = (augment(sample[s:s + 500].clone(), g, 4, True) for s in range(0, len(sample), 500))
        recompute_batchnorm(net, batches, device, False)
        print(f"alpha {alpha}: {val_accuracy(net, vx, vy, device, False):.4f}")


if __name__ == "__main__":
    main()
