"""Shrinking an index: `hashindex remove` of M items vs rebuilding over the N - M that remain, in the same run.

Synthetic shard directories as in bench_append.py (clustered fp16 192-d features, 48-bit codes that agree with
them). M items scattered over the collection are removed (the worst case: every part holds some). For each index
configuration the script times

  * baseline: `build` over a shard directory holding only the remaining rows (what a user would do without
    `remove`: re-extract or filter the collection, then rebuild), and
  * `remove`: `build` over all N (not timed), then `remove` of the M ids,

prints the ratio, and the share of the top 10 (200 queries, pool 100) each index has in common with the exact
flat index over the remaining rows.

    python tools/bench_remove.py                       # N = 1,000,000, M = 10,000
    python tools/bench_remove.py --n 200000 --m 2000 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hashindex.index import Index, build, remove
from hashindex.store import write_arrays

from bench_append import BITS, DIM, overlap, top10, write_collection  # tools/ is on sys.path as a script
from bench_search import make_data, queries_like


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="items indexed")
    ap.add_argument("--m", type=int, default=10_000, help="items removed (scattered)")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs per configuration")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quiet = {"progress": False, "log": lambda s: None}
    configs = [{"binary": "flat", "rerank": "flat", "shards": 1}, {"binary": "flat", "rerank": "none", "shards": 1},
               {"binary": "flat", "rerank": "flat", "shards": 4}, {"binary": "ivf", "rerank": "fp16", "shards": 1}]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_remove.") as tmp:
        t = Path(tmp)
        codes, feats, centres, proj = make_data(args.n, DIM, BITS, seed=0)
        queries = queries_like(centres, proj, 200, seed=7)
        gone = np.sort(np.random.default_rng(3).choice(args.n, args.m, replace=False))
        keep = np.ones(args.n, bool)
        keep[gone] = False
        write_collection(t / "all", codes, feats, 0, 250_000, seed=0)
        write_arrays(t / "kept", codes[keep], feats[keep], ids=np.flatnonzero(keep), model_id="synthetic",
                     shard_rows=250_000, description="synthetic seed 0, removed rows left out")
        del codes, feats
        build(t / "kept", t / "exact", binary="flat", rerank="flat", **quiet)
        exact = {rr: top10(Index.load(t / "exact"), queries, rr) for rr in (True, False)}
        for c in configs:
            name = f"{c['binary']}/{c['rerank']}" + (f", {c['shards']} shards" if c["shards"] > 1 else "")
            ref = exact[c["rerank"] != "none"]
            rebuild_s = remove_s = float("inf")
            for _ in range(args.repeat):  # best of: the page cache and other jobs make single runs noisy
                t0 = time.perf_counter()
                build(t / "kept", t / "rebuilt", overwrite=True, **c, **quiet)
                rebuild_s = min(rebuild_s, time.perf_counter() - t0)
                build(t / "all", t / "shrunk", overwrite=True, **c, **quiet)
                t0 = time.perf_counter()
                remove(t / "shrunk", ids=gone, **quiet)
                remove_s = min(remove_s, time.perf_counter() - t0)
            rows.append({"index": name, "rebuild_s": round(rebuild_s, 3), "remove_s": round(remove_s, 3),
                         "speedup": round(rebuild_s / remove_s, 2),
                         "agree_rebuilt": overlap(top10(Index.load(t / "rebuilt"), queries), ref),
                         "agree_removed": overlap(top10(Index.load(t / "shrunk"), queries), ref)})
    if args.json:
        print(json.dumps({"n": args.n, "m": args.m, "rows": rows}, indent=2))
        return
    print(f"N = {args.n:,} indexed, M = {args.m:,} removed (scattered), K = {BITS}, D = {DIM}")
    print("| index (binary/rerank) | rebuild over N-M | remove M | speed-up | top-10 agreement with exact: "
          "rebuilt / removed |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['index']} | {r['rebuild_s']:.2f} s | {r['remove_s']:.2f} s | **{r['speedup']:.1f}x** "
              f"| {r['agree_rebuilt']:.3f} / {r['agree_removed']:.3f} |")


if __name__ == "__main__":
    main()
