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
import math
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
    n_old = sum(s["rows"] for s in a["shards"])
    items = n_old + sum(s["rows"] for s in b["shards"])
    manifest = {**a, "shards": [], "source": {**a["source"], "fingerprint": "union", "items": items}}
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


CONFIGS = [{"binary": "flat", "rerank": "flat", "shards": 1}, {"binary": "flat", "rerank": "none", "shards": 1},
           {"binary": "flat", "rerank": "flat", "shards": 4}, {"binary": "ivf", "rerank": "fp16", "shards": 1}]
QUIET = {"progress": False, "log": lambda s: None}


def against_rebuild(t: Path, queries: tuple[np.ndarray, np.ndarray], rebuild_from: Path, start_from: Path,
                    change, verb: str, repeat: int) -> list[dict]:
    """Per index configuration (`CONFIGS`): the best of ``repeat`` timings of a build over ``rebuild_from`` (the
    baseline) and of ``change(index_dir)`` on an index built over ``start_from`` (not timed), and each result's
    top-10 agreement with an exact flat index over ``rebuild_from``. Row keys: rebuild_s, {verb}_s, speedup,
    agree_rebuilt, agree_changed."""
    build(rebuild_from, t / "exact", binary="flat", rerank="flat", **QUIET)
    exact = {rr: top10(Index.load(t / "exact"), queries, rr) for rr in (True, False)}
    rows = []
    for c in CONFIGS:
        name = f"{c['binary']}/{c['rerank']}" + (f", {c['shards']} shards" if c["shards"] > 1 else "")
        ref = exact[c["rerank"] != "none"]  # the flat index, re-ranked or (rerank none) Hamming only
        rebuild_s = change_s = float("inf")
        for _ in range(repeat):  # best of: the page cache and other jobs make single runs noisy
            t0 = time.perf_counter()
            build(rebuild_from, t / "rebuilt", overwrite=True, **c, **QUIET)
            rebuild_s = min(rebuild_s, time.perf_counter() - t0)
            build(start_from, t / "changed", overwrite=True, **c, **QUIET)
            t0 = time.perf_counter()
            change(t / "changed")
            change_s = min(change_s, time.perf_counter() - t0)
        rows.append({"index": name, "rebuild_s": round(rebuild_s, 3), f"{verb}_s": round(change_s, 3),
                     "speedup": round(rebuild_s / change_s, 2),
                     "agree_rebuilt": overlap(top10(Index.load(t / "rebuilt"), queries), ref),
                     "agree_changed": overlap(top10(Index.load(t / "changed"), queries), ref)})
    return rows


def print_rows(rows: list[dict], verb: str, columns: tuple[str, str, str]) -> None:
    """The rows as docs/RESULTS.md's table; ``columns``: the baseline's, the change's and the agreement's."""
    print(f"| index (binary/rerank) | {columns[0]} | {columns[1]} | speed-up | top-10 agreement with exact: "
          f"{columns[2]} |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['index']} | {r['rebuild_s']:.2f} s | {r[verb + '_s']:.2f} s | **{r['speedup']:.1f}x** "
              f"| {r['agree_rebuilt']:.3f} / {r['agree_changed']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="items already indexed")
    ap.add_argument("--m", type=int, default=10_000, help="new items appended")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs per configuration")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_append.") as tmp:
        t = Path(tmp)
        codes, feats, centres, proj = make_data(args.n + args.m, DIM, BITS, seed=0)
        queries = queries_like(centres, proj, 200, seed=7)
        rows = math.gcd(args.n, 250_000)  # the union's shards must lie on the old collection's shard grid
        write_collection(t / "old", codes[:args.n], feats[:args.n], 0, rows, seed=0)
        write_collection(t / "new", codes[args.n:], feats[args.n:], args.n, rows, seed=1)
        del codes, feats
        union(t / "old", t / "new", t / "both")
        rows = against_rebuild(t, queries, t / "both", t / "old", lambda out: append(t / "new", out, **QUIET),
                               "append", args.repeat)
    if args.json:
        print(json.dumps({"n": args.n, "m": args.m, "rows": rows}, indent=2))
        return
    print(f"N = {args.n:,} indexed, M = {args.m:,} appended, K = {BITS}, D = {DIM}")
    print_rows(rows, "append", ("rebuild over N+M", "append M", "rebuilt / appended"))


if __name__ == "__main__":
    main()
