"""Coarse-to-fine retrieval (`hashindex query`).

Coarse: the binary Faiss index returns a pool of ``candidates`` positions by
Hamming distance (default `DEFAULT_CANDIDATES`, whatever k is, widened to the
whole group of items tied at its farthest distance). Fine: the pool is
re-ordered by the index's signal (`hashindex.signals`: pooled-feature L2 or
cosine, latent activations against codes, class posterior), a squared L2
distance that Faiss computes on the float store. Past the pool, results follow
the Hamming ranking. This is the DLBHC retrieval scheme.

Orders are deterministic: coarse results by (Hamming, position), the pool by
(signal distance, Hamming, position). The pool does not depend on k, so the
top 3 are the first 3 of the top 10 (tested), and the API, the CLI, the batch
job and the service all rank through `Index.search` with the same defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import h5py
import numpy as np

from .errors import HashindexError
from .index import (DEFAULT_CANDIDATES, HEAD_FILE, RERANK_FILE, TABLE_FILE, TIE_CAP, BinaryShards,  # noqa: F401
                    binary_files, pad_codes, read_index_meta, rerank_signal)
from .signals import Head, query_from_database, query_vectors

MISSING = -1


@dataclass
class SearchResult:
    """Top-k per query; -1 ids / positions where the index had fewer results."""

    ids: np.ndarray  # (Q, k) int64 stable ids
    positions: np.ndarray  # (Q, k) int64 rows of the index
    hamming: np.ndarray  # (Q, k) int32
    distance: np.ndarray  # (Q, k) float32 signal distance (squared L2 of its vectors), nan outside the pool


def _read_binary(path: Path, mmap: bool) -> faiss.IndexBinary:
    """Read a binary index; flat codes are memory-mapped (IO_FLAG_MMAP_IFC), not loaded.

    (IO_FLAG_MMAP alone still reads an IndexBinaryFlat into memory: measured,
    160 MB resident for 20M codes against 0.4 MB with IO_FLAG_MMAP_IFC.)
    """
    if mmap:
        try:
            return faiss.read_index_binary(str(path), faiss.IO_FLAG_MMAP_IFC)
        except RuntimeError:
            pass  # index types without mmap support are read into memory
    return faiss.read_index_binary(str(path))


def _read_float(path: Path, mmap: bool) -> faiss.Index:
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        except RuntimeError:
            pass
    return faiss.read_index(str(path))


class Index:
    """A built INDEX_DIR, loaded for searching."""

    def __init__(self, meta: dict[str, Any], binary: faiss.IndexBinary, rerank: faiss.Index | None,
                 ids: np.ndarray, labels: np.ndarray, directory: Path | None = None, head: Head | None = None):
        self.meta, self.binary, self.rerank, self.dir = meta, binary, rerank, directory
        self.ids, self.labels, self.head = ids, labels, head
        self.signal = rerank_signal(meta)
        if len(self.ids) != self.binary.ntotal:
            raise HashindexError(f"INDEX_DIR {self.dir}: table and binary index disagree "
                                 f"({len(self.ids)} vs {self.binary.ntotal} items); rebuild it")
        self._id_order = np.argsort(self.ids, kind="stable")

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True,
             shard_actors: dict[str, Any] | None = None) -> "Index":
        """Open a built INDEX_DIR (Faiss files memory-mapped where Faiss allows).

        ``shard_actors`` (Ray options, e.g. ``{"address": ...}``) puts each binary
        shard of a ``--shards S`` index in its own Ray actor instead of this process.
        """
        d = Path(directory)
        meta = read_index_meta(d)
        shards = meta["binary"].get("shards")
        if shard_actors is not None:
            if not shards:
                raise HashindexError(f"--shard-actors: INDEX_DIR {d} has one binary index, not shards "
                                     "(build it with --shards S)")
            from .distributed import shard_actors as start_actors

            binary = start_actors(d, shards, **shard_actors)
        else:
            parts = [_read_binary(d / name, mmap) for name in binary_files(meta)]
            binary = BinaryShards(parts, [s["start"] for s in shards]) if shards else parts[0]
        rerank = _read_float(d / RERANK_FILE, mmap) if meta["rerank"]["kind"] != "none" else None
        head = Head.load(d / HEAD_FILE) if (d / HEAD_FILE).exists() else None
        with h5py.File(d / TABLE_FILE, "r") as t:
            ids, labels = t["ids"][()], t["labels"][()]
        return cls(meta, binary, rerank, ids, labels, d, head)

    @classmethod
    def in_memory(cls, codes: np.ndarray, features: np.ndarray | None, bits: int, *,
                  binary: str = "flat", rerank: str = "flat", ids: np.ndarray | None = None,
                  labels: np.ndarray | None = None, signal: str = "l2", head: Head | None = None) -> "Index":
        """An index over arrays, built in memory with build's code (benchmarks, tests, notebooks).

        ``signal`` orders the re-ranked pool (``l2`` here; `build` chooses per collection).
        """
        from .index import default_params, make_binary_index, new_float_store, padded_bytes
        from .signals import check_signal, database_vectors

        n = len(codes)
        pbytes = padded_bytes(codes.shape[1])
        params = default_params(binary, n, bits)
        bindex = make_binary_index(binary, pbytes * 8, params)
        padded = pad_codes(codes, pbytes)
        if not bindex.is_trained:
            bindex.train(padded[:: max(1, n // max(256 * params.get("nlist", 1), 100_000))])
        bindex.add(padded)
        findex = None
        if features is not None and rerank != "none":
            check_signal(signal, head)
            vectors = database_vectors(signal, features, codes, head)
            findex = new_float_store(rerank, vectors[:: max(1, n // 100_000)])
            findex.add(vectors)
        meta = {"model_id": "", "bits": bits, "code_bytes": codes.shape[1], "count": n, "class_names": [],
                "binary": {"kind": binary, "padded_bytes": pbytes, **params},
                "rerank": {"kind": rerank if findex is not None else "none", "signal": signal}, "built": ""}
        ids = np.arange(n, dtype=np.int64) if ids is None else ids
        labels = np.full(n, -1, np.int32) if labels is None else labels
        return cls(meta, bindex, findex, ids, labels, head=head)

    @property
    def count(self) -> int:
        return int(self.binary.ntotal)

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    @property
    def bits(self) -> int:
        return self.meta["bits"]

    @property
    def class_names(self) -> list[str]:
        return self.meta.get("class_names", [])

    def check_model(self, model_id: str, what: str = "--model") -> None:
        if model_id != self.model_id:
            raise HashindexError(f"{what}: model {model_id} differs from the index's model {self.model_id} "
                                 "(codes of different models cannot be compared)")

    # ------------------------------------------------------------------ lookups

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Index rows of stable ids; one-line error for an id not in the index."""
        ids = np.asarray(ids, dtype=np.int64)
        sorted_ids = self.ids[self._id_order]
        at = np.searchsorted(sorted_ids, ids)
        ok = (at < len(sorted_ids)) & (sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == ids)
        if not ok.all():
            raise HashindexError(f"--by-id {ids[~ok][0]}: no item with this id in {self.dir}")
        return self._id_order[at]

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored (codes, features) of index rows; features None without a re-rank store."""
        positions = np.asarray(positions, dtype=np.int64)
        uniq, inv = np.unique(positions, return_inverse=True)
        with h5py.File(self.dir / TABLE_FILE, "r") as t:
            codes = t["codes"][uniq][inv.ravel()]
        feats = self.rerank.reconstruct_batch(positions) if self.rerank is not None else None
        return codes, feats

    def table_codes(self) -> np.ndarray:
        """Every item's unpadded code, in position order (from the table)."""
        with h5py.File(self.dir / TABLE_FILE, "r") as t:
            return t["codes"][()]

    def paths(self, positions: np.ndarray) -> list[str]:
        """Source paths of index rows (read lazily from the table)."""
        flat = np.asarray(positions, dtype=np.int64).ravel()
        valid = np.unique(flat[flat >= 0])
        with h5py.File(self.dir / TABLE_FILE, "r") as t:
            got = t["paths"][valid] if len(valid) else []
        lut = {int(p): (s.decode() if isinstance(s, bytes) else s) for p, s in zip(valid, got)}
        return [lut.get(int(p), "") for p in flat]

    # ------------------------------------------------------------------ search

    def _pad(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.meta["code_bytes"]:
            raise HashindexError(f"query codes of shape {codes.shape}: expected (n, {self.meta['code_bytes']})")
        return pad_codes(codes, self.meta["binary"]["padded_bytes"])

    def coarse(self, codes: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-m positions by Hamming distance, ordered by (distance, position)."""
        m = min(m, self.count)
        dist, pos = self.binary.search(self._pad(codes), m)
        pos = pos.astype(np.int64)
        dist = np.where(pos < 0, np.iinfo(np.int32).max, dist).astype(np.int64)
        key = dist * (self.count + 1) + np.where(pos < 0, self.count, pos)
        order = np.argsort(key, axis=1, kind="stable")
        dist = np.take_along_axis(dist, order, 1)
        pos = np.take_along_axis(pos, order, 1)
        return np.where(pos < 0, MISSING, dist).astype(np.int32), pos

    def query_vectors(self, features: np.ndarray) -> np.ndarray:
        """The fine-stage vectors of queries given their pooled features."""
        return query_vectors(self.signal, features, self.head)

    def float_distances(self, features: np.ndarray, pos: np.ndarray, *, vectors: bool = False) -> np.ndarray:
        """Signal distance between each query and its candidates (inf where pos is -1).

        ``features`` are the queries' pooled features, or with ``vectors=True``
        their fine-stage vectors already (`query_vectors`, `stored_queries`).
        """
        x = np.ascontiguousarray(features if vectors else self.query_vectors(features), dtype=np.float32)
        q, m = pos.shape
        safe = np.ascontiguousarray(np.where(pos < 0, 0, pos), dtype=np.int64)
        out = np.empty((q, m), np.float32)
        if isinstance(self.rerank, faiss.IndexFlat):
            self.rerank.compute_distance_subset(q, faiss.swig_ptr(x), m, faiss.swig_ptr(out), faiss.swig_ptr(safe))
        else:  # quantized store: decode the candidates, exact distance to the query
            step = max(1, (1 << 20) // max(m, 1))  # bound the decoded vectors held at once
            for s in range(0, q, step):
                uniq, inv = np.unique(safe[s:s + step], return_inverse=True)
                cand = self.rerank.reconstruct_batch(uniq)[inv.reshape(-1, m)]
                out[s:s + step] = ((cand - x[s:s + step, None, :]) ** 2).sum(axis=2, dtype=np.float32)
        out[pos < 0] = np.inf
        return out

    def complete_ties(self, codes: np.ndarray, ham: np.ndarray, pos: np.ndarray, cap: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Widen each pool to every item as close as its farthest member (up to ``cap``).

        With well-trained codes thousands of items share a code, and a pool cut
        at m items keeps an arbitrary slice of that tie group; re-ranking the
        whole group is what lets the float features pick the best of it.
        Costs one range search per distinct boundary distance.
        """
        if self.meta["binary"]["kind"] == "hnsw":
            return ham, pos  # no range search; the pool stays as it is
        bound = ham[:, -1]
        pools = [(ham[i], pos[i]) for i in range(len(ham))]
        for r in np.unique(bound[bound >= 0]):
            qs = np.flatnonzero(bound == r)
            for qi, (p, d) in zip(qs, self.range_search(codes[qs], int(r))):
                if len(p) > len(pools[qi][1]):
                    pools[qi] = (d[:cap], p[:cap])
        width = max(len(p) for _, p in pools)
        out_h = np.full((len(pools), width), MISSING, np.int32)
        out_p = np.full((len(pools), width), MISSING, np.int64)
        for i, (d, p) in enumerate(pools):
            out_h[i, :len(p)], out_p[i, :len(p)] = d, p
        return out_h, out_p

    def search(self, codes: np.ndarray, features: np.ndarray | None = None, k: int = 10,
               candidates: int | None = None, rerank: bool = True, complete_ties: bool = True, *,
               vectors: bool = False) -> SearchResult:
        """The top k of the coarse-to-fine ranking.

        The pool is the first ``candidates`` (default `DEFAULT_CANDIDATES`) items
        of the Hamming ranking, widened to every item tied at its farthest
        distance (``complete_ties``, up to `TIE_CAP`); it is re-ordered by the
        index's signal, and the Hamming ranking continues after it. Neither
        depends on k. Without features, a float store or with ``rerank=False``
        the ranking is Hamming alone (ties by position, whole tie groups taken
        into account the same way). ``vectors=True``: ``features`` are fine-stage
        vectors already.
        """
        if k < 1:
            raise HashindexError(f"k={k}: expected a positive number of results")
        if k > self.count:
            raise HashindexError(f"k={k}: the index holds only {self.count} items")
        pool_size = min(candidates or DEFAULT_CANDIDATES, self.count)
        do_rerank = rerank and self.rerank is not None and features is not None
        ham, pos = self.coarse(codes, max(pool_size, k))
        if complete_ties:
            ham, pos = self.complete_ties(codes, ham, pos, cap=max(TIE_CAP, pool_size, k))
        dist = np.full(pos.shape, np.nan, np.float32)
        if do_rerank:
            in_pool = self._pool_mask(ham, pos, pool_size)
            width = int(in_pool.sum(axis=1).max())
            head_pos = pos[:, :width]
            d = self.float_distances(features, np.where(in_pool[:, :width], head_pos, MISSING), vectors=vectors)
            d[~in_pool[:, :width]] = np.inf  # outside the pool: stays in Hamming order after it
            missing = head_pos < 0  # padding of shorter rows: last, whatever its -1 Hamming says
            order = np.lexsort((np.where(missing, self.count, head_pos),
                                np.where(missing, np.iinfo(np.int32).max, ham[:, :width]), d), axis=-1)
            pos[:, :width], ham[:, :width] = (np.take_along_axis(a[:, :width], order, 1) for a in (pos, ham))
            dist[:, :width] = np.take_along_axis(np.where(np.isinf(d), np.nan, d), order, 1)
        ham, pos, dist = ham[:, :k], pos[:, :k], dist[:, :k]
        ids = np.where(pos < 0, MISSING, self.ids[np.maximum(pos, 0)])
        return SearchResult(ids=ids, positions=pos, hamming=ham, distance=dist)

    @staticmethod
    def _pool_mask(ham: np.ndarray, pos: np.ndarray, pool_size: int) -> np.ndarray:
        """Which entries of a (Hamming, position)-ordered list are in the pool.

        The pool is every item as close as the ``pool_size``-th one: a whole tie
        group, in the list as `complete_ties` left it (so the same items whatever k).
        """
        bound = ham[:, min(pool_size, ham.shape[1]) - 1:min(pool_size, ham.shape[1])]
        bound = np.where(bound < 0, np.iinfo(np.int32).max, bound)
        capped = np.arange(ham.shape[1]) < max(TIE_CAP, pool_size)
        return (pos >= 0) & (ham <= bound) & capped

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every item within Hamming distance <= radius (inclusive), per query.

        Returns [(positions, distances)] ordered by (distance, position). Faiss's
        binary range search keeps d < radius, so it is asked for radius + 1.
        """
        if radius < 0:
            raise HashindexError(f"--radius {radius}: expected 0 or more")
        try:
            lims, dist, pos = self.binary.range_search(self._pad(codes), radius + 1)
        except RuntimeError:
            raise HashindexError(f"--radius: the {self.meta['binary']['kind']} index has no range search "
                                 "(build with --binary flat, ivf or multihash)") from None
        out = []
        for i in range(len(lims) - 1):
            d, p = dist[lims[i]:lims[i + 1]], pos[lims[i]:lims[i + 1]].astype(np.int64)
            order = np.lexsort((p, d))
            out.append((p[order], d[order].astype(np.int32)))
        return out


def _encode_images(index: Index, images: list[str], model: str | None, device: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Decode and encode query image files with the index's model: (codes, fine-stage vectors)."""
    from .data import BadImage, FilesSource
    from .model import find_model_for, load_model

    hm = load_model(model if model else find_model_for(index.model_id), device)
    index.check_model(hm.model_id)
    src = FilesSource(images)
    arrays = []
    for i, path in enumerate(images):
        try:
            arrays.append(src.read_array(i, hm.input_size, hm.channels))
        except BadImage as e:
            what = "no such file" if e.reason == "missing" else f"cannot be decoded ({e.reason})"
            raise HashindexError(f"IMAGE {path}: {what}") from None
    codes, feats = hm.encode(np.stack(arrays))
    return codes, index.query_vectors(feats)


def indexed_queries(index: Index, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(codes, fine-stage vectors) of indexed items used as queries (zeros without a float store)."""
    codes, stored = index.items(index.positions_of(np.array(ids)))
    if stored is None:
        return codes, np.zeros((len(codes), 1), np.float32)
    return codes, query_from_database(index.signal, stored)


def query(index: str | Path | Index, images: list[str], by_id: list[int], *, model: str | None = None,
          k: int = 10, candidates: int | None = None, radius: int | None = None, rerank: bool = True,
          complete_ties: bool = True, device: str = "cpu", shard_actors: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """Search with image files and/or indexed items; per-query result dicts.

    ``index``: an INDEX_DIR or a loaded Index; ``shard_actors``: Ray options to
    open a sharded INDEX_DIR with one actor per shard.
    """
    if not images and not by_id:
        raise HashindexError("nothing to query: give IMAGE paths or --by-id ID")
    check_candidates(candidates, k)
    if not isinstance(index, Index):
        index = Index.load(index, shard_actors=shard_actors)
    codes, vecs, names = [], [], []
    if images:
        c, v = _encode_images(index, images, model, device)
        codes.append(c)
        vecs.append(v)
        names += images
    if by_id:
        c, v = indexed_queries(index, by_id)
        codes.append(c)
        vecs.append(v)
        names += [f"id:{i}" for i in by_id]
    width = max(v.shape[1] for v in vecs)
    vecs = [v if v.shape[1] == width else np.zeros((len(v), width), np.float32) for v in vecs]
    return search_vectors(index, np.concatenate(codes), np.concatenate(vecs).astype(np.float32), names,
                          k=k, candidates=candidates, radius=radius, rerank=rerank, complete_ties=complete_ties)


def search_vectors(index: Index, codes_arr: np.ndarray, vecs: np.ndarray, names: list[str], *,
                   k: int = 10, candidates: int | None = None, radius: int | None = None,
                   rerank: bool = True, complete_ties: bool = True) -> list[dict[str, Any]]:
    """Result dicts for encoded queries (codes and fine-stage vectors): the top k, or every item within ``radius``."""
    if radius is None:
        res = index.search(codes_arr, vecs, k, candidates, rerank, complete_ties, vectors=True)
        return result_rows(index, res, names)
    hits = index.range_search(codes_arr, radius)
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


def format_table(rows: list[dict[str, Any]]) -> str:
    """Human-readable result table, one block per query."""
    lines = []
    for row in rows:
        lines.append(f"query {row['query']}: {len(row['results'])} results")
        lines.append(f"{'rank':>5} {'id':>10} {'hamming':>7} {'distance':>10}  {'class':<12} path")
        for h in row["results"]:
            dist = "-" if h["distance"] is None else f"{h['distance']:.4f}"
            cls = h["class"] if h["class"] is not None else str(h["label"])
            lines.append(f"{h['rank']:>5} {h['id']:>10} {h['hamming']:>7} {dist:>10}  {cls:<12} {h['path']}")
    return "\n".join(lines)


def check_candidates(candidates: int | None, k: int) -> None:
    """An explicit pool must hold the k results (the default pool is fixed; past it, Hamming order continues)."""
    if candidates is not None and candidates < k:
        raise HashindexError(f"--candidates {candidates}: must be at least --k {k}")


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
            label = int(index.labels[pos])
            hits.append({"rank": r + 1, "id": int(result.ids[q, r]), "path": paths[q * k + r],
                         "label": label, "class": names[label] if 0 <= label < len(names) else None,
                         "hamming": int(result.hamming[q, r]),
                         "distance": None if np.isnan(result.distance[q, r]) else float(result.distance[q, r])})
        rows.append({"query": qname, "results": hits})
    return rows


# ---------------------------------------------------------------------- batch job

OUTPUT_FORMATS = ("h5", "jsonl", "csv")


def output_format(out: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in OUTPUT_FORMATS:
            raise HashindexError(f"--format {fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    suffix = out.suffix.lower().lstrip(".")
    return {"hdf5": "h5", "h5": "h5", "jsonl": "jsonl", "csv": "csv"}.get(suffix, "h5")


def _query_shards(index: Index, queries: str | Path, parts: Path, model: str | None, device: str,
                  progress: bool, log):
    """The query shards: given directly, or extracted on the fly from an image source."""
    from .store import MANIFEST, ShardSet

    if (Path(queries) / MANIFEST).exists():
        shards = ShardSet(queries, "--queries")
        index.check_model(shards.model_id, f"--queries {queries}")
        return shards
    if model is None:
        raise HashindexError(f"--queries {queries}: an image source needs --model to encode it "
                             "(or pass a shard directory made by hashindex extract)")
    from .extract import extract
    from .model import load_model

    hm = load_model(model, device)
    index.check_model(hm.model_id)
    extract(hm, str(queries), parts / "queries", progress=progress, log=log)
    return ShardSet(parts / "queries", "--queries")


def batch_search(index: str | Path | Index, queries: str | Path, out: str | Path, *, k: int = 10,
                 candidates: int | None = None, rerank: bool = True, batch_size: int = 4096,
                 fmt: str | None = None, model: str | None = None, device: str = "cpu",
                 overwrite: bool = False, progress: bool = True, backend: str = "local",
                 ray_options: dict[str, Any] | None = None, shard_actors: bool = False,
                 log=print) -> dict[str, Any]:
    """Search every query of a shard directory (or image source); write one results file.

    Work is saved per batch in ``OUT.parts/`` (atomic files); a rerun after an
    interruption continues from the last completed batch, and the final file
    equals an uninterrupted run's. Returns the job description.

    ``backend="ray"`` runs batches as tasks on Ray workers that each map the
    whole index; with ``shard_actors`` the batches run here instead and each
    fans out to one Ray actor per index shard (an index past one machine's RAM).
    """
    import shutil

    from tqdm import tqdm

    from .files import atomic_write_json, read_json, sha256_file
    from .store import MANIFEST

    if backend not in ("local", "ray"):
        raise HashindexError(f"--backend {backend}: expected local or ray")
    if shard_actors and backend != "ray":
        raise HashindexError("--shard-actors: needs --backend ray")
    if not isinstance(index, Index):
        actor_options = {k: v for k, v in (ray_options or {}).items() if k in ("address", "num_workers")}
        index = Index.load(index, shard_actors=actor_options if shard_actors else None)
    check_candidates(candidates, k)
    out = Path(out)
    fmt = output_format(out, fmt)
    if out.exists() and not overwrite:
        raise HashindexError(f"--out {out}: already exists (pass --overwrite to replace it)")
    parts = out.with_name(out.name + ".parts")
    if overwrite and parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    shards = _query_shards(index, queries, parts, model, device, progress, log)
    job = {"index": str(index.dir.resolve()), "index_built": index.meta["built"], "model_id": index.model_id,
           "queries": str(shards.dir.resolve()), "queries_manifest_sha256": sha256_file(shards.dir / MANIFEST),
           "k": k, "candidates": candidates, "rerank": rerank, "batch_size": batch_size}
    if (parts / "job.json").exists() and read_json(parts / "job.json") != job:
        raise HashindexError(f"--out {out}: an unfinished job with other settings is in {parts} "
                             "(rerun it with the same settings, or pass --overwrite)")
    atomic_write_json(parts / "job.json", job)

    data = shards.load(("codes", "features", "ids"))
    if not rerank:
        data["features"] = None
    n = len(data["ids"])
    n_batches = -(-n // batch_size)
    todo = [b for b in range(n_batches) if not (parts / f"part-{b:06d}.npz").exists()]
    settings = {"k": k, "candidates": candidates, "rerank": rerank, "batch_size": batch_size}
    if backend == "ray" and todo and not shard_actors:
        from .distributed import run_parts

        run_parts(str(index.dir), data, todo, lambda b: str(parts / f"part-{b:06d}.npz"), settings,
                  progress=progress, **(ray_options or {}))
    else:
        for b in tqdm(todo, desc="query", unit="batch", disable=not progress):
            search_part(index, data, b, parts / f"part-{b:06d}.npz", **settings)
    merged = {name: np.concatenate([np.load(parts / f"part-{b:06d}.npz")[name] for b in range(n_batches)])
              for name in ("ids", "hamming", "distance")}
    _write_results(out, fmt, data["ids"], merged, job)
    shutil.rmtree(parts)
    log(f"wrote {out}: {n} queries x top {k} ({fmt})")
    return {**job, "out": str(out), "queries_count": n, "format": fmt}


def search_part(index: Index, data: dict[str, Any], b: int, path: str | Path, *, k: int,
                candidates: int | None, rerank: bool, batch_size: int) -> None:
    """Search query rows [b * batch_size, (b+1) * batch_size) and save them atomically as one part."""
    from .files import atomic_path

    sl = slice(b * batch_size, min((b + 1) * batch_size, len(data["ids"])))
    feats = data["features"][sl] if data["features"] is not None else None
    res = index.search(data["codes"][sl], feats, k, candidates, rerank)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=res.ids, hamming=res.hamming, distance=res.distance)


def _write_results(out: Path, fmt: str, query_ids: np.ndarray, res: dict[str, np.ndarray],
                   job: dict[str, Any]) -> None:
    """Write the merged results atomically in the chosen format."""
    from .files import atomic_path

    with atomic_path(out) as tmp:
        if fmt == "h5":
            with h5py.File(tmp, "w") as f:
                f.create_dataset("query_ids", data=query_ids.astype(np.int64))
                for name, arr in res.items():
                    f.create_dataset(name, data=arr)
                for key, value in job.items():
                    f.attrs[key] = "none" if value is None else value
            return
        with open(tmp, "w", encoding="utf-8") as f:
            if fmt == "csv":
                f.write("query_id,rank,id,hamming,distance\n")
            for q, qid in enumerate(query_ids):
                ok = res["ids"][q] >= 0
                ids, ham, dist = res["ids"][q][ok], res["hamming"][q][ok], res["distance"][q][ok]
                if fmt == "jsonl":
                    f.write(json.dumps({"query_id": int(qid), "ids": ids.tolist(), "hamming": ham.tolist(),
                                        "distance": [None if np.isnan(d) else float(d) for d in dist]}) + "\n")
                else:
                    for r, (i, h, d) in enumerate(zip(ids, ham, dist), 1):
                        f.write(f"{qid},{r},{i},{h},{'' if np.isnan(d) else repr(float(d))}\n")
