#!/usr/bin/env python
"""Codes adapted to a collection (`derive --adapt-codes`) against the model's own codes, on several collections.

For each collection: every ``--every``-th image is a query, the others the database; the model is adapted to
the whole collection (its images only, no labels: what a user does with their photos), and both models encode
queries and database. Printed: Hamming mAP@all, mAP@1000 and P@10 (ties in database order) of each, and the
chance mAP. A collection of the net's own classes is where its latent codes should win; others are where the
adapted codes are for.

    python tools/adapt_study.py                      # flowers, Fashion-MNIST test, CIFAR-10 test; ~6 min on 2 cores
    python tools/adapt_study.py --data ../shared/data/flowers/test.tar --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from hashindex import DEFAULT_MODEL, load_model
from hashindex.data import load_arrays, open_source
from hashindex.derive import derive
from hashindex.metrics import evaluate_arrays

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
COLLECTIONS = (str(DATA / "flowers" / "test.tar"), f"{DATA / 'fashion-mnist'}:test",
               str(DATA / "cifar10-jpeg" / "test.tar"))


def scores(model, images: np.ndarray, labels: np.ndarray, every: int) -> dict[str, float]:
    """Hamming mAP@all, mAP@1000 and P@10 of every ``every``-th image against the others."""
    codes = model.encode(images)[0]
    is_query = np.arange(len(images)) % every == 0
    out = evaluate_arrays(codes[is_query], labels[is_query], codes[~is_query], labels[~is_query], model.bits)
    return {"map": round(out["hamming"]["map"], 4), "map@1000": round(out["hamming"]["map@1000"], 4),
            "p@10": round(out["precision_at_k"][9], 4)}


def study(data: str, model: str, every: int, limit: int | None, tmp: Path) -> dict:
    source = open_source(data)
    if limit:
        source = source.subset(limit)
    plain = load_model(model)
    images, labels, _ = load_arrays(source, plain.input_size, plain.channels, progress=False)
    adapted_path = tmp / f"adapted-{abs(hash(data))}.pt"
    derive(model, str(adapted_path), adapt_codes=data, progress=False)
    row = {"data": data, "images": len(images), "queries": int(np.ceil(len(images) / every)),
           "chance": round(float(np.mean([(labels == c).mean() for c in labels[::every]])), 4)}
    row["model"] = scores(plain, images, labels, every)
    row["adapted"] = scores(load_model(adapted_path), images, labels, every)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", help="a collection (repeatable) [default: the three above]")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None, help="images of each collection, spread over it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="adapt_study.") as tmp:
        rows = [study(d, args.model, args.every, args.limit, Path(tmp)) for d in args.data or COLLECTIONS]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("collection\timages\tchance\tmAP@all model / adapted\tmAP@1000 model / adapted\tP@10 model / adapted")
    for r in rows:
        m, a = r["model"], r["adapted"]
        print(f"{r['data']}\t{r['images']}\t{r['chance']}\t{m['map']} / {a['map']}\t{m['map@1000']} / "
              f"{a['map@1000']}\t{m['p@10']} / {a['p@10']}")


if __name__ == "__main__":
    main()
