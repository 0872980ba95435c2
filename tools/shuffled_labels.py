#!/usr/bin/env python
"""`build --signal auto` on a collection whose labels say nothing of its images: each shard directory given is
copied with its labels shuffled (the images, codes and features unchanged: a photo library in folders by
date), and both are built; prints what auto chose on each, from its mAP@all against a random order's
(docs/RESULTS.md, "Labels that say nothing of the images").

    python tools/shuffled_labels.py runs/mid/c10-db runs/mid/fl0-db --out runs/shuffled
    python tools/shuffled_labels.py runs/mid/flft-db --model runs/mid/flowers-ft.pt --out runs/shuffled
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from hashindex.checkpoint import checkpoint_head, read_checkpoint
from hashindex.index import build
from hashindex.store import ShardSet, write_arrays, write_head


def shuffled_copy(shard_dir: str, out: Path, seed: int, heads: dict | None = None) -> Path:
    """The shard directory's rows with their labels permuted, as a new shard directory with the model's head
    (from ``heads`` by model id where given: a head file written before heads recorded the accuracy)."""
    shards = ShardSet(shard_dir)
    fields = ("codes", "features", "ids", "labels", "paths") + (("mid_features",) if shards.has_mid else ())
    rows = shards.load(fields)
    labels = np.random.default_rng(seed).permutation(rows["labels"])
    if out.exists():
        shutil.rmtree(out)
    write_arrays(out, rows["codes"], rows["features"], ids=rows["ids"], labels=labels, paths=rows["paths"],
                 bits=shards.bits, class_names=shards.class_names, model_id=shards.model_id,
                 description=f"{shard_dir} with its labels shuffled", mid_features=rows.get("mid_features"))
    head = (heads or {}).get(shards.model_id) or shards.head()
    if head is not None:
        write_head(out, head)
    return out


def choice_of(shard_dir: Path | str, index_dir: Path) -> dict:
    """What build's auto chose (signal, its record) for a shard directory."""
    meta = build(shard_dir, index_dir, overwrite=True, progress=False, log=lambda s: None)
    return {"signal": meta["rerank"]["signal"], **meta["rerank"]["signal_choice"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards", nargs="+", help="labelled shard directories")
    ap.add_argument("--out", default="runs/shuffled", help="where the copies and indexes go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", action="append", default=[],
                    help="a checkpoint whose head (with its accuracy) the copies of its shards get")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    heads = {}
    for model in args.model:
        ckpt = read_checkpoint(model)
        heads[ckpt["model_id"]] = checkpoint_head(ckpt)
    rows = []
    for shard_dir in args.shards:
        name = Path(shard_dir).name
        copy = shuffled_copy(shard_dir, out / f"{name}-shuffled", args.seed, heads)
        for labels, src in (("as given", shard_dir), ("shuffled", copy)):
            c = choice_of(src, out / f"{name}-{labels.replace(' ', '-')}-index")
            scores = c.get("scores") or c.get("label_scores") or {}
            rows.append({"shards": shard_dir, "labels": labels, "chance": c.get("chance"),
                         "best": max(scores.values()) if scores else None, "chooses": c["signal"],
                         "by": c.get("labels") or c["by"], "scores": scores})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| shards | labels | random order's mAP@all | best signal's | chooses | by |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['shards']} | {r['labels']} | {r['chance']} | {r['best']} | {r['chooses']} | {r['by']} |")


if __name__ == "__main__":
    main()
