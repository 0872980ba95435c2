"""`hashindex eval`: an index scored with labelled query shards (the metrics are hashindex.metrics).

The headline figures rank the whole database by exact Hamming distance (codes from the index's table), and
the re-ranked ones re-order each query's pool with the index's own fine-stage signal, as `Index.search` does
over a flat coarse index; ``candidates=None`` (the default) is the pool a query gets by default, and
``candidates="all"`` re-ranks the whole database. An approximate coarse index (IVF, HNSW, MultiHash) serves
something else: its top k may miss neighbours. For those, ``served`` scores the ranking `Index.search` itself
returns (what `query` and the service give), and the coarse stage's recall against exact search.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import HashindexError
from .codes import code_statistics, format_code_statistics, pad_codes
from .confusion import confusion_shares
from .metrics import average_precision, chance_map, default_ranking, evaluate_arrays
from .significance import Z95, aligned, paired_difference
from .targets import class_name, relevant_items


PROTOCOL = ("relevance = same label (a shared label for multi-label sets); Hamming ranking over the whole "
            "database with ties in database order (headline mAP and precision@k) and the tie-aware expectations "
            "beside them; a query that is an indexed item is left out of its own ranking; mAP@k divides by the "
            "relevant items in the top k; a query with no item within the radius "
            "counts precision 0; re-ranked = the ranking a query gets: the pool (whole tie groups) re-ordered by "
            "the index's signal, then Hamming order; served (approximate coarse indexes) = the top k the index's "
            "search returns, -1s counted not relevant")


@contextmanager
def query_shard_dir(index, queries: str | Path, model: str | None = None, device: str = "cpu",
                    progress: bool = True, log=lambda line: None) -> Iterator[Path]:
    """The labelled queries as a shard directory while the block runs: ``queries`` itself when it is one, else
    the image source (a folder, a tar, ``DIR:test``...) extracted into a temporary directory with ``model``
    (default: the shipped model the index was built with), removed afterwards. Extract a query set once
    (`hashindex extract`) to evaluate it more than once."""
    from .query import queries_as_shards

    with tempfile.TemporaryDirectory(prefix="hashindex-eval-") as tmp:  # stays empty for a shard directory
        yield queries_as_shards(index, queries, Path(tmp), model, device, progress, log, labelled=True)


def evaluate(index_dir, queries_dir: str | Path, *, at: tuple[int, ...] = (1000,),
             candidates: int | str | None = None, pk_max: int = 1000, radius: int = 2, rerank: bool = True,
             progress: bool = True, model: str | None = None, device: str = "cpu",
             exclude_self: bool = True, per_query: bool = False) -> dict[str, Any]:
    """Evaluate an index with labelled queries (relevance = same label; a shared label where the queries or
    the index carry label sets).

    ``index_dir``: an INDEX_DIR or an opened Index (a caller that also draws its results opens it once);
    ``queries_dir``: a shard directory, or an image source encoded on the fly with ``model`` on ``device``
    (`query_shard_dir`); ``candidates``: the re-ranked pool (None: the default of a query; "all": the whole
    database). ``exclude_self``: queries that are items of the index (`own_positions`) are scored against
    the other items (leave-one-out), not rewarded for finding themselves. ``per_query``: also each query's
    AP@all and id under "per_query" (numpy arrays; `compare_evaluations` pairs two evaluations by them).
    """
    from .index import TIE_CAP, Index
    from .provenance import own_positions
    from .query import common_targets, query_rows
    from .store import ShardSet

    index = index_dir if isinstance(index_dir, Index) else Index.load(index_dir)
    if (index.labels < 0).all():
        raise HashindexError(f"index_dir={index.dir}: the indexed items have no labels (mAP needs labelled items: "
                             "class subfolders, a labelled list, ...; hashindex query searches it without them)")
    with query_shard_dir(index, queries_dir, model, device, progress) as shard_dir:
        shards = ShardSet(shard_dir, "queries")
        index.check_model(shards.model_id, f"queries={queries_dir}")
        q = query_rows(index, shards, ("codes", "ids", "paths") + shards.label_fields)
        own = own_positions(index, shards, q["ids"], q["paths"]) if exclude_self else None
    if (q["labels"] < 0).all():
        raise HashindexError(f"queries={queries_dir}: the query shards have no labels "
                             "(evaluation needs labelled queries)")
    if shards.class_names and index.class_names and shards.class_names != index.class_names:
        raise HashindexError(f"queries={queries_dir}: class names differ from the index's "
                             f"({shards.class_names[:3]}... vs {index.class_names[:3]}...)")
    db_codes = index.table_codes()
    keep = q["labels"] >= 0
    q_targets, db_targets = common_targets(q, index)  # labels, or label sets on both sides
    use_rerank = rerank and index.rerank is not None and q["features"] is not None
    vecs = index.query_vectors(q["features"][keep].astype(np.float32)) if use_rerank else None
    pool = min(index.count if candidates == "all" else (candidates or index.default_candidates), index.count)

    def rr(sl, pos):
        return index.float_distances(vecs[sl], pos, vectors=True)

    own = own[keep] if own is not None and (own[keep] >= 0).any() else None
    if own is not None:
        if index.count < 2:
            raise HashindexError(f"queries={queries_dir}: the index holds only the queries' own item, nothing "
                                 "else to rank them against")
        pool = min(pool, index.count - 1)
    out = evaluate_arrays(q["codes"][keep], q_targets[keep], db_codes, db_targets, index.bits,
                          at=at, pk_max=pk_max, radius=radius, rerank=rr if use_rerank else None,
                          candidates=pool, tie_cap=max(TIE_CAP, pool), progress=progress, own=own,
                          per_query=per_query)
    if per_query:
        out["per_query"]["ids"] = q["ids"][keep]
    if use_rerank:
        out["reranked"]["signal"] = index.signal
    for row in out["per_class"]:
        row["name"] = class_name(index.class_names, row["label"])
    if "confusion" in out:
        out["confusion"]["classes"] = [class_name(index.class_names, c) for c in range(len(out["confusion"]["counts"]))]
    if index.meta["binary"]["kind"] != "flat":
        out["served"] = served_metrics(index, q["codes"][keep], q["features"][keep] if use_rerank else None,
                                       q_targets[keep], db_codes, at, candidates=pool, rerank=use_rerank,
                                       progress=progress, db_targets=db_targets, own=own)
    out["chance_map"] = chance_map(q_targets[keep], db_targets, own)  # what a random order would score
    out["database_codes"] = code_statistics(db_codes, index.bits)
    out["unlabelled_queries_skipped"] = int((~keep).sum())
    out["self_excluded"] = 0 if own is None else int((own >= 0).sum())  # queries that are indexed items
    if q_targets.ndim == 2:
        out["relevance"] = "a shared label (label sets)"
    out["protocol"] = PROTOCOL
    out["index"] = str(index.dir)
    out["queries_dir"] = str(queries_dir)
    out["model_id"] = index.model_id
    return out


SERVED_RECALL_AT = 10


def served_metrics(index, codes: np.ndarray, features: np.ndarray | None, labels: np.ndarray,
                   db_codes: np.ndarray, at: tuple[int, ...], *, candidates: int | None = None,
                   rerank: bool = True, chunk: int = 256, progress: bool = False,
                   db_targets: np.ndarray | None = None, own: np.ndarray | None = None) -> dict[str, Any]:
    """mAP@k (k in ``at``, up to the index's size) and precision@10 of the ranking ``index.search`` serves (its
    coarse index as built, default pool and signal), and the coarse stage's tie-aware recall@10: the share
    of the Hamming top 10 it serves (searched, as every search is, for the default pool) at most as far as
    the exact 10th neighbour. ``mean_results``: how many of the k asked
    for came back (mAP@k divides by the relevant items found, so a short list must show). ``own``: each
    query's own database position (-1: none), taken out of its results (`evaluate_arrays`)."""
    from tqdm import tqdm

    from .index import MISSING
    from .query import search_without_own

    import faiss

    k = min(max(at), index.count - (own is not None))
    r = min(SERVED_RECALL_AT, index.count)
    # the exact 10th distance from a flat scan, not a (chunk x collection) distance matrix: 256 queries of a
    # 10M-item collection would hold 2.5G distances
    pbytes = index.meta["binary"]["padded_bytes"]
    db_targets = index.targets() if db_targets is None else db_targets  # of the queries' kind (`common_targets`)
    exact = faiss.IndexBinaryFlat(pbytes * 8)
    exact.add(pad_codes(db_codes, pbytes))
    aps: dict[int, list[np.ndarray]] = {a: [] for a in at if a <= k}
    p10, recall, found = [], [], []
    for s in tqdm(range(0, len(codes), chunk), desc="served", unit="chunk", disable=not progress):
        sl = slice(s, s + chunk)
        served = search_without_own(index, None if own is None else own[sl], codes[sl],
                                    features[sl] if features is not None else None, k, candidates=candidates,
                                    rerank=rerank).positions
        rel = (served != MISSING) & relevant_items(labels[sl], db_targets, np.maximum(served, 0))
        for a in aps:
            aps[a].append(average_precision(rel, a))
        p10.append(rel[:, :10].mean(axis=1))
        found.append((served != MISSING).sum(axis=1))
        kth = exact.search(pad_codes(codes[sl], pbytes), r)[0][:, r - 1:r]
        coarse = index.search(codes[sl], None, k=r, rerank=False)
        recall.append(((coarse.hamming <= kth) & (coarse.positions != MISSING)).mean(axis=1))
    b = index.meta["binary"]
    params = {name: b[name] for name in ("nlist", "nprobe", "M", "efSearch", "nhash", "b", "nflip") if name in b}
    return {"coarse": b["kind"], "params": params, "reranked": bool(rerank and features is not None),
            **{f"map@{a}": float(np.concatenate(v).mean()) for a, v in aps.items()},
            "precision@10": float(np.concatenate(p10).mean()),
            "mean_results": float(np.concatenate(found).mean()), "k": k,
            f"coarse_recall@{r}": float(np.concatenate(recall).mean())}


