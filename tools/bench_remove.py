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
from pathlib import Path

import numpy as np

from hashindex.index import remove
from hashindex.store import write_arrays

from bench_append import BITS, DIM, QUIET, against_rebuild, print_rows, write_collection  # tools/ is on sys.path
from bench_search import make_data, queries_like


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="items indexed")
    ap.add_argument("--m", type=int, default=10_000, help="items removed (scattered)")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs per configuration")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
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
        rows = against_rebuild(t, queries, t / "kept", t / "all", lambda out: remove(out, ids=gone, **QUIET),
                               "remove", args.repeat)
    if args.json:
        print(json.dumps({"n": args.n, "m": args.m, "rows": rows}, indent=2))
        return
    print(f"N = {args.n:,} indexed, M = {args.m:,} removed (scattered), K = {BITS}, D = {DIM}")
    print_rows(rows, "remove", ("rebuild over N-M", "remove M", "rebuilt / removed"))


if __name__ == "__main__":
    main()
