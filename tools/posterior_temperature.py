"""Does a softmax temperature change the posterior signal's ranking? mAP@all of the whole database ranked by
the inner product of class posteriors softmax(logits / T), for a few T, on an eval_protocol.sh output folder.

    python tools/posterior_temperature.py runs/flip/eval-cifar10-48 --queries 2000

(docs/RESULTS.md, "Test-time flip": T = 1, the net's own posterior, is as good as any.)
"""

from __future__ import annotations

import argparse

import numpy as np

from hashindex.signals import Head
from hashindex.store import ShardSet


def posterior(head: Head, features: np.ndarray, t: float) -> np.ndarray:
    z = (head.latent(features.astype(np.float32)) @ head.classifier_w.T + head.classifier_b) / t
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def map_all(pq: np.ndarray, q_labels: np.ndarray, pd: np.ndarray, d_labels: np.ndarray, chunk: int = 250) -> float:
    """mAP over the whole ranking by descending inner product (ties in database order)."""
    aps = []
    for s in range(0, len(pq), chunk):
        order = np.argsort(-(pq[s:s + chunk] @ pd.T), axis=1, kind="stable")
        rel = d_labels[order] == q_labels[s:s + chunk, None]
        prec = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
        aps.append((prec * rel).sum(axis=1) / np.maximum(rel.sum(axis=1), 1))
    return float(np.concatenate(aps).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="an eval_protocol.sh output folder (shards/database, shards/queries)")
    ap.add_argument("--queries", type=int, default=2000, help="test queries drawn at random (seed 0)")
    ap.add_argument("--temperatures", default="0.5,1,2,4,8")
    args = ap.parse_args()
    db = ShardSet(f"{args.eval_dir}/shards/database").load(("features", "labels"))
    q = ShardSet(f"{args.eval_dir}/shards/queries").load(("features", "labels"))
    head = ShardSet(f"{args.eval_dir}/shards/database").head()
    pick = np.random.default_rng(0).choice(len(q["labels"]), min(args.queries, len(q["labels"])), replace=False)
    for t in (float(v) for v in args.temperatures.split(",")):
        score = map_all(posterior(head, q["features"][pick], t), q["labels"][pick],
                        posterior(head, db["features"], t), db["labels"])
        print(f"T={t:g}: mAP@all {score:.4f}", flush=True)


if __name__ == "__main__":
    main()
