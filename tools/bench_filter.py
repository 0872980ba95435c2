"""Filtered search (`query --only-class/--only-folder/--only-ids`): its cost against the unfiltered search, and
what the obvious alternative (search the whole index for more results, keep the allowed ones) returns.

A synthetic collection of N items (1,000 clustered centres, 48-bit codes that agree with 192-d features, as in
bench_search.py; class = centre // 10, so 100 classes of ~1 % each; folder = centre % 100, so 100 folders) is
written as shards and built as a flat index (re-rank l2). For each filter, in the same run as the baseline (the
unfiltered search of the same queries, default pool, k = 10, one thread):

  * build: the first search with the filter (reading the subset's codes, or the paths for a folder, and
    scanning nothing yet), kept for the next searches;
  * one query at a time and a batch of all queries, against the baseline's; one at a time also with the subset's
    scan selecting its top k with a heap (Faiss's default, what the subset did before it counted: fast_topk);
  * recall@k: the share of the k allowed items nearest by the fine stage's L2 (exact, numpy-free Faiss flat
    scan over the allowed features) that the filtered search returns (the unfiltered search's, over all items,
    is the baseline: the two-stage search approximates that ranking);
  * the same with a pool of 10,000 (`--candidates 10000`, the whole subset where it is smaller): its cost
    and its recall;
  * post-filter: the unfiltered search asked for k / fraction results (so ~k allowed ones are expected among
    them), the allowed ones kept: its time and its recall@k.

    python tools/bench_filter.py                    # N = 1,000,000
    python tools/bench_filter.py --n 200000 --json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex.index import Index, Only, build, restrict
from hashindex.store import write_arrays

from timing import best_of  # tools/ is on sys.path when run as a script

BITS, DIM, CENTRES = 48, 192, 1000
WIDE = 10_000  # a wider pool (--candidates) for the filtered searches: what it costs, what it recovers


def collection(n: int, seed: int):
    """(codes, features float16, labels, paths, centres, projection) of n clustered items."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32) * 2
    proj = rng.standard_normal((DIM, BITS)).astype(np.float32)
    which = rng.integers(0, CENTRES, n)
    feats = (centres[which] + rng.standard_normal((n, DIM), dtype=np.float32)).astype(np.float16)
    codes = np.packbits(feats.astype(np.float32) @ proj > 0, axis=1, bitorder="little")
    paths = [f"f{c % 100:02d}/{i}.jpg" for i, c in enumerate(which)]
    return codes, feats, (which // 10).astype(np.int32), paths, centres, proj


def queries(centres, proj, nq: int, seed: int):
    rng = np.random.default_rng(seed)
    f = centres[rng.integers(0, CENTRES, nq)] + rng.standard_normal((nq, DIM), dtype=np.float32)
    return np.packbits(f @ proj > 0, axis=1, bitorder="little"), f.astype(np.float16).astype(np.float32)


def one_by_one(index: Index, q: np.ndarray, qf: np.ndarray, k: int) -> None:
    one_by_one_pool(index, q, qf, k, None)


def one_by_one_pool(index: Index, q: np.ndarray, qf: np.ndarray, k: int, candidates: int | None) -> None:
    for i in range(len(q)):
        index.search(q[i:i + 1], qf[i:i + 1], k, candidates)


def post_filter(index: Index, allowed: np.ndarray, q, qf, k: int, fetch: int) -> np.ndarray:
    """The top k allowed ids among the unfiltered top ``fetch`` (-1 where fewer were allowed)."""
    res = index.search(q, qf, fetch, candidates=max(fetch, index.default_candidates))
    out = np.full((len(q), k), -1, np.int64)
    for i, row in enumerate(res.ids):
        kept = row[allowed[np.maximum(row, 0)] & (row >= 0)][:k]
        out[i, :len(kept)] = kept
    return out


def exact_top(feats: np.ndarray, allowed: np.ndarray, qf: np.ndarray, k: int) -> np.ndarray:
    """Ids (= positions here) of the k allowed items nearest each query by the fine stage's L2: the ranking the
    two-stage search approximates."""
    rows = np.flatnonzero(allowed)
    flat = faiss.IndexFlatL2(feats.shape[1])
    flat.add(feats[rows].astype(np.float32))
    return rows[flat.search(qf, k)[1]]


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g[g >= 0]) & set(t)) / len(t) for g, t in zip(got, truth)]))


