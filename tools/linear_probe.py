#!/usr/bin/env python
"""Does the K-bit sigmoid layer cost classification accuracy? A linear probe on the trunk's pooled features.

The net classifies through its latent layer (192 -> K sigmoid units -> classes). This fits a multinomial
logistic regression (L-BFGS, features standardised on the database) on the database shards' stored 192-d
pooled features and reports its accuracy on the query shards beside the net's own accuracy on the same
queries (its classifier through the latent layer, applied to the same features by the shards' head.npz).
Equal accuracies mean the trunk, not the hash layer, sets the level.

    python tools/linear_probe.py runs/table/eval-cifar10-48-e100-kd2/shards/database \\
        runs/table/eval-cifar10-48-e100-kd2/shards/queries [--l2 1e-4 1e-3] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from hashindex.signals import Head
from hashindex.store import ShardSet


def arrays(shard_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """A shard directory's pooled features (float32) and labels."""
    rows = ShardSet(shard_dir).load(("features", "labels"))
    return np.asarray(rows["features"], np.float32), np.asarray(rows["labels"])


def probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes of the training and test rows by a linear classifier with L2 penalty ``l2``."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = torch.from_numpy((xtr - mu) / sd), torch.from_numpy((xte - mu) / sd)
    target = torch.from_numpy(ytr.astype(np.int64))
    lin = torch.nn.Linear(a.shape[1], int(ytr.max()) + 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(a), target) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return lin(a).argmax(1).numpy(), lin(b).argmax(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("database", help="shard directory the probe is fitted on")
    ap.add_argument("queries", help="shard directory it is measured on")
    ap.add_argument("--l2", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    xtr, ytr = arrays(a.database)
    xte, yte = arrays(a.queries)
    posterior = Head.load(f"{a.queries}/head.npz").posterior(xte)
    out = {"database": a.database, "queries": a.queries, "items": [len(ytr), len(yte)],
           "net_accuracy": float((posterior.argmax(1) == yte).mean()), "probe": []}
    for l2 in a.l2:
        ptr, pte = probe(xtr, ytr, xte, l2)
        out["probe"].append({"l2": l2, "train_accuracy": float((ptr == ytr).mean()),
                             "test_accuracy": float((pte == yte).mean())})
    if a.json:
        print(json.dumps(out))
        return
    print(f"net (through its latent layer): accuracy {out['net_accuracy']:.4f} on {len(yte)} queries")
    for p in out["probe"]:
        print(f"linear probe on the pooled features, l2 {p['l2']:g}: accuracy {p['test_accuracy']:.4f} "
              f"(train {p['train_accuracy']:.4f})")


if __name__ == "__main__":
    main()
