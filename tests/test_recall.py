"""Coarse-index parameters from a recall target (`build --recall`, `--binary auto`)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashindexError
from hashindex.cli import cli
from hashindex.index import Index, build
from hashindex.index.recall import exact_distances, tie_recall
from hashindex.codes import hamming_distances
from hashindex.store import write_arrays
from tests.conftest import load_tool

CENTRES = 1000  # clusters of ~20 codes: IVF needs nprobe 8 for recall@10 0.95 (a curve of 4 points)


def clustered_codes(n: int, n_centres: int, seed: int, centres_seed: int = 0, ands: int = 3) -> np.ndarray:
    """48-bit codes a few bits from random centres (bits flipped with probability 1/2**(ands + 1): 1/16)."""
    centres = np.random.default_rng(centres_seed).integers(0, 256, (n_centres, 6), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    flips = rng.integers(0, 256, (n, 6), dtype=np.uint8)
    for _ in range(ands):
        flips &= rng.integers(0, 256, (n, 6), dtype=np.uint8)
    return centres[rng.integers(0, n_centres, n)] ^ flips


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("recall")
    store = write_arrays(root / "shards", clustered_codes(20_000, CENTRES, seed=1), shard_rows=7_000)
    return root, store


def test_write_arrays_round_trips(collection):
    _, store = collection
    data = store.load(("codes", "ids", "labels"))
    assert np.array_equal(data["codes"], clustered_codes(20_000, CENTRES, seed=1))
    assert np.array_equal(data["ids"], np.arange(20_000)) and (data["labels"] == -1).all()
    assert store.rows == 20_000 and len(store.shard_paths()) == 3 and store.verify() == []


def test_write_arrays_rejects_mismatched_rows(tmp_path):
    with pytest.raises(HashindexError, match="labels: expected 5 rows"):
        write_arrays(tmp_path / "s", np.zeros((5, 6), np.uint8), labels=np.zeros(4))


def test_exact_distances_streamed_over_shards_equal_numpy(collection):
    _, store = collection
    codes = store.load(("codes",))["codes"]
    queries = codes[[3, 7_500, 19_999]]
    got = exact_distances(store, np.pad(queries, ((0, 0), (0, 2))), 8, k=10)
    want = np.sort(hamming_distances(queries, codes), axis=1)[:, :11]
    assert np.array_equal(got, want)


def test_tie_recall_counts_ties_and_leaves_the_query_out():
    exact = np.array([[0, 1, 2, 2]])  # the query's own 0, then its 3 nearest: k = 3, k-th distance 2
    self_pos = np.array([5])
    # itself, then two at distance <= 2 and one at 3: 2 of 3
    assert tie_recall(exact, np.array([[0, 1, 2, 3]]), np.array([[5, 1, 9, 4]]), self_pos, 3) == pytest.approx(2 / 3)
    # without itself among the results, the first 3 count: another item tied at 2 is as good
    assert tie_recall(exact, np.array([[1, 2, 2, 2]]), np.array([[1, 8, 9, 4]]), self_pos, 3) == 1.0
    # missing results (-1) never count
    assert tie_recall(exact, np.array([[0, 1, 0, 0]]), np.array([[5, 1, -1, -1]]), self_pos, 3) == pytest.approx(1 / 3)


def fresh_recall(index: Index, store, k: int = 10, queries: np.ndarray | None = None) -> float:
    """recall@10 of the coarse index on queries that are not in the collection, against numpy."""
    codes = store.load(("codes",))["codes"]
    queries = clustered_codes(300, CENTRES, seed=99) if queries is None else queries
    kth = np.sort(hamming_distances(queries, codes), axis=1)[:, k - 1:k]
    ham, _ = index.binary.search(np.pad(queries, ((0, 0), (0, 2))), k)
    return float((ham <= kth).mean())


def test_ivf_tuned_to_a_recall_target(collection):
    root, store = collection
    meta = build(store.dir, root / "ivf", binary="ivf", rerank="none", recall=0.95, progress=False, log=lambda m: None)
    t = meta["binary"]["tuning"]
    values = [v for v, _ in t["curve"]]
    assert t["param"] == "nprobe" and t["value"] == meta["binary"]["nprobe"] == values[-1]
    assert t["recall"] >= 0.95 and all(r < 0.95 for _, r in t["curve"][:-1])  # the smallest value reaching it
    assert values == [2 ** i for i in range(len(values))] and len(values) >= 3
    assert t["queries"] == 500 and t["at"] == 10
    index = Index.load(root / "ivf")
    assert index.binary.nprobe == t["value"]  # the faiss file carries it
    assert fresh_recall(index, store) >= 0.9  # and it holds on queries from outside the collection
    # a lower target stops earlier, at a lower nprobe
    low = build(store.dir, root / "ivf-low", binary="ivf", rerank="none", recall=0.5, progress=False,
                log=lambda m: None)["binary"]["tuning"]
    assert low["value"] <= t["value"] and low["recall"] >= 0.5


def test_parts_tune_as_one_index(collection):
    root, store = collection
    one = build(store.dir, root / "one", binary="ivf", rerank="none", recall=0.9, progress=False, log=lambda m: None)
    three = build(store.dir, root / "three", binary="ivf", rerank="none", recall=0.9, shards=3, progress=False,
                  log=lambda m: None)
    assert one["binary"]["tuning"] == three["binary"]["tuning"]


@pytest.mark.parametrize("kind,param", [("hnsw", "efSearch"), ("multihash", "nflip")])
def test_other_kinds_tuned(collection, kind, param):
    root, store = collection
    logs = []
    meta = build(store.dir, root / kind, binary=kind, rerank="none", recall=0.9, progress=False, log=logs.append)
    t = meta["binary"]["tuning"]
    assert t["param"] == param and meta["binary"][param] == t["value"]
    if t["recall"] < 0.9:  # MultiHash may not reach it with 3 flips: said, and the best value kept
        assert any("not reached" in line for line in logs)
        assert t["recall"] == max(r for _, r in t["curve"])
    else:
        assert fresh_recall(Index.load(root / kind), store) >= 0.8


def test_hnsw_defaults_on_clustered_codes(collection):
    """HNSW's default efSearch reaches recall@10 >= 0.9 on codes in clusters of ~20 without mass ties (on a
    trained net's codes it stalls: test_hnsw_duplicates_tool_on_bucketed_codes, docs/RESULTS.md)."""
    root, store = collection
    meta = build(store.dir, root / "hnsw-default", binary="hnsw", rerank="none", progress=False, log=lambda m: None)
    assert meta["binary"]["efSearch"] == 128 and "tuning" not in meta["binary"]
    assert fresh_recall(Index.load(root / "hnsw-default"), store) >= 0.9


