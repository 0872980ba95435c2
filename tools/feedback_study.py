"""Relevance feedback ("more like the chosen" on the /ui page): what ticking a search's good results and searching
with them buys, against scrolling further down the first ranking.

For an index and labelled query shards (the standard protocol's: test photos as queries, the training photos as
the index), each query is searched alone (the default pool re-ranked, Hamming order after). A user looks at its
first ``--shown`` results and ticks those of the query's class, at most ``r`` of them (the first r such). Then:

  * first ranking: the query's own ranking with the ticked items taken out (the user has them already);
  * chosen: the ticked items searched as one query (`query.search_together` on their ids, each bit their
    majority, the fine stage on the mean of their stored vectors), without them: what the page sends;
  * query + chosen: the query photo and the ticked items as one query, without the ticked items.

Each figure is the average precision over the whole remaining ranking (relevant = the query's class); a query
with nothing to tick (no result of its class among the first ``--shown``) keeps its first ranking in every
column, so the means are over all queries.

    python tools/feedback_study.py runs/cmp/fl-v3/tuned0/index runs/cmp/fl-v3/tuned0/shards/queries --ticks 1 3 5
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hashindex.codes import majority
from hashindex.index import Index
from hashindex.query import indexed_queries
from hashindex.store import ShardSet
from together_study import average_precision, ranking  # tools/ is on sys.path when run as a script


def without(order: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    return order[~np.isin(order, chosen)]


def study(index: Index, codes: np.ndarray, vecs: np.ndarray, labels: np.ndarray, ticks: list[int], shown: int
          ) -> list[dict]:
    firsts = [ranking(index, codes[i:i + 1], vecs[i:i + 1]) for i in range(len(codes))]
    rows = []
    for r in ticks:
        cols: dict[str, list[float]] = {"first": [], "chosen": [], "query_and_chosen": []}
        ticked = 0
        for i, order in enumerate(firsts):
            good = order[:shown][index.labels[order[:shown]] == labels[i]][:r]
            rel = lambda o: index.labels[o] == labels[i]  # noqa: E731
            first = average_precision(rel(without(order, good)))
            if not len(good):
                for c in cols.values():
                    c.append(first)
                continue
            ticked += 1
            c_codes, c_vecs = indexed_queries(index, index.ids[good].tolist())
            chosen = ranking(index, majority(c_codes), c_vecs.mean(0, keepdims=True))
            both_codes = np.concatenate([codes[i:i + 1], c_codes])
            both = ranking(index, majority(both_codes), np.concatenate([vecs[i:i + 1], c_vecs]).mean(0, keepdims=True))
            cols["first"].append(first)
            cols["chosen"].append(average_precision(rel(without(chosen, good))))
            cols["query_and_chosen"].append(average_precision(rel(without(both, good))))
        f = np.array(cols["first"])
        row = {"ticks": r, "queries": len(f), "with_ticks": ticked, "map_first": round(float(f.mean()), 4)}
        for name in ("chosen", "query_and_chosen"):
            d = np.array(cols[name]) - f
            row[f"map_{name}"] = round(float(np.mean(cols[name])), 4)
            row[f"gain_{name}"] = round(float(d.mean()), 4)
            row[f"gain_{name}_95"] = round(float(1.96 * d.std(ddof=1) / np.sqrt(len(d))), 4)
            row[f"better_{name}"] = int((d > 0).sum())
            row[f"worse_{name}"] = int((d < 0).sum())
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("queries", help="labelled query shards extracted with the index's model")
    ap.add_argument("--ticks", type=int, nargs="+", default=[1, 3, 5], help="results ticked at most")
    ap.add_argument("--shown", type=int, default=20, help="results the user looks at (the page's default k)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    index = Index.load(args.index)
    q = ShardSet(args.queries).load(("codes", "labels", index.feature_field))
    vecs = index.query_vectors(q[index.feature_field]).astype(np.float32)
    rows = study(index, q["codes"], vecs, q["labels"], args.ticks, args.shown)
    if args.json:
        print(json.dumps({"index": args.index, "queries": args.queries, "signal": index.signal, "rows": rows}))
        return
    print(f"{args.index} (signal {index.signal}), queries {args.queries}, first {args.shown} results looked at")
    print("| ticked at most | queries with a tick | mAP: first ranking | chosen | gain (95%), better / worse | "
          "query + chosen | gain (95%), better / worse |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['ticks']} | {r['with_ticks']} of {r['queries']} | {r['map_first']} | {r['map_chosen']} | "
              f"{r['gain_chosen']:+.4f} (±{r['gain_chosen_95']}), {r['better_chosen']} / {r['worse_chosen']} | "
              f"{r['map_query_and_chosen']} | {r['gain_query_and_chosen']:+.4f} (±{r['gain_query_and_chosen_95']}), "
              f"{r['better_query_and_chosen']} / {r['worse_query_and_chosen']} |")


if __name__ == "__main__":
    main()
