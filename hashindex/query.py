"""Interactive queries (`hashindex query IMAGE... / --by-id`): image files or indexed items in, result rows out.

Image files are encoded with the index's model (indexed items use their stored
vectors) and ranked through `Index.search`, as the service ranks them. Batch
jobs over a whole shard directory are `hashindex.batch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .codes import majority, row_distances
from .errors import HashindexError
from .index import MISSING, Index, Only, SearchResult, restrict
from .provenance import image_positions, own_positions
from .signals import query_from_database
from .targets import class_name, common_kind


def index_model(index: Index, model: str | None, device: str = "cpu"):
    """The model that encodes images for ``index``: ``model`` if given, else the checkpoint its shards were
    extracted with (recorded in index.json, while it is there) or the shipped one with its id; checked against
    the index (a `HashModel`)."""
    from .checkpoint import find_model_for, load_model

    hm = load_model(model if model else find_model_for(index.model_id, index.meta.get("model")), device)
    index.check_model(hm.model_id)
    return hm


def _encode_images(index: Index, images: list[str], model: str | None, device: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode and encode query image files with the index's model: (codes, fine-stage vectors, input
    digests)."""
    from .data import BadImage, FilesSource
    from .data.spec import names_a_collection

    hm = index_model(index, model, device)
    src = FilesSource(images)
    arrays = []
    for i, path in enumerate(images):
        try:
            arrays.append(src.read_array(i, hm.input_size, hm.channels))
        except BadImage as e:
            what = "no such file" if e.reason == "missing" else f"cannot be decoded ({e.reason})"
            if names_a_collection(Path(path)):
                what = (f"a collection of images, not one: search it as a batch job (queries={path} out=RESULTS) "
                        "or pass its image files (a shell glob such as DIR/*.jpg)")
            raise HashindexError(f"IMAGE {path}: {what}") from None
    fields = hm.encode_fields(np.stack(arrays))
    codes, feats = index.search_inputs(fields)
    return codes, index.query_vectors(feats), fields["input_digests"]


def query_rows(index: Index, shards, fields: tuple[str, ...], what: str = "queries") -> dict[str, Any]:
    """Query shards' ``fields``, and under "features" the rows the index's fine stage reads (its
    `Index.feature_field`); a one-line error when the index re-ranks by mid features and the shards lack them
    (shards without features at all are ranked by Hamming alone, as an index without a float store ranks them)."""
    field = index.feature_field
    if index.rerank is not None and field != "features" and shards.manifest["feature_dim"] and not shards.has_mid:
        raise HashindexError(f"{what}={shards.dir}: no mid features, which {index.dir}'s signal 'mid' reads "
                             "(extracted before hashindex stored them: extract the queries again)")
    rows = shards.load(fields + (field,))
    rows["features"] = rows.pop(field)
    return rows


