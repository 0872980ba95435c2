"""Hamming distances for evaluation: word-at-a-time (hashindex.metrics) vs byte-at-a-time, same run.

`hamming_distances` is the inner loop of `hashindex eval` (every query against the whole database). The
baseline is the byte-wise version it replaced: XOR of the uint8 codes, popcount, a sum over the bytes.

    python tools/bench_hamming.py [--queries 2000] [--database 50000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex import codes, metrics
from timing import best_of


def bytewise(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """The baseline: byte by byte, then a sum over the bytes."""
    x = np.bitwise_xor(query_codes[:, None, :], db_codes[None, :, :])
    return np.bitwise_count(x).sum(axis=2, dtype=np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--database", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for nbytes in (2, 4, 6, 8, 16):  # 16 to 128 bits
        q = rng.integers(0, 256, (64, nbytes), dtype=np.uint8)  # one evaluation chunk
        db = rng.integers(0, 256, (args.database, nbytes), dtype=np.uint8)
        assert np.array_equal(bytewise(q, db), codes.hamming_distances(q, db))
        base = best_of(lambda: bytewise(q, db), args.repeat)
        ours = best_of(lambda: codes.hamming_distances(q, db), args.repeat)
        rows.append({"what": f"64 x {args.database:,} distances, {nbytes * 8} bits",
                     "bytewise_ms": base * 1e3, "words_ms": ours * 1e3, "speedup": base / ours})
    # the whole evaluation (Hamming ranking metrics, no re-rank) of 48-bit codes in 10 classes
    labels = rng.integers(0, 10, args.database)
    centres = rng.integers(0, 256, (10, 6), dtype=np.uint8)
    db = centres[labels] ^ (rng.integers(0, 256, (args.database, 6), dtype=np.uint8)
                            & rng.integers(0, 256, (args.database, 6), dtype=np.uint8)
                            & rng.integers(0, 256, (args.database, 6), dtype=np.uint8))
    qi = rng.choice(args.database, args.queries, replace=False)
    run = lambda: metrics.evaluate_arrays(db[qi], labels[qi], db, labels, 48)  # noqa: E731
    run()  # warm-up: the first call imports tqdm and touches the arrays (was counted in 'words' with --repeat 1)
    ours = best_of(run, max(1, args.repeat // 2))
    words = metrics.hamming_distances  # the name evaluate_arrays calls, swapped for the baseline
    metrics.hamming_distances = bytewise
    try:
        base = best_of(run, max(1, args.repeat // 2))
    finally:
        metrics.hamming_distances = words
    rows.append({"what": f"evaluate_arrays, {args.queries:,} x {args.database:,}, 48 bits",
                 "bytewise_ms": base * 1e3, "words_ms": ours * 1e3, "speedup": base / ours})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| what | byte-wise | word-wise | speed-up |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['what']} | {r['bytewise_ms']:,.1f} ms | {r['words_ms']:,.1f} ms | **{r['speedup']:.1f}x** |")


if __name__ == "__main__":
    main()
