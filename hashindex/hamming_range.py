"""Every (query, item) pair of packed binary hashes within a Hamming radius, exactly (numpy in, numpy out).

Two plans give the same pairs. ``flat``: one Faiss flat range search of the queries against all items,
O(queries x items) popcounts at Faiss's speed. ``chunks`` (multi-index hashing's pigeonhole, Norouzi et al.
2012, without its flips): cut the bits into radius + 1 chunks; two hashes within the radius agree exactly on
at least one chunk, so each chunk's value splits queries and items into buckets and only a bucket's queries
and items are compared. On 64-bit perceptual hashes at radius 8 (9 chunks of 7 bits) that compares about
7 % of all pairs (7.3 % on CIFAR-10's 60,000 hashes, 6.6 % on random ones): 13x faster than the flat
search at a million hashes, 5-7x on CIFAR-10's, 1.15x at 16,000 (docs/RESULTS.md, "Duplicates"); ``auto``
takes the chunks past 2e8 pairs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import HashindexError

QUERY_BLOCK = 16_384  # queries of one flat range search: bounds its memory
# fewer query-item pairs than this: one flat search. Measured alone on 2 cores, the chunks against it: 1.15x at
# 2.6e8 pairs (16,000 hashes), 3.0x at 1e9, 12.7x at 1e12 (a million; tools/bench_hamming_range.py)
FLAT_PAIRS = 2 * 10**8
KEY_BLOCK = 1 << 18  # hashes whose bits are unpacked at once for their chunk keys: bounds memory
METHODS = ("auto", "flat", "chunks")


def range_pairs(queries: np.ndarray, items: np.ndarray, radius: int, method: str = "auto",
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (q, i) with query q within ``radius`` bits of item i, as two int64 arrays sorted by q, then
    i. ``queries`` (n, bytes) and ``items`` (m, bytes) are packed uint8 hashes of one width. ``method``:
    "flat", "chunks" (see the module) or "auto" (chunks where they compare under half the pairs of a flat
    search that is long). ``progress(done, total)`` is called as the work goes."""
    if method not in METHODS:
        raise HashindexError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if radius < 0:
        raise HashindexError(f"radius={radius}: expected a distance of 0 bits or more")
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    items = np.ascontiguousarray(items, dtype=np.uint8)
    if queries.shape[1:] != items.shape[1:] or queries.ndim != 2:
        raise HashindexError(f"queries {queries.shape} and items {items.shape}: expected (n, bytes) hashes of "
                             "one width")
    bits = 8 * queries.shape[1]
    chunks = radius + 1
    possible = chunks <= bits and -(-bits // chunks) <= 64  # every chunk 1 to 64 bits (a uint64 key)
    if method == "chunks" and not possible:
        raise HashindexError(f"method='chunks' at radius={radius} on {bits}-bit hashes: needs radius + 1 chunks "
                             "of 1 to 64 bits")
    if method == "flat" or not possible or len(queries) * len(items) == 0:
        return _flat(queries, items, radius, progress)
    qkeys, ikeys = chunk_keys(queries, chunks), chunk_keys(items, chunks)
    if method == "auto":
        total = len(queries) * len(items)
        if total < FLAT_PAIRS or 2 * sum(map(_bucket_pairs, qkeys, ikeys)) > total:
            return _flat(queries, items, radius, progress)
    return _chunked(queries, items, radius, qkeys, ikeys, progress)


def chunk_keys(hashes: np.ndarray, chunks: int) -> list[np.ndarray]:
    """Each hash's value in each of ``chunks`` chunks of its bits, as uint64 keys. Bit b goes to chunk
    b % chunks: interleaved, neighbouring bits (correlated in a perceptual hash) fall in different chunks, and
    the buckets come out more even than with contiguous chunks (CIFAR-10 at radius 8: 7.3 % of the pairs
    compared against 8.1 %)."""
    keys = [np.zeros(len(hashes), np.uint64) for _ in range(chunks)]
    for start in range(0, len(hashes), KEY_BLOCK):  # the bits unpacked a block at a time: 8x the hashes' bytes
        unpacked = np.unpackbits(hashes[start:start + KEY_BLOCK], axis=1)
        for c in range(chunks):
            part = unpacked[:, c::chunks].astype(np.uint64)
            keys[c][start:start + len(part)] = part @ (np.uint64(1) << np.arange(part.shape[1], dtype=np.uint64))
    return keys


def _bucket_pairs(qkey: np.ndarray, ikey: np.ndarray) -> int:
    """Query-item pairs that share a bucket of one chunk: what the chunk's search compares."""
    qv, qc = np.unique(qkey, return_counts=True)
    iv, ic = np.unique(ikey, return_counts=True)
    _, a, b = np.intersect1d(qv, iv, assume_unique=True, return_indices=True)
    return int((qc[a].astype(np.int64) * ic[b]).sum())


def _flat(queries: np.ndarray, items: np.ndarray, radius: int, progress: Callable[[int, int], None] | None
          ) -> tuple[np.ndarray, np.ndarray]:
    """One Faiss flat range search, block by block of queries (Faiss gives each query's items in order)."""
    import faiss

    index = faiss.IndexBinaryFlat(8 * queries.shape[1])
    index.add(items)
    qs, its = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, len(queries), QUERY_BLOCK):
        lims, _, found = index.range_search(queries[start:start + QUERY_BLOCK], radius + 1)  # Faiss: below
        qs.append(start + np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64)))
        its.append(found.astype(np.int64))
        if progress is not None:
            progress(min(start + QUERY_BLOCK, len(queries)), len(queries))
    return np.concatenate(qs), np.concatenate(its)


def _chunked(queries: np.ndarray, items: np.ndarray, radius: int, qkeys: list[np.ndarray],
             ikeys: list[np.ndarray], progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """The pairs chunk by chunk, bucket by bucket; a pair is kept in the first chunk whose values it shares
    (so once, though it may share several)."""
    qs, its = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in range(len(qkeys)):
        q, i = _chunk_pairs(queries, items, radius, qkeys[c], ikeys[c])
        first = np.ones(len(q), bool)
        for e in range(c):
            first &= qkeys[e][q] != ikeys[e][i]
        qs.append(q[first])
        its.append(i[first])
        if progress is not None:
            progress(c + 1, len(qkeys))
    q, i = np.concatenate(qs), np.concatenate(its)
    order = np.lexsort((i, q))
    return q[order], i[order]


def _chunk_pairs(queries: np.ndarray, items: np.ndarray, radius: int, qkey: np.ndarray, ikey: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs within the radius among those sharing a bucket of one chunk, by one Faiss call: an inverted
    file whose lists are the chunk's values, each item added to its value's list and each query searched in
    its own. One call, not one per bucket (commit a71e919): on cores another job keeps busy, each of ~1,000
    calls a chunk waited for busy threads; alone, one call is as fast from 200,000 hashes and 1.5x at 16,000
    (docs/RESULTS.md, "Duplicates")."""
    import faiss

    values = np.unique(np.concatenate([qkey, ikey]))  # the lists: values present, numbered densely
    bits = 8 * queries.shape[1]
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, len(values))
    ivf.is_trained, ivf.nprobe = True, 1  # no centroids: the lists are assigned here
    lists = np.searchsorted(values, ikey).astype(np.int64)
    ivf.add_core(len(items), faiss.swig_ptr(items), None, faiss.swig_ptr(lists))
    probe = np.searchsorted(values, qkey).astype(np.int64)[:, None]
    lims, _, found = ivf.range_search_preassigned(queries, radius + 1, probe, None)  # Faiss: below radius + 1
    return np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims).astype(np.int64)), found.astype(np.int64)
