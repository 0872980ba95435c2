"""Coarse-index parameters from a recall target (`build --recall`, `--binary auto`; issue #18).

As autofaiss picks a float index's parameters from a target, `build` measures
the binary index it has just filled on the collection itself: items of the
collection are held out as queries, their exact Hamming neighbours come from
a flat scan streamed over the shard files, and the search-time parameter
(IVF ``nprobe``, HNSW ``efSearch``, MultiHash ``nflip``) is raised until
recall@k reaches the target. The value, the measured recall and the whole
curve go into index.json.

Held-out items can flatter an index: a trained net's codes of its own
training images sit in tighter buckets than unseen images' (on CIFAR-10,
MultiHash nflip 0 measured 0.983 on held-out training images and 0.930 on
test images). A user with queries of the kind the index will serve passes
their extracted shards (``tune_queries``); they are searched as they are,
with nothing to leave out.

Recall counts ties: a result is right when its distance is at most the exact
k-th distance (whole classes share a code; which of the tied items comes back
is arbitrary). Each query's own row is left out of both rankings, so a
held-out item does not find itself for free.
"""

from __future__ import annotations

from typing import Any, Callable

import faiss
import numpy as np

from ..errors import HashindexError
from ..codes import pad_codes
from ..store import ShardSet

TUNE_QUERIES = 500  # held-out items; recall@10 to about +-0.01 (binomial, 5,000 results)
RECALL_AT = 10
# Flat below this many items: a flat scan of 2M padded codes is ~1.1 ms per query on one core
# (0.55 ms at 1M, docs/RESULTS.md "Search"), and it is exact.
AUTO_FLAT_MAX = 2_000_000

SEARCH_PARAMS: dict[str, tuple[str, Callable[[dict[str, Any]], list[int]]]] = {
    "ivf": ("nprobe", lambda p: [v for v in (2 ** i for i in range(17)) if v < p["nlist"]] + [p["nlist"]]),
    "hnsw": ("efSearch", lambda p: [2 ** i for i in range(4, 13)]),
    "multihash": ("nflip", lambda p: [0, 1, 2, 3]),
}


def check_target(recall: float, kind: str | None = None) -> None:
    """A recall target is a number in (0, 1], and ``kind`` (when given) has a search parameter to tune."""
    if not 0 < recall <= 1:
        raise HashindexError(f"recall={recall}: expected a number in (0, 1]")
    if kind is not None and kind not in SEARCH_PARAMS:
        raise HashindexError(f"recall={recall}: binary={kind} is exact and has nothing to tune "
                             "(use binary=ivf, hnsw, multihash or auto)")


def coarse_plan(binary: str, n: int, nlist: int | None, nprobe: int | None, recall: float | None,
                queries: ShardSet | None, log=print) -> tuple[str, float | None]:
    """The coarse kind and recall target a build of n items asks for: ``auto`` is flat (exact) up to
    `AUTO_FLAT_MAX` items, else (or when IVF parameters are given) IVF tuned to ``recall`` (default 0.95)
    unless ``nprobe`` fixes it. ``queries`` (``tune_queries``) need a recall target to measure."""
    if recall is not None:
        check_target(recall)
    if recall is not None and nprobe is not None:
        raise HashindexError(f"recall={recall}, nprobe={nprobe}: pass one (recall chooses nprobe)")
    requested = binary
    if binary == "auto":
        binary = "ivf" if n > AUTO_FLAT_MAX or nlist or nprobe else "flat"
        recall = None if binary == "flat" or nprobe else (recall or 0.95)
    elif recall is not None:
        check_target(recall, binary)
    if queries is not None and recall is None:
        if requested != "auto" or binary != "flat":
            raise HashindexError(f"tune_queries={queries.dir}: nothing to tune without recall (binary={requested}"
                                 f"{'' if nprobe is None else f', nprobe={nprobe}'}); pass recall")
        log(f"tune_queries={queries.dir}: unused, binary=auto chose a flat (exact) index for {n} items")
    return binary, recall


def set_search_param(parts: list, kind: str, value: int) -> None:
    """Set the search-time parameter of every part (same value)."""
    name = SEARCH_PARAMS[kind][0]
    for part in parts:
        if name == "efSearch":
            part.hnsw.efSearch = value
        else:
            setattr(part, name, value)


