"""The two plans of `hamming_range.range_pairs` (what `hashindex duplicates` searches with): the flat Faiss
range search (the baseline) against the pigeonhole's chunks, in the same run, on the same hashes.

Random 64-bit hashes with near copies (every 50th a copy of its neighbour with 1-3 bits flipped), n of them,
each also with K random crop hashes (`duplicates --crops centre` has 3), all pairs within the radius of each
whole hash among the whole and crop hashes, as `unique_neighbours` runs it; with ``--data``, the same on the
real perceptual hashes of those collections (whole, and with their `centre` boxes). Both plans must give the
same pairs (checked). Past ``--flat-rows`` queries the flat search is timed on that many and scaled to n (its
time is linear in the queries); the chunks always run whole, in the plan (chunks, flips) the cost model finds
cheapest (``--chunks``: that many), and the model's estimates are printed beside the times measured.

    python tools/bench_hamming_range.py --n 200000 1000000 --boxes 0 3 --json
    python tools/bench_hamming_range.py --n 1000000 --boxes 3 --chunks 9     # 9 chunks, no flips
    python tools/bench_hamming_range.py --n 200000 --data ../shared/data/cifar10-jpeg/train.tar \
        ../shared/data/cifar10-jpeg/test.tar
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hashindex.hamming_range import PAIR_S, chunk_plans, plan_costs, range_pairs


def random_hashes(n: int, boxes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    hashes[1::50] = hashes[::50][:len(hashes[1::50])]
    hashes[1::50, 0] ^= rng.integers(1, 8, len(hashes[1::50]), dtype=np.uint8)  # 1 to 3 bits flipped
    return hashes, rng.integers(0, 256, (n * boxes, 8), dtype=np.uint8)


def compare(name: str, hashes: np.ndarray, crops: np.ndarray, radius: int, flat_rows: int,
            chunks: int | None) -> dict:
    """Seconds of each plan over the same queries and items, their ratio, and the chunks' plan (the cheapest
    by the cost model, or ``chunks`` of them) with the model's estimates of it and of the flat search."""
    items = np.concatenate([hashes, crops])
    n, total = len(hashes), len(hashes) * len(items)
    plans = [p for p in chunk_plans(64, radius, every=chunks is not None) if chunks in (None, p[0])]
    costs = plan_costs(hashes, items, plans)
    plan = min(costs, key=costs.get)
    t0 = time.perf_counter()
    cq, ci = range_pairs(hashes, items, radius, "chunks", chunks=plan[0])
    chunks_s = time.perf_counter() - t0
    rows = min(n, flat_rows)
    t0 = time.perf_counter()
    fq, fi = range_pairs(hashes[:rows], items, radius, "flat")
    flat_s = (time.perf_counter() - t0) * n / rows
    head = np.searchsorted(cq, rows)
    assert np.array_equal(fq, cq[:head]) and np.array_equal(fi, ci[:head]), "the plans differ"
    return {"hashes": name, "n": n, "items": len(items), "radius": radius, "pairs_found": len(cq),
            "plan": {"chunks": plan[0], "flips": plan[1]}, "estimated_s": round(costs[plan], 2),
            "flat_estimated_s": round(total * PAIR_S, 2), "flat_s": round(flat_s, 2), "flat_rows": rows,
            "chunks_s": round(chunks_s, 2), "speedup": round(flat_s / chunks_s, 2)}


def real_hashes(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The perceptual hashes of the collections and their `centre` boxes' (3 an image), distinct whole hashes."""
    from hashindex.data import open_source
    from hashindex.duplicates import hash_sources

    hashed = hash_sources([open_source(p) for p in paths], paths, progress=False, crops="centre")
    _, first = np.unique(hashed.hashes, axis=0, return_index=True)
    return hashed.hashes[first], hashed.crop_hashes[first].reshape(-1, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[200_000], help="random hashes (each size a row)")
    ap.add_argument("--boxes", type=int, nargs="+", default=[0, 3], help="crop hashes per random hash")
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--flat-rows", type=int, default=50_000, help="queries the flat search is timed on")
    ap.add_argument("--chunks", type=int, default=None, help="this many chunks (the fewest flips they need) "
                    "instead of the cost model's cheapest plan")
    ap.add_argument("--data", nargs="*", default=[], help="also these collections' real hashes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    range_pairs(*random_hashes(1000, 0), args.radius, "chunks")  # imports Faiss, starts its threads: not timed
    rows = [compare("random", *random_hashes(n, k), args.radius, args.flat_rows, args.chunks) | {"boxes": k}
            for n in args.n for k in args.boxes]
    if args.data:
        hashes, crops = real_hashes(args.data)
        rows += [compare(" + ".join(args.data), hashes, c, args.radius, args.flat_rows, args.chunks) | {"boxes": k}
                 for c, k in ((crops[:0], 0), (crops, 3))]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("hashes\tn\tboxes\tpairs found\tplan (chunks x flips)\tflat s (model)\tchunks s (model)\tspeed-up")
    for r in rows:
        star = "*" if r["flat_rows"] < r["n"] else ""
        print(f"{r['hashes']}\t{r['n']:,}\t{r['boxes']}\t{r['pairs_found']:,}\t{r['plan']['chunks']} x "
              f"{r['plan']['flips']}\t{r['flat_s']}{star} ({r['flat_estimated_s']})\t{r['chunks_s']} "
              f"({r['estimated_s']})\t{r['speedup']}x")
    print(f"(* flat timed on the first {args.flat_rows:,} queries, scaled to n)")


if __name__ == "__main__":
    main()
