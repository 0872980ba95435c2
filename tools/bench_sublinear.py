#!/usr/bin/env python
"""Sublinear coarse search against the flat Hamming scan, at 10M and 100M codes (issue #18, item 1).

Codes: C = N / cluster_size random 48-bit centres; each item is a centre with each bit flipped with
probability 2^-flip_and (the AND of flip_and random bytes), the structure of a trained net's codes
(items of a class sit a few bits from its centre). Queries are drawn the same way, not from the database.
`--real DB_SHARDS QUERY_SHARDS` also scores the same settings on the codes of a real extraction.

For each N and setting it records, one JSON line per (index, search parameter) in --out:
  * recall@10 and recall@100 against exact Hamming search, counting ties: a result counts when its
    distance is at most the exact k-th distance (with whole classes sharing a code, which of the tied
    items comes back is arbitrary);
  * single-query latency on one thread (p50, p99, mean over --timed queries, one search call each) and the
    flat scan's, measured in the same run: the speed-up is their ratio;
  * build time, serialized size and resident memory added by the index.
Built indexes are kept under --cache, finished rows are skipped: rerun the same command to resume.

    python tools/bench_sublinear.py --sizes 10000000 100000000
    python tools/bench_sublinear.py --table [--at-recall 0.95]   # the tables of docs/RESULTS.md
    python tools/bench_sublinear.py --sizes 10000000 --write-shards DIR   # then: hashindex build DIR ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from hashindex.index.kinds import auto_nlist

PAD_BYTES = 8  # 48-bit codes padded to 8 bytes, as hashindex stores them (4-5x faster flat scans)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_codes(n: int, bits: int, n_centres: int, flip_and: int, seed: int, centres_seed: int = 0,
               chunk: int = 2_000_000) -> np.ndarray:
    """n padded codes around n_centres centres (the same centres for every ``seed``)."""
    nbytes = bits // 8
    centres = np.random.default_rng(centres_seed).integers(0, 256, (n_centres, nbytes), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    out = np.zeros((n, PAD_BYTES), np.uint8)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        flips = rng.integers(0, 256, (m, nbytes), dtype=np.uint8)
        for _ in range(flip_and - 1):
            flips &= rng.integers(0, 256, (m, nbytes), dtype=np.uint8)
        out[s:s + m, :nbytes] = centres[rng.integers(0, n_centres, m)] ^ flips
    return out


def cached(path: Path, make):
    if path.exists():
        return np.load(path, mmap_mode="r")
    arr = make()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    return arr


def exact(codes: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact Hamming distances of each query's k nearest codes (flat scan, all threads)."""
    index = faiss.IndexBinaryFlat(PAD_BYTES * 8)
    index.add(np.ascontiguousarray(codes))
    d, _ = index.search(queries, k)
    return d


