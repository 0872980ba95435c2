"""Growing an index: `build --append` of new rows vs rebuilding over old + new, in the same run.

Synthetic shard directories (clustered fp16 192-d features and 48-bit codes that agree with them, as
in bench_search.py) stand in for an extracted collection of N items and a new batch of M items from
the same distribution, with ids after them. For each index
configuration the script times

  * baseline: `build` over one shard directory holding both collections (what a user would do
    without --append), and
  * `append`: `build` over the old collection (not timed), then `append` of the new one,

prints the ratio, and the share of the top 10 (200 queries, pool 100) each index has in common with
the exact flat index over N+M: 1.0 for the flat indexes; for IVF it shows whether adding rows to
the lists of a quantizer trained without them loses recall against retraining.

    python tools/bench_append.py                       # N = 1,000,000, M = 10,000
    python tools/bench_append.py --n 200000 --m 2000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hashindex.index import append, build
from hashindex.index import Index
from hashindex.store import save_manifest, shard_name, write_arrays

from bench_search import make_data, queries_like  # tools/ is on sys.path when run as a script

BITS, DIM = 48, 192


def write_collection(out: Path, codes: np.ndarray, feats: np.ndarray, first_id: int, shard_rows: int,
                     seed: int) -> None:
    """A complete shard directory of the given rows, with ids first_id, first_id + 1, ..."""
    write_arrays(out, codes, feats, ids=np.arange(first_id, first_id + len(codes)), model_id="synthetic",
                 shard_rows=shard_rows, description=f"synthetic seed {seed}")


def union(old: Path, new: Path, out: Path) -> None:
    """One shard directory holding old's shards then new's (hard links, renumbered)."""
    from hashindex.files import read_json

    out.mkdir()
    a, b = read_json(old / "manifest.json"), read_json(new / "manifest.json")
    manifest = {**a, "shards": [], "source": {**a["source"], "fingerprint": "union"}}
    n_old = sum(s["rows"] for s in a["shards"])
    for src, entries, shift in ((old, a["shards"], 0), (new, b["shards"], n_old)):
        for s in entries:
            j = len(manifest["shards"])
            os.link(src / s["file"], out / shard_name(j))
            manifest["shards"].append({**s, "index": j, "file": shard_name(j),
                                       "start": s["start"] + shift, "stop": s["stop"] + shift})
    manifest["shards_planned"] = len(manifest["shards"])
    save_manifest(out, manifest)


def top10(index: Index, queries: tuple[np.ndarray, np.ndarray], rerank: bool = True) -> np.ndarray:
    return index.search(queries[0], queries[1], k=10, candidates=100, rerank=rerank).ids


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of top-10 ids two answers have in common."""
    return float(np.mean([len(np.intersect1d(x, y)) / 10 for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="items already indexed")
    ap.add_argument("--m", type=int, default=10_000, help="new items appended")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs per configuration")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quiet = {"progress": False, "log": lambda s: None}
    configs = [{"binary": "flat", "rerank": "flat", "shards": 1}, {"binary": "flat", "rerank": "none", "shards": 1},
               {"binary": "flat", "rerank": "flat", "shards": 4}, {"binary": "ivf", "rerank": "fp16", "shards": 1}]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_append.") as tmp:
        t = Path(tmp)
        codes, feats, centres, proj = make_data(args.n + args.m, DIM, BITS, seed=0)
        queries = queries_like(centres, proj, 200, seed=7)
        write_collection(t / "old", codes[:args.n], feats[:args.n], 0, 250_000, seed=0)
        write_collection(t / "new", codes[args.n:], feats[args.n:], args.n, 250_000, seed=1)
        del codes, feats
        union(t / "old", t / "new", t / "both")
        build(t / "both", t / "exact", binary="flat", rerank="flat", **quiet)
        exact = {rr: top10(Index.load(t / "exact"), queries, rr) for rr in (True, False)}
        for c in configs:
            name = f"{c['binary']}/{c['rerank']}" + (f", {c['shards']} shards" if c["shards"] > 1 else "")
            ref = exact[c["rerank"] != "none"]  # the flat index, re-ranked or (rerank none) Hamming only
            rebuild_s = append_s = float("inf")
            for _ in range(args.repeat):  # best of: the page cache and other jobs make single runs noisy
                t0 = time.perf_counter()
                build(t / "both", t / "rebuilt", overwrite=True, **c, **quiet)
                rebuild_s = min(rebuild_s, time.perf_counter() - t0)
                build(t / "old", t / "grown", overwrite=True, **c, **quiet)
                t0 = time.perf_counter()
                append(t / "new", t / "grown", **quiet)
                append_s = min(append_s, time.perf_counter() - t0)
            rows.append({"index": name, "rebuild_s": round(rebuild_s, 3), "append_s": round(append_s, 3),
                         "speedup": round(rebuild_s / append_s, 2),
                         "agree_rebuilt": overlap(top10(Index.load(t / "rebuilt"), queries), ref),
                         "agree_appended": overlap(top10(Index.load(t / "grown"), queries), ref)})
    if args.json:
        print(json.dumps({"n": args.n, "m": args.m, "rows": rows}, indent=2))
        return
    print(f"N = {args.n:,} indexed, M = {args.m:,} appended, K = {BITS}, D = {DIM}")
    print("| index (binary/rerank) | rebuild over N+M | append M | speed-up | top-10 agreement with exact: "
          "rebuilt / appended |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['index']} | {r['rebuild_s']:.2f} s | {r['append_s']:.2f} s | **{r['speedup']:.1f}x** "
              f"| {r['agree_rebuilt']:.3f} / {r['agree_appended']:.3f} |")


if __name__ == "__main__":
    main()
