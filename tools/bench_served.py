#!/usr/bin/env python
"""Batched search time of several indexes over the same collection, as a ratio to the first (the baseline).

    python tools/bench_served.py BASELINE_INDEX INDEX [INDEX ...] --queries QUERY_SHARDS [--count 1024]
        [--batch 256] [--k 1000] [--reps 3] [--json]

Each index answers the same queries with its default ranking (`Index.search`: coarse pool, widened to whole
tie groups, re-ranked by its signal), in batches as `eval` and batch jobs ask; the indexes take turns,
``--reps`` rounds, and the best round of each counts (the machine is shared and noisy). Made to compare
coarse kinds built from one shard set (flat as the baseline against IVF and HNSW; docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hashindex.index import Index
from hashindex.store import ShardSet


def time_search(index: Index, codes: np.ndarray, feats: np.ndarray | None, batch: int, k: int) -> float:
    """Seconds to answer every query, ``batch`` at a time (Hamming alone without features)."""
    t0 = time.perf_counter()
    for s in range(0, len(codes), batch):
        index.search(codes[s:s + batch], None if feats is None else feats[s:s + batch], k=k)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("indexes", nargs="+", help="index directories; the first is the baseline")
    ap.add_argument("--queries", required=True, help="query shard directory")
    ap.add_argument("--count", type=int, default=1024, help="queries timed")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    indexes = {path: Index.load(path) for path in args.indexes}
    q = ShardSet(args.queries).load(("codes",) + tuple({ix.feature_field for ix in indexes.values()}))
    codes = q["codes"][:args.count]
    feats = {path: None if q[ix.feature_field] is None else q[ix.feature_field][:args.count].astype(np.float32)
             for path, ix in indexes.items()}  # each index's signal reads its own field; None: codes only
    for path, index in indexes.items():
        # first-search work (bucket folding, page-in) off the clock
        index.search(codes[:8], None if feats[path] is None else feats[path][:8], k=args.k)
    best = {path: np.inf for path in indexes}
    for _ in range(args.reps):
        for path, index in indexes.items():
            best[path] = min(best[path], time_search(index, codes, feats[path], args.batch, args.k))
    base = best[args.indexes[0]]
    rows = [{"index": path, "coarse": indexes[path].meta["binary"]["kind"], "seconds": round(s, 3),
             "ratio": round(s / base, 3)} for path, s in best.items()]
    if args.json:
        print(json.dumps({"queries": len(codes), "batch": args.batch, "k": args.k, "rows": rows}))
        return
    print(f"{len(codes)} queries, batches of {args.batch}, k {args.k}, best of {args.reps} rounds:")
    for r in rows:
        print(f"  {r['index']} ({r['coarse']}): {r['seconds']:.2f} s, {r['ratio']:.2f}x the baseline")


if __name__ == "__main__":
    main()