def test_auto_is_flat_for_small_collections_and_tuned_ivf_past_the_limit(collection, monkeypatch):
    root, store = collection
    meta = build(store.dir, root / "auto-flat", rerank="none", progress=False, log=lambda m: None)
    assert meta["binary"]["kind"] == "flat" and meta["binary"]["requested"] == "auto"
    assert "tuning" not in meta["binary"]
    given = build(store.dir, root / "auto-nprobe", rerank="none", nprobe=3, progress=False, log=lambda m: None)
    assert given["binary"]["kind"] == "ivf" and given["binary"]["nprobe"] == 3 and "tuning" not in given["binary"]
    monkeypatch.setattr("hashindex.index.recall.AUTO_FLAT_MAX", 10_000)
    meta = build(store.dir, root / "auto-ivf", rerank="none", progress=False, log=lambda m: None)
    b = meta["binary"]
    assert b["kind"] == "ivf" and b["nlist"] == 256 and b["tuning"]["target"] == 0.95
    assert b["tuning"]["recall"] >= 0.95
    assert isinstance(faiss.read_index_binary(str(root / "auto-ivf" / "binary.faiss")), faiss.IndexBinaryIVF)


def test_recall_errors(collection, tmp_path):
    _, store = collection
    with pytest.raises(HashindexError, match="binary=flat is exact"):
        build(store.dir, tmp_path / "a", binary="flat", rerank="none", recall=0.9, progress=False)
    with pytest.raises(HashindexError, match="pass one"):
        build(store.dir, tmp_path / "b", binary="ivf", rerank="none", recall=0.9, nprobe=4, progress=False)
    with pytest.raises(HashindexError, match=r"recall=1.5: expected a number in \(0, 1\]"):
        build(store.dir, tmp_path / "c", binary="ivf", rerank="none", recall=1.5, progress=False)
    r = CliRunner().invoke(cli, ["build", str(store.dir), "--out", str(tmp_path / "d"), "--recall", "0"])
    assert r.exit_code == 2 and "--recall" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_cli_records_the_tuning(collection, tmp_path):
    _, store = collection
    r = CliRunner().invoke(cli, ["-q", "build", str(store.dir), "--out", str(tmp_path / "i"), "--binary", "ivf",
                                 "--rerank", "none", "--recall", "0.9", "--json"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert meta["binary"]["tuning"]["recall"] >= 0.9
    assert "recall@10" in r.output  # the log line, on stderr beside the JSON
    info = json.loads(CliRunner().invoke(cli, ["info", str(tmp_path / "i"), "--json"]).output)
    t = meta["binary"]["tuning"]
    assert info["coarse"] == (f"ivf, nlist {meta['binary']['nlist']}, nprobe {t['value']}: recall@10 {t['recall']} "
                              "(target 0.9, measured on 500 held-out items)")


def test_tie_recall_of_fresh_queries_leaves_nothing_out():
    exact = np.array([[1, 1, 2, 3]])  # a query from outside: its k = 3 nearest end at distance 2
    assert tie_recall(exact, np.array([[1, 2, 2, 3]]), np.array([[5, 1, 9, 4]]), None, 3) == 1.0
    assert tie_recall(exact, np.array([[1, 3, 3, 3]]), np.array([[5, 1, 9, 4]]), None, 3) == pytest.approx(1 / 3)
    assert tie_recall(exact, np.array([[1, 2, 0, 0]]), np.array([[5, 1, -1, -1]]), None, 3) == pytest.approx(2 / 3)


def test_tune_queries_measure_what_held_out_items_flatter(collection, tmp_path):
    """Queries noisier than the collection's own items (as a net's codes of new images are, next to its
    training images'): tuned on held-out items, IVF stops at an nprobe that misses the target on such
    queries; tuned on a sample of them, it reaches it on others of the kind."""
    root, store = collection
    noisy = lambda n, seed: clustered_codes(n, CENTRES, seed=seed, ands=1)  # noqa: E731 (1/4 of bits flipped)
    queries = write_arrays(tmp_path / "queries", noisy(2_000, 7), shard_rows=900)
    held = build(store.dir, tmp_path / "held", binary="ivf", rerank="none", recall=0.9, progress=False,
                 log=lambda m: None)["binary"]["tuning"]
    meta = build(store.dir, tmp_path / "fresh", binary="ivf", rerank="none", recall=0.9, tune_queries=queries.dir,
                 progress=False, log=lambda m: None)
    fresh = meta["binary"]["tuning"]
    assert fresh["queries_from"] == str(queries.dir.resolve()) and fresh["queries"] == 500
    assert "queries_from" not in held
    others = noisy(300, 8)
    assert fresh["value"] > held["value"] and fresh["recall"] >= 0.9
    assert fresh_recall(Index.load(tmp_path / "held"), store, queries=others) < 0.85  # held-out items flattered it
    assert abs(fresh_recall(Index.load(tmp_path / "fresh"), store, queries=others) - fresh["recall"]) < 0.05
    info = json.loads(CliRunner().invoke(cli, ["info", str(tmp_path / "fresh"), "--json"]).output)
    assert info["coarse"].endswith(f"measured on 500 queries from {queries.dir.resolve()})")


def test_tune_queries_errors(collection, tmp_path):
    root, store = collection
    other = write_arrays(tmp_path / "other", clustered_codes(50, CENTRES, seed=3), model_id="another-net")
    with pytest.raises(HashindexError, match=r"tune_queries=.*other: holds 48-bit codes of model another-net, but "
                                             r"the collection's are 48-bit codes of model arrays"):
        build(store.dir, tmp_path / "a", binary="ivf", rerank="none", recall=0.9, tune_queries=other.dir,
              progress=False)
    with pytest.raises(HashindexError, match="tune_queries=.*missing: no such directory"):
        build(store.dir, tmp_path / "b", binary="ivf", rerank="none", recall=0.9, tune_queries=tmp_path / "missing")
    with pytest.raises(HashindexError, match="nothing to tune without recall"):
        build(store.dir, tmp_path / "c", binary="flat", rerank="none", tune_queries=store.dir, progress=False)
    with pytest.raises(HashindexError, match=r"nothing to tune without recall \(binary=auto, nprobe=4\)"):
        build(store.dir, tmp_path / "c", rerank="none", nprobe=4, tune_queries=store.dir, progress=False)
    logs = []  # auto on a small collection is flat: the queries go unused, and it says so
    meta = build(store.dir, tmp_path / "d", rerank="none", tune_queries=store.dir, progress=False, log=logs.append)
    assert meta["binary"]["kind"] == "flat" and any("unused" in line for line in logs)
    r = CliRunner().invoke(cli, ["build", str(store.dir), "--out", str(tmp_path / "e"), "--binary", "multihash",
                                 "--rerank", "none", "--tune-queries", str(tmp_path / "missing")])
    assert r.exit_code != 0 and r.output.startswith("hashindex: error: --tune-queries ")
    r = CliRunner().invoke(cli, ["build", str(store.dir), "--out", str(tmp_path / "d"), "--append",
                                 "--tune-queries", str(store.dir)])
    assert r.exit_code != 0 and "--append: --tune-queries cannot be combined" in r.output
    assert not any((tmp_path / name).exists() for name in "abce")


def test_loaded_ivf_counts_instead_of_a_heap_with_the_same_distances(collection):
    """Index.load sets IVF to count (faster for the fine stage's large pools), working around faiss #5555
    (the counting scanner read max_codes=0 as a zero budget and returned nothing)."""
    root, store = collection
    build(store.dir, root / "ivf-count", binary="ivf", rerank="none", nprobe=8, progress=False, log=lambda m: None)
    index = Index.load(root / "ivf-count")
    assert not index.binary.use_heap
    queries = np.pad(clustered_codes(50, CENTRES, seed=7), ((0, 0), (0, 2)))
    got_d, got_p = index.binary.search(queries, 500)
    heap = faiss.read_index_binary(str(root / "ivf-count" / "binary.faiss"))
    want_d, _ = heap.search(queries, 500)
    assert (got_p >= 0).all() and np.array_equal(got_d, want_d)


def test_an_unreachable_target_keeps_the_best_value_and_says_so(collection):
    from hashindex.index.recall import tune

    _, store = collection
    part = faiss.IndexBinaryMultiHash(64, 3, 16)
    found_nothing = lambda q, k: (np.full((len(q), k), 2 ** 31 - 1, np.int32), np.full((len(q), k), -1))  # noqa: E731
    logs = []
    t = tune(found_nothing, [part], "multihash", {}, store, 8, 0.9, np.random.default_rng(0), logs.append)
    assert [v for v, _ in t["curve"]] == [0, 1, 2, 3] and t["recall"] == 0 and t["value"] == 0
    assert part.nflip == 0 and "not reached" in logs[0] and "tried 0, 1, 2, 3" in logs[0]


@pytest.mark.parametrize("shards", [1, 3])
def test_nprobe_per_call(collection, shards):
    """search(nprobe=) scans that many lists for this call only: all lists give the exact (flat) ranking,
    1 list fewer true neighbours; the index's own nprobe is untouched; non-IVF and out-of-range values are
    refused in one line."""
    root, store = collection
    build(store.dir, root / f"np{shards}", binary="ivf", nlist=64, nprobe=1, rerank="none", shards=shards,
          progress=False, log=lambda m: None)
    build(store.dir, root / f"flat{shards}", binary="flat", rerank="none", shards=shards, progress=False,
          log=lambda m: None)
    ivf, flat = Index.load(root / f"np{shards}"), Index.load(root / f"flat{shards}")
    queries = clustered_codes(40, CENTRES, seed=9)
    exact = flat.search(queries, k=20, complete_ties=False)
    full = ivf.search(queries, k=20, complete_ties=False, nprobe=64)
    assert np.array_equal(full.positions, exact.positions) and np.array_equal(full.hamming, exact.hamming)
    one = ivf.search(queries, k=20, complete_ties=False)
    assert np.array_equal(ivf.search(queries, k=20, complete_ties=False, nprobe=1).positions, one.positions)
    assert (one.hamming >= exact.hamming).all() and (one.hamming > exact.hamming).any()
    parts = ivf.binary.parts if shards > 1 else [ivf.binary]
    assert all((p.binary if hasattr(p, "binary") else p).nprobe == 1 for p in parts)
    wide = ivf.range_search(queries[:5], 4, nprobe=64)
    for (p, d), (fp, fd) in zip(wide, flat.range_search(queries[:5], 4)):
        assert np.array_equal(p, fp) and np.array_equal(d, fd)
    with pytest.raises(HashindexError, match=r"nprobe=65: expected 1 to 64 \(the index's lists\)"):
        ivf.search(queries, k=5, nprobe=65)
    with pytest.raises(HashindexError, match="nprobe=4: the flat coarse index has no nprobe"):
        flat.search(queries, k=5, nprobe=4)


def test_nprobe_through_the_cli_and_the_batch_job(collection, tmp_path):
    """`query --nprobe` (interactive and batch) reaches the coarse index: all lists give the flat index's
    results; the batch job records the value and a rerun with another value is not taken as done."""
    from hashindex.batch import batch_search

    root, store = collection
    ivf, flat = root / "np1", root / "flat1"
    if not ivf.exists():
        build(store.dir, ivf, binary="ivf", nlist=64, nprobe=1, rerank="none", progress=False, log=lambda m: None)
        build(store.dir, flat, binary="flat", rerank="none", progress=False, log=lambda m: None)
    runner = CliRunner()

    def ids(index, *extra):
        res = runner.invoke(cli, ["query", str(index), "--by-id", "3", "--by-id", "11", "--k", "20", "--cut-ties",
                                  "--json", *extra])
        assert res.exit_code == 0, res.output
        return [[h["id"] for h in row["results"]] for row in json.loads(res.output)]

    assert ids(ivf, "--nprobe", "64") == ids(flat)
    res = runner.invoke(cli, ["query", str(flat), "--by-id", "3", "--nprobe", "2"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "--nprobe 2: the flat coarse index" in res.output
    qdir = write_arrays(tmp_path / "q", clustered_codes(30, CENTRES, seed=11)).dir
    opts = dict(k=20, progress=False, log=lambda m: None)
    job = batch_search(ivf, qdir, tmp_path / "r.jsonl", nprobe=64, **opts)
    want = batch_search(flat, qdir, tmp_path / "f.jsonl", **opts)
    assert job["nprobe"] == 64 and want["nprobe"] is None
    got = [json.loads(line)["hamming"] for line in open(tmp_path / "r.jsonl")]
    assert got == [json.loads(line)["hamming"] for line in open(tmp_path / "f.jsonl")]
    with pytest.raises(HashindexError, match="already exists"):
        batch_search(ivf, qdir, tmp_path / "r.jsonl", nprobe=8, **opts)


def test_hnsw_duplicates_tool_on_bucketed_codes():
    """tools/hnsw_duplicates.py measures build's distinct-code graph against a graph over every item."""
    tool = load_tool("hnsw_duplicates")
    rng = np.random.default_rng(3)
    distinct = np.unique(clustered_codes(300, 30, seed=1), axis=0)
    codes = distinct[np.minimum(rng.geometric(0.01, 4000), len(distinct)) - 1]  # buckets of up to hundreds
    sizes = (codes[:, None, :] == distinct[None]).all(-1).sum(0)
    r = tool.measure(codes, 50, [10, 1000], [16, 64])
    assert r["items"] == 4000 and r["distinct_codes"] == (sizes > 0).sum() and r["largest_bucket"] == sizes.max()
    assert [(row["k"], row["efSearch"]) for row in r["recall"]] == [(10, 16), (10, 64), (1000, 16), (1000, 64)]
    assert all(row["distinct codes"] == 1.0 for row in r["recall"])  # at most 300 nodes: the graph is exact
    assert all(0 <= row["every item"] <= 1 and row["every item ms"] > 0 for row in r["recall"])
