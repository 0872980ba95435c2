"""Faiss index kinds: binary (coarse) and float (fine) indexes, code padding, binary index parts.

Codes are zero-padded to the nearest code size Faiss has a fast Hamming
kernel for (4, 8, 16, 20, 32, 64 bytes): zero bits change no distance, and
a 6-byte (48-bit) flat search is several times slower than an 8-byte one.

A binary index may be split into *parts* over consecutive position ranges
(`BinaryParts`; ``build --shards S``, ``binary.shards`` in index.json), each
answering for its own rows and merged exactly. ("Shard" alone means an HDF5
extraction file.)
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import faiss
import numpy as np

from ..errors import HashindexError
from .buckets import BucketedBinary, graph_search
from .pool import packed_order

FAST_CODE_BYTES = (4, 8, 16, 20, 32, 64)
BINARY_KINDS = ("flat", "ivf", "hnsw", "multihash")
RERANK_KINDS = ("flat", "fp16", "sq8", "pq", "none")


def padded_bytes(code_bytes: int) -> int:
    """Smallest Faiss fast-path code size holding ``code_bytes`` (multiples of 8 past 64)."""
    for size in FAST_CODE_BYTES:
        if size >= code_bytes:
            return size
    return -(-code_bytes // 8) * 8


IVF_TRAIN_PER_LIST = 64  # k-means points per IVF list (faiss warns under 39; its default cap is 256)


def auto_nlist(n: int) -> int:
    """IVF lists for n codes: the power of two nearest 1.3 sqrt(n), at most 16,384 and n / 39.

    Measured on clustered 48-bit codes (tools/bench_sublinear.py, docs/RESULTS.md "Sublinear coarse
    search"), at recall@10 ~0.97, one thread: at 100M, 16,384 lists answer in 0.12 ms (4,096: 0.27 ms;
    the flat scan 55 ms) for a 560 s build (4,096: 138 s); at 10M, 4,096 lists reach 0.96 in 0.04 ms
    (16,384: 0.02 ms, but a 358 s build against 23 s). More lists cost k-means and assignment time
    (N x nlist Hamming distances) for less and less search time.
    """
    nlist = 2 ** round(math.log2(1.3 * math.sqrt(max(n, 1))))
    return int(max(1, min(nlist, 16384, n // 39)))


def default_params(kind: str, n: int, bits: int) -> dict[str, Any]:
    """Default parameters per binary index kind, scaled with the database size."""
    if kind == "ivf":
        nlist = auto_nlist(n)
        return {"nlist": nlist, "nprobe": max(1, min(nlist, int(math.ceil(nlist / 16))))}
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 80, "efSearch": 128}
    if kind == "multihash":
        b = 16 if bits >= 32 else max(4, bits // 2)
        return {"nhash": max(1, bits // b), "b": b, "nflip": 1}
    return {}


def make_binary_index(kind: str, dim: int, params: dict[str, Any]) -> faiss.IndexBinary:
    """A new, empty binary index of ``dim`` (padded) bits."""
    if kind == "flat":
        index = faiss.IndexBinaryFlat(dim)
        index.use_heap = False  # top k by counting, not a heap: same results, faster (faiss_files.fast_topk)
        return index
    if kind == "ivf":
        quantizer = faiss.IndexBinaryFlat(dim)
        index = faiss.IndexBinaryIVF(quantizer, dim, params["nlist"])
        quantizer.this.disown()  # the IVF index owns and frees its quantizer
        index.own_fields = True
        index.nprobe = params["nprobe"]
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
        return index
    if kind == "hnsw":  # a graph over the distinct codes, each standing for its bucket of items (buckets.py)
        graph = faiss.IndexBinaryHNSW(dim, params["M"])
        graph.hnsw.efConstruction = params["efConstruction"]
        graph.hnsw.efSearch = params["efSearch"]
        return BucketedBinary(graph)
    if kind == "multihash":
        index = faiss.IndexBinaryMultiHash(dim, params["nhash"], params["b"])
        index.nflip = params["nflip"]
        return index
    raise HashindexError(f"binary={kind}: expected one of {', '.join(BINARY_KINDS)}")


class _Parts:
    """Parts over consecutive position ranges (``parts``, ``starts``, ``sizes``), each asked in turn or by
    ``each`` (e.g. on Ray actors, in parallel)."""

    parts: list
    sizes: list[int]
    each: Callable[[str, list[tuple]], list] | None

    @property
    def ntotal(self) -> int:
        return sum(self.sizes)

    def _each(self, method: str, args: list[tuple]) -> list:
        """``part.method(*args[s])`` for every part s: here, or by ``each``."""
        if self.each is not None:
            return self.each(method, args)
        return [getattr(part, method)(*a) for part, a in zip(self.parts, args)]


class BinaryParts(_Parts):
    """Binary indexes over consecutive position ranges, searched as one.

    Each shard answers for its own rows; results are shifted to global
    positions and merged exactly (top-k by (distance, position)), so S shards
    return what one index over all rows returns. The same fan-out works with
    one shard per process or machine.
    """

    def __init__(self, parts: list, starts: list[int], sizes: list[int] | None = None,
                 each: Callable[[str, list[tuple]], list] | None = None, nlist: int | None = None,
                 multihash: bool | None = None):
        # Faiss indexes held here answer through StorePart, as they do in an actor (per-call nprobe)
        parts = parts if each is not None else [p if isinstance(p, StorePart) else StorePart(p, None) for p in parts]
        self.parts, self.starts = parts, [int(s) for s in starts]
        self.sizes = [int(n) for n in sizes] if sizes is not None else [int(p.binary.ntotal) for p in parts]
        self.each = each
        local_ivf = each is None and isinstance(parts[0].binary, faiss.IndexBinaryIVF)
        self.nlist = nlist if nlist is not None else (parts[0].binary.nlist if local_ivf else None)  # IVF parts
        self.multihash = bool(multihash if multihash is not None else  # parts that fill with an exact scan
                              each is None and isinstance(parts[0].binary, faiss.IndexBinaryMultiHash))

    def search(self, x: np.ndarray, k: int, nprobe: int | None = None, fill: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top k over every part. With ``fill``, short results are filled as one index fills them, on the merged
        counts, so S parts answer as one index: IVF parts (sharing one quantizer, so probing the same lists)
        with more lists (`fill_ivf`), MultiHash parts with an exact scan of their codes (`fill_exact`)."""
        if not fill:
            return self._merged(x, k, nprobe)
        if self.multihash:
            return fill_exact(lambda xs, exact: self._merged(xs, k, None, exact), x)
        if self.nlist is None:
            return self._merged(x, k, nprobe)
        nprobe = int(self.parts[0].binary.nprobe if nprobe is None else nprobe)
        return fill_ivf(lambda xs, p: self._merged(xs, k, p), x, k, nprobe, self.nlist)

    def _merged(self, x: np.ndarray, k: int, nprobe: int | None, exact: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        dists, poss = [], []
        got = self._each("search", [(x, max(1, min(k, n)), nprobe, False, exact) for n in self.sizes])
        for (d, i), start in zip(got, self.starts):
            poss.append(np.where(i < 0, -1, i + start))
            dists.append(d)
        d, pos = np.concatenate(dists, 1).astype(np.int64), np.concatenate(poss, 1)
        key = np.where(pos < 0, np.iinfo(np.int64).max, d * (self.ntotal + 1) + pos)
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d, order, 1).astype(np.int32), np.take_along_axis(pos, order, 1)

    def range_search(self, x: np.ndarray, radius: int, nprobe: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per_query: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(x))]
        got = self._each("range_search", [(x, radius, nprobe)] * len(self.parts))
        for (lims, d, i), start in zip(got, self.starts):
            for q in range(len(x)):
                per_query[q].append((d[lims[q]:lims[q + 1]], i[lims[q]:lims[q + 1]] + start))
        lims = np.zeros(len(x) + 1, np.int64)
        ds, ps = [], []
        for q, pieces in enumerate(per_query):
            ds += [d for d, _ in pieces]
            ps += [p for _, p in pieces]
            lims[q + 1] = lims[q] + sum(len(d) for d, _ in pieces)
        empty_d, empty_p = np.zeros(0, np.int32), np.zeros(0, np.int64)
        return lims, np.concatenate(ds or [empty_d]), np.concatenate(ps or [empty_p])