def indexed_queries(index: Index, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(codes, fine-stage vectors) of indexed items used as queries (zeros without a float store)."""
    codes, stored = index.items(index.positions_of(np.array(ids)))
    if stored is None:
        return codes, np.zeros((len(codes), 1), np.float32)
    return codes, query_from_database(index.signal, stored)


def query(index: str | Path | Index, images: list[str], by_id: list[int], *, model: str | None = None,
          k: int = 10, candidates: int | None = None, radius: int | None = None, rerank: bool = True,
          complete_ties: bool = True, nprobe: int | None = None, device: str = "cpu",
          shard_actors: dict[str, Any] | None = None, exclude_self: bool = False,
          only: Only | None = None, together: bool = False) -> list[dict[str, Any]]:
    """Search with image files and/or indexed items; per-query result dicts.

    ``index``: an INDEX_DIR or a loaded Index; ``shard_actors``: Ray options to
    open a sharded INDEX_DIR with one actor per shard; ``nprobe``: lists an IVF
    coarse index scans for these queries (default: the value build tuned).
    A query that is an indexed item (an item by id, or an image file that an index built from a folder holds:
    `image_positions`) finds itself first (`search_known`); with ``exclude_self`` it is not among its own results
    (its nearest other items). So does an image file whose pixels, at the net's input, are an indexed item's
    (a copy under another name: `Index.positions_of_inputs`). ``only`` (`hashindex.index.subset.Only`): results
    among these items alone (of some classes, folders or ids, or of all but some), ranked as an index of them
    alone would rank them; the queries may be any items. ``together``: all of them one query ("more like
    these", `search_together`).
    """
    if not images and not by_id:
        raise HashindexError("nothing to query: give images or by_id")
    check_candidates(candidates, k)
    if not isinstance(index, Index):
        index = Index.load(index, shard_actors=shard_actors)
    codes, vecs, names = [], [], []
    own_images = np.zeros(0, np.int64)
    if images:
        c, v, digests = _encode_images(index, images, model, device)
        codes.append(c)
        vecs.append(v)
        names += images
        own_images = image_positions(index, images)  # a file of an indexed folder, else a copy of an item
        own_images = np.where(own_images >= 0, own_images, index.positions_of_inputs(digests))
    if by_id:
        c, v = indexed_queries(index, by_id)
        codes.append(c)
        vecs.append(v)
        names += [f"id:{i}" for i in by_id]
    width = max(v.shape[1] for v in vecs)
    vecs = [v if v.shape[1] == width else np.zeros((len(v), width), np.float32) for v in vecs]
    own = np.concatenate([own_images, index.positions_of(np.array(by_id, np.int64))])
    search = search_together if together else search_vectors
    return search(index, np.concatenate(codes), np.concatenate(vecs).astype(np.float32), names,
                  k=k, candidates=candidates, radius=radius, rerank=rerank, complete_ties=complete_ties,
                  nprobe=nprobe, own=own, exclude_self=exclude_self, only=only)


def search_together(index: Index, codes: np.ndarray, vecs: np.ndarray, names: list[str], *, k: int = 10,
                    candidates: int | None = None, own: np.ndarray | None = None, exclude_self: bool = False,
                    **options: Any) -> list[dict[str, Any]]:
    """Several queries as one ("more like these"): the code each bit of which most of theirs have
    (`codes.majority`) and the mean of their fine-stage vectors (every signal's distance is linear in the query
    vector up to a term the same for every item, or L2 to their centroid), one row of results. With
    ``exclude_self`` none of the query items (``own``) is among them, ranked as the index would without them."""
    members = set(index.ids[own[own >= 0]].tolist()) if exclude_self and own is not None else set()
    extra = len(members)
    pool = (candidates or index.default_candidates) + extra if extra else candidates
    rows = search_vectors(index, majority(codes), vecs.mean(axis=0, keepdims=True), [" + ".join(names)],
                          k=min(k + extra, index.count), candidates=pool, **options)
    hits = [hit for hit in rows[0]["results"] if hit["id"] not in members]
    hits = hits if options.get("radius") is not None else hits[:k]  # a radius search keeps all within it
    rows[0]["results"] = [{**hit, "rank": r + 1} for r, hit in enumerate(hits)]
    return rows


def search_vectors(index: Index, codes_arr: np.ndarray, vecs: np.ndarray, names: list[str], *,
                   k: int = 10, candidates: int | None = None, radius: int | None = None,
                   rerank: bool = True, complete_ties: bool = True, max_results: int | None = None,
                   nprobe: int | None = None, own: np.ndarray | None = None, exclude_self: bool = False,
                   only: Only | None = None) -> list[dict[str, Any]]:
    """Result dicts for encoded queries (codes and fine-stage vectors): the top k, or every item within ``radius``.

    ``max_results`` refuses a radius search that finds more items for one query (a service's bound);
    ``own``: per query, the position of its own indexed item (-1: none), first in its results, or left out of
    them with ``exclude_self`` (`search_known`); ``only``: results among these items alone (`index.subset`).
    """
    if only:
        index = restrict(index, only)
        own = index.local(own) if own is not None else None
    if own is not None and not (own >= 0).any():
        own = None
    if radius is None:
        check_candidates(candidates, k)
        res = search_known(index, own, exclude_self, codes_arr, vecs, k, candidates, rerank, complete_ties,
                           vectors=True, nprobe=nprobe)
        return result_rows(index, res, names)
    hits = index.range_search(codes_arr, radius, nprobe)
    if own is not None:  # within the radius, the item itself first (or not there at all)
        hits = [(np.r_[p[p == o][:0 if exclude_self else None], p[p != o]],
                 np.r_[d[p == o][:0 if exclude_self else None], d[p != o]]) for (p, d), o in zip(hits, own)]
    most = max([len(p) for p, _ in hits] + [0])
    if max_results is not None and most > max_results:
        raise HashindexError(f"radius={radius}: {most} items within it for one query, more than "
                             f"max_results={max_results} (use a smaller radius, or k)")
    width = max([len(p) for p, _ in hits] + [1])
    pos = np.full((len(hits), width), MISSING, np.int64)
    ham = np.full((len(hits), width), MISSING, np.int32)
    for q, (p, d) in enumerate(hits):
        pos[q, :len(p)], ham[q, :len(p)] = p, d
    dist = (index.float_distances(vecs, pos, vectors=True) if rerank and index.rerank is not None
            else np.full(pos.shape, np.nan, np.float32))
    dist[pos < 0] = np.nan
    ids = np.where(pos < 0, MISSING, index.ids[np.maximum(pos, 0)])
    return result_rows(index, SearchResult(ids, pos, ham, dist), names)


def with_copies(index: Index, own: np.ndarray | None, digests: np.ndarray | None) -> np.ndarray | None:
    """``own`` (each query's own item, -1: none; None: no query has one) completed by the items whose net input
    was each query's pixels (`Index.positions_of_inputs`: a copy under another name), None if still none."""
    if digests is not None:
        same = index.positions_of_inputs(digests)
        own = same if own is None else np.where(own >= 0, own, same)
    return own if own is not None and (own >= 0).any() else None


def common_targets(rows: dict[str, Any], index: Index) -> tuple[np.ndarray, np.ndarray]:
    """(query targets, database targets) of one kind for query ``rows`` read from shards: labels, or label sets
    when either side is multi-label (the other side's labels become sets of one class: a single-label query
    of a multi-label collection is relevant to the items that carry its class)."""
    from .store import targets

    biggest = int(max(rows["labels"].max(initial=-1), index.labels.max(initial=-1)))
    return common_kind(targets(rows), index.targets(), max(len(index.class_names), biggest + 1))


def example_results(index: Index, queries_dir: str | Path, n_queries: int = 8, k: int = 10,
                    exclude_self: bool = True) -> dict[str, Any]:
    """A few labelled queries (one per class first) searched as a query would be: what a results grid shows
    (``exclude_self``: a query that is an indexed item without itself, as `hashindex eval` scores it)."""
    from .store import ShardSet

    qshards = ShardSet(queries_dir, "queries")
    q = query_rows(index, qshards, ("codes", "paths", "ids") + qshards.label_fields)
    labels = q["labels"]
    q_targets, db_targets = common_targets(q, index)
    pick = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels[labels >= 0])][:n_queries]
    pick += [i for i in range(len(labels)) if i not in pick][: max(0, n_queries - len(pick))]
    feats = q["features"][pick].astype(np.float32) if q["features"] is not None else None
    own = own_positions(index, qshards, q["ids"][pick], [q["paths"][i] for i in pick]) if exclude_self else None
    result = search_without_own(index, own, q["codes"][pick], feats, min(k, index.count - (own is not None)))
    return {"source_spec": qshards.manifest["source"].get("spec"), "paths": [q["paths"][i] for i in pick],
            "labels": labels[pick], "targets": q_targets[pick], "db_targets": db_targets, "result": result}


def search_without_own(index: Index, own: np.ndarray | None, codes: np.ndarray, features: np.ndarray | None,
                       k: int, candidates: int | None = None, *args, **kwargs) -> SearchResult:
    """`Index.search`'s top k with each query's own item left out (``own``: its database position, -1 for a
    query that has none; None: no query has one). The index is asked for one more result from a pool one
    larger, so the ranking is that of the index without the item: what `eval` scores (leave-one-out)."""
    if own is None:
        return index.search(codes, features, k, candidates, *args, **kwargs)
    pool = min((candidates or index.default_candidates) + 1, index.count)
    res = index.search(codes, features, k + 1 if k < index.count else k, pool, *args, **kwargs)
    return without_own(res, own, k)


def search_known(index: Index, own: np.ndarray | None, exclude_self: bool, codes: np.ndarray,
                 features: np.ndarray | None, k: int, candidates: int | None = None, rerank: bool = True,
                 complete_ties: bool = True, *, vectors: bool = False, nprobe: int | None = None) -> SearchResult:
    """The top k of queries some of which are indexed items (``own``: each one's database position, -1: none;
    None: no query is). With ``exclude_self`` the item is left out (`search_without_own`); else it comes first,
    as the exact match it is, and the others follow in the order the index gives them without it.

    Why not the index's own order: the ``posterior`` signal ranks by the chance that two images share a class,
    and a query whose posterior is not one-hot shares it more surely with a confident image of its class than
    with itself; on the CIFAR-10 test set indexed with the shipped model (signal ``posterior``, chosen by
    ``auto``), 0.1 % of the items searched for came first (docs/RESULTS.md, "An indexed item comes first")."""
    rest = search_without_own(index, own, codes, features, k, candidates, rerank, complete_ties, vectors=vectors,
                              nprobe=nprobe)
    if own is None or exclude_self:
        return rest
    return own_first(index, rest, own, codes, features if rerank else None, vectors)


def own_first(index: Index, rest: SearchResult, own: np.ndarray, codes: np.ndarray, features: np.ndarray | None,
              vectors: bool) -> SearchResult:
    """``rest`` (results without each query's own item) with the own item (``own`` >= 0) put at rank 1, its
    Hamming and signal distance to the query beside it, and the last result dropped."""
    q = np.flatnonzero(own >= 0)
    if not len(q):
        return rest
    mine = own[q]
    stored = index.codes(mine)
    width = min(stored.shape[1], codes.shape[1])  # the index's codes may be padded, the table's are not
    ham = row_distances(codes[q, :width], stored[:, :width])
    dist = np.full(len(q), np.nan, np.float32)
    if features is not None and index.rerank is not None:
        dist = index.float_distances(features[q], mine[:, None], vectors=vectors)[:, 0]
    arrays = [a.copy() for a in (rest.ids, rest.positions, rest.hamming, rest.distance)]
    for a, first in zip(arrays, (index.ids[mine], mine, ham, dist)):
        a[q, 1:] = a[q, :-1]
        a[q, 0] = first
    return SearchResult(*arrays)


def without_own(result: SearchResult, own: np.ndarray, k: int) -> SearchResult:
    """The top k of each query's results once its own item (database position ``own``, -1: none) is taken
    out (searched for k + 1, so k remain; where the index holds fewer, the last is missing)."""
    mine = (result.positions == own[:, None]) & (own[:, None] >= 0)
    keep = np.argsort(mine, axis=1, kind="stable")[:, :k]
    gone = np.take_along_axis(mine, keep, 1)
    ids, pos, ham, dist = (np.take_along_axis(a, keep, 1)
                           for a in (result.ids, result.positions, result.hamming, result.distance))
    return SearchResult(np.where(gone, MISSING, ids), np.where(gone, MISSING, pos), np.where(gone, MISSING, ham),
                        np.where(gone, np.nan, dist))


def queries_as_shards(index: Index, queries: str | Path, work: Path, model: str | None = None, device: str = "cpu",
                      progress: bool = True, log=print, labelled: bool = False) -> Path:
    """The queries as a shard directory: ``queries`` itself when it is one, else the image source (any ``--data``
    spec) extracted into ``work/queries`` with ``model`` (default: the shipped model the index was built with).
    ``labelled``: refuse a source without labels before anything is decoded (evaluation needs them)."""
    from .store import MANIFEST

    if (Path(queries) / MANIFEST).exists():
        return Path(queries)
    from .data import open_source
    from .extraction import extract

    source = open_source(queries, arg="queries")
    if labelled and (source.labels < 0).all():
        raise HashindexError(f"queries={queries}: no labelled images (evaluation needs labelled queries: class "
                             "subfolders, a labelled list, ...)")
    hm = index_model(index, model, device)
    extract(hm, source, work / "queries", device=device, progress=progress, log=log)
    return work / "queries"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Human-readable result table, one block per query."""
    lines = []
    for row in rows:
        lines.append(f"query {row['query']}: {len(row['results'])} results")
        lines.append(f"{'rank':>5} {'id':>10} {'hamming':>7} {'distance':>10}  {'class':<12} path")
        for h in row["results"]:
            dist = "-" if h["distance"] is None else f"{h['distance']:.4f}"
            # an unlabelled collection (label -1) shows '-', a label without a name its number
            cls = h["class"] if h["class"] is not None else "-" if h["label"] < 0 else str(h["label"])
            cls = "+".join(h["classes"]) or "-" if "classes" in h else cls  # a multi-label item: all its classes
            lines.append(f"{h['rank']:>5} {h['id']:>10} {h['hamming']:>7} {dist:>10}  {cls:<12} {h['path']}")
    return "\n".join(lines)


def check_candidates(candidates: int | None, k: int) -> None:
    """k is a number of results (checked before a query's own item adds one to it), and an explicit pool must
    hold them (the default pool is fixed; past it, Hamming order continues)."""
    if k < 1:
        raise HashindexError(f"k={k}: expected a positive number of results")
    if candidates is not None and candidates < k:
        raise HashindexError(f"candidates={candidates}: must be at least k={k}")


def result_rows(index: Index, result: SearchResult, query_names: list[str]) -> list[dict[str, Any]]:
    """Per-query result dicts with ids, paths, labels and both distances (for printing)."""
    paths = index.paths(result.positions)
    names = index.class_names
    rows = []
    k = result.ids.shape[1]
    for q, qname in enumerate(query_names):
        hits = []
        for r in range(k):
            pos = int(result.positions[q, r])
            if pos < 0:
                continue
            hits.append({"rank": r + 1, **item_fields(index, pos, paths[q * k + r], names),
                         "hamming": int(result.hamming[q, r]),
                         "distance": None if np.isnan(result.distance[q, r]) else float(result.distance[q, r])})
        rows.append({"query": qname, "results": hits})
    return rows


def item_fields(index: Index, position: int, path: str, names: list[str] | None = None) -> dict[str, Any]:
    """What a result (and GET /items/ID) says of an indexed item: its id, path, label and class name (None
    where the names do not cover it), and for a multi-label item every class it carries."""
    names = index.class_names if names is None else names
    label = int(index.labels[position])
    fields = {"id": int(index.ids[position]), "path": path, "label": label,
              "class": names[label] if 0 <= label < len(names) else None}
    if index.label_sets is not None:
        fields["classes"] = [class_name(names, int(c)) for c in np.flatnonzero(index.label_sets[position])]
    return fields
