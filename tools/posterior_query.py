#!/usr/bin/env python
"""Which query vector for the posterior signal: [p, 0] (the inner product p.x, the chance two images share a
class) or [p, sqrt(1 - |p|^2)] (the cosine of the two augmented unit vectors: p.x + s_p s_x, so an image's own
vector, and a copy's, is its nearest). mAP@all and mAP@1000 of the default ranking with each, through the
metric code `hashindex eval` runs, and how often a query's own item would come first.

    python tools/posterior_query.py INDEX_DIR QUERY_SHARDS [--limit N]

The index must re-rank by `posterior`. Queries that are the index's own items are left out of their ranking
(leave-one-out), as `eval` does.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex.index import TIE_CAP, Index
from hashindex.metrics import evaluate_arrays
from hashindex.provenance import own_positions
from hashindex.query import common_targets, query_rows
from hashindex.store import ShardSet


def variants(p_vectors: np.ndarray) -> dict[str, np.ndarray]:
    """The query vectors of each variant from [p, 0]."""
    p = p_vectors[:, :-1]
    s = np.sqrt(np.maximum(1.0 - (p * p).sum(axis=1, keepdims=True), 0.0))
    return {"inner product [p, 0]": p_vectors, "cosine [p, s_p]": np.hstack([p, s]).astype(np.float32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("queries")
    ap.add_argument("--limit", type=int, default=None, help="the first N queries only")
    args = ap.parse_args()
    index = Index.load(args.index)
    if index.signal != "posterior":
        raise SystemExit(f"{args.index}: re-ranks by {index.signal}, not posterior")
    shards = ShardSet(args.queries, "queries")
    q = query_rows(index, shards, ("codes", "ids", "paths") + shards.label_fields)
    n = len(q["ids"]) if args.limit is None else min(args.limit, len(q["ids"]))
    own = own_positions(index, shards, q["ids"][:n], q["paths"][:n])
    q_targets, db_targets = common_targets(q, index)
    pool = min(index.default_candidates, index.count - (own is not None))
    rows = {}
    for name, vecs in variants(index.query_vectors(q["features"][:n].astype(np.float32))).items():
        out = evaluate_arrays(q["codes"][:n], q_targets[:n], index.table_codes(), db_targets, index.bits,
                              at=(1000,), rerank=lambda sl, pos, v=vecs: index.float_distances(v[sl], pos,
                                                                                                 vectors=True),
                              candidates=pool, tie_cap=max(TIE_CAP, pool), own=own)
        rows[name] = {k: round(v, 4) for k, v in out["reranked"].items() if k in ("map", "map@1000")}
        if own is not None:  # the own item's distance against the best other in the pool: would it come first?
            mine = own >= 0
            d_own = index.float_distances(vecs[mine], own[mine][:, None], vectors=True)[:, 0]
            best = index.search(q["codes"][:n][mine], vecs[mine], k=1, vectors=True).distance[:, 0]
            rows[name]["own_first_share"] = round(float((d_own <= best + 1e-6).mean()), 4)
    print(json.dumps({"index": args.index, "queries": args.queries, "n": n, "pool": pool, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
