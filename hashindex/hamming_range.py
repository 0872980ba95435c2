"""Every (query, item) pair of packed binary hashes within a Hamming radius, exactly (numpy in, numpy out).

Two plans give the same pairs. ``flat``: one Faiss flat range search of the queries against all items,
O(queries x items) popcounts at Faiss's speed. ``chunks`` (multi-index hashing's pigeonhole, Norouzi et al.
2012): cut the bits into radius + 1 chunks; two hashes within the radius agree exactly on at least one chunk,
so each chunk's value splits queries and items into buckets and only a bucket's queries and items are
compared. Probing each query's chunk also at the values within ``flips`` bits of it needs fewer, longer
chunks (chunks x (flips + 1) > radius); a cost model picks the plan. On 64-bit perceptual hashes
at radius 8, 9 chunks of 7 bits compare about 7 % of all pairs (7.3 % on CIFAR-10's 60,000 hashes, 6.6 % on
random ones), 5 chunks of 12-13 bits probed within 1 bit about 1 %: 27-35x faster than the flat search at a
million hashes, 4.5-6.7x on CIFAR-10's, 1.14x at 16,000 (docs/RESULTS.md, "Duplicates"); ``auto`` takes the
chunks past 2e8 pairs where the model finds them at least twice as fast.
"""

from __future__ import annotations

from itertools import combinations
from math import comb
from typing import Callable

import numpy as np

from .errors import HashindexError

QUERY_BLOCK = 16_384  # queries of one flat range search: bounds its memory
# fewer query-item pairs than this: one flat search. Measured alone on 2 cores, the chunks against it: 1.14x at
# 2.6e8 pairs (16,000 hashes), 2.5x at 1e9, 27x at 1e12 (a million; tools/bench_hamming_range.py)
FLAT_PAIRS = 2 * 10**8
KEY_BLOCK = 1 << 18  # hashes whose bits are unpacked at once for their chunk keys: bounds memory
MAX_FLIPS = 2  # a chunk's lists probed within this many bits at most: 254 lists a query at 22 bits already
MAX_PROBES = 1 << 16  # values a query's chunk is probed at, at most, in any plan
# the cost model a plan is chosen by, seconds measured alone on 2 AVX-512 cores at radius 8 (2026-12-05,
# tools/bench_hamming_range.py): a query-item pair compared in a value's list without flips (9 chunks, a million
# hashes with 3 crop hashes each: 2.8e11 pairs in 74 s; the flat search's pairs cost the same) and with flips
# (5 chunks within 1 bit: 4e10 pairs in 28 s, the lists ~500 items, scattered in memory); a value probed for a
# query: 1.3e-7 s where nearly every probe is empty (3 chunks within 2 bits, 200,000 hashes with 3 crop hashes:
# 1.5e8 probes in 19 s), under 3e-8 beside 1e10 pairs (5 chunks within 1 bit, a million: 9.2 s); the model
# takes 7e-8, between
PAIR_S = 2.6e-10
FLIP_PAIR_S = 8e-10
PROBE_S = 7e-8
COST_SAMPLE = 20_000  # queries and items the plans' costs are estimated on
METHODS = ("auto", "flat", "chunks")