def held_out(store: ShardSet, pbytes: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positions, padded codes) of up to n items of a shard directory, in position order."""
    pos = np.sort(rng.choice(store.rows, size=min(n, store.rows), replace=False))
    return pos, pad_codes(store.rows_at(pos, ("codes",))["codes"], pbytes)


def check_queries(queries: ShardSet, store: ShardSet) -> None:
    """``tune_queries`` must hold codes of the collection's model (checked before the build does its work)."""
    where = f"tune_queries={queries.dir}"
    if queries.model_id != store.model_id or queries.bits != store.bits:
        raise HashindexError(f"{where}: holds {queries.bits}-bit codes of model {queries.model_id}, but the "
                             f"collection's are {store.bits}-bit codes of model {store.model_id} (extract the "
                             "queries with the collection's model)")
    if queries.rows == 0:
        raise HashindexError(f"{where}: holds no rows")


def exact_distances(store: ShardSet, queries: np.ndarray, pbytes: int, k: int) -> np.ndarray:
    """The k+1 smallest exact Hamming distances of each query over the whole collection (ascending),
    one shard file at a time (the collection need not fit in memory)."""
    best = np.full((len(queries), 0), np.iinfo(np.int32).max, np.int32)
    for rows in store.iter_rows(("codes",)):
        flat = faiss.IndexBinaryFlat(pbytes * 8)
        flat.add(pad_codes(rows["codes"], pbytes))
        d, _ = flat.search(queries, min(k + 1, flat.ntotal))
        best = np.sort(np.concatenate([best, d], axis=1), axis=1)[:, :k + 1]
    return best


def tie_recall(exact: np.ndarray, dist: np.ndarray, pos: np.ndarray, self_pos: np.ndarray | None, k: int) -> float:
    """recall@k with ties counted as found, each query's own row left out.

    ``exact``: the k+1 smallest exact distances, the query's own 0 among them (``self_pos`` None: queries
    from outside the collection, nothing left out); ``dist``/``pos``: the index's top k+1 (pos -1 where it
    found fewer).
    """
    if self_pos is None:
        kth, own = exact[:, k - 1:k], np.zeros(pos.shape, bool)
    else:
        kth = exact[:, k:k + 1]  # the k-th distance once the query's own 0 is dropped
        own = pos == self_pos[:, None]
    # keep the first k results that are not the query itself
    keep = (~own) & (pos >= 0) & (np.cumsum(~own, axis=1) <= k)
    return float(((dist <= kth) & keep).sum() / (len(exact) * k))


def tune(search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], parts: list, kind: str,
         params: dict[str, Any], store: ShardSet, pbytes: int, target: float, rng: np.random.Generator,
         log=print, queries: ShardSet | None = None) -> dict[str, Any]:
    """Raise the search parameter of ``parts`` (searched together by ``search``) until recall@10 on
    held-out items (or on ``queries``' codes) reaches ``target``; leaves it set and returns the record
    for index.json."""
    check_target(target, kind)
    name, values = SEARCH_PARAMS[kind][0], SEARCH_PARAMS[kind][1](params)
    k = min(RECALL_AT, store.rows - 1)
    if k < 1:
        raise HashindexError(f"recall={target}: needs at least 2 items to measure, not {store.rows}")
    if queries is None:
        self_pos, codes = held_out(store, pbytes, TUNE_QUERIES, rng)
    else:
        self_pos, codes = None, held_out(queries, pbytes, TUNE_QUERIES, rng)[1]  # sampled the same way
    exact = exact_distances(store, codes, pbytes, k)
    curve: list[list[float]] = []
    for value in values:
        set_search_param(parts, kind, value)
        dist, got = search(codes, k + 1)
        curve.append([value, round(tie_recall(exact, dist, got, self_pos, k), 4)])
        if curve[-1][1] >= target:
            break
    # the first value that reached the target, else the best recall seen (the smallest value on a tie)
    value, reached = curve[-1] if curve[-1][1] >= target else max(curve, key=lambda c: (c[1], -c[0]))
    set_search_param(parts, kind, int(value))
    if reached < target:
        log(f"warning: recall target {target} not reached by binary={kind}: the best, recall@{k} {reached} at "
            f"{name}={value}, is kept (tried {', '.join(str(v) for v, _ in curve)}); binary=ivf reaches any target")
    record = {"target": target, "at": k, "recall": reached, "param": name, "value": int(value),
              "queries": len(codes), "items": store.rows, "curve": curve}
    if queries is not None:
        record["queries_from"] = str(queries.dir.resolve())
    return record