COMPARISON_NOTE = ("the interval is over the queries: how far B - A would move with another draw of queries from "
                   "the same collection; two trainings of one recipe differ too, which it does not show")


def compare(index_dir, compare_dir, queries: str | Path, *, compare_queries: str | Path | None = None,
            model: str | None = None, device: str = "cpu", progress: bool = True, log=lambda line: None,
            **options) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(`compare_evaluations` of the two, A's metrics, B's metrics): ``index_dir`` (A) and ``compare_dir`` (B)
    scored on the same ``queries`` (`evaluate` ``options``). Images are encoded for each index with its own
    model (``model``: A's); a shard directory holds one model's codes, so B then reads ``compare_queries``, the
    same queries extracted with B's model. Different query sets are refused before either index is scored."""
    from .index import Index
    from .store import ShardSet

    index = index_dir if isinstance(index_dir, Index) else Index.load(index_dir)
    other = compare_dir if isinstance(compare_dir, Index) else Index.load(compare_dir, arg="compare_dir")
    other_queries = compare_queries or queries
    _check_shard_model(other, other_queries, "compare_queries" if compare_queries else "queries")
    with query_shard_dir(index, queries, model, device, progress, log) as dir_a, \
            query_shard_dir(other, other_queries, None, device, progress, log) as dir_b:
        aligned(*(ShardSet(d, "queries").load(("ids",))["ids"] for d in (dir_a, dir_b)), what="queries")
        first = evaluate(index, dir_a, progress=progress, per_query=True, **options) | {"queries_dir": str(queries)}
        second = evaluate(other, dir_b, progress=progress, per_query=True, **options) \
            | {"queries_dir": str(other_queries)}
    return compare_evaluations(first, second), first, second


def _check_shard_model(other, queries: str | Path, name: str) -> None:
    """A shard directory of queries holds one model's codes: refuse it for an index of another model in one
    line, naming the argument that takes the same queries extracted with that model."""
    from .store import MANIFEST, ShardSet

    if not (Path(queries) / MANIFEST).exists():
        return  # images: encoded with the other index's model
    model_id = ShardSet(queries, "queries").model_id
    if model_id != other.model_id:
        raise HashindexError(f"{name}={queries}: holds codes of model {model_id}, and compare_dir={other.dir} "
                             f"uses model {other.model_id}: give the query images as queries=, or the same "
                             "queries extracted with that model as compare_queries=")


def compare_evaluations(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two evaluations of the same queries (`evaluate(..., per_query=True)`: two models, signals or indexes)
    compared query by query: B - A for the Hamming mAP@all and for each side's default ranking (its re-ranked
    one where it has a fine stage, else Hamming), with a 95% interval over the queries (`significance`)."""
    pa, pb = a["per_query"], b["per_query"]
    ia, ib = aligned(pa["ids"], pb["ids"])
    out: dict[str, Any] = {"queries": len(ia), "note": COMPARISON_NOTE}
    out["hamming"] = paired_difference(pa["hamming"][ia], pb["hamming"][ib])
    ranking_a, ranking_b = default_ranking(pa), default_ranking(pb)
    out["ranking"] = paired_difference(pa[ranking_a][ia], pb[ranking_b][ib])
    out["ranking"]["signals"] = [m["reranked"]["signal"] if r == "reranked" else "hamming"
                                 for m, r in ((a, ranking_a), (b, ranking_b))]
    for side, m in (("a", a), ("b", b)):
        out[side] = {"index": m.get("index"), "queries_dir": m.get("queries_dir"), "model_id": m.get("model_id")}
    return out


def format_comparison(c: dict[str, Any]) -> str:
    """A paired comparison (`compare_evaluations`) as a short table."""
    lines = [f"paired comparison over {c['queries']:,} queries (the same query ids on both sides)",
             f"{'mAP@all':<28} {'A':>8} {'B':>8} {'B - A':>8}  {'95% interval':<19} {'B / A better on':>16}"]
    for key, label in (("hamming", "Hamming"), ("ranking", "default ranking")):
        d = c[key]
        if key == "ranking":
            signals = d["signals"]
            label += f" ({signals[0]})" if signals[0] == signals[1] else f" ({signals[0]} / {signals[1]})"
        verdict = "B better" if d["significant"] and d["diff"] > 0 else "A better" if d["significant"] else \
            "no difference shown"
        lines.append(f"{label:<28} {d['a']:8.4f} {d['b']:8.4f} {d['diff']:+8.4f}  "
                     f"[{d['low']:+.4f}, {d['high']:+.4f}]  {d['b_better']:>7,} / {d['a_better']:<7,} {verdict}"
                     + ("  (few queries: rough)" if d["rough"] else ""))
    for side in ("a", "b"):
        lines.append(f"{side.upper()} = {c[side]['index']} (model {c[side]['model_id']}), "
                     f"queries {c[side]['queries_dir']}")
    lines.append(c["note"])
    return "\n".join(lines)


def format_confusion(confusion: dict[str, Any], most: int = 5) -> str:
    """One line: the class pairs most often mixed up in the top k (share of the query class's results)."""
    shares = confusion_shares(confusion)
    np.fill_diagonal(shares, 0)
    names = confusion.get("classes") or [str(c) for c in range(len(shares))]
    pairs = [divmod(int(i), len(shares)) for i in np.argsort(-shares, axis=None, kind="stable")[:most]]
    shown = [f"{names[a]} -> {names[b]} {shares[a, b]:.3f}" for a, b in pairs if shares[a, b] > 0]
    where = "re-ranked" if confusion["ranking"] == "reranked" else "Hamming"
    return (f"results of another class in the top {confusion['k']} ({where}), most often: "
            + (", ".join(shown) if shown else "none"))


_AT = ("map@", "ndcg@", "acg@")  # the cut-off columns of the table (NDCG and ACG: label sets only)


def _without_relevant(m: dict[str, Any], names) -> list[str]:
    """A line for the queries that no ranking can score (AP 0): how many, and the mAP of the others."""
    n, nq = m.get("queries_without_relevant", 0), m["queries"]
    if not n:
        return []
    if n == nq:
        return [f"none of the {nq:,} queries has a relevant item in the database: every AP is 0"]
    rest = ", ".join(f"{name} {m[key]['map'] * nq / (nq - n):.4f}" for key, name in names if key in m)
    return [f"queries with no relevant item in the database: {n:,} of {nq:,} (a class with one photo, left out of "
            f"its own ranking, or a class the database lacks), AP 0 whatever the ranking; mAP of the other "
            f"{nq - n:,}: {rest}"]


def format_metrics(m: dict[str, Any]) -> str:
    """The metrics as a short human-readable table."""
    r = next(k for k in m if k.startswith("radius"))
    lines = [f"{m['queries']} queries vs {m['database']} items, {m['bits']} bits, model {m.get('model_id', '')}"
             + (f"; relevant = {m['relevance']}" if "relevance" in m else ""),
             f"{'ranking':<22} {'mAP':>8} " + " ".join(f"{k:>9}" for k in m["hamming"] if k.startswith(_AT)),
             f"{'Hamming':<22} {m['hamming']['map']:8.4f} "
             + " ".join(f"{v:9.4f}" for k, v in m["hamming"].items() if k.startswith(_AT))]
    if "reranked" in m:
        label = f"{m['reranked'].get('signal', 'l2')}, pool {m['reranked']['candidates']}"
        lines.append(f"{label:<22} {m['reranked']['map']:8.4f} "
                     + " ".join(f"{v:9.4f}" for k, v in m["reranked"].items() if k.startswith(_AT)))
    names = (("hamming", "Hamming"), ("reranked", m.get("reranked", {}).get("signal", "re-ranked")))
    spread = [(name, m[key]["map_se"]) for key, name in names if m.get(key, {}).get("map_se") is not None]
    if spread:  # how far another draw of queries would move the figures (significance)
        lines.append("mAP 95% interval over the queries: "
                     + ", ".join(f"{name} +-{Z95 * se:.4f}" for name, se in spread))
    gain = m.get("reranked", {}).get("over_hamming")
    if gain:
        lines.append(f"re-ranked - Hamming, query by query: {gain['diff']:+.4f} [{gain['low']:+.4f}, "
                     f"{gain['high']:+.4f}] (95%; better on {gain['queries_better']:,} queries, worse on "
                     f"{gain['queries_worse']:,})")
    if "chance_map" in m:  # the floor: labels unrelated to the images, or codes that know nothing of them
        lines.append(f"{'random order':<22} {m['chance_map']:8.4f}")
    if "served" in m:
        sv = m["served"]
        at = ", ".join(f"{k} {v:.4f}" for k, v in sv.items() if k.startswith("map@"))
        exact = m["reranked" if sv["reranked"] else "hamming"]
        exact_at = ", ".join(f"{k} {v:.4f}" for k, v in exact.items() if k.startswith("map@"))
        recall = next(k for k in sv if k.startswith("coarse_recall@"))
        params = ", ".join(f"{k} {v}" for k, v in sv["params"].items())
        lines.append(f"as served by the {sv['coarse']} coarse index ({params}): {at}, precision@10 "
                     f"{sv['precision@10']:.4f} (exact coarse stage: {exact_at}); coarse "
                     f"{recall.replace('coarse_', '')} {sv[recall]:.4f}; {sv['mean_results']:.0f} of {sv['k']} "
                     "results returned on average")
    if m.get("self_excluded"):
        lines.append(f"{m['self_excluded']} queries are indexed items: each is left out of its own ranking "
                     "(leave-one-out; --include-self keeps them)")
    lines.extend(_without_relevant(m, names))
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
    pairs = m.get("pair_distances")
    if pairs and pairs["auc"] is not None:
        lines.append(f"Hamming distance of query-item pairs: relevant mean {pairs['mean_relevant']:.2f}, others "
                     f"{pairs['mean_other']:.2f}; a relevant pair is the nearer with probability {pairs['auc']:.4f} "
                     "(ties half)")
    if m.get("confusion"):
        lines.append(format_confusion(m["confusion"]))
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
