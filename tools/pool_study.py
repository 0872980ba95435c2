#!/usr/bin/env python
"""How the fine stage's quality grows with its pool: a cosine signal (mid or pooled features) re-ranking the
first N items of the Hamming ranking (cut at N: ties at the edge are not widened), for several N, by
`hashindex eval`'s metric code. Measures what a larger `--candidates` buys on a collection (docs/RESULTS.md,
"The mid feature").

    python tools/pool_study.py --database runs/mid/fm0-db --queries runs/mid/fm0-q --limit 1000
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex.metrics import evaluate_arrays
from hashindex.signals import database_vectors, feature_field
from hashindex.store import ShardSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", required=True, help="labelled shard directory searched")
    ap.add_argument("--queries", required=True, help="labelled shard directory of queries (same model)")
    ap.add_argument("--signal", default="mid", choices=["mid", "cosine"])
    ap.add_argument("--pools", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 16000, 0],
                    help="pool sizes (0: the whole database)")
    ap.add_argument("--limit", type=int, default=1000, help="queries drawn at random (seed 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    field = feature_field(args.signal)
    db, q = (ShardSet(d, arg).load(("codes", field, "labels")) for d, arg in
             ((args.database, "database"), (args.queries, "queries")))
    pick = np.random.default_rng(0).choice(len(q["labels"]), min(args.limit, len(q["labels"])), replace=False)
    qv = database_vectors(args.signal, q[field][pick].astype(np.float32), None, None)
    dv = database_vectors(args.signal, db[field].astype(np.float32), None, None)
    bits = ShardSet(args.database).bits
    rows = []
    for pool in args.pools:
        pool = min(pool or len(dv), len(dv))
        m = evaluate_arrays(q["codes"][pick], q["labels"][pick], db["codes"], db["labels"], bits, pk_max=10,
                            rerank=lambda sl, pos: -np.einsum("qd,qmd->qm", qv[sl], dv[pos]),
                            candidates=pool, tie_cap=pool)
        rows.append({"pool": pool, "hamming_map": m["hamming"]["map"], "map": m["reranked"]["map"],
                     "map@1000": m["reranked"]["map@1000"], "p@10": m["precision_at_k_reranked"][9]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{len(pick)} queries of {args.queries} vs {len(dv)} items of {args.database}, signal {args.signal} "
          f"(Hamming alone: mAP@all {rows[0]['hamming_map']:.4f})")
    print("| pool | mAP@all | mAP@1000 | P@10 |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['pool']} | {r['map']:.4f} | {r['map@1000']:.4f} | {r['p@10']:.4f} |")


if __name__ == "__main__":
    main()
