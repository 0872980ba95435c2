#!/usr/bin/env python
"""How far apart are two encodings of the same collection? (e.g. bf16 vs float32 extraction)

Reads two complete shard directories of the same source (same ids in the same order) and reports, item by
item: the share of code bits that differ, the share of items whose code differs at all, the Hamming
distance between an item's two codes (histogram), and the relative L2 difference of the float features.
The question it answers: do codes extracted on a CPU with the bf16 default equal those of a float32 run
(a GPU without bf16, or `--no-bf16`) closely enough to mix them in one index?

    hashindex extract --model nin-cifar10-48 --data test.tar --out shards/bf16
    hashindex extract --model nin-cifar10-48 --data test.tar --out shards/fp32 --no-bf16
    python tools/compare_shards.py shards/bf16 shards/fp32 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from hashindex.errors import HashindexError
from hashindex.model import unpack_codes
from hashindex.store import ShardSet


def compare_encodings(codes_a: np.ndarray, codes_b: np.ndarray, bits: int,
                      feats_a: np.ndarray | None = None, feats_b: np.ndarray | None = None) -> dict:
    """Per-item differences between two packed-code arrays (and feature arrays) of the same items."""
    diff = unpack_codes(np.bitwise_xor(codes_a, codes_b), bits).astype(np.int64)
    per_item = diff.sum(axis=1)
    out = {"items": int(len(codes_a)), "bits": bits,
           "bits_differing": float(diff.mean()),
           "items_with_a_different_code": float((per_item > 0).mean()),
           "hamming_between_encodings": {int(d): int(n) for d, n in zip(*np.unique(per_item, return_counts=True))},
           "max_hamming": int(per_item.max(initial=0))}
    if feats_a is not None and feats_b is not None:
        a, b = feats_a.astype(np.float64), feats_b.astype(np.float64)
        rel = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)
        out["feature_relative_l2"] = {"mean": float(rel.mean()), "max": float(rel.max(initial=0))}
    return out


def load_pair(dir_a: str, dir_b: str) -> tuple[dict, dict, int]:
    """Both shard directories' arrays, after checking they encode the same items with the same model."""
    a, b = ShardSet(dir_a, "SHARDS_A"), ShardSet(dir_b, "SHARDS_B")
    if a.model_id != b.model_id:
        raise HashindexError(f"SHARDS_B {dir_b}: made by model {b.model_id}, SHARDS_A by {a.model_id}; "
                             "expected two encodings by one model")
    fields = ("codes", "features", "ids")
    da, db = a.load(fields), b.load(fields)
    if not np.array_equal(da["ids"], db["ids"]):
        raise HashindexError(f"SHARDS_B {dir_b}: holds other items than SHARDS_A {dir_a} "
                             "(expected the same ids in the same order)")
    return da, db, a.bits


def markdown(r: dict, name_a: str, name_b: str) -> str:
    lines = [f"{name_a} vs {name_b}: {r['items']:,} items, {r['bits']} bits",
             f"bits differing: {r['bits_differing']:.6f}; items whose code differs: "
             f"{r['items_with_a_different_code']:.4f}; largest Hamming distance between the two codes of an item: "
             f"{r['max_hamming']}",
             "Hamming distance between an item's two codes: "
             + ", ".join(f"{d}: {n:,}" for d, n in r["hamming_between_encodings"].items())]
    if "feature_relative_l2" in r:
        f = r["feature_relative_l2"]
        lines.append(f"feature relative L2 difference: mean {f['mean']:.2e}, max {f['max']:.2e}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards_a")
    ap.add_argument("shards_b")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        da, db, bits = load_pair(args.shards_a, args.shards_b)
    except HashindexError as e:
        sys.exit(f"compare_shards.py: error: {e}")
    feats = (da["features"], db["features"]) if da.get("features") is not None and db.get("features") is not None else (None, None)
    r = compare_encodings(da["codes"], db["codes"], bits, *feats)
    r.update(shards_a=args.shards_a, shards_b=args.shards_b)
    print(json.dumps(r, indent=2) if args.json else markdown(r, args.shards_a, args.shards_b))


if __name__ == "__main__":
    main()