def measure(index: Index, where: Only, feats, q, qf, k: int, repeat: int, base: dict) -> dict:
    t0 = time.perf_counter()
    view = restrict(index, where)
    built = time.perf_counter() - t0
    fraction = view.count / index.count
    single = best_of(lambda: one_by_one(view, q, qf, k), repeat) / len(q)
    view.binary.use_heap = True  # the subset's scan as it was before it selected by counting (fast_topk)
    heap_single = best_of(lambda: one_by_one(view, q, qf, k), repeat) / len(q)
    view.binary.use_heap = False
    batch = best_of(lambda: view.search(q, qf, k), repeat)
    wide = min(view.count, WIDE)
    wide_single = best_of(lambda: one_by_one_pool(view, q, qf, k, wide), repeat) / len(q)
    allowed = np.zeros(index.count, bool)
    allowed[view.base] = True  # ids are positions in this collection
    truth = exact_top(feats, allowed, qf, k)
    fetch = min(index.count, math.ceil(k / fraction))
    t0 = time.perf_counter()
    naive = post_filter(index, allowed, q, qf, k, fetch)
    naive_s = time.perf_counter() - t0
    return {"filter": where.describe(), "items": view.count, "fraction": round(fraction, 4),
            "build_s": round(built, 4), "single_ms": round(single * 1e3, 3),
            "single_vs_unfiltered": round(single / base["single"], 3), "heap_single_ms": round(heap_single * 1e3, 3),
            "single_vs_heap": round(single / heap_single, 3), "batch_s": round(batch, 4),
            "batch_vs_unfiltered": round(batch / base["batch"], 3),
            "recall": round(recall(view.search(q, qf, k).ids, truth), 4), "wide_pool": wide,
            "wide_single_ms": round(wide_single * 1e3, 3),
            "wide_recall": round(recall(view.search(q, qf, k, wide).ids, truth), 4), "post_filter_fetch": fetch,
            "post_filter_s": round(naive_s, 4), "post_filter_recall": round(recall(naive, truth), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="One JSON object per filter.")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    codes, feats, labels, paths, centres, proj = collection(args.n, args.seed)
    q, qf = queries(centres, proj, args.queries, args.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_arrays(Path(tmp) / "s", codes, feats, labels=labels, paths=paths, bits=BITS,
                              class_names=[f"c{i:02d}" for i in range(100)], model_id="synthetic")
        build(shards.dir, Path(tmp) / "ix", binary="flat", rerank="flat", signal="l2", progress=False,
              log=lambda s: None)
        index = Index.load(Path(tmp) / "ix")
        base = {"single": best_of(lambda: one_by_one(index, q, qf, args.k), args.repeat) / len(q),
                "batch": best_of(lambda: index.search(q, qf, args.k), args.repeat),
                "recall": recall(index.search(q, qf, args.k).ids,
                                 exact_top(feats, np.ones(args.n, bool), qf, args.k))}
        rng = np.random.default_rng(args.seed + 2)
        filters = {f"{args.n // 1000:,} random ids": Only(ids=tuple(
                       int(i) for i in np.sort(rng.choice(args.n, args.n // 1000, replace=False)))),
                   "1 class of 100": Only(classes=("c07",)), "1 folder of 100": Only(folders=("f07",)),
                   "10 classes": Only(classes=tuple(f"c{i:02d}" for i in range(10))),
                   "50 classes": Only(classes=tuple(f"c{i:02d}" for i in range(50)))}
        rows = [{"name": name, **measure(index, where, feats, q, qf, args.k, args.repeat, base)}
                for name, where in filters.items()]
    head = {"n": args.n, "queries": args.queries, "k": args.k, "unfiltered_single_ms": round(base["single"] * 1e3, 3),
            "unfiltered_batch_s": round(base["batch"], 4), "unfiltered_recall": round(base["recall"], 4)}
    if args.json:
        print(json.dumps(head))
        for row in rows:
            print(json.dumps(row))
        return
    print(f"N = {args.n:,}, {args.queries} queries, k = {args.k}, one thread; unfiltered: "
          f"{head['unfiltered_single_ms']} ms a query, {head['unfiltered_batch_s']} s a batch, recall@k "
          f"{head['unfiltered_recall']} (of the exact L2 top k)")
    print("| filter | items | build (s) | one query (ms) | vs unfiltered | heap scan: one query (ms) | vs heap | "
          f"batch (s) | vs unfiltered | recall@k | pool {WIDE:,}: one query (ms) | its recall@k | post-filter: fetch | "
          "its time (s) | its recall@k |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['items']:,} | {r['build_s']} | {r['single_ms']} | {r['single_vs_unfiltered']}x | "
              f"{r['heap_single_ms']} | {r['single_vs_heap']}x | "
              f"{r['batch_s']} | {r['batch_vs_unfiltered']}x | {r['recall']} | {r['wide_single_ms']} | "
              f"{r['wide_recall']} | {r['post_filter_fetch']:,} | "
              f"{r['post_filter_s']} | {r['post_filter_recall']} |")


if __name__ == "__main__":
    main()