def subset_distances(store: faiss.Index, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Squared L2 between each query vector and the stored vectors at its positions (inf where pos < 0).

    Flat stores compute it in Faiss on the candidates only; quantized stores decode the candidates and
    compute the exact distance to the query.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    q, m = pos.shape
    safe = np.ascontiguousarray(np.where(pos < 0, 0, pos), dtype=np.int64)
    out = np.empty((q, m), np.float32)
    if isinstance(store, faiss.IndexFlat):
        store.compute_distance_subset(q, faiss.swig_ptr(x), m, faiss.swig_ptr(out), faiss.swig_ptr(safe))
    else:
        step = max(1, (1 << 20) // max(m, 1))  # bound the decoded vectors held at once
        for s in range(0, q, step):
            uniq, inv = np.unique(safe[s:s + step], return_inverse=True)
            cand = store.reconstruct_batch(uniq)[inv.reshape(-1, m)]
            out[s:s + step] = ((cand - x[s:s + step, None, :]) ** 2).sum(axis=2, dtype=np.float32)
    out[pos < 0] = np.inf
    return out


class StorePart:
    """What one part of a sharded index holds (here, or in a Ray actor): its binary index and its slice of
    the float store, addressed by local positions. Shard-side re-ranking asks it for the distances of its
    own candidates, so the float store never travels to the process that merges."""

    def __init__(self, binary: faiss.IndexBinary | None, store: faiss.Index | None):
        self.binary, self.store = binary, store

    def search(self, x: np.ndarray, k: int, nprobe: int | None = None, fill: bool = True, exact: bool = False):
        return binary_search(exact_codes(self.binary) if exact else self.binary, x, k, nprobe, fill)

    def range_search(self, x: np.ndarray, radius: int, nprobe: int | None = None):
        return binary_range_search(self.binary, x, radius, nprobe)

    def distances(self, x: np.ndarray, local_pos: np.ndarray) -> np.ndarray:
        return subset_distances(self.store, x, local_pos)

    def reconstruct_batch(self, local_pos: np.ndarray) -> np.ndarray:
        return self.store.reconstruct_batch(np.ascontiguousarray(local_pos, dtype=np.int64))


_SET_NPROBE = threading.Lock()


def binary_search(index: faiss.IndexBinary, x: np.ndarray, k: int, nprobe: int | None = None, fill: bool = True):
    """``index.search``, with k results wherever the index holds them.

    An IVF index scans ``nprobe`` lists for this call (None: its own), given as per-call parameters, so the
    index is never changed under a concurrent search; with ``fill``, a query whose lists hold fewer than k
    items is searched again with more (`fill_ivf`). ``max_codes`` goes with the parameters as
    `faiss_files.fast_topk` sets it on the index: a parameters object carries its own 0, which the counting scanner
    reads as "scan nothing" (faiss issue #5555; measured: every result -1 without it). An HNSW graph is
    searched with efSearch at least k (`buckets.graph_search`); a MultiHash index, with ``fill``, answers a
    query it finds fewer than k items for with an exact scan of its codes (`fill_exact`)."""
    if isinstance(index, faiss.IndexBinaryMultiHash) and fill:
        return fill_exact(lambda xs, exact: (exact_codes(index) if exact else index).search(xs, k), x)
    if not isinstance(index, faiss.IndexBinaryIVF):
        return graph_search(index, x, k)
    nprobe = int(index.nprobe if nprobe is None else nprobe)
    if not fill:
        return _ivf_search(index, x, k, nprobe)
    return fill_ivf(lambda xs, p: _ivf_search(index, xs, k, p), x, k, nprobe, index.nlist)


def fill_ivf(search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], x: np.ndarray, k: int,
             nprobe: int, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """``search(x, nprobe)``, and again for the queries with fewer than k results, with as many lists as
    should hold k items going by what they found, until they have k or every list was scanned. The fine stage
    asks for pools of 1,000-17,454 items, and `auto`'s nprobe, tuned for recall@10, scans lists of a few
    hundred (measured on the shipped model's 50,000 CIFAR-10 codes: nprobe 1 of 256 lists gave pools of about
    200 instead of 17,454)."""
    dist, pos = search(x, nprobe)
    short = pos[:, -1] < 0
    while short.any() and nprobe < nlist:
        found = int((pos[short] >= 0).sum(axis=1).min())  # lists hold about found / nprobe items each
        nprobe = min(nlist, max(2 * nprobe, math.ceil(1.5 * nprobe * k / max(found, 1))))
        dist[short], pos[short] = search(x[short], nprobe)
        short = pos[:, -1] < 0
    return dist, pos


def fill_exact(search: Callable[[np.ndarray, bool], tuple[np.ndarray, np.ndarray]], x: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``search(x, False)``, and ``search(x, True)`` (exact) for the queries that got fewer results than asked.

    MultiHash finds only codes with a substring within ``nflip`` bits of the query's, so pools came back short
    (shipped model, CIFAR-10 test queries against the training codes, nflip 0 as `--recall 0.95` chose it: 795
    of 1,000 results on average; pools of 17,454 held 1,763 at nflip 0 and still 5,753 at nflip 3, docs/RESULTS.md
    "as served"), so a short query is answered by the exact scan of the codes its index keeps anyway.
    """
    dist, pos = search(x, False)
    short = pos[:, -1] < 0
    if short.any():
        dist[short], pos[short] = search(x[short], True)
    return dist, pos


def exact_codes(index: faiss.IndexBinary) -> faiss.IndexBinary:
    """The flat index a MultiHash index keeps its codes in (searched exactly, by counting: faiss_files.fast_topk);
    any other index itself."""
    if not isinstance(index, faiss.IndexBinaryMultiHash):
        return index
    storage = faiss.downcast_IndexBinary(index.storage)
    storage.use_heap = False
    return storage


def _ivf_search(index: faiss.IndexBinaryIVF, x: np.ndarray, k: int, nprobe: int):
    params = faiss.SearchParametersIVF()
    params.nprobe, params.max_codes = nprobe, 1 << 62
    return index.search(np.ascontiguousarray(x), k, params=params)


def binary_range_search(index: faiss.IndexBinary, x: np.ndarray, radius: int, nprobe: int | None = None):
    """``index.range_search`` with ``nprobe`` as in `binary_search`. Faiss's binary IVF range search takes no
    per-call parameters ("search params not supported for this index", 1.15.1), so the value is set on the
    index under a lock and put back; `binary_search` passes its own and never reads it."""
    if nprobe is None or not isinstance(index, faiss.IndexBinaryIVF):
        return index.range_search(x, radius)
    with _SET_NPROBE:
        old, index.nprobe = index.nprobe, int(nprobe)
        try:
            return index.range_search(x, radius)
        finally:
            index.nprobe = old


def _pack(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's entries >= 0 moved left, in order, padded with -1 to the widest row; where each came from)."""
    order = packed_order(local >= 0)
    return np.take_along_axis(local, order, axis=1), order


class FloatParts(_Parts):
    """A float store split into consecutive position ranges (one per binary part), used as one store.

    Each part computes the distances of the candidates in its range (``each``: on Ray actors, in parallel);
    the results are placed back by position, so the distances equal those of one store over all rows.
    """

    def __init__(self, parts: list, starts: list[int], sizes: list[int], dim: int,
                 each: Callable[[str, list[tuple]], list] | None = None):
        self.parts, self.starts, self.sizes, self.d, self.each = parts, list(starts), list(sizes), dim, each

    def _local(self, pos: np.ndarray) -> list[np.ndarray]:
        return [np.where((pos >= s) & (pos < s + n), pos - s, -1) for s, n in zip(self.starts, self.sizes)]

    def distances(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Each part gets only its own candidates, packed to the left of a (queries x its widest count)
        array padded with -1, so it computes no distance it does not hold: one call per part, in parallel
        on actors; the results are scattered back to the candidates' places."""
        out = np.full(pos.shape, np.inf, np.float32)
        packed = [_pack(lp) for lp in self._local(pos)]
        for (lp, order), d in zip(packed, self._each("distances", [(x, lp) for lp, _ in packed])):
            rows, cols = np.nonzero(lp >= 0)
            out[rows, order[rows, cols]] = d[rows, cols]
        return out

    def reconstruct_batch(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.zeros((len(positions), self.d), np.float32)
        local = self._local(positions)
        got = self._each("reconstruct_batch", [(np.maximum(lp, 0),) for lp in local])
        for lp, vecs in zip(local, got):
            out[lp >= 0] = vecs[lp >= 0]
        return out


def make_binary_parts(kind: str, dim: int, params: dict[str, Any], bounds: list[int],
                       train_codes: np.ndarray | None) -> list[faiss.IndexBinary | BucketedBinary]:
    """One empty index per shard, each a copy of one trained template (IVF shards share its quantizer)."""
    template = make_binary_index(kind, dim, params)
    if not template.is_trained:
        template.train(train_codes)
    data = template_bytes(template)
    return [from_template(data) for _ in range(len(bounds) - 1)]


def template_bytes(template: faiss.IndexBinary | BucketedBinary) -> np.ndarray:
    """An empty, trained binary index as bytes (`from_template` makes a part of it)."""
    if isinstance(template, BucketedBinary):
        return np.concatenate([[1], faiss.serialize_index_binary(template.graph)]).astype(np.uint8)
    return np.concatenate([[0], faiss.serialize_index_binary(template)]).astype(np.uint8)


def from_template(data: np.ndarray) -> faiss.IndexBinary | BucketedBinary:
    """A new empty part from `template_bytes`. Local and Ray builds both make their parts this way: a part
    filled from a deserialized MultiHash template writes other bytes than one filled from a new index (its
    hash maps are laid out differently; the same items), and the two builds must write the same files."""
    index = faiss.deserialize_index_binary(np.ascontiguousarray(data[1:]))
    if isinstance(index, faiss.IndexBinaryFlat):
        index.use_heap = False  # as make_binary_index sets it (not stored in the bytes)
    return BucketedBinary(index) if data[0] else index


def make_rerank_index(kind: str, dim: int) -> faiss.Index | None:
    if kind == "none":
        return None
    if kind == "flat":
        return faiss.IndexFlatL2(dim)
    if kind == "fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)
    if kind == "sq8":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
    if kind == "pq":
        m = next(m for m in (48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0)
        return faiss.IndexPQ(dim, m, 8)
    raise HashindexError(f"rerank={kind}: expected one of {', '.join(RERANK_KINDS)}")


def new_float_store(kind: str, sample: np.ndarray) -> faiss.Index:
    """An empty float store of ``kind`` for vectors like ``sample``, trained on it where the kind needs it."""
    n, dim = sample.shape
    index = make_rerank_index(kind, dim)
    if not index.is_trained:
        if kind == "pq" and n < 256:
            raise HashindexError(f"rerank=pq: needs at least 256 items to train its codebooks, not {n} "
                                 "(use rerank=flat, fp16 or sq8)")
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index
