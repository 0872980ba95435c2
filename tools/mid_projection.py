#!/usr/bin/env python
"""A wider `mid` pool at the same cost: the mid features centred and projected to d dimensions (PCA fitted on
the database, optionally whitened), re-ranking FINE_BUDGET / d candidates instead of 1,000 192-d ones. Measures
each variant by `hashindex eval`'s metric code (docs/RESULTS.md, "The mid feature": measured, not adopted).

    python tools/mid_projection.py --database runs/mid/fm0-db --queries runs/mid/fm0-q --limit 1000
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex.index.pool import FINE_BUDGET, TIE_CAP, default_pool
from hashindex.metrics import evaluate_arrays
from hashindex.signals import MID_FIELD
from hashindex.store import ShardSet


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def variants(x: np.ndarray, q: np.ndarray, dims: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """name -> (database vectors, query vectors, pool at FINE_BUDGET floats per query)."""
    mu = x.mean(axis=0)
    w, v = np.linalg.eigh(np.cov((x - mu).T))
    w, v = w[::-1], v[:, ::-1]  # descending variance
    out = {"mid (192-d, today)": (_unit(x), _unit(q), default_pool(x.shape[1])),
           "mid centred (192-d)": (_unit(x - mu), _unit(q - mu), default_pool(x.shape[1]))}
    for d in dims:
        p = v[:, :d]
        white = p / np.sqrt(w[:d] + 1e-6 * w[0])
        out[f"PCA {d}, same pool"] = (_unit((x - mu) @ p), _unit((q - mu) @ p), default_pool(x.shape[1]))
        out[f"PCA {d}"] = (_unit((x - mu) @ p), _unit((q - mu) @ p), FINE_BUDGET // d)
        out[f"PCA {d} whitened"] = (_unit((x - mu) @ white), _unit((q - mu) @ white), FINE_BUDGET // d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", required=True, help="labelled shard directory with mid features")
    ap.add_argument("--queries", required=True, help="labelled shard directory of queries (same model)")
    ap.add_argument("--dims", type=int, nargs="+", default=[48])
    ap.add_argument("--limit", type=int, default=1000, help="queries drawn at random (seed 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    db, q = (ShardSet(d, arg).load(("codes", MID_FIELD, "labels")) for d, arg in
             ((args.database, "database"), (args.queries, "queries")))
    pick = np.random.default_rng(0).choice(len(q["labels"]), min(args.limit, len(q["labels"])), replace=False)
    bits = ShardSet(args.database).bits
    rows = []
    for name, (dv, qv, pool) in variants(db[MID_FIELD].astype(np.float64), q[MID_FIELD][pick].astype(np.float64),
                                         args.dims).items():
        pool = min(pool, len(dv))
        m = evaluate_arrays(q["codes"][pick], q["labels"][pick], db["codes"], db["labels"], bits, pk_max=10,
                            rerank=lambda sl, pos: -np.einsum("qd,qmd->qm", qv[sl], dv[pos]),
                            candidates=pool, tie_cap=max(TIE_CAP, pool))
        rows.append({"variant": name, "pool": pool, "hamming_map": m["hamming"]["map"], "map": m["reranked"]["map"],
                     "map@1000": m["reranked"]["map@1000"], "p@10": m["precision_at_k_reranked"][9]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{len(pick)} queries of {args.queries} vs {len(db['labels'])} items of {args.database} "
          f"(Hamming alone: mAP@all {rows[0]['hamming_map']:.4f})")
    print("| variant | pool | mAP@all | mAP@1000 | P@10 |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['pool']} | {r['map']:.4f} | {r['map@1000']:.4f} | {r['p@10']:.4f} |")


if __name__ == "__main__":
    main()