def range_pairs(queries: np.ndarray, items: np.ndarray, radius: int, method: str = "auto", *,
                chunks: int | None = None, progress: Callable[[int, int], None] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (q, i) with query q within ``radius`` bits of item i, as two int64 arrays sorted by q, then
    i. ``queries`` (n, bytes) and ``items`` (m, bytes) are packed uint8 hashes of one width. ``method``:
    "flat", "chunks" (see the module; ``chunks``: how many, else the cheapest plan) or "auto" (the chunks'
    cheapest plan where it beats a flat search that is long). ``progress(done, total)`` is called as the work
    goes."""
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
    plans = chunk_plans(bits, radius) if chunks is None else [(c, f) for c, f in chunk_plans(bits, radius, True)
                                                              if c == chunks]
    if method == "chunks" and not plans:
        most = min(bits, radius + 1)
        raise HashindexError(f"method='chunks' at radius={radius} on {bits}-bit hashes" + (
            f" with chunks={chunks}: expected 1 to {most} chunks of at most 64 bits" if chunks is not None
            else f": no chunks of at most 64 bits probed within {MAX_FLIPS} bits fit"))
    total = len(queries) * len(items)
    if method == "flat" or not plans or total == 0 or (method == "auto" and total < FLAT_PAIRS):
        return _flat(queries, items, radius, progress)
    costs = plan_costs(queries, items, plans)
    c, f = min(costs, key=costs.get)
    if method == "auto" and costs[c, f] > total * PAIR_S / 2:  # buckets this uneven: the flat search (margin 2x)
        return _flat(queries, items, radius, progress)
    return _chunked(queries, items, radius, chunk_keys(queries, c), chunk_keys(items, c), f, progress)


def chunk_plans(bits: int, radius: int, every: bool = False) -> list[tuple[int, int]]:
    """(chunks, flips) such that two hashes within ``radius`` bits are within ``flips`` bits in one chunk at
    least (chunks x (flips + 1) > radius: the pigeonhole), each chunk 1 to 64 bits; for each number of chunks
    the fewest flips, up to MAX_FLIPS (``every``: any number) and MAX_PROBES values probed."""
    plans = []
    for c in range(1, min(bits, radius + 1) + 1):
        flips, width = -(-(radius + 1) // c) - 1, -(-bits // c)
        if width <= 64 and (every or flips <= MAX_FLIPS) and _probes(width, flips) <= MAX_PROBES:
            plans.append((c, flips))
    return plans


def plan_costs(queries: np.ndarray, items: np.ndarray, plans: list[tuple[int, int]], sample: int = COST_SAMPLE
               ) -> dict[tuple[int, int], float]:
    """Estimated seconds of each plan (chunks, flips) by the cost model (PAIR_S or FLIP_PAIR_S, PROBE_S): per
    chunk, the pairs sharing a value (counted on about ``sample`` queries and items spread over them, scaled)
    times the values probed per query, and the probes."""
    qs, its = queries[::max(1, len(queries) // sample)], items[::max(1, len(items) // sample)]
    scale = len(queries) * len(items) / (len(qs) * len(its))
    costs = {}
    for chunks, flips in plans:
        cost = 0.0
        keys = zip(chunk_keys(qs, chunks), chunk_keys(its, chunks), _chunk_bits(8 * queries.shape[1], chunks))
        for qkey, ikey, width in keys:
            probes = _probes(width, flips)
            pair_s = PAIR_S if flips == 0 else FLIP_PAIR_S
            cost += _bucket_pairs(qkey, ikey) * scale * probes * pair_s + len(queries) * probes * PROBE_S
        costs[chunks, flips] = cost
    return costs


def _probes(width: int, flips: int) -> int:
    """Values a query's chunk of ``width`` bits is probed at: itself and those up to ``flips`` bits away."""
    return sum(comb(width, j) for j in range(flips + 1))


def _chunk_bits(bits: int, chunks: int) -> list[int]:
    """How many bits each chunk holds (bit b in chunk b % chunks)."""
    return [len(range(c, bits, chunks)) for c in range(chunks)]


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
        q, i = _hits(start, lims, found)
        qs.append(q)
        its.append(i)
        if progress is not None:
            progress(min(start + QUERY_BLOCK, len(queries)), len(queries))
    return np.concatenate(qs), np.concatenate(its)


def _hits(start: int, lims: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Faiss range search's result (queries from ``start`` on) as (query, item) int64 pairs."""
    rows = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
    return start + rows, found.astype(np.int64)


def _chunked(queries: np.ndarray, items: np.ndarray, radius: int, qkeys: list[np.ndarray], ikeys: list[np.ndarray],
             flips: int, progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """The pairs chunk by chunk (the keys' chunks); a pair is kept in the first chunk where the two are within
    ``flips`` bits (so once, though it may be so in several)."""
    chunks = len(qkeys)
    qs, its = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c, width in enumerate(_chunk_bits(8 * queries.shape[1], chunks)):
        q, i = _chunk_pairs(queries, items, radius, qkeys[c], ikeys[c], _flip_masks(width, flips))
        first = np.ones(len(q), bool)
        for e in range(c):
            first &= np.bitwise_count(qkeys[e][q] ^ ikeys[e][i]) > flips
        qs.append(q[first])
        its.append(i[first])
        if progress is not None:
            progress(c + 1, chunks)
    q, i = np.concatenate(qs), np.concatenate(its)
    order = np.lexsort((i, q))
    return q[order], i[order]


def _flip_masks(width: int, flips: int) -> np.ndarray:
    """Every mask of up to ``flips`` of ``width`` bits, 0 first: the values a query's chunk is probed at."""
    return np.array([sum(1 << b for b in bits) for j in range(flips + 1) for bits in combinations(range(width), j)],
                    np.uint64)


def _chunk_pairs(queries: np.ndarray, items: np.ndarray, radius: int, qkey: np.ndarray, ikey: np.ndarray,
                 masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs within the radius among those whose chunk values differ by one of ``masks``, by Faiss: an
    inverted file whose lists are the items' chunk values, each query searched in the lists of its value
    XOR each mask (absent values: no list, -1, which Faiss skips). One call a block of queries, not one a
    list (commit a71e919): on cores another job keeps busy, each of ~1,000 calls a chunk waited for busy
    threads; alone, one call is as fast from 200,000 hashes and 1.5x at 16,000 (docs/RESULTS.md,
    "Duplicates")."""
    import faiss

    values = np.unique(ikey)  # the lists: item values present, numbered densely
    bits = 8 * queries.shape[1]
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, max(len(values), 1))
    width = min(len(masks), len(values))  # Faiss reads at most as many probes as lists
    ivf.is_trained, ivf.nprobe = True, width  # no centroids: the lists are assigned here
    lists = np.searchsorted(values, ikey).astype(np.int64)
    ivf.add_core(len(items), faiss.swig_ptr(items), None, faiss.swig_ptr(lists))
    qs, its = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    block = max(1, QUERY_BLOCK * 16 // len(masks))  # bounds the probes' memory (16 x 16,384 a block)
    for start in range(0, len(queries), block):
        probed = qkey[start:start + block, None] ^ masks[None, :]
        at = np.minimum(np.searchsorted(values, probed), len(values) - 1)
        probe = np.where(values[at] == probed, at, -1).astype(np.int64)
        if width < len(masks):  # the lists present first: a query probes at most every list once
            probe = -np.sort(-probe, axis=1)[:, :width]
        lims, _, found = ivf.range_search_preassigned(queries[start:start + block], radius + 1, probe, None)
        q, i = _hits(start, lims, found)
        qs.append(q)
        its.append(i)
    return np.concatenate(qs), np.concatenate(its)
