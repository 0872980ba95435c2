"""The binary index over distinct codes (hashindex/index/buckets.py): exact where its graph is, recall where
a graph over every item stalls, and its files through build, append, parts and load."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from hashindex import HashindexError
from hashindex.index import Index, append, build, describe_index
from hashindex.index.buckets import BucketedBinary, graph_search
from hashindex.codes import hamming_distances
from hashindex.store import write_arrays


def bucketed_codes(n: int, n_distinct: int, seed: int) -> np.ndarray:
    """8-byte codes drawn from n_distinct codes with geometric popularity: buckets of one to hundreds of items
    (as a trained net gives, 4,113 distinct codes for 10,000 CIFAR-10 images, the largest bucket 750)."""
    rng = np.random.default_rng(seed)
    distinct = np.random.default_rng(0).integers(0, 256, (n_distinct, 8), dtype=np.uint8)
    return distinct[np.minimum(rng.geometric(3 / n_distinct, n), n_distinct) - 1]


def exact_topk(queries: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k by (Hamming distance, position), in numpy."""
    d = hamming_distances(queries, codes)
    order = np.lexsort((np.broadcast_to(np.arange(len(codes)), d.shape), d), axis=-1)[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("k", [1, 7, 100, 3000])
def test_exact_graph_answers_as_a_flat_scan(k):
    """Over an exact graph (a flat index of the distinct codes) the buckets give exactly the flat scan's top k,
    ties cut by position, added in chunks whose codes repeat across chunks."""
    codes = bucketed_codes(3000, 200, seed=1)
    index = BucketedBinary(faiss.IndexBinaryFlat(64))
    for lo in range(0, 3000, 700):
        index.add(codes[lo:lo + 700])
    assert index.ntotal == 3000 and index.nodes == len(np.unique(codes, axis=0))
    queries = np.concatenate([codes[:20], bucketed_codes(20, 200, seed=9) ^ 1])
    d, pos = index.search(queries, k)
    want_d, want_pos = exact_topk(queries, codes, k)
    assert np.array_equal(d, want_d) and np.array_equal(pos, want_pos)


def test_buckets_hold_every_position_once_in_order():
    codes = bucketed_codes(2000, 150, seed=2)
    index = BucketedBinary(faiss.IndexBinaryFlat(64))
    index.add(codes[:900])
    index.buckets()  # folded, then grown again
    index.add(codes[900:])
    offsets, members = index.buckets()
    assert sorted(members.tolist()) == list(range(2000))
    graph_codes = index.graph.reconstruct_n(0, index.nodes)
    for u in range(index.nodes):
        bucket = members[offsets[u]:offsets[u + 1]]
        assert len(bucket) and np.all(np.diff(bucket) > 0) and (codes[bucket] == graph_codes[u]).all()
    # nodes in order of first appearance
    first = [int(members[offsets[u]]) for u in range(index.nodes)]
    assert first == sorted(first)


def test_range_search_expands_buckets():
    codes = bucketed_codes(2000, 150, seed=3)
    index = BucketedBinary(faiss.IndexBinaryFlat(64))
    index.add(codes)
    lims, d, pos = index.range_search(codes[:5], 20)
    brute = hamming_distances(codes[:5], codes)
    for q in range(5):
        got = pos[lims[q]:lims[q + 1]]
        assert sorted(got.tolist()) == np.flatnonzero(brute[q] < 20).tolist()
        assert np.array_equal(d[lims[q]:lims[q + 1]], brute[q, got])


def test_hnsw_over_distinct_codes_does_not_stall():
    """On codes with mass ties, the graph over every item misses neighbours whatever efSearch; the graph over
    the distinct codes finds them all at efSearch 16, and a pool of 1,000 comes back whole (no -1)."""
    codes = bucketed_codes(20_000, 3000, seed=4)
    queries = codes[::200]
    kth = exact_topk(queries, codes, 10)[0][:, -1:]
    every = faiss.IndexBinaryHNSW(64, 32)
    every.add(codes)
    every.hnsw.efSearch = 16
    d_every, _ = every.search(queries, 10)
    bucketed = BucketedBinary(faiss.IndexBinaryHNSW(64, 32))
    bucketed.add(codes)
    bucketed.hnsw.efSearch = 16
    d, pos = bucketed.search(queries, 10)
    assert float((d <= kth).mean()) == 1.0 > float((d_every <= kth).mean())
    d, pos = bucketed.search(queries, 1000)
    assert (pos >= 0).all() and float((d <= exact_topk(queries, codes, 1000)[0][:, -1:]).mean()) > 0.99
    assert bucketed.hnsw.efSearch == 16  # raised per call, never on the index


def test_graph_search_asks_hnsw_for_k_results():
    """Faiss's binary HNSW answers k > efSearch with -1s; asked through graph_search, it fills all k."""
    rng = np.random.default_rng(5)  # codes a few bits from 300 centres
    centres = rng.integers(0, 256, (300, 8), dtype=np.uint8)[rng.integers(0, 300, 3000)]
    codes = np.packbits(np.unpackbits(centres, axis=1) ^ (rng.random((3000, 64)) < 0.03), axis=1)
    graph = faiss.IndexBinaryHNSW(64, 16)
    graph.add(codes)
    graph.hnsw.efSearch = 16
    assert (graph.search(codes[:4], 256)[1] < 0).any()  # what Faiss gives (1.15.1)
    assert (graph_search(graph, codes[:4], 256)[1] >= 0).all()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    codes = bucketed_codes(6000, 600, seed=6)[:, :6]  # 48-bit codes, padded to 8 bytes by the index
    labels = np.random.default_rng(6).integers(0, 5, 6000)
    feats = np.random.default_rng(7).normal(size=(6000, 16)).astype(np.float32)
    store = write_arrays(root / "shards", codes[:5000], feats[:5000], labels=labels[:5000], shard_rows=2000)
    more = write_arrays(root / "more", codes[5000:], feats[5000:], ids=np.arange(5000, 6000),
                        labels=labels[5000:], shard_rows=2000)
    return root, store, more, codes, feats


@pytest.mark.parametrize("shards", [1, 3])
def test_build_append_load_round_trip(collection, shards):
    """build writes each graph with its bucket table; the loaded index answers as exact search does; append
    puts new items into the buckets of codes already held and new codes into the graph."""
    root, store, more, codes, feats = collection
    out = root / f"hnsw-{shards}"
    meta = build(store.dir, out, binary="hnsw", rerank="flat", signal="l2", shards=shards, progress=False,
                 log=lambda m: None)
    assert meta["binary"]["buckets"] is True and meta["binary"]["faiss"] == "IndexBinaryHNSW"
    tables = sorted(p.name for p in out.glob("*.buckets.npy"))
    assert len(tables) == shards and all(t in meta["files"] for t in tables)
    assert meta["memory"]["binary_bytes"] == sum(p.stat().st_size for p in out.glob("binary*"))
    assert describe_index(out)["coarse"].startswith("hnsw over the distinct codes, M 32, efSearch 128")
    queries = codes[5000:5100]
    index = Index.load(out)
    res = index.search(queries, None, k=20, rerank=False)
    want_d, _ = exact_topk(queries, codes[:5000], 20)
    assert np.array_equal(res.hamming, want_d)

    append(more.dir, out, progress=False, log=lambda m: None)
    index = Index.load(out)
    assert index.count == 6000
    res = index.search(queries, None, k=20, rerank=False)
    assert np.array_equal(res.hamming, exact_topk(queries, codes, 20)[0])
    # each graph holds the distinct codes of its position range (a single index: the old buckets grew)
    ranges = [(s["start"], s["stop"]) for s in index.meta["binary"].get("shards", [])] or [(0, 6000)]
    graphs = [p.binary for p in index.binary.parts] if shards > 1 else [index.binary]
    assert [g.nodes for g in graphs] == [len(np.unique(codes[lo:hi], axis=0)) for lo, hi in ranges]
    # the fine stage re-ranks a whole pool of the graph's answers
    full = index.search(queries, feats[5000:5100], k=10)
    assert (full.positions >= 0).all() and not np.isnan(full.distance).any()


def test_a_bucket_table_not_matching_its_graph_is_refused(collection, tmp_path):
    root, store, _, _, _ = collection
    out = tmp_path / "hnsw"
    build(store.dir, out, binary="hnsw", rerank="none", progress=False, log=lambda m: None)
    meta = json.loads((out / "index.json").read_text())
    del meta["files"]  # an index without checksums: the table's own check is what stands
    (out / "index.json").write_text(json.dumps(meta))
    np.save(out / "binary.buckets.npy", np.array([3, 2, 0, 1, 2, 2, 0, 1], np.int64))
    with pytest.raises(HashindexError, match=r"binary.buckets.npy is not the bucket table of the \d+ codes"):
        Index.load(out)
    (out / "binary.buckets.npy").write_bytes(b"not an npy file")
    with pytest.raises(HashindexError, match="binary.buckets.npy is unreadable"):
        Index.load(out)
    (out / "binary.buckets.npy").unlink()
    with pytest.raises(HashindexError, match="incomplete index, missing binary.buckets.npy"):
        Index.load(out)


def test_an_index_with_a_graph_over_every_item_still_loads(collection, tmp_path):
    """Indexes built before buckets (a graph over every item, no table) load and search as before."""
    root, store, _, codes, _ = collection
    out = tmp_path / "old"
    build(store.dir, out, binary="hnsw", rerank="none", progress=False, log=lambda m: None)
    meta = json.loads((out / "index.json").read_text())
    del meta["files"], meta["binary"]["buckets"]
    (out / "binary.buckets.npy").unlink()
    graph = faiss.IndexBinaryHNSW(64, 32)
    graph.add(np.pad(codes[:5000], ((0, 0), (0, 2))))
    faiss.write_index_binary(graph, str(out / "binary.faiss"))
    (out / "index.json").write_text(json.dumps(meta))
    index = Index.load(out)
    assert isinstance(index.binary, faiss.IndexBinaryHNSW)
    res = index.search(codes[:10], None, k=5, rerank=False)
    assert (res.positions >= 0).all() and (res.hamming[:, 0] == 0).all()
    with pytest.raises(HashindexError, match="radius=2: the hnsw index has no range search .*rebuild it"):
        index.range_search(codes[:10], 2)


@pytest.mark.parametrize("flat_factor", [1, None])
def test_hnsw_range_search_grows_until_outside_the_radius(flat_factor, monkeypatch):
    """More codes lie within the radius than the first search asks for (64): the graph is asked again for
    more (with the scan made dear, flat_factor 1), or the distinct codes are scanned (the default here:
    exact)."""
    from hashindex.index import buckets

    if flat_factor:
        monkeypatch.setattr(buckets, "FLAT_FACTOR", flat_factor)
    codes = bucketed_codes(20_000, 3000, seed=8)
    index = BucketedBinary(faiss.IndexBinaryHNSW(64, 32))
    index.add(codes)
    lims, d, pos = index.range_search(codes[:20], 30)
    brute = hamming_distances(codes[:20], codes)
    nodes_inside = [len(np.unique(codes[brute[q] < 30], axis=0)) for q in range(20)]
    assert max(nodes_inside) > 64
    want = [set(np.flatnonzero(brute[q] < 30).tolist()) for q in range(20)]
    found = [set(pos[lims[q]:lims[q + 1]].tolist()) for q in range(20)]
    recall = np.mean([len(f & w) / len(w) for f, w in zip(found, want)])
    assert all(f <= w for f, w in zip(found, want)) and recall > (0.99 if flat_factor else 1 - 1e-12)
    assert np.array_equal(d, brute[np.repeat(np.arange(20), np.diff(lims)), pos])
