#!/usr/bin/env python
"""What the fine stage adds to a query: single-query search time with and without re-ranking, one thread.

    python tools/bench_fine_stage.py INDEX_DIR QUERY_SHARDS [--count 300]

Both rankings fetch the same pool from the coarse index (the signal's default pool, widened to whole tie
groups), so the difference is the re-ordering of the pool by the index's signal (docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from hashindex.index import Index
from hashindex.store import ShardSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index")
    ap.add_argument("queries")
    ap.add_argument("--count", dest="n", type=int, default=300, help="queries timed")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    index = Index.load(args.index)
    q = ShardSet(args.queries).load(("codes", index.feature_field))  # the feature the index's signal reads
    codes, feats = q["codes"][:args.n], q[index.feature_field][:args.n].astype(np.float32)
    best: dict[bool, float] = {}
    for rerank in (False, True, False, True):  # twice each, best of the two medians
        t = []
        for i in range(len(codes)):
            t0 = time.perf_counter()
            index.search(codes[i:i + 1], feats[i:i + 1], k=10, rerank=rerank)
            t.append(time.perf_counter() - t0)
        best[rerank] = min(best.get(rerank, np.inf), float(np.median(t)) * 1e3)
    print(f"{args.index}: signal {index.signal}, {index.count:,} items; one query, one thread, median ms: "
          f"coarse pool only {best[False]:.3f}, with the fine stage {best[True]:.3f} "
          f"(+{best[True] - best[False]:.3f})")


if __name__ == "__main__":
    main()
