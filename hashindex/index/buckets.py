"""A binary index over a collection's *distinct* codes, each standing for its bucket of items.

A trained hashing net gives many items one code (the shipped model: 4,113 distinct codes for the 10,000
CIFAR-10 test images, the largest bucket 750). In an HNSW graph over every item the neighbour lists of a
bucket's members fill with each other at distance 0 and greedy search stays inside a bucket: tie-aware
recall@10 plateaus at 0.957 whatever efSearch (0.934 at the default 128), while a graph over the distinct
codes, answering with their buckets nearest first, is exact at efSearch 16 with 41% of the nodes
(tools/hnsw_duplicates.py, docs/RESULTS.md "Sublinear coarse search"). `BucketedBinary` is that graph:
a Faiss binary index over the distinct codes (``graph``; node u = the u-th distinct code added) and the
buckets in CSR form (``offsets``, ``members``: the local positions of node u's items, ascending, are
``members[offsets[u]:offsets[u + 1]]``). It answers like a Faiss binary index addressed by item position
(``search``, ``add``, ``ntotal``, ``d``), so the searcher, the parts, the recall tuning and append use it
unchanged. The files are index/faiss_files.py's (`write_binary`, `read_binary`).
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np


# A graph search for k codes costs about what a flat scan of 128 k distinct codes does: measured on the 9,776
# distinct codes of the shipped model's 50,000 CIFAR-10 training codes, 200 queries, per query: k 16: graph
# 0.041 ms, scan 0.074; k 64: 0.047 / 0.034; k 256: 0.125 / 0.042; k 4,096: 6.6 / 0.36. Past that, the
# graph's own storage of the codes is scanned instead (exact, and faster).
FLAT_FACTOR = 128


def _keys(codes: np.ndarray) -> np.ndarray:
    """One comparable value per code row (the row's bytes), for sorting and matching codes."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return codes.view(np.dtype((np.void, codes.shape[1]))).ravel()


def bucket_items(offsets: np.ndarray, members: np.ndarray, nodes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The first ``sizes[i]`` items of the bucket of each node ``nodes[i]``, one after another (flat)."""
    starts = np.repeat(offsets[nodes] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.asarray(members)[starts + np.arange(int(sizes.sum()))]


def sort_hits(rows: np.ndarray, d: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hits (query row, distance, position; non-negative ints) ordered by (row, distance, position): their
    distances and positions.

    One int64 key sorts 2.5x faster than a lexsort of the three (measured, 840,000 items of 500 queries); it
    is packed and unpacked with shifts, as divisions took half the time of a served HNSW search's bucket
    expansion (512 queries, 9,776 distinct codes). A lexsort where the three do not fit in 63 bits.
    """
    rows, d, pos = (np.asarray(a, np.int64) for a in (rows, d, pos))
    span = int(pos.max(initial=0)).bit_length()
    width = int(d.max(initial=0)).bit_length()
    if int(rows.max(initial=0)).bit_length() + width + span < 63:
        key = np.sort((rows << (width + span)) | (d << span) | pos)
        return (key >> span) & ((1 << width) - 1), key & ((1 << span) - 1)
    order = np.lexsort((pos, d, rows))
    return d[order], pos[order]


def graph_search(index: faiss.IndexBinary, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(x, k)``; an HNSW graph is searched with efSearch at least k, given per call: Faiss's binary
    HNSW does not raise it to k itself (measured, 1.15.1: 89 of 256 asked found at efSearch 16, the rest -1;
    the fine stage asks for pools of 1,000 and more), and the index's own setting is never changed under
    another thread's search."""
    if not isinstance(index, faiss.IndexBinaryHNSW) or k <= index.hnsw.efSearch:
        return index.search(x, k)
    params = faiss.SearchParametersHNSW()
    params.efSearch = int(k)
    return index.search(x, k, params=params)


class BucketedBinary:
    """A Faiss binary index over distinct codes plus each code's bucket of item positions (see the module)."""

    def __init__(self, graph: faiss.IndexBinary, offsets: np.ndarray | None = None,
                 members: np.ndarray | None = None):
        self.graph = graph
        self.offsets = np.zeros(1, np.int64) if offsets is None else offsets
        self.members = np.zeros(0, np.int64) if members is None else members
        if len(self.offsets) != graph.ntotal + 1:
            raise ValueError(f"{len(self.offsets) - 1} buckets for a graph of {graph.ntotal} codes")
        self._pending: list[np.ndarray] = []  # node of each added item, not yet folded into the CSR arrays
        self._new: list[np.ndarray] = []  # codes of new nodes, not yet added to the graph
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (distinct keys sorted, their nodes)
        self._fold = threading.Lock()  # the first searches after an add may come from several threads

    # what the searcher, parts and tuning read of a Faiss binary index
    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1]) + sum(len(p) for p in self._pending)

    @property
    def d(self) -> int:
        return self.graph.d

    @property
    def nodes(self) -> int:
        """Distinct codes held (the graph's size, once new ones are added to it)."""
        return int(self.graph.ntotal) + sum(len(c) for c in self._new)

    @property
    def is_trained(self) -> bool:
        return self.graph.is_trained

    @property
    def hnsw(self) -> Any:
        """The graph's search settings (``hnsw.efSearch``), when the graph is an HNSW index."""
        return self.graph.hnsw

    def train(self, codes: np.ndarray) -> None:
        self.graph.train(codes)

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, members) with every added item folded in, and the graph holding every new code.

        New codes go into the graph in one call, however many calls to `add` brought them: an HNSW graph
        depends on how its insertions are batched, and this way a part built from one shard file after
        another equals the same part built in one go (Ray builds, hashindex/index/parts.py; tested).
        """
        if not (self._new or self._pending):
            return self.offsets, self.members
        with self._fold:
            if self._new:
                self.graph.add(np.concatenate(self._new))
                self._new = []
            if self._pending:
                node_of = np.concatenate([self._node_of_stored()] + self._pending)
                counts = np.bincount(node_of, minlength=self.nodes)
                offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                self.members = np.argsort(node_of, kind="stable").astype(np.int64)  # ascending within a bucket
                self.offsets, self._pending = offsets, []
            return self.offsets, self.members

    def _node_of_stored(self) -> np.ndarray:
        """The node of every item already in the CSR arrays, by position."""
        n = int(self.offsets[-1])
        node_of = np.empty(n, np.int64)  # (the stored nodes' codes are in the graph: buckets() added them)
        node_of[np.asarray(self.members)] = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))
        return node_of

    def _sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """The graph's distinct codes as sorted keys and their nodes (read back from the graph once)."""
        if self._sorted is None:
            self.buckets()  # every node in the graph, to be read back
            keys = _keys(self.graph.reconstruct_n(0, self.nodes)) if self.nodes else _keys(
                np.zeros((0, self.d // 8), np.uint8))
            order = np.argsort(keys, kind="stable")
            self._sorted = (keys[order], order.astype(np.int64))
        return self._sorted

    def add(self, codes: np.ndarray) -> None:
        """Add items (padded codes) at the next positions: a code already held joins its bucket, a new code
        becomes a node (in order of first appearance)."""
        keys = _keys(codes)
        if not len(keys):
            return
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        known, known_nodes = self._sorted_keys()
        at = np.minimum(np.searchsorted(known, uniq), max(len(known) - 1, 0))
        found = (known[at] == uniq) if len(known) else np.zeros(len(uniq), bool)
        node = np.where(found, known_nodes[at] if len(known) else 0, -1)
        new = np.flatnonzero(~found)
        new = new[np.argsort(first[new], kind="stable")]  # new nodes in order of first appearance
        node[new] = self.nodes + np.arange(len(new))
        if len(new):
            self._new.append(np.ascontiguousarray(codes[first[new]], dtype=np.uint8))
            merged = np.concatenate([known, uniq[new]])
            order = np.argsort(merged, kind="stable")
            self._sorted = (merged[order], np.concatenate([known_nodes, node[new]])[order])
        self._pending.append(node[inverse.ravel()])

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k items per query by (Hamming distance, position): the graph's nearest codes, each expanded to
        its bucket. Nodes are asked for until their buckets hold k items (or the graph is exhausted); every
        node as close as the one that completes k is expanded, so ties are cut by position, as a flat scan
        cuts them."""
        x = np.ascontiguousarray(x, dtype=np.uint8)
        offsets, members = self.buckets()
        q = len(x)
        dist = np.full((q, k), np.iinfo(np.int32).max, np.int32)
        pos = np.full((q, k), -1, np.int64)
        if not self.nodes or not q:
            return dist, pos
        per_node = max(1.0, self.ntotal / self.nodes)
        want = min(self.nodes, max(16, 2 * int(np.ceil(k / per_node))))
        todo = np.arange(q)
        while len(todo):
            nd, ni = self._nearest(x[todo], want)
            short = self._expand(nd, ni, k, offsets, members, todo, dist, pos)
            if want >= self.nodes:
                break
            todo, want = todo[short], min(self.nodes, want * 4)
        return dist, pos

    def _codes_index(self) -> faiss.IndexBinary:
        """An exact index of the distinct codes: an HNSW graph's own storage (a flat index, no copy), or the
        graph itself when it is exact."""
        if not isinstance(self.graph, faiss.IndexBinaryHNSW):
            return self.graph
        storage = faiss.downcast_IndexBinary(self.graph.storage)
        storage.use_heap = False  # top k by counting (faiss_files.fast_topk)
        return storage

    def _nearest(self, x: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``want`` nearest distinct codes: from the graph, or by a scan of them where that is cheaper."""
        if want * FLAT_FACTOR >= self.nodes:
            return self._codes_index().search(x, want)
        return graph_search(self.graph, x, want)

    @staticmethod
    def _expand(nd: np.ndarray, ni: np.ndarray, k: int, offsets: np.ndarray, members: np.ndarray,
                rows: np.ndarray, dist: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Write the top k items of the found nodes' buckets into ``dist``/``pos`` at ``rows``; returns which
        of ``rows`` found fewer than k items."""
        valid = ni >= 0
        sizes = np.where(valid, offsets[np.maximum(ni, 0) + 1] - offsets[np.maximum(ni, 0)], 0)
        total = np.cumsum(sizes, axis=1)
        short = total[:, -1] < k
        # the distance of the node whose bucket completes k items; every node as close is expanded
        reach = np.argmax(total >= k, axis=1)
        cut = np.where(short, np.iinfo(np.int32).max, nd[np.arange(len(nd)), reach])
        sizes = np.where(valid & (nd <= cut[:, None]), sizes, 0)
        flat_sizes = sizes.ravel()
        item = bucket_items(offsets, members, np.maximum(ni, 0).ravel(), flat_sizes)
        node_rows = np.repeat(np.arange(len(nd)), nd.shape[1])
        d, item = sort_hits(np.repeat(node_rows, flat_sizes), np.repeat(nd.ravel(), flat_sizes), item)
        # each query's items are one sorted run: its first k (or all it has) go to its row
        counts = sizes.sum(axis=1)
        first = np.cumsum(counts) - counts
        take = np.arange(k) < counts[:, None]
        at = np.minimum(first[:, None] + np.arange(k), len(item) - 1)
        if not len(item):  # nothing found: every row stays empty
            d, item, at = np.zeros(1, np.int64), np.full(1, -1, np.int64), np.zeros_like(at)
        dist[rows] = np.where(take, d[at], np.iinfo(np.int32).max)
        pos[rows] = np.where(take, item[at], -1)
        return short

    def range_search(self, x: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every item closer than ``radius`` (Faiss's convention: lims, distances, positions). An HNSW graph has
        no range search in Faiss; it is asked for more and more nearest codes until the farthest found lies
        at ``radius`` or beyond (approximate, as its top k is), or until scanning the codes is cheaper."""
        offsets, members = self.buckets()
        x = np.ascontiguousarray(x, dtype=np.uint8)
        if isinstance(self.graph, faiss.IndexBinaryHNSW):
            lims, nd, ni = self._graph_range(x, radius)
        else:
            lims, nd, ni = self.graph.range_search(x, radius)
        sizes = offsets[ni + 1] - offsets[ni]
        out_lims = np.concatenate([[0], np.cumsum(sizes)])[lims]
        return out_lims, np.repeat(nd, sizes), bucket_items(offsets, members, ni, sizes)

    def _graph_range(self, x: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The graph's codes closer than ``radius`` per query, from growing top-k searches (lims, d, nodes)."""
        found: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int32), np.zeros(0, np.int64))] * len(x)
        todo, want = np.arange(len(x)), 64
        while len(todo):
            if want * FLAT_FACTOR >= self.nodes:  # a scan of the distinct codes is cheaper now, and exact
                lims, d, i = self._codes_index().range_search(x[todo], radius)
                for row, q in enumerate(todo):
                    found[q] = (d[lims[row]:lims[row + 1]], i[lims[row]:lims[row + 1]])
                break
            nd, ni = graph_search(self.graph, x[todo], want)
            inside = (ni >= 0) & (nd < radius)
            for row, q in enumerate(todo):
                found[q] = (nd[row][inside[row]], ni[row][inside[row]])
            todo, want = todo[inside.all(axis=1)], want * 4  # all inside: there may be more
        lims = np.concatenate([[0], np.cumsum([len(d) for d, _ in found])]).astype(np.int64)
        return lims, np.concatenate([d for d, _ in found]), np.concatenate([i for _, i in found])
