#!/usr/bin/env python
"""Search benchmark on synthetic codes and features (1M and 10M items by default).

Data: D-dim features drawn around 1,000 cluster centres; the K-bit codes are
signs of a random projection of the features (so codes and features agree,
as a trained net's do). For each size and code length it prints, in one run:
  * raw Faiss IndexBinaryFlat search time (padded codes, k = candidate pool);
  * hashindex coarse + re-rank time for the same queries, and the ratio;
  * exhaustive float IndexFlatL2 search time (what hashing avoids);
  * recall@10 of two-stage search against the exhaustive float ranking for
    several candidate-pool sizes;
  * 48-bit codes unpadded (6 bytes) vs padded (8 bytes) flat search;
  * memory per item; single-query latency p50/p99 and batch throughput.

    python tools/bench_search.py [--sizes 1000000 10000000] [--bits 48 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from hashindex.index import pad_codes, padded_bytes
from hashindex.index import Index


def make_data(n: int, dim: int, bits: int, seed: int, chunk: int = 1_000_000):
    """(codes uint8, features float16) for n items, generated chunk by chunk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32) * 2
    proj = np.random.default_rng(seed + 1).standard_normal((dim, bits)).astype(np.float32)
    codes = np.empty((n, bits // 8), np.uint8)
    feats = np.empty((n, dim), np.float16)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        f = centres[rng.integers(0, 1000, m)] + rng.standard_normal((m, dim), dtype=np.float32)
        feats[s:s + m] = f
        codes[s:s + m] = np.packbits(f @ proj > 0, axis=1, bitorder="little")
    return codes, feats, centres, proj


def queries_like(centres, proj, nq, seed):
    rng = np.random.default_rng(seed)
    f = centres[rng.integers(0, len(centres), nq)] + rng.standard_normal((nq, centres.shape[1]), dtype=np.float32)
    return np.packbits(f @ proj > 0, axis=1, bitorder="little"), f.astype(np.float16).astype(np.float32)


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def exact_float_topk(feats16: np.ndarray, q: np.ndarray, k: int, chunk: int = 1_000_000):
    """Exhaustive L2 top-k over float16-stored features, chunked; returns (ids, seconds)."""
    t0 = time.perf_counter()
    best_d = np.full((len(q), k), np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for s in range(0, len(feats16), chunk):
        flat = faiss.IndexFlatL2(feats16.shape[1])
        flat.add(feats16[s:s + chunk].astype(np.float32))
        d, i = flat.search(q, k)
        d_all = np.concatenate([best_d, d], 1)
        i_all = np.concatenate([best_i, i + s], 1)
        order = np.argsort(d_all, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d_all, order, 1), np.take_along_axis(i_all, order, 1)
    return best_i, time.perf_counter() - t0


def bench_one(n: int, bits: int, nq: int, dim: int, pools: list[int]) -> dict:
    codes, feats, centres, proj = make_data(n, dim, bits, seed=bits)
    qc, qf = queries_like(centres, proj, nq, seed=123)
    rerank = "flat" if n <= 2_000_000 else "fp16"
    t0 = time.perf_counter()
    index = Index.in_memory(codes, feats, bits, binary="flat", rerank=rerank)
    build_s = time.perf_counter() - t0
    res: dict = {"n": n, "bits": bits, "queries": nq, "dim": dim, "rerank_store": rerank, "build_s": build_s}
    k, pool = 10, 100
    pbytes = padded_bytes(codes.shape[1])
    padded_q = pad_codes(qc, pbytes)
    res["raw_faiss_flat_s"] = timed(lambda: index.binary.search(padded_q, pool))
    res["hashindex_two_stage_s"] = timed(lambda: index.search(qc, qf, k=k, candidates=pool))
    res["ratio_two_stage_vs_raw"] = res["hashindex_two_stage_s"] / res["raw_faiss_flat_s"]
    if pbytes != codes.shape[1]:
        unpadded = faiss.IndexBinaryFlat(bits)
        unpadded.add(codes)
        res["unpadded_flat_s"] = timed(lambda: unpadded.search(qc, pool))
        res["speedup_padded_vs_unpadded"] = res["unpadded_flat_s"] / res["raw_faiss_flat_s"]
        del unpadded
    truth, float_s = exact_float_topk(feats, qf, k)
    res["float_exhaustive_s"] = float_s
    res["speedup_two_stage_vs_float"] = float_s / res["hashindex_two_stage_s"]
    res["recall_at_10"] = {}
    for m in pools:
        r = index.search(qc, qf, k=k, candidates=min(m, n))
        res["recall_at_10"][str(m)] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(r.ids, truth)]))
    mem = {"binary": pbytes, "rerank": index.rerank.sa_code_size() if rerank != "flat" else 4 * dim, "ids": 8, "labels": 4}
    res["bytes_per_item"] = mem
    res["bytes_per_item_total"] = sum(mem.values())
    lat = []
    for i in range(min(nq, 100)):
        t0 = time.perf_counter()
        index.search(qc[i:i + 1], qf[i:i + 1], k=k, candidates=pool)
        lat.append(time.perf_counter() - t0)
    res["single_query_ms_p50"] = 1000 * float(np.percentile(lat, 50))
    res["single_query_ms_p99"] = 1000 * float(np.percentile(lat, 99))
    res["batch_qps"] = nq / res["hashindex_two_stage_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--bits", type=int, nargs="+", default=[48, 64])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--pools", type=int, nargs="+", default=[100, 1000, 10_000, 100_000])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads", flush=True)
    results = []
    for n in args.sizes:
        for bits in args.bits:
            r = bench_one(n, bits, args.queries, args.dim, args.pools)
            results.append(r)
            if not args.json:
                print(f"\nN={n:,} K={bits} ({r['queries']} queries, re-rank store {r['rerank_store']})")
                print(f"  raw Faiss IndexBinaryFlat (pool 100) : {r['raw_faiss_flat_s'] * 1e3:9.1f} ms")
                print(f"  hashindex coarse + re-rank          : {r['hashindex_two_stage_s'] * 1e3:9.1f} ms"
                      f"  ratio {r['ratio_two_stage_vs_raw']:.3f}x")
                if "unpadded_flat_s" in r:
                    print(f"  unpadded {bits}-bit flat              : {r['unpadded_flat_s'] * 1e3:9.1f} ms"
                          f"  padding speed-up {r['speedup_padded_vs_unpadded']:.2f}x")
                print(f"  exhaustive float L2                 : {r['float_exhaustive_s'] * 1e3:9.1f} ms"
                      f"  two-stage is {r['speedup_two_stage_vs_float']:.1f}x faster")
                print("  recall@10 vs exhaustive float       : "
                      + ", ".join(f"M={m}: {v:.3f}" for m, v in r["recall_at_10"].items()))
                print(f"  bytes/item {r['bytes_per_item_total']} {r['bytes_per_item']}")
                print(f"  single query p50 {r['single_query_ms_p50']:.2f} ms, p99 {r['single_query_ms_p99']:.2f} ms;"
                      f" batch {r['batch_qps']:.0f} queries/s", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
