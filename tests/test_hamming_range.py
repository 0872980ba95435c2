"""hamming_range.range_pairs: both plans give exactly the pairs a direct numpy computation gives."""

import numpy as np
import pytest

from hashindex import hamming_range
from hashindex.errors import HashindexError
from hashindex.hamming_range import chunk_keys, range_pairs
from hashindex.hash_groups import unique_neighbours


def _reference(queries: np.ndarray, items: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.unpackbits(queries[:, None, :] ^ items[None, :, :], axis=2).sum(axis=2)
    q, i = np.nonzero(d <= radius)
    return q.astype(np.int64), i.astype(np.int64)


def _hashes(n: int, width: int, seed: int, near: int = 8) -> np.ndarray:
    """Random hashes, every third a copy of an earlier one with 0 to ``near`` bits flipped."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 256, (n, width), dtype=np.uint8)
    bits = np.unpackbits(h, axis=1)
    for k in range(2, n, 3):
        bits[k] = bits[rng.integers(k)]
        bits[k, rng.choice(8 * width, rng.integers(0, near + 1), replace=False)] ^= 1
    return np.packbits(bits, axis=1)


@pytest.mark.parametrize("radius", [0, 1, 3, 8, 12])
@pytest.mark.parametrize("method", ["flat", "chunks"])
def test_range_pairs_equal_the_definition(radius, method):
    queries, items = _hashes(700, 8, radius), _hashes(900, 8, radius + 100)
    items[:300] = queries[:300]  # queries among the items, as `duplicates` searches
    want = _reference(queries, items, radius)
    got = range_pairs(queries, items, radius, method)
    assert all(np.array_equal(g, w) for g, w in zip(got, want)) and len(want[0]) > 300
    assert got[0].dtype == got[1].dtype == np.int64


def test_uneven_buckets_give_the_same_pairs():
    """Hashes that vary in 12 bits only fill few, large buckets of most chunks (some chunks hold none of the
    12 bits: one bucket of everything), beside random ones in many small buckets."""
    rng = np.random.default_rng(3)
    bits = np.zeros((1500, 64), np.uint8)
    bits[:, rng.choice(64, 12, replace=False)] = rng.integers(0, 2, (1500, 12))
    h = np.packbits(bits, axis=1)
    h[::2] = _hashes(750, 8, 4)
    want = _reference(h, h, 5)
    got = range_pairs(h, h, 5, "chunks")
    assert all(np.array_equal(g, w) for g, w in zip(got, want)) and len(want[0]) > 10_000


def test_wider_hashes_and_empty_inputs():
    queries, items = _hashes(300, 16, 7, near=20), _hashes(400, 16, 8, near=20)
    items[:100] = queries[:100]
    for method in ("flat", "chunks"):
        got, want = range_pairs(queries, items, 20, method), _reference(queries, items, 20)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
        for q, i in ((queries[:0], items), (queries, items[:0])):
            assert [len(a) for a in range_pairs(q, i, 3, method)] == [0, 0]


def test_auto_takes_the_chunks_past_the_flat_limit(monkeypatch):
    h = _hashes(8000, 8, 9)
    taken = []
    chunked = hamming_range._chunked
    monkeypatch.setattr(hamming_range, "_chunked", lambda *a: (taken.append(len(a[3])), chunked(*a))[1])
    want = range_pairs(h, h, 8, "flat")
    assert all(np.array_equal(g, w) for g, w in zip(range_pairs(h, h, 8), want)) and not taken  # 6.4e7 pairs
    monkeypatch.setattr(hamming_range, "FLAT_PAIRS", 1000)
    assert all(np.array_equal(g, w) for g, w in zip(range_pairs(h, h, 8), want)) and taken == [9]
    taken.clear()  # here 9 chunks without flips cost least: at 8,000 queries 5 chunks' 14 probes each cost more
    assert all(np.array_equal(g, w) for g, w in zip(range_pairs(h, h, 20), range_pairs(h, h, 20, "flat")))
    assert not taken  # within 20 bits every plan costs more than the flat search (21 chunks of 3 bits: 2.6x)


@pytest.mark.parametrize("chunks, flips", [(9, 0), (5, 1), (3, 2), (2, 4)])
def test_every_plan_gives_the_pairs(chunks, flips):
    """Any number of chunks, each probed within the flips the pigeonhole then needs."""
    queries, items = _hashes(400, 8, 20), _hashes(600, 8, 21)
    items[:200] = queries[:200]
    assert (chunks, flips) in hamming_range.chunk_plans(64, 8, every=True)
    got, want = range_pairs(queries, items, 8, "chunks", chunks=chunks), _reference(queries, items, 8)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert hamming_range.chunk_plans(64, 8) == [(3, 2), (4, 2), (5, 1), (6, 1), (7, 1), (8, 1), (9, 0)]
    assert (1, 8) not in hamming_range.chunk_plans(64, 8, every=True)  # 64 bits within 8: 5e9 values to probe


def test_chunk_keys_interleave_the_bits():
    h = np.packbits(np.eye(64, dtype=np.uint8), axis=1)  # hash b has bit b alone
    keys = chunk_keys(h, 9)
    for b in range(64):
        assert [int(k[b]) for k in keys] == [1 << (b // 9) if c == b % 9 else 0 for c in range(9)]


def test_bad_arguments_say_what_was_expected():
    h = _hashes(10, 8, 0)
    with pytest.raises(HashindexError, match="method='fast': expected one of auto, flat, chunks"):
        range_pairs(h, h, 3, "fast")
    with pytest.raises(HashindexError, match="radius=-1"):
        range_pairs(h, h, -1)
    with pytest.raises(HashindexError, match=r"queries \(10, 8\) and items \(10, 16\)"):
        range_pairs(h, np.concatenate([h, h], axis=1), 3)
    with pytest.raises(HashindexError, match="radius=200 on 64-bit hashes: no chunks of at most 64 bits probed"):
        range_pairs(h, h, 200, "chunks")
    with pytest.raises(HashindexError, match="with chunks=10: expected 1 to 9 chunks"):
        range_pairs(h, h, 8, "chunks", chunks=10)
    assert all(np.array_equal(g, w) for g, w in zip(range_pairs(h, h, 64), _reference(h, h, 64)))  # auto: flat


@pytest.mark.parametrize("radius", [0, 6])
def test_unique_neighbours_are_the_same_by_either_plan(radius):
    """`duplicates`' search (whole hashes against whole and crop hashes, both ways round) by chunks as by the
    flat search."""
    h, crops = _hashes(500, 8, 11), _hashes(1500, 8, 12).reshape(500, 3, 8)
    crops[::4, 1] = h[1::4]  # item 4k's second box is item 4k + 1's whole hash
    flat = unique_neighbours(h, radius, crops=crops, method="flat")
    chunks = unique_neighbours(h, radius, crops=crops, method="chunks")
    assert all(np.array_equal(a, b) for a, b in zip(flat, chunks))
    lims, labels = flat
    assert {4, 5} <= set(labels[lims[4]:lims[5]].tolist()) and 4 in labels[lims[5]:lims[6]]


def test_chunk_keys_are_the_same_block_by_block(monkeypatch):
    h = _hashes(1000, 8, 13)
    whole = chunk_keys(h, 9)
    monkeypatch.setattr(hamming_range, "KEY_BLOCK", 64)
    assert all(np.array_equal(a, b) for a, b in zip(chunk_keys(h, 9), whole))


@pytest.mark.parametrize("method", ["flat", "chunks"])
def test_progress_reaches_its_total(method):
    h = _hashes(40_000, 8, 14)
    seen = []
    range_pairs(h[:20_000], h, 8, method, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] and len(seen) > 1  # flat: 2 blocks of queries; chunks: one a chunk
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
