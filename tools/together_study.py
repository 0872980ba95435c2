"""Several photos of a class searched together (`query --together`) against each of them alone.

For an index and labelled query shards (the standard protocol's: test photos as queries, the training photos
as the index), groups of m queries of one class are drawn (seeded); each group is searched as one query (the
majority of its codes, the mean of its fine-stage vectors: `query.search_together`) and each member alone, both
ranking the whole index (the default pool re-ranked, Hamming order after it). The figure is the average
precision over the whole ranking (relevant = the group's class): the group's, against the mean of its members'.

    python tools/together_study.py runs/cmp/fl-v3/tuned0/index runs/cmp/fl-v3/tuned0/shards/queries --sizes 1 2 3 5
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex import metrics
from hashindex.codes import majority
from hashindex.index import Index
from hashindex.store import ShardSet


def average_precision(relevant: np.ndarray) -> float:
    """AP of one ranking given as booleans in rank order (`metrics.average_precision` of one row)."""
    return float(metrics.average_precision(np.asarray(relevant, bool)[None])[0])


def ranking(index: Index, codes: np.ndarray, vecs: np.ndarray, candidates: int | None = None) -> np.ndarray:
    """Positions of the whole index in the order a search with one (combined) query gives them."""
    return index.search(codes, vecs, k=index.count, candidates=candidates, vectors=True).positions[0]


def ranking_ap(index: Index, codes: np.ndarray, vecs: np.ndarray, label: int, candidates: int | None = None
               ) -> float:
    return average_precision(index.labels[ranking(index, codes, vecs, candidates)] == label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("queries", help="labelled query shards extracted with the index's model")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--groups", type=int, default=40, help="groups per class and size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="re-rank the whole index (not the default pool)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    index = Index.load(args.index)
    q = ShardSet(args.queries).load(("codes", "labels", index.feature_field))
    vecs = index.query_vectors(q[index.feature_field]).astype(np.float32)
    rng = np.random.default_rng(args.seed)
    pool = index.count if args.all else None
    rows = []
    for m in args.sizes:
        together, alone = [], []
        for label in np.unique(q["labels"][q["labels"] >= 0]):
            members = np.flatnonzero(q["labels"] == label)
            for _ in range(args.groups):
                g = rng.choice(members, m, replace=False)
                together.append(ranking_ap(index, majority(q["codes"][g]), vecs[g].mean(0, keepdims=True), label,
                                           pool))
                alone.append(np.mean([ranking_ap(index, q["codes"][i:i + 1], vecs[i:i + 1], label, pool) for i in g]))
        t, a = np.array(together), np.array(alone)
        d = t - a
        rows.append({"size": m, "groups": len(t), "map_together": round(float(t.mean()), 4),
                     "map_members_alone": round(float(a.mean()), 4), "gain": round(float(d.mean()), 4),
                     "gain_95": round(float(1.96 * d.std(ddof=1) / np.sqrt(len(d))), 4) if len(d) > 1 else 0.0,
                     "groups_better": int((d > 0).sum())})
    if args.json:
        print(json.dumps({"index": args.index, "queries": args.queries, "signal": index.signal, "rows": rows}))
        return
    print(f"{args.index} (signal {index.signal}), queries {args.queries}" + (", the whole index re-ranked" if args.all
                                                                              else ""))
    print("| photos together | groups | mAP@all together | mean of the members alone | gain (95%) | groups better |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['groups']} | {r['map_together']} | {r['map_members_alone']} | "
              f"{r['gain']:+.4f} (±{r['gain_95']}) | {r['groups_better']} |")


if __name__ == "__main__":
    main()
