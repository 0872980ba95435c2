"""HNSW on learned hash codes: a graph over every item vs `build --binary hnsw`'s graph over the distinct codes.

A trained hashing net gives many images the same code (the shipped model: 4,113 distinct codes for the
10,000 CIFAR-10 test images, the largest bucket 750). In an HNSW graph over every item, the neighbour
lists of a bucket's members fill with each other at distance 0, so greedy search can stay inside a
bucket. `build --binary hnsw` builds its graph over the distinct codes instead and answers with their
buckets, nearest first, cut at k (hashindex/index/buckets.py). This tool measures tie-aware recall@k
against exact Hamming search and the time per query of both, at several efSearch values and k (10, and
the fine stage's pool of 1,000), one search call over all queries, in the same run.

    python tools/hnsw_duplicates.py SHARD_DIR [--queries 500] [--k 10,1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from hashindex import ShardSet
from hashindex.index import default_params, make_binary_index, pad_codes, padded_bytes
from hashindex.index.buckets import graph_search


def tie_aware_recall(found: np.ndarray, kth: np.ndarray) -> float:
    """Share of the returned top-k (-1: missing) at most as far as the exact k-th neighbour."""
    return float(((found <= kth[:, None]) & (found >= 0)).mean())


def measure(codes: np.ndarray, n_queries: int, ks: list[int], ef_values: list[int]) -> dict:
    """Recall and ms per query of both graphs (hashindex's default M and efConstruction), for queries spread
    over the set."""
    padded = pad_codes(codes, padded_bytes(codes.shape[1]))  # as the index pads them
    queries = padded[np.linspace(0, len(padded) - 1, min(n_queries, len(padded))).astype(int)]
    bits = padded.shape[1] * 8
    params = default_params("hnsw", len(padded), bits)
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(padded)
    every = faiss.IndexBinaryHNSW(bits, params["M"])
    every.hnsw.efConstruction = params["efConstruction"]
    every.add(padded)
    distinct = make_binary_index("hnsw", bits, params)  # what build makes
    distinct.add(padded)
    sizes = np.diff(distinct.buckets()[0])  # builds the graph now, not inside the first timed search
    rows = []
    for k in [k for k in ks if k <= len(padded)]:
        kth = flat.search(queries, k)[0][:, k - 1]
        for ef in ef_values:
            row: dict = {"k": k, "efSearch": ef}
            for name, index, search in (("every item", every, lambda x, k: graph_search(every, x, k)),
                                        ("distinct codes", distinct, distinct.search)):
                index.hnsw.efSearch = ef
                t0 = time.perf_counter()
                dist, idx = search(queries, k)
                row[name + " ms"] = (time.perf_counter() - t0) * 1000 / len(queries)
                row[name] = tie_aware_recall(np.where(idx >= 0, dist, -1), kth)
            rows.append(row)
    return {"items": len(padded), "distinct_codes": distinct.nodes, "largest_bucket": int(sizes.max()),
            "queries": len(queries), "M": params["M"], "efConstruction": params["efConstruction"],
            "recall": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards", help="a shard directory (hashindex extract)")
    ap.add_argument("--queries", type=int, default=500, help="queries spread evenly over the collection")
    ap.add_argument("--k", default="10,1000", help="result counts, comma-separated")
    ap.add_argument("--ef", default="16,128,512,2048", help="efSearch values, comma-separated")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    codes = ShardSet(args.shards).load(("codes",))["codes"]
    r = measure(codes, args.queries, [int(v) for v in args.k.split(",")], [int(v) for v in args.ef.split(",")])
    if args.json:
        print(json.dumps(r, indent=1))
        return
    print(f"{r['items']:,} items, {r['distinct_codes']:,} distinct codes, largest bucket {r['largest_bucket']:,}; "
          f"tie-aware recall@k of {r['queries']} queries (M {r['M']}, efConstruction {r['efConstruction']})")
    print("| k | efSearch | graph over every item | graph over distinct codes (build) | ms per query, every / distinct |")
    print("| --- | --- | --- | --- | --- |")
    for row in r["recall"]:
        print(f"| {row['k']} | {row['efSearch']} | {row['every item']:.3f} | {row['distinct codes']:.3f} | "
              f"{row['every item ms']:.3f} / {row['distinct codes ms']:.3f} |")


if __name__ == "__main__":
    main()
