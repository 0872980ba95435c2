"""Coarse-to-fine retrieval over an opened INDEX_DIR (or arrays in memory): the `Index` class.

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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import h5py
import numpy as np

from ..errors import HashindexError
from ..codes import pad_codes
from ..signals import Head, feature_field, query_vectors
from .buckets import sort_hits
from .kinds import BinaryParts, FloatParts, binary_range_search, binary_search, subset_distances
from .faiss_files import read_binary, read_float
from .layout import (RERANK_FILE, binary_files, bucketed, check_index, find_ids, open_table, read_float_parts,
                     read_head, read_index_meta, rerank_signal)
from .pool import MISSING, TIE_CAP, default_pool, first_k_order, pool_mask
from .remote import remote_parts


@dataclass
class SearchResult:
    """Top-k per query; -1 ids / positions where the index had fewer results."""

    ids: np.ndarray  # (Q, k) int64 stable ids
    positions: np.ndarray  # (Q, k) int64 rows of the index
    hamming: np.ndarray  # (Q, k) int32
    distance: np.ndarray  # (Q, k) float32 signal distance (squared L2 of its vectors), nan outside the pool


class Index:
    """A built INDEX_DIR, loaded for searching."""

    def __init__(self, meta: dict[str, Any], binary: faiss.IndexBinary, rerank: faiss.Index | None,
                 ids: np.ndarray, labels: np.ndarray, directory: Path | None = None, head: Head | None = None,
                 label_sets: np.ndarray | None = None):
        self.meta, self.binary, self.rerank, self.dir = meta, binary, rerank, directory
        self.ids, self.labels, self.head = ids, labels, head
        self.label_sets = label_sets  # (N, C) bool for a multi-label collection
        self.signal = rerank_signal(meta)
        self.default_candidates = default_pool(rerank.d if rerank is not None else None)
        counts = {"table.h5": len(self.ids), "binary index": self.binary.ntotal, "index.json count": meta["count"]}
        if rerank is not None:
            counts["rerank.faiss"] = rerank.ntotal
        if len(set(counts.values())) > 1:
            raise HashindexError(f"index_dir={self.dir}: item counts disagree "
                                 f"({', '.join(f'{k} {v}' for k, v in counts.items())}); rebuild it")
        if rerank is not None and meta["rerank"].get("dim", rerank.d) != rerank.d:
            raise HashindexError(f"index_dir={self.dir}: index.json says rerank.dim {meta['rerank']['dim']}, "
                                 f"rerank.faiss holds {rerank.d}-d vectors; rebuild it")
        self._id_order = np.argsort(self.ids, kind="stable")
        self._table: h5py.File | None = None  # the table.h5 it was loaded with (`load`)
        self._digests: tuple[np.ndarray, np.ndarray] | None = None  # input digests sorted, their positions

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True,
             shard_actors: dict[str, Any] | None = None, arg: str = "index_dir") -> "Index":
        """Open a built INDEX_DIR (Faiss files memory-mapped where Faiss allows).

        ``shard_actors`` (Ray options, e.g. ``{"address": ...}``) puts each binary
        shard of a ``--shards S`` index in its own Ray actor instead of this process.
        ``arg``: the argument a missing or unbuilt directory is named by in the error.
        """
        d = Path(directory)
        meta = read_index_meta(d, arg)
        check_index(d, meta)  # verified on read (a cache spares an unchanged index the rehash)
        shards = meta["binary"].get("shards")
        rerank = None
        if shard_actors is not None:
            if not shards:
                raise HashindexError(f"shard_actors=True: {d} has one binary index, not shards "
                                     "(build it with shards=S)")
            binary, rerank = remote_parts(d, meta, shard_actors)
        else:
            parts = [read_binary(d / name, mmap, bucketed(meta)) for name in binary_files(meta)]
            width = meta["binary"]["padded_bytes"] * 8
            if any(part.d != width for part in parts):
                raise HashindexError(f"index_dir={d}: index.json says {width}-bit codes, the binary index holds "
                                     f"{parts[0].d}-bit ones; rebuild it")
            binary = BinaryParts(parts, [s["start"] for s in shards]) if shards else parts[0]
        if rerank is None and meta["rerank"]["kind"] != "none":
            rerank = read_float_parts(d, meta, mmap) if meta["rerank"].get("shards") else \
                read_float(d / RERANK_FILE, mmap)
        table = open_table(d)  # held open: lazy reads come from this version even once INDEX_DIR is replaced
        label_sets = table["label_sets"][()].astype(bool) if "label_sets" in table else None
        index = cls(meta, binary, rerank, table["ids"][()], table["labels"][()], d, read_head(d), label_sets)
        index._table = table
        return index

    @classmethod
    def in_memory(cls, codes: np.ndarray, features: np.ndarray | None, bits: int, *,
                  binary: str = "flat", rerank: str = "flat", ids: np.ndarray | None = None,
                  labels: np.ndarray | None = None, signal: str = "l2", head: Head | None = None) -> "Index":
        """An index over arrays, built in memory with build's code (benchmarks, tests, notebooks).

        ``signal`` orders the re-ranked pool (``l2`` here; `build` chooses per collection); ``features`` are
        the rows it reads (`signals.feature_field`: the mid features for ``mid``).
        """
        from ..signals import check_signal, database_vectors
        from .kinds import default_params, make_binary_index, new_float_store, padded_bytes

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

    def targets(self) -> np.ndarray:
        """What relevance is judged on: the items' label sets (N, C) in a multi-label index, else labels."""
        return self.label_sets if self.label_sets is not None else self.labels

    def check_model(self, model_id: str, what: str = "model") -> None:
        if model_id != self.model_id:
            raise HashindexError(f"{what}: model {model_id} differs from the index's model {self.model_id} "
                                 "(codes of different models cannot be compared)")

    # ------------------------------------------------------------------ lookups

    def positions_of(self, ids: np.ndarray, missing: int | None = None) -> np.ndarray:
        """Index rows of stable ids; one-line error for an id not in the index (``missing``: its row instead)."""
        ids = np.asarray(ids, dtype=np.int64)
        positions, ok = find_ids(self.ids, self._id_order, ids)
        if missing is not None:
            return np.where(ok, positions, missing)
        if not ok.all():
            raise HashindexError(f"by_id={ids[~ok][0]}: no item with this id in {self.dir}")
        return positions

    def positions_of_inputs(self, digests: np.ndarray) -> np.ndarray:
        """Per query, the position of an indexed item whose net input was the very same pixels (``digests``:
        `codes.input_digests` of the queries; the first such item where several are), -1 for none. All -1 for
        an index built in memory or from shards extracted before digests were stored (0: "not known").

        The first call sorts the column and keeps it (16 bytes an item; sorting 1M took 0.09 s here, 10M 2.3 s; the
        servers do it when they open the index)."""
        digests = np.asarray(digests, dtype=np.uint64)
        out = np.full(len(digests), -1, np.int64)
        if self._table is None or "input_digests" not in self._table or not len(digests) or not len(self.ids):
            return out
        if self._digests is None:
            column = self._table["input_digests"][()]
            order = np.argsort(column, kind="stable")  # equal digests keep position order: the first one wins
            self._digests = column[order], order
        stored, order = self._digests
        at = np.minimum(np.searchsorted(stored, digests), len(stored) - 1)
        hit = (stored[at] == digests) & (digests != 0)
        out[hit] = order[at[hit]]
        return out

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored (codes, features) of index rows; features None without a re-rank store."""
        positions = np.asarray(positions, dtype=np.int64)
        feats = self.rerank.reconstruct_batch(positions) if self.rerank is not None else None
        return self.codes(positions), feats

    def codes(self, positions: np.ndarray) -> np.ndarray:
        """Stored codes of index rows (unpadded, from the table), without rebuilding their features."""
        positions = np.asarray(positions, dtype=np.int64)
        uniq, inv = np.unique(positions, return_inverse=True)
        return self._column("codes", uniq)[inv.ravel()]

    def table_codes(self) -> np.ndarray:
        """Every item's unpadded code, in position order (from the table)."""
        return self._column("codes")

    def paths(self, positions: np.ndarray) -> list[str]:
        """Source paths of index rows (read lazily from the table)."""
        flat = np.asarray(positions, dtype=np.int64).ravel()
        valid = np.unique(flat[flat >= 0])
        got = self._column("paths", valid) if len(valid) else []
        lut = {int(p): (s.decode() if isinstance(s, bytes) else s) for p, s in zip(valid, got)}
        return [lut.get(int(p), "") for p in flat]

    def _column(self, name: str, positions: np.ndarray | None = None) -> np.ndarray:
        """A table column, whole or at sorted unique ``positions``, from the table.h5 the index was loaded with.

        The file stays open: a removal or a rebuild replaces INDEX_DIR while a service still answers from this
        index (until SIGHUP), and rows read from the new table would be other items' (positions move)."""
        if self._table is None:
            raise HashindexError("this index was built in memory: it has no table of paths")
        column = self._table[name]
        return column[()] if positions is None else column[positions]

    # ------------------------------------------------------------------ search

    def _pad(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.meta["code_bytes"]:
            raise HashindexError(f"query codes of shape {codes.shape}: expected (n, {self.meta['code_bytes']})")
        return pad_codes(codes, self.meta["binary"]["padded_bytes"])

    def check_nprobe(self, nprobe: int | None) -> None:
        """A per-call nprobe needs an IVF coarse index and 1 <= nprobe <= its lists (one-line error)."""
        if nprobe is None:
            return
        binary = self.meta["binary"]
        if binary["kind"] != "ivf":
            raise HashindexError(f"nprobe={nprobe}: the {binary['kind']} coarse index has no nprobe "
                                 "(only binary=ivf has)")
        if not 1 <= nprobe <= binary["nlist"]:
            raise HashindexError(f"nprobe={nprobe}: expected 1 to {binary['nlist']} (the index's lists)")

    def _binary_call(self, method: str, codes: np.ndarray, arg: int, nprobe: int | None):
        """The coarse index's search / range_search. An IVF index is always given its nprobe per call (the
        caller's, else index.json's), so one thread's override never reaches another thread's search."""
        self.check_nprobe(nprobe)
        if self.meta["binary"]["kind"] == "ivf" and nprobe is None:
            nprobe = self.meta["binary"]["nprobe"]
        if isinstance(self.binary, BinaryParts):
            return getattr(self.binary, method)(self._pad(codes), arg, nprobe)
        call = binary_search if method == "search" else binary_range_search
        return call(self.binary, self._pad(codes), arg, nprobe)

    def coarse(self, codes: np.ndarray, m: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-m positions by Hamming distance, ordered by (distance, position)."""
        m = min(m, self.count)
        dist, pos = self._binary_call("search", codes, m, nprobe)
        pos = pos.astype(np.int64)
        dist = np.where(pos < 0, np.iinfo(np.int32).max, dist).astype(np.int64)
        key = dist * (self.count + 1) + np.where(pos < 0, self.count, pos)
        order = np.argsort(key, axis=1, kind="stable")
        dist = np.take_along_axis(dist, order, 1)
        pos = np.take_along_axis(pos, order, 1)
        return np.where(pos < 0, MISSING, dist).astype(np.int32), pos

    @property
    def feature_field(self) -> str:
        """The stored field (and `HashModel.encode_fields` key) a query's fine-stage vectors are made from:
        "features", or "mid_features" for the ``mid`` signal."""
        return feature_field(self.signal)

    def search_inputs(self, fields: Mapping[str, np.ndarray], rerank: bool = True
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """(codes, rows of `feature_field`) from everything given for some queries by field name
        (`HashModel.encode_fields`, query shard rows); a one-line error when the fine stage needs a field
        that is not among them."""
        if self.rerank is not None and rerank and fields.get(self.feature_field) is None:
            raise HashindexError(f"codes: no {self.feature_field!r} among the fields given, which the index's "
                                 f"signal {self.signal!r} reads")
        return fields["codes"], fields.get(self.feature_field)

    def query_vectors(self, features: np.ndarray) -> np.ndarray:
        """The fine-stage vectors of queries given their rows of `feature_field` (a placeholder column without
        a float store)."""
        if self.rerank is None:  # no fine stage (rerank none, or auto found Hamming alone best)
            return np.zeros((len(features), 1), np.float32)
        return query_vectors(self.signal, features, self.head)

    def float_distances(self, features: np.ndarray, pos: np.ndarray, *, vectors: bool = False) -> np.ndarray:
        """Signal distance between each query and its candidates (inf where pos is -1).

        ``features`` are the queries' rows of `feature_field`, or with ``vectors=True``
        their fine-stage vectors already (`query_vectors`, `stored_queries`).
        """
        x = np.ascontiguousarray(features if vectors else self.query_vectors(features), dtype=np.float32)
        if isinstance(self.rerank, FloatParts):  # each part (here or in its actor) computes its own candidates'
            return self.rerank.distances(x, pos)
        return subset_distances(self.rerank, x, pos)

    def complete_ties(self, codes: np.ndarray, ham: np.ndarray, pos: np.ndarray, cap: int,
                      nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Widen each pool to every item as close as its farthest member (up to ``cap``).

        With well-trained codes thousands of items share a code, and a pool cut
        at m items keeps an arbitrary slice of that tie group; re-ranking the
        whole group is what lets the float features pick the best of it.
        Costs one range search per distinct boundary distance.
        """
        if self.meta["binary"]["kind"] == "hnsw" and not bucketed(self.meta):
            return ham, pos  # a graph over every item (built before buckets) has no range search
        bound = ham[:, -1]
        pools = [(ham[i], pos[i]) for i in range(len(ham))]
        for r in np.unique(bound[bound >= 0]):
            qs = np.flatnonzero(bound == r)
            for qi, (p, d) in zip(qs, self.range_search(codes[qs], int(r), nprobe)):
                if len(p) > len(pools[qi][1]):
                    pools[qi] = (d[:cap], p[:cap])
        width = max(len(p) for _, p in pools)
        out_h = np.full((len(pools), width), MISSING, np.int32)
        out_p = np.full((len(pools), width), MISSING, np.int64)
        for i, (d, p) in enumerate(pools):
            out_h[i, :len(p)], out_p[i, :len(p)] = d, p
        return out_h, out_p

    def search(self, codes: np.ndarray | Mapping[str, np.ndarray], features: np.ndarray | None = None, k: int = 10,
               candidates: int | None = None, rerank: bool = True, complete_ties: bool = True, *,
               vectors: bool = False, nprobe: int | None = None) -> SearchResult:
        """The top k of the coarse-to-fine ranking.

        ``codes``: the queries' packed codes, or everything the model gives for them by field name
        (`HashModel.encode_fields`, or rows read from query shards), from which the index takes the codes and
        the feature its signal reads (``features`` then unused): ``index.search(model.encode_fields(images))``.

        The pool is the first ``candidates`` (default `default_pool`: a fixed read budget) items
        of the Hamming ranking, widened to every item tied at its farthest
        distance (``complete_ties``, up to `TIE_CAP`); it is re-ordered by the
        index's signal, and the Hamming ranking continues after it. Neither
        depends on k. Without features, a float store or with ``rerank=False``
        the ranking is Hamming alone (ties by position, whole tie groups taken
        into account the same way). ``features``: the queries' rows of `feature_field` (the pooled feature,
        or the mid feature for the ``mid`` signal); ``vectors=True``: they are fine-stage
        vectors already. ``nprobe``: lists an IVF coarse index scans for this call
        (default: the value `build` chose for its recall target, in index.json).
        """
        if isinstance(codes, Mapping):
            codes, features = self.search_inputs(codes, rerank)
        if k < 1:
            raise HashindexError(f"k={k}: expected a positive number of results")
        if k > self.count:
            raise HashindexError(f"k={k}: the index holds only {self.count} items")
        pool_size = min(candidates or self.default_candidates, self.count)
        do_rerank = rerank and self.rerank is not None and features is not None
        ham, pos = self.coarse(codes, max(pool_size, k), nprobe)
        if complete_ties:
            ham, pos = self.complete_ties(codes, ham, pos, cap=max(TIE_CAP, pool_size, k), nprobe=nprobe)
        dist = np.full(pos.shape, np.nan, np.float32)
        if do_rerank:
            in_pool = pool_mask(ham, pos, pool_size)
            width = int(in_pool.sum(axis=1).max())
            head_pos = pos[:, :width]
            d = self.float_distances(features, np.where(in_pool[:, :width], head_pos, MISSING), vectors=vectors)
            d[~in_pool[:, :width]] = np.inf  # outside the pool: stays in Hamming order after it
            missing = head_pos < 0  # padding of shorter rows: last, whatever its -1 Hamming says
            order = first_k_order(d, np.where(missing, np.iinfo(np.int32).max, ham[:, :width]),
                                  np.where(missing, self.count, head_pos), k)
            kk = order.shape[1]
            pos[:, :kk], ham[:, :kk] = (np.take_along_axis(a[:, :width], order, 1) for a in (pos, ham))
            dist[:, :kk] = np.take_along_axis(np.where(np.isinf(d), np.nan, d), order, 1)
        ham, pos, dist = ham[:, :k], pos[:, :k], dist[:, :k]
        ids = np.where(pos < 0, MISSING, self.ids[np.maximum(pos, 0)])
        return SearchResult(ids=ids, positions=pos, hamming=ham, distance=dist)

    def range_search(self, codes: np.ndarray, radius: int, nprobe: int | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every item within Hamming distance <= radius (inclusive), per query.

        Returns [(positions, distances)] ordered by (distance, position). Faiss's
        binary range search keeps d < radius, so it is asked for radius + 1.
        """
        if radius < 0:
            raise HashindexError(f"radius={radius}: expected 0 or more")
        # A radius past the code's width holds every item; Faiss takes a C int (radius 1e11 was a TypeError)
        width = self.meta["binary"]["padded_bytes"] * 8
        try:
            lims, dist, pos = self._binary_call("range_search", codes, min(radius, width) + 1, nprobe)
        except RuntimeError:
            raise HashindexError(f"radius={radius}: the {self.meta['binary']['kind']} index has no range search "
                                 "(an HNSW index built before graphs over distinct codes: rebuild it)") from None
        lims = np.asarray(lims, np.int64)  # Faiss gives uint64
        rows = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
        d, p = sort_hits(rows, dist, pos)  # one sort for all queries (as fast as a lexsort each, measured)
        return [(p[a:b], d[a:b].astype(np.int32)) for a, b in zip(lims[:-1], lims[1:])]
