"""`hashindex eval`: an index scored with labelled query shards (the metrics are hashindex.metrics).

The re-ranked figures are those of the ranking `Index.search` returns, with the
index's own fine-stage signal; ``candidates=None`` (the default) is the pool a
query gets by default, and ``candidates="all"`` re-ranks the whole database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import HashindexError
from .metrics import class_name, code_statistics, evaluate_arrays, format_code_statistics


PROTOCOL = ("relevance = same label; Hamming ranking over the whole database with ties in database "
            "order (headline mAP and precision@k) and the tie-aware expectations beside them; mAP@k divides by the relevant "
            "items in the top k; a query with no item within the radius counts precision 0; re-ranked = the ranking "
            "a query gets: the pool (whole tie groups) re-ordered by the index's signal, then Hamming order")


def evaluate(index_dir, queries_dir: str | Path, *, at: tuple[int, ...] = (1000,),
             candidates: int | str | None = None, pk_max: int = 1000, radius: int = 2, rerank: bool = True,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate an index with labelled query shards (relevance = same label).

    ``index_dir``: an INDEX_DIR or an opened Index (a caller that also draws its results opens it once);
    ``candidates``: the re-ranked pool (None: the default of a query; "all": the whole database).
    """
    from .index import TIE_CAP, Index
    from .store import ShardSet

    index = index_dir if isinstance(index_dir, Index) else Index.load(index_dir)
    shards = ShardSet(queries_dir, "queries")
    index.check_model(shards.model_id, f"queries={queries_dir}")
    q = shards.load(("codes", "features", "labels"))
    if (q["labels"] < 0).all():
        raise HashindexError(f"queries={queries_dir}: the query shards have no labels "
                             "(evaluation needs labelled queries)")
    if (index.labels < 0).all():
        raise HashindexError(f"index_dir={index.dir}: the indexed items have no labels")
    if shards.class_names and index.class_names and shards.class_names != index.class_names:
        raise HashindexError(f"queries={queries_dir}: class names differ from the index's "
                             f"({shards.class_names[:3]}... vs {index.class_names[:3]}...)")
    db_codes = index.table_codes()
    keep = q["labels"] >= 0
    use_rerank = rerank and index.rerank is not None and q["features"] is not None
    vecs = index.query_vectors(q["features"][keep].astype(np.float32)) if use_rerank else None
    pool = min(index.count if candidates == "all" else (candidates or index.default_candidates), index.count)

    def rr(sl, pos):
        return index.float_distances(vecs[sl], pos, vectors=True)

    out = evaluate_arrays(q["codes"][keep], q["labels"][keep], db_codes, index.labels, index.bits,
                          at=at, pk_max=pk_max, radius=radius, rerank=rr if use_rerank else None,
                          candidates=pool, tie_cap=max(TIE_CAP, pool), progress=progress)
    if use_rerank:
        out["reranked"]["signal"] = index.signal
    for row in out["per_class"]:
        row["name"] = class_name(index.class_names, row["label"])
    out["database_codes"] = code_statistics(db_codes, index.bits)
    out["unlabelled_queries_skipped"] = int((~keep).sum())
    out["protocol"] = PROTOCOL
    out["index"] = str(index.dir)
    out["queries_dir"] = str(queries_dir)
    out["model_id"] = index.model_id
    return out


def format_metrics(m: dict[str, Any]) -> str:
    """The metrics as a short human-readable table."""
    r = next(k for k in m if k.startswith("radius"))
    lines = [f"{m['queries']} queries vs {m['database']} items, {m['bits']} bits, model {m.get('model_id', '')}",
             f"{'ranking':<22} {'mAP':>8} " + " ".join(f"{k:>9}" for k in m["hamming"] if k.startswith("map@")),
             f"{'Hamming':<22} {m['hamming']['map']:8.4f} "
             + " ".join(f"{v:9.4f}" for k, v in m["hamming"].items() if k.startswith("map@"))]
    if "reranked" in m:
        label = f"{m['reranked'].get('signal', 'l2')}, pool {m['reranked']['candidates']}"
        lines.append(f"{label:<22} {m['reranked']['map']:8.4f} "
                     + " ".join(f"{v:9.4f}" for k, v in m["reranked"].items() if k.startswith("map@")))
    lines.append(f"tie-aware Hamming mAP (expectation over tie orders): {m['hamming']['map_tie_aware']:.4f}")
    pk = m["precision_at_k"]
    pkt = m.get("precision_at_k_tie_aware")
    for k in (1, 10, 100, 500, 1000):
        if k <= len(pk):
            lines.append(f"precision@{k:<5} {pk[k - 1]:.4f}"
                         + (f"   tie-aware {pkt[k - 1]:.4f}" if pkt else ""))
    rad = m[r]
    lines.append(f"within Hamming {r[6:]}: precision {rad['precision']:.4f}, recall {rad['recall']:.4f} "
                 f"({rad['queries_with_no_item']} queries had no item within it and count precision 0)")
    if "database_codes" in m:
        lines.append("database " + format_code_statistics(m["database_codes"], m["bits"]))
    per_class = sorted(m.get("per_class", []), key=lambda row: row["map"])
    if per_class:
        shown = per_class if len(per_class) <= 12 else per_class[:5] + per_class[-5:]
        lines.append("mAP per query class" + (" (5 worst, 5 best; all in --json)" if len(shown) < len(per_class)
                                               else ", worst first") + ": "
                     + ", ".join(f"{row.get('name', row['label'])} {row['map']:.4f}" for row in shown))
    lines.append(f"protocol: {m.get('protocol', PROTOCOL)}")
    return "\n".join(lines)
