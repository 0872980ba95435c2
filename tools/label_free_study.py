#!/usr/bin/env python
"""What `build --signal auto` chooses for a collection without labels: the label-free test of
`hashindex.signals.unlabelled_choice` (the items' mean top posterior against the model's validation accuracy),
run on shard directories as `build` runs it (the same sample of up to 100,000 items, seed 0), labels or not.
Pair it with `tools/rerank_study.py` on the same shards for what each signal scores (docs/RESULTS.md,
"Collections without labels").

    python tools/label_free_study.py runs/mid/c10-db runs/mid/fl0-db --model nin-cifar10-48-v3
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex.index.tuning import SIGNAL_SAMPLE, head_for
from hashindex.signals import unlabelled_choice
from hashindex.store import ShardSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shard_dirs", nargs="+", help="shard directories (one model)")
    ap.add_argument("--model", help="the shards' model, where their head.npz predates the recorded accuracy")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for d in args.shard_dirs:
        shards = ShardSet(d)
        features = shards.sample_rows(("features",), SIGNAL_SAMPLE, np.random.default_rng(0))["features"]
        signal, choice = unlabelled_choice(head_for(shards, args.model), features.astype(np.float32), shards.has_mid)
        rows.append({"shards": d, "items": shards.rows, "signal": signal, **choice})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| shards | items | mean top posterior | validation accuracy | ratio | chooses |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['shards']} | {r['items']:,} | {r.get('confidence', '')} | {r.get('accuracy', '')} | "
              f"{r.get('ratio', '')} | {r['signal']} |")


if __name__ == "__main__":
    main()