def recall(d_exact: np.ndarray, d_got: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of the k results within the exact k-th distance (ties count as found)."""
    kth = d_exact[:, k - 1:k]
    ok = (d_got[:, :k] <= kth) & (labels[:, :k] >= 0)
    return float(ok.sum() / (len(d_exact) * k))


def time_single(index, queries: np.ndarray, k: int) -> dict:
    """Latency of one-query searches on one thread (ms)."""
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:2], k)  # warm up (page cache, lazy allocations)
        times = []
        for q in queries:
            t0 = time.perf_counter()
            index.search(q[None], k)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
    t = np.array(times)
    return {"p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean())}


def settings(n: int, kinds: list[str], hnsw_max: int) -> list[tuple[str, dict, str, list]]:
    """(kind, build parameters, the search parameter swept, its values)."""
    out = []
    if "ivf" in kinds:
        for nlist in sorted({auto_nlist(n)} | ({1024, 4096, 16384} if n < 50_000_000 else {4096, 16384})):
            if nlist * 39 <= n:
                out.append(("ivf", {"nlist": nlist}, "nprobe", [p for p in (1, 2, 4, 8, 16, 32, 64, 128)
                                                                if p <= nlist]))
    if "multihash" in kinds:
        for nhash, b in ((3, 16), (2, 24)):
            out.append(("multihash", {"nhash": nhash, "b": b}, "nflip", [0, 1, 2, 3]))
    if "hnsw" in kinds and n <= hnsw_max:
        out.append(("hnsw", {"M": 16, "efConstruction": 40}, "efSearch", [16, 32, 64, 128, 256]))
    return out


def build_index(kind: str, params: dict, codes: np.ndarray, seed: int):
    dim = PAD_BYTES * 8
    if kind == "ivf":
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dim), dim, params["nlist"])
        index.cp.seed = seed
        index.cp.max_points_per_centroid = 64  # k-means sample: 64 per list (faiss warns under 39)
        rng = np.random.default_rng(seed)
        sample = codes[np.sort(rng.choice(len(codes), min(len(codes), 64 * params["nlist"]), replace=False))]
        index.train(np.ascontiguousarray(sample))
    elif kind == "multihash":
        index = faiss.IndexBinaryMultiHash(dim, params["nhash"], params["b"])
    elif kind == "hnsw":
        index = faiss.IndexBinaryHNSW(dim, params["M"])
        index.hnsw.efConstruction = params["efConstruction"]
    else:
        index = faiss.IndexBinaryFlat(dim)
        index.use_heap = False
    step = 5_000_000
    for s in range(0, len(codes), step):
        index.add(np.ascontiguousarray(codes[s:s + step]))
    return index


def set_param(index, name: str, value: int) -> None:
    if name == "efSearch":
        index.hnsw.efSearch = value
    else:
        setattr(index, name, value)


def done_keys(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(line)["key"] for line in out.read_text().splitlines() if line.strip()}


def slower_than_flat(out: Path, name: str, base: str) -> bool:
    """Whether a setting of ``base`` already searched slower than the flat scan of ``name``."""
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    flat = next((r["mean_ms"] for r in rows if r["key"] == f"{name}/flat"), None)
    return flat is not None and any(r["key"].startswith(base + "/") and r["mean_ms"] > flat for r in rows)


def run_collection(name: str, codes: np.ndarray, queries: np.ndarray, args, out: Path, cache: Path,
                   extra: dict) -> None:
    """Every setting on one database / query set; appends rows to ``out``."""
    done = done_keys(out)
    k = args.k
    gt = cached(cache / f"{name}-exact{k}.npy", lambda: exact(codes, queries, k))
    timed_q = np.ascontiguousarray(queries[:args.timed])
    n = len(codes)

    def emit(row: dict) -> None:
        row = {"collection": name, "n": n, "bits": args.bits, "queries": len(queries), "timed": len(timed_q),
               **extra, **row}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['key']}: recall@10 {row['recall@10']:.3f} recall@100 {row['recall@100']:.3f} "
              f"mean {row['mean_ms']:.3f} ms", flush=True)

    key = f"{name}/flat"
    if key not in done:
        t0 = time.perf_counter()
        before = rss_bytes()
        flat = build_index("flat", {}, codes, args.seed)
        build_s = time.perf_counter() - t0
        mem = rss_bytes() - before
        emit({"key": key, "kind": "flat", "build": {}, "build_s": build_s, "rss_bytes": mem,
              "recall@10": 1.0, "recall@100": 1.0, **time_single(flat, timed_q, k)})
        del flat
    for kind, params, pname, values in settings(n, args.kinds, args.hnsw_max):
        base = f"{name}/{kind}/" + ",".join(f"{a}={b}" for a, b in params.items())
        todo = [v for v in values if f"{base}/{pname}={v}" not in done]
        if not todo:
            continue
        path = cache / f"{base.replace('/', '_')}.faiss"
        before = rss_bytes()
        t0 = time.perf_counter()
        if path.exists():
            index, build_s = faiss.read_index_binary(str(path)), json.loads(path.with_suffix(".json").read_text())
        else:
            index = build_index(kind, params, codes, args.seed)
            build_s = time.perf_counter() - t0
            faiss.write_index_binary(index, str(path) + ".tmp")
            os.replace(str(path) + ".tmp", path)
            path.with_suffix(".json").write_text(json.dumps(build_s))
        mem = rss_bytes() - before
        for v in todo:
            if slower_than_flat(out, name, base):
                break  # a larger value only searches more: past the flat scan's time it is pointless
            set_param(index, pname, v)
            d, labels = index.search(queries, k)
            emit({"key": f"{base}/{pname}={v}", "kind": kind, "build": params, "search": {pname: v},
                  "build_s": build_s, "file_bytes": path.stat().st_size, "rss_bytes": mem,
                  "recall@10": recall(gt, d, labels, 10), "recall@100": recall(gt, d, labels, k),
                  **time_single(index, timed_q, k)})
        del index


def pool_costs(args, out: Path, cache: Path) -> None:
    """Single-query time of the auto-chosen IVF index (nlist = auto_nlist(N), the first nprobe reaching
    recall@10 0.95) at the pool sizes the fine stage asks for, with Faiss's heap and with counting."""
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for n in args.sizes:
        tag = f"synthetic-c{args.cluster}-f{args.flip_and}-{n}"
        base = f"{tag}/ivf/nlist={auto_nlist(n)}"
        nprobe = next(r["search"]["nprobe"] for r in rows if r["key"].startswith(base + "/") and r["recall@10"] >= 0.95)
        index = faiss.read_index_binary(str(cache / f"{base.replace('/', '_')}.faiss"))
        index.nprobe, index.max_codes = nprobe, 1 << 62  # max_codes: faiss #5555 (see faiss_files.fast_topk)
        queries = make_codes(args.timed, args.bits, max(1, n // args.cluster), args.flip_and, args.seed + 1)
        print(f"{base} nprobe={nprobe}: single-query ms, one thread (p50)")
        print("| k | heap | counting | heap / counting |\n| --- | --- | --- | --- |")
        for k in (10, 100, 1000, 17454):
            t = {}
            for heap in (True, False):
                index.use_heap = heap
                t[heap] = time_single(index, queries, k)["p50_ms"]
            print(f"| {k:,} | {t[True]:.3f} | {t[False]:.3f} | {t[True] / t[False]:.1f}x |")


def write_shards(args, cache: Path, out: Path, query_out: Path | None) -> None:
    """The synthetic collection of the first size as a hashindex shard directory (codes only), and its
    --queries fresh queries as another (the ones every other mode draws) when ``query_out`` is given."""
    from hashindex.store import write_arrays

    n = args.sizes[0]
    tag = f"synthetic-c{args.cluster}-f{args.flip_and}"
    codes = cached(cache / f"{tag}-{n}.npy",
                   lambda: make_codes(n, args.bits, max(1, n // args.cluster), args.flip_and, args.seed))
    write_arrays(out, np.ascontiguousarray(codes[:, :args.bits // 8]), bits=args.bits, shard_rows=1_000_000,
                 description=f"{tag}-{n}")
    if query_out is not None:
        queries = make_codes(args.queries, args.bits, max(1, n // args.cluster), args.flip_and, args.seed + 1)
        write_arrays(query_out, np.ascontiguousarray(queries[:, :args.bits // 8]), bits=args.bits,
                     description=f"{tag}-{n} queries")


def real_codes(shard_dir: str) -> np.ndarray:
    from hashindex.index import pad_codes
    from hashindex.store import ShardSet

    return pad_codes(ShardSet(shard_dir).load(("codes",))["codes"], PAD_BYTES)


@contextmanager
def paused(pid: int | None):
    """SIGSTOP ``pid`` (a background job sharing the cores) for the duration; SIGCONT it whatever happens."""
    if pid:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)


def table(out: Path, at_recall: float | None = None) -> None:
    """The markdown table of every row, or with ``at_recall`` each index's first setting that reaches it."""
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    if at_recall is not None:
        first: dict[str, dict] = {}
        for r in rows:
            build_key = r["key"].rsplit("/", 1)[0] if "search" in r else r["key"]
            if r["recall@10"] >= at_recall and build_key not in first:
                first[build_key] = r
        rows = [r for r in rows if r in first.values()]
    flat = {(r["collection"], r["n"]): r for r in rows if r["kind"] == "flat"}
    print("| collection | N | index | search | recall@10 | recall@100 | p50 ms | p99 ms | speed-up p50 / mean "
          "| build s | MB | bytes/item |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        f = flat.get((r["collection"], r["n"]))
        speed = f"{f['p50_ms'] / r['p50_ms']:.0f}x / {f['mean_ms'] / r['mean_ms']:.0f}x" if f else ""
        size = r.get("file_bytes", r.get("rss_bytes", 0))
        params = ",".join(f"{a}={b}" for a, b in r["build"].items())
        search = ",".join(f"{a}={b}" for a, b in r.get("search", {}).items())
        print(f"| {r['collection']} | {r['n']:,} | {r['kind']} {params} | {search} | {r['recall@10']:.3f} "
              f"| {r['recall@100']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {speed} | {r['build_s']:.1f} "
              f"| {size / 1e6:,.0f} | {size / r['n']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000_000, 100_000_000])
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--cluster", type=int, default=1000, help="items per centre on average")
    ap.add_argument("--flip-and", type=int, default=4, help="bit flip probability 2^-this")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--timed", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--kinds", nargs="+", default=["ivf", "multihash", "hnsw"])
    ap.add_argument("--hnsw-max", type=int, default=10_000_000, help="largest N to build HNSW at")
    ap.add_argument("--real", nargs=2, metavar=("DB_SHARDS", "QUERY_SHARDS"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="runs/sublinear")
    ap.add_argument("--out", default="runs/sublinear/results.jsonl")
    ap.add_argument("--write-shards", nargs="+", metavar="DIR",
                    help="write the first --sizes collection as a shard directory (for hashindex build), and with "
                         "a second DIR its fresh queries, and stop")
    ap.add_argument("--pools", action="store_true", help="time the auto IVF index at the fine stage's pool sizes")
    ap.add_argument("--pause-pid", type=int, help="a process to stop while this runs (clean timings)")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--at-recall", type=float, help="with --table: each index's first setting reaching it")
    args = ap.parse_args()
    out, cache = Path(args.out), Path(args.cache)
    if args.table:
        return table(out, args.at_recall)
    cache.mkdir(parents=True, exist_ok=True)
    if args.write_shards:
        dirs = [Path(d) for d in args.write_shards]
        return write_shards(args, cache, dirs[0], dirs[1] if len(dirs) > 1 else None)
    with paused(args.pause_pid):
        pool_costs(args, out, cache) if args.pools else run_all(args, out, cache)


def run_all(args, out: Path, cache: Path) -> None:
    if args.real:
        db, q = real_codes(args.real[0]), real_codes(args.real[1])
        run_collection(Path(args.real[0]).name, db, q, args, out, cache, {"data": args.real[0]})
    for n in args.sizes:
        tag = f"synthetic-c{args.cluster}-f{args.flip_and}"
        n_centres = max(1, n // args.cluster)
        codes = cached(cache / f"{tag}-{n}.npy",
                       lambda: make_codes(n, args.bits, n_centres, args.flip_and, args.seed))
        queries = make_codes(args.queries, args.bits, n_centres, args.flip_and, args.seed + 1)
        run_collection(f"{tag}-{n}", codes, queries, args, out, cache,
                       {"data": "synthetic", "cluster": args.cluster, "flip_p": 2.0 ** -args.flip_and})


if __name__ == "__main__":
    main()
