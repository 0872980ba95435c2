#!/usr/bin/env python
"""Does query expansion add to the fine stage? alpha-QE (Radenovic et al. 2018) measured inside the pool.

For each query: its Hamming pool (the default pool of the signal, whole tie groups, as `Index.search`
forms it) is ordered by the signal; the query vector is then replaced by itself plus its n nearest pool
items, each weighted by its similarity to the query to the power alpha, and the pool ordered again by the
new vector. n = 0 is the fine stage as shipped. mAP@all through `hashindex.metrics.evaluate_arrays`, the
metric code of `hashindex eval`.

    hashindex -q extract --data ../shared/data/flowers/test.tar --out runs/qe/fl-q     # the default model
    hashindex -q extract --data ../shared/data/flowers/train.tar --out runs/qe/fl-db
    python tools/query_expansion.py --queries runs/qe/fl-q --database runs/qe/fl-db
    python tools/query_expansion.py --queries runs/qe/c10-q --leave-one-out     # a set against itself
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex.index.pool import TIE_CAP, default_pool
from hashindex.metrics import evaluate_arrays
from hashindex.signals import Head, database_vectors, query_from_database, query_vectors
from hashindex.store.shards import ShardSet, targets


def rows_of(directory: str) -> tuple[ShardSet, dict[str, np.ndarray]]:
    shards = ShardSet(directory)
    rows = shards.load(("codes", "features") + shards.label_fields)
    rows["features"] = rows["features"].astype(np.float32)
    rows["targets"] = targets(rows)
    return shards, rows


def expanded(signal: str, q: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """q plus its neighbours (q, n, D) weighted by similarity**alpha, back on the signal's scale."""
    sim = np.clip((neighbours * q[:, None, :]).sum(-1), 0, None) ** alpha
    v = q + (sim[:, :, None] * neighbours).sum(1)
    if signal == "cosine":
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v / (1 + sim.sum(1, keepdims=True))  # a mean: a posterior stays a probability vector


def signal_vectors(signal: str, q: dict, db: dict, head: Head | None) -> dict[str, np.ndarray]:
    """A signal's query vectors, database vectors, the database items as queries and their squared norms:
    computed once per signal, shared by every n measured."""
    dv = database_vectors(signal, db["features"], db["codes"], head)
    return {"qv": query_vectors(signal, q["features"], head), "dv": dv,
            "as_queries": query_from_database(signal, dv), "dn": (dv * dv).sum(1)}


def measure(signal: str, vecs: dict[str, np.ndarray], q: dict, db: dict, bits: int, n: int, alpha: float,
            own: np.ndarray | None) -> tuple[float, float]:
    """(re-ranked mAP@all with n neighbours expanded into each query (n = 0: no expansion), Hamming mAP@all)."""
    qv, dv, as_queries, dn = vecs["qv"], vecs["dv"], vecs["as_queries"], vecs["dn"]
    pool = default_pool(dv.shape[1])

    def distances(sl: slice, pos: np.ndarray) -> np.ndarray:
        d = np.take_along_axis(dn[None, :] - 2 * qv[sl] @ dv.T, pos, 1)
        if not n:
            return d
        nearest = np.take_along_axis(pos, np.argsort(d, 1, kind="stable")[:, :n], 1)
        v = expanded(signal, qv[sl], as_queries[nearest], alpha).astype(np.float32)
        return np.take_along_axis(dn[None, :] - 2 * v @ dv.T, pos, 1)

    m = evaluate_arrays(q["codes"], q["targets"], db["codes"], db["targets"], bits, at=(), pk_max=1,
                        graded_at=(), rerank=distances, candidates=pool, tie_cap=max(TIE_CAP, pool), own=own)
    return m["reranked"]["map"], m["hamming"]["map"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", required=True, help="labelled query shard directory")
    ap.add_argument("--database", help="database shard directory (default: the queries, with --leave-one-out)")
    ap.add_argument("--leave-one-out", action="store_true", help="leave each query out of its own ranking")
    ap.add_argument("--signals", default="cosine,posterior")
    ap.add_argument("--neighbours", default="0,2,5,10", help="n values, comma-separated")
    ap.add_argument("--alpha", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    shards, q = rows_of(args.queries)
    db_shards, db = rows_of(args.database) if args.database else (shards, q)
    own = np.arange(len(q["codes"])) if args.leave_one_out else None
    out = []
    head = db_shards.head()
    for signal in args.signals.split(","):
        vecs = signal_vectors(signal, q, db, head)
        for n in (int(x) for x in args.neighbours.split(",")):
            fine, ham = measure(signal, vecs, q, db, db_shards.bits, n, args.alpha, own)
            out.append({"signal": signal, "n": n, "alpha": args.alpha, "map": round(fine, 4),
                        "hamming_map": round(ham, 4)})
            if not args.json:
                print(f"{signal:9s} n={n:2d} alpha={args.alpha:g}: mAP@all {fine:.4f} (Hamming {ham:.4f})", flush=True)
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
