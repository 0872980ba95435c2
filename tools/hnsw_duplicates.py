"""HNSW on learned hash codes: a graph over every item vs a graph over the distinct codes.

A trained hashing net gives many images the same code (the shipped model: 4,113 distinct codes for the
10,000 CIFAR-10 test images, the largest bucket 750). In an HNSW graph over every item, the neighbour
lists of a bucket's members fill with each other at distance 0, so greedy search can stay inside a
bucket. This tool measures tie-aware recall@k against exact Hamming search for both graphs, at several
efSearch values; the distinct-code graph's results are its buckets, nearest first, cut at k.

    python tools/hnsw_duplicates.py SHARD_DIR [--queries 500] [--json]
"""

from __future__ import annotations

import argparse
import json

import faiss
import numpy as np

from hashindex import ShardSet
from hashindex.index import pad_codes, padded_bytes


def tie_aware_recall(found: np.ndarray, kth: np.ndarray) -> float:
    """Share of the returned top-k (-1: missing) at most as far as the exact k-th neighbour."""
    return float(((found <= kth[:, None]) & (found >= 0)).mean())


def bucket_topk(dist: np.ndarray, buckets: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """Hamming distances of the first k items when each distinct code found stands for its whole bucket."""
    out = np.full((len(dist), k), -1, np.int32)
    for q in range(len(dist)):
        row = [d for d, b in zip(dist[q], buckets[q]) if b >= 0 for _ in range(int(sizes[b]))][:k]
        out[q, :len(row)] = row
    return out


def measure(codes: np.ndarray, n_queries: int, k: int, ef_values: list[int], m: int = 32,
            ef_construction: int = 80) -> dict:
    """Recall of both graphs (hashindex's default M and efConstruction) for queries spread over the set."""
    padded = pad_codes(codes, padded_bytes(codes.shape[1]))  # as the index pads them
    queries = padded[np.linspace(0, len(padded) - 1, min(n_queries, len(padded))).astype(int)]
    bits = padded.shape[1] * 8
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(padded)
    kth = flat.search(queries, k)[0][:, k - 1]
    distinct, sizes = np.unique(padded, axis=0, return_counts=True)
    graphs = {}
    for name, data in (("every item", padded), ("distinct codes", distinct)):
        g = faiss.IndexBinaryHNSW(bits, m)
        g.hnsw.efConstruction = ef_construction
        g.add(data)
        graphs[name] = g
    rows = []
    for ef in ef_values:
        row = {"efSearch": ef}
        for name, g in graphs.items():
            g.hnsw.efSearch = ef
            dist, idx = g.search(queries, k)
            found = np.where(idx >= 0, dist, -1) if name == "every item" else bucket_topk(dist, idx, sizes, k)
            row[name] = tie_aware_recall(found, kth)
        rows.append(row)
    return {"items": len(padded), "distinct_codes": len(distinct), "largest_bucket": int(sizes.max()),
            "queries": len(queries), "k": k, "M": m, "efConstruction": ef_construction, "recall": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards", help="a shard directory (hashindex extract)")
    ap.add_argument("--queries", type=int, default=500, help="queries spread evenly over the collection")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", default="16,128,512,2048", help="efSearch values, comma-separated")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    codes = ShardSet(args.shards).load(("codes",))["codes"]
    r = measure(codes, args.queries, args.k, [int(v) for v in args.ef.split(",")])
    if args.json:
        print(json.dumps(r, indent=1))
        return
    print(f"{r['items']:,} items, {r['distinct_codes']:,} distinct codes, largest bucket {r['largest_bucket']:,}; "
          f"tie-aware recall@{r['k']} of {r['queries']} queries (M {r['M']}, efConstruction {r['efConstruction']})")
    print("| efSearch | graph over every item | graph over distinct codes |\n| --- | --- | --- |")
    for row in r["recall"]:
        print(f"| {row['efSearch']} | {row['every item']:.3f} | {row['distinct codes']:.3f} |")


if __name__ == "__main__":
    main()
