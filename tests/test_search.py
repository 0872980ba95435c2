"""Build and query on CIFAR-10 shards, checked against numpy brute force."""

import json
import shutil
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashindexError, ShardSet
from hashindex.cli import cli
from hashindex.codes import hamming_distances
from hashindex.index import build, pad_codes, padded_bytes
from hashindex.index import Index
from hashindex.batch import batch_search, read_results
from tests.conftest import CIFAR_TEST, SVHN, make_mixed_folder

QUERIES = slice(0, 10000, 97)  # 104 queries spread over the classes


@pytest.fixture(scope="module")
def db(cifar_shards):
    return ShardSet(cifar_shards).load(("codes", "features", "ids", "labels"))


def test_padding_sizes():
    assert [padded_bytes(b) for b in (1, 2, 3, 4, 5, 6, 8, 9, 17, 20, 21, 64, 65)] == \
        [4, 4, 4, 4, 8, 8, 8, 16, 20, 20, 32, 64, 72]


def test_padded_and_unpadded_distances_equal(db):
    codes = db["codes"]
    plain, padded = faiss.IndexBinaryFlat(48), faiss.IndexBinaryFlat(64)
    plain.add(codes)
    padded.add(pad_codes(codes, 8))
    d1, _ = plain.search(codes[QUERIES], 200)
    d2, _ = padded.search(pad_codes(codes[QUERIES], 8), 200)
    assert np.array_equal(d1, d2)


def test_flat_coarse_equals_numpy(flat_index, db):
    index = Index.load(flat_index)
    q = db["codes"][QUERIES]
    ham, pos = index.coarse(q, 300)
    brute = hamming_distances(q, db["codes"]).astype(np.int32)
    expect = np.sort(brute, axis=1, kind="stable")[:, :300]
    assert np.array_equal(ham, expect)  # same distances in the same order
    assert np.array_equal(np.take_along_axis(brute, pos, 1), ham)  # each id really is at that distance
    for row in pos:  # no duplicates; ties ordered by position
        assert len(set(row.tolist())) == len(row)
    key = ham.astype(np.int64) * 100000 + pos
    assert (np.diff(key, axis=1) > 0).all()


def test_two_stage_with_whole_database_equals_exhaustive(flat_index, db):
    index = Index.load(flat_index)
    q = slice(0, 10000, 500)
    feats = db["features"].astype(np.float32)
    res = index.search(db["codes"][q], feats[q], k=10, candidates=index.count)
    exact = ((feats[q][:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    order = np.argsort(exact, axis=1, kind="stable")[:, :10]
    expect_d = np.take_along_axis(exact, order, 1)
    assert np.allclose(res.distance, expect_d, rtol=1e-4, atol=1e-4)
    same = res.ids == db["ids"][order]
    # where ids differ, the two float distances tie within rounding
    assert np.allclose(res.distance[~same], np.take_along_axis(exact, res.positions, 1)[~same], rtol=1e-4, atol=1e-4)
    assert same.mean() > 0.99
    assert np.array_equal(res.hamming, np.take_along_axis(hamming_distances(db["codes"][q], db["codes"]), res.positions, 1))


def tie_aware_recall(approx_ham, flat_ham, k=10):
    """Fraction of an approximate top-k that is as close as the exact k-th neighbour."""
    kth = flat_ham[:, k - 1:k]
    return float(((approx_ham[:, :k] <= kth) & (approx_ham[:, :k] >= 0)).mean())


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "multihash"])
def test_approximate_indexes_recall(kind, cifar_shards, flat_index, db, tmp_path):
    """Default settings must reach tie-aware recall@10 >= 0.9 against flat, on a trained net's codes (hundreds
    of items per code: a graph over every item stalled at 0.77 here; HNSW's graph is over the distinct codes,
    hashindex/index/buckets.py)."""
    build(cifar_shards, tmp_path / kind, binary=kind, rerank="none", progress=False, log=lambda s: None)
    approx, flat = Index.load(tmp_path / kind), Index.load(flat_index)
    q = db["codes"][QUERIES]
    a = approx.search(q, None, k=10, rerank=False)
    f = flat.search(q, None, k=10, rerank=False)
    recall = tie_aware_recall(a.hamming, f.hamming)
    assert recall >= 0.9, (kind, recall, approx.meta["binary"])
    assert np.array_equal(np.take_along_axis(hamming_distances(q, db["codes"]), a.positions, 1), a.hamming)


@pytest.mark.parametrize("kind", ["flat", "multihash", "hnsw"])
def test_radius_2_is_exact(kind, cifar_shards, db, tmp_path):
    """(HNSW's range search grows its top-k search until the farthest code found is outside the radius:
    approximate in general, exact here, where the codes within 2 bits are few.)"""
    build(cifar_shards, tmp_path / kind, binary=kind, rerank="none", progress=False, log=lambda s: None)
    index = Index.load(tmp_path / kind)
    q = db["codes"][QUERIES]
    brute = hamming_distances(q, db["codes"])
    for row, (pos, dist) in zip(brute, index.range_search(q, 2)):
        assert set(pos.tolist()) == set(np.flatnonzero(row <= 2).tolist())
        assert np.array_equal(dist, row[pos])


def test_a_radius_past_the_code_width_returns_every_item(flat_index, db):
    """(Faiss takes the radius as a C int: 10**11 raised a TypeError from the query, the CLI and the service.)"""
    index = Index.load(flat_index)
    q = db["codes"][QUERIES][:3]
    brute = hamming_distances(q, db["codes"])
    for radius in (index.bits, 10**11):
        for row, (pos, dist) in zip(brute, index.range_search(q, radius)):
            assert len(pos) == index.count and np.array_equal(dist, row[pos]) and (np.diff(dist) >= 0).all()


@pytest.mark.parametrize("rerank", ["fp16", "sq8", "pq"])
def test_quantized_rerank_stores(rerank, cifar_shards, flat_index, db, tmp_path):
    build(cifar_shards, tmp_path / rerank, binary="flat", rerank=rerank, signal="l2", progress=False, log=lambda s: None)
    index, exact = Index.load(tmp_path / rerank), Index.load(flat_index)
    feats = db["features"].astype(np.float32)
    a = index.search(db["codes"][QUERIES], feats[QUERIES], k=10, candidates=200)
    b = exact.search(db["codes"][QUERIES], feats[QUERIES], k=10, candidates=200)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.ids, b.ids)])
    assert overlap >= {"fp16": 0.99, "sq8": 0.9, "pq": 0.6}[rerank], overlap
    assert index.meta["memory"]["rerank_bytes"] < exact.meta["memory"]["rerank_bytes"]


def test_cli_query_and_errors(flat_index, cifar_shards, tiny_model, tmp_path):
    runner = CliRunner()
    from hashindex.data import open_source

    src = open_source(CIFAR_TEST)
    img = tmp_path / "q.jpg"
    img.write_bytes(src.read_bytes(5))
    res = runner.invoke(cli, ["query", str(flat_index), str(img), "--model", str(tiny_model), "--k", "5", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows[0]["results"]) == 5 and rows[0]["results"][0]["id"] == 5  # finds itself first
    assert rows[0]["results"][0]["path"] == src.paths[5]
    res = runner.invoke(cli, ["query", str(flat_index), "--by-id", "5", "--radius", "2", "--json"])
    assert res.exit_code == 0
    hits = json.loads(res.output)[0]["results"]
    assert hits and max(h["hamming"] for h in hits) <= 2
    table = runner.invoke(cli, ["query", str(flat_index), "--by-id", "5", "-k", "3"])
    assert table.exit_code == 0 and "test/" in table.output and "query id:5: 3 results" in table.output

    half = tmp_path / "half"
    half.mkdir()
    (half / "binary.faiss").write_bytes(b"")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text((flat_index / "index.json").read_text())
    make_mixed_folder(tmp_path / "imgs")
    from hashindex.checkpoint import atomic_torch_save, build_meta
    from hashindex.model import NINHash

    other = tmp_path / "other.pt"
    atomic_torch_save(build_meta(NINHash(48, 10), class_names=[str(i) for i in range(10)], input_size=32), other)
    cases = [
        ([str(tmp_path / "nope"), "--by-id", "1"], "no such directory"),
        ([str(half), "--by-id", "1"], "not a complete hashindex index"),
        ([str(other), "--by-id", "1"], "a file; expected an index directory"),
        ([str(broken), "--by-id", "1"], "incomplete index, missing"),
        ([str(flat_index), str(img), "--model", str(other)], "differs from the index's model"),
        ([str(flat_index), str(tmp_path / "imgs/cat/truncated.jpg"), "--model", str(tiny_model)], "cannot be decoded (truncated)"),
        ([str(flat_index), str(tmp_path / "imgs"), "--model", str(tiny_model)],
         f"imgs: a collection of images, not one: search it as a batch job (--queries {tmp_path / 'imgs'} --out RESULTS)"),
        ([str(flat_index), str(SVHN / "test_32x32.mat"), "--model", str(tiny_model)], "a collection of images, not one"),
        ([str(flat_index), "--by-id", "1", "--k", "10001"], "holds only 10000 items"),
        ([str(flat_index), "--by-id", "123456"], "no item with this id"),
        ([str(flat_index), "--by-id", "1", "--k", "10", "--candidates", "5"], "at least --k"),
        ([str(flat_index), "--by-id", "1", "-k", "0"], "--k 0: expected a positive number of results"),  # (was
        ([str(flat_index), "--by-id", "1", "-k", "-3"], "--k -3: expected a positive"),  # an IndexError; "--k -2")
        ([str(flat_index)], "nothing to query"),
    ]
    for args, message in cases:
        res = runner.invoke(cli, ["query", *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and res.output.count("\n") == 1, (args, res.output)
    res = runner.invoke(cli, ["build", str(cifar_shards), "--out", str(flat_index)])
    assert res.exit_code == 2 and "already exists" in res.output


def test_batch_job_resumes_to_identical_file(flat_index, cifar_queries, tmp_path, monkeypatch):
    clean = tmp_path / "clean.h5"
    batch_search(flat_index, cifar_queries, clean, k=20, batch_size=150, progress=False, log=lambda s: None)
    with h5py.File(clean) as f:
        ids, ham, qids = f["ids"][()], f["hamming"][()], f["query_ids"][()]
    q = ShardSet(cifar_queries).load(("codes", "features", "ids"))
    assert ids.shape == (1000, 20) and np.array_equal(qids, q["ids"])
    direct = Index.load(flat_index).search(q["codes"][:50], q["features"][:50].astype(np.float32), k=20)
    assert np.array_equal(direct.ids, ids[:50]) and np.array_equal(direct.hamming, ham[:50])

    calls = {"n": 0}
    real = Index.search

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Index, "search", flaky)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        batch_search(flat_index, cifar_queries, out, k=20, batch_size=150, progress=False, log=lambda s: None)
    saved = sorted((tmp_path / "resumed.h5.parts").glob("part-*.npz"))
    assert not out.exists() and len(saved) == 3
    damaged = bytearray(saved[1].read_bytes())  # a flipped byte (the zip member's CRC) and a part cut short
    damaged[len(damaged) // 2] ^= 0xFF
    saved[1].write_bytes(bytes(damaged))
    saved[2].write_bytes(saved[2].read_bytes()[:300])
    said = []
    batch_search(flat_index, cifar_queries, out, k=20, batch_size=150, progress=False, log=said.append)
    assert calls["n"] == 4 + 6  # the 4 missing batches (of 7) and the 2 damaged ones were searched again
    assert [line.split(": ")[1] for line in said if line.startswith("warning")] == [str(p) for p in saved[1:]]
    with h5py.File(clean) as a, h5py.File(out) as b:
        for name in ("query_ids", "ids", "hamming", "distance"):
            assert np.array_equal(a[name][()], b[name][()]), name
    with pytest.raises(HashindexError, match="already exists"):
        batch_search(flat_index, cifar_queries, out, k=20)
    monkeypatch.setattr(Index, "search", real)
    csv = tmp_path / "r.csv"
    batch_search(flat_index, cifar_queries, csv, k=3, progress=False, log=lambda s: None)
    lines = csv.read_text().splitlines()
    assert lines[0] == "query_id,rank,id,hamming,distance" and len(lines) == 1 + 3 * 1000
    # read back (hashindex.read_results): every format gives the arrays the HDF5 file holds, and the first 3
    # of the top 20 (the pool does not depend on k)
    for name in ("r.jsonl", "r3.h5", "r.parquet"):
        batch_search(flat_index, cifar_queries, tmp_path / name, k=3, progress=False, log=lambda s: None)
    h5, top20 = read_results(tmp_path / "r3.h5"), read_results(clean)
    table = pytest.importorskip("pyarrow.parquet").read_table(tmp_path / "r.parquet")  # one row per result
    assert table.column_names == lines[0].split(",") and table.num_rows == 3 * 1000
    assert json.loads(table.schema.metadata[b"hashindex"])["k"] == 3
    for name in ("r.csv", "r.jsonl", "r.parquet"):
        back = read_results(tmp_path / name)
        for key in ("query_ids", "ids", "hamming", "distance"):
            assert np.array_equal(back[key], h5[key], equal_nan=True) and back[key].dtype == h5[key].dtype, key
    assert np.array_equal(h5["ids"], top20["ids"][:, :3]) and np.array_equal(h5["query_ids"], top20["query_ids"])
    record = tmp_path / ".r3.h5.job.json"  # the job's record beside its results, edited: not trusted, one line
    for text in ("5", "[1]", '{"out_sha256": 7}'):
        record.write_text(text)
        with pytest.raises(HashindexError, match="r3.h5: not a finished batch results file"):
            read_results(tmp_path / "r3.h5")


def test_a_job_ranked_by_an_older_version_is_not_mixed_in(flat_index, cifar_queries, tmp_path, monkeypatch):
    """Parts and finished files recorded without this version's ranking (`batch.RANKING`: an indexed item
    first) are neither resumed into a new file nor taken as the answer; overwrite runs the job again."""
    from hashindex import batch

    quiet = dict(progress=False, log=lambda s: None)
    out, parts = tmp_path / "old.h5", tmp_path / "old.h5.parts"
    real = Index.search
    monkeypatch.setattr(Index, "search", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        batch_search(flat_index, cifar_queries, out, k=5, batch_size=400, **quiet)
    monkeypatch.setattr(Index, "search", real)
    job = json.loads((parts / "job.json").read_text())
    assert job["ranking"] == batch.RANKING
    del job["ranking"]  # as the version before it wrote it
    (parts / "job.json").write_text(json.dumps(job))
    with pytest.raises(HashindexError, match=r"old.h5: the unfinished job in .* was ranked by an older hashindex"):
        batch_search(flat_index, cifar_queries, out, k=5, batch_size=400, **quiet)
    batch_search(flat_index, cifar_queries, out, k=5, batch_size=400, overwrite=True, **quiet)
    record = tmp_path / ".old.h5.job.json"
    finished = json.loads(record.read_text())
    assert batch_search(flat_index, cifar_queries, out, k=5, batch_size=400, **quiet)["ranking"] == batch.RANKING
    record.write_text(json.dumps({key: v for key, v in finished.items() if key != "ranking"}))
    with pytest.raises(HashindexError, match="already exists"):  # not a no-op: it answered another ranking
        batch_search(flat_index, cifar_queries, out, k=5, batch_size=400, **quiet)


def test_parquet_results_need_pyarrow_before_any_search(flat_index, cifar_queries, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    monkeypatch.setattr(Index, "search", lambda *a, **k: pytest.fail("searched before the format was checked"))
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--queries", str(cifar_queries), "--out",
                                   str(tmp_path / "r.pq")])
    assert res.exit_code == 2 and res.output == (f"hashindex: error: --out {tmp_path / 'r.pq'}: writing Parquet needs "
                                                 "pyarrow: pip install 'hashindex[parquet]'\n")
    assert list(tmp_path.iterdir()) == []


def test_complete_ties_reranks_whole_tie_group(flat_index, db):
    index = Index.load(flat_index)
    q = slice(0, 10000, 1000)
    codes, feats = db["codes"][q], db["features"][q].astype(np.float32)
    ham, pos = index.coarse(codes, 20)
    wide_h, wide_p = index.complete_ties(codes, ham, pos, cap=10000)
    brute = hamming_distances(codes, db["codes"])
    for i in range(len(codes)):
        got = wide_p[i][wide_p[i] >= 0]
        assert set(got.tolist()) == set(np.flatnonzero(brute[i] <= ham[i, -1]).tolist())
    res = index.search(codes, feats, k=1, candidates=20, complete_ties=True)
    assert np.array_equal(res.ids[:, 0], db["ids"][q])  # every query finds itself first


def test_batch_job_from_image_source(flat_index, tiny_model, tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(cli, ["-q", "query", str(flat_index), "--queries", str(tmp_path / "imgs"),
                                   "--model", str(tiny_model), "--out", str(out), "--k", "5"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9 and all(len(r["ids"]) == 5 for r in rows)  # 9 readable images, 3 skipped
    assert not (tmp_path / "r.jsonl.parts").exists()
    res = CliRunner().invoke(cli, ["-q", "query", str(flat_index), "--queries", str(tmp_path / "imgs"),
                                   "--out", str(tmp_path / "x.jsonl"), "--k", "5"])
    assert res.exit_code == 0, res.output  # without --model: the checkpoint the shards recorded
    assert (tmp_path / "x.jsonl").read_text() == out.read_text()


def test_queries_without_model_need_the_recorded_checkpoint(tiny_model, tmp_path):
    """An index remembers the checkpoint its shards were extracted with (by path, checked by id): image queries
    need no --model while it is there; once it is gone, one line says what to give."""
    import shutil

    from hashindex import extract

    model = tmp_path / "mine.pt"
    shutil.copy(tiny_model, model)
    make_mixed_folder(tmp_path / "imgs")
    extract(str(model), str(tmp_path / "imgs"), tmp_path / "shards", workers=0, progress=False, log=lambda s: None)
    assert ShardSet(tmp_path / "shards").manifest["model"] == str(model.resolve())
    index = build(tmp_path / "shards", tmp_path / "index", signal="l2", progress=False, log=lambda s: None)
    assert index["model"] == str(model.resolve())
    photo = str(tmp_path / "imgs" / "cat" / "good.jpg")
    res = CliRunner().invoke(cli, ["query", str(tmp_path / "index"), photo, "--k", "3", "--json"])
    assert res.exit_code == 0, res.output
    model.unlink()
    res = CliRunner().invoke(cli, ["query", str(tmp_path / "index"), photo, "--k", "3"])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "--model: needed to encode images (no shipped model has id" in res.output
    assert "give the checkpoint the index's shards were extracted with" in res.output


def test_flat_indexes_load_memory_mapped(flat_index):
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6

    before = rss_mb()
    mapped = [Index.load(flat_index) for _ in range(5)]  # 5 x (80 kB codes + 7.7 MB features)
    assert rss_mb() - before < 20  # loaded into memory it would be about 39 MB
    assert mapped[0].search(mapped[0].items(np.array([3]))[0], None, k=1).ids[0, 0] >= 0


def test_query_grid_shows_the_right_images(flat_index, tiny_model, tmp_path):
    """`query --grid`: each cell reads the image of its own item (the query by id finds itself first)."""
    from hashindex.data import open_source
    from hashindex.grids import query_grid_rows
    from hashindex.query import query

    src = open_source(CIFAR_TEST)
    img = tmp_path / "q.jpg"
    img.write_bytes(src.read_bytes(77))
    rows = query(flat_index, [str(img)], [5], model=str(tiny_model), k=6)
    index = Index.load(flat_index)
    grid = query_grid_rows(index, rows)
    as_array = lambda im: np.asarray(im.convert("RGB"))  # noqa: E731
    (read_img, cap_img, hits_img), (read_id, cap_id, hits_id) = grid
    assert np.array_equal(as_array(read_img()), as_array(src.read(77))) and cap_img == "q.jpg"
    assert np.array_equal(as_array(read_id()), as_array(src.read(5))) and cap_id.startswith("id:5 (")
    for row, hits in ((rows[0], hits_img), (rows[1], hits_id)):
        for hit, (read, colour, caption) in zip(row["results"], hits):
            assert np.array_equal(as_array(read()), as_array(src.read(hit["id"])))  # ids are test-set positions
            assert caption.endswith(f"d={hit['hamming']}")
    assert {c for _, c, _ in hits_img} == {"grey"}  # an image file has no label
    assert hits_id[0][1] == "green" and {c for _, c, _ in hits_id} <= {"green", "red"}
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--by-id", "5", "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0 and (tmp_path / "g.png").stat().st_size > 5_000, res.output
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--queries", "x", "--out", "y", "--grid", "g.png"])
    assert res.exit_code == 2 and "--grid: draws interactive queries" in res.output
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--by-id", "5", "--grid", str(tmp_path / "g.svg")])
    assert res.exit_code == 0 and (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml"), res.output
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--by-id", "5", "--grid", str(tmp_path / "g.txt")])
    assert res.exit_code == 2 and not (tmp_path / "g.txt").exists()
    expected = f"hashindex: error: --grid {tmp_path / 'g.txt'}: expected a .png, .jpg, .pdf or .svg file name\n"
    assert res.output == expected


def test_a_results_name_that_names_no_format_is_refused(flat_index, cifar_queries, tmp_path):
    """A batch job's --out names its format (.h5 .jsonl .csv .parquet; none: HDF5); any other suffix is refused
    before a search runs (HDF5 under a .json name would pass for JSON), unless --format says which."""
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--queries", str(cifar_queries), "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.output == (f"hashindex: error: --out {out}: expected a name ending in .h5, .jsonl, .csv or .parquet "
                          "(JSON lines: .jsonl), or set --format to one of h5, jsonl, csv, parquet\n")
    res = CliRunner().invoke(cli, ["-q", "query", str(flat_index), "--queries", str(cifar_queries), "--out", str(out),
                                   "--format", "jsonl", "--k", "3"])
    assert res.exit_code == 0 and len(out.read_text().splitlines()) == 1000
    plain = tmp_path / "r"
    batch_search(flat_index, cifar_queries, plain, k=3, progress=False, log=lambda s: None)
    assert h5py.is_hdf5(plain)


def test_a_grid_shows_what_it_can_when_a_collection_is_unreadable(flat_index, tmp_path):
    """Items whose images were not kept (added as arrays, or through the service) are '?' cells; the grid of
    the rest is still drawn (it was refused outright)."""
    import shutil

    from hashindex.index import append
    from hashindex.grids import query_grid_rows
    from hashindex.store import write_arrays

    out = tmp_path / "index"
    shutil.copytree(flat_index, out)
    index = Index.load(out)
    codes, feats = index.items(np.arange(3))
    write_arrays(tmp_path / "added", codes, feats, ids=np.arange(20000, 20003), bits=48, model_id=index.model_id,
                 class_names=index.class_names)
    append(tmp_path / "added", out, progress=False, log=lambda s: None)
    grown = Index.load(out)
    [(read, _, hits)] = query_grid_rows(grown, [{"query": "id:0", "results": [
        {"id": 20000, "path": "", "class": None, "label": -1, "hamming": 0},
        {"id": 1, "path": grown.paths(np.array([1]))[0], "class": "x", "label": 0, "hamming": 3}]}])
    assert read() is not None and hits[0][0]() is None and hits[1][0]() is not None


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_sharded_index_equals_single(kind, cifar_shards, db, tmp_path):
    """S=4 binary shards (IVF: one shared trained quantizer) give the single index's results."""
    for s in (1, 4):
        build(cifar_shards, tmp_path / f"{kind}{s}", binary=kind, rerank="flat", signal="l2", shards=s,
              progress=False, log=lambda m: None)
    one, four = Index.load(tmp_path / f"{kind}1"), Index.load(tmp_path / f"{kind}4")
    assert len(four.meta["binary"]["shards"]) == 4 and four.count == one.count == 10000
    q, f = db["codes"][QUERIES], db["features"][QUERIES].astype(np.float32)
    a, b = one.search(q, None, k=50, rerank=False), four.search(q, None, k=50, rerank=False)
    assert np.array_equal(a.hamming, b.hamming)
    inner = a.hamming < a.hamming[:, -1:]  # below the boundary distance the ids must agree exactly
    assert np.array_equal(np.where(inner, a.ids, -1), np.where(inner, b.ids, -1))
    ra, rb = one.search(q, f, k=10, candidates=10000), four.search(q, f, k=10, candidates=10000)
    assert np.array_equal(ra.ids, rb.ids)  # whole-database pools: identical re-ranked top 10
    if kind == "flat":
        for (pa, da), (pb, dbb) in zip(one.range_search(q, 2), four.range_search(q, 2)):
            assert np.array_equal(pa, pb) and np.array_equal(da, dbb)


@pytest.mark.parametrize("rerank", ["flat", "sq8"])
def test_a_sharded_float_store_ranks_as_one(cifar_shards, tiny_model, tmp_path, rerank):
    """build shards=3 splits the float store like the binary index (rerank-000.faiss ...); searches, stored
    vectors and an append give what one store gives."""
    from hashindex.index import Index, append, build
    from hashindex.index.kinds import FloatParts
    from hashindex.query import indexed_queries

    q = {"progress": False, "log": lambda s: None}
    build(cifar_shards, tmp_path / "one", rerank=rerank, signal="cosine", **q)
    build(cifar_shards, tmp_path / "three", rerank=rerank, signal="cosine", shards=3, **q)
    one, three = Index.load(tmp_path / "one"), Index.load(tmp_path / "three")
    assert isinstance(three.rerank, FloatParts) and len(three.meta["rerank"]["shards"]) == 3
    ids = one.ids[::97].tolist()
    c1, v1 = indexed_queries(one, ids)
    c3, v3 = indexed_queries(three, ids)
    assert np.array_equal(v1, v3)
    a, b = one.search(c1, v1, k=25, vectors=True), three.search(c3, v3, k=25, vectors=True)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.distance, b.distance, equal_nan=True)
    assert three.meta["memory"]["rerank_bytes"] > 0
    from hashindex import extract
    from tests.conftest import CIFAR_TRAIN

    extract(str(tiny_model), str(CIFAR_TRAIN), tmp_path / "more", limit=300, id_offset=10**6, workers=0, **q)
    for d in ("one", "three"):
        append(tmp_path / "more", tmp_path / d, **q)
    one, three = Index.load(tmp_path / "one"), Index.load(tmp_path / "three")
    assert [s["file"] for s in three.meta["rerank"]["shards"]][-1] == "rerank-003.faiss"
    ids = one.ids[::151].tolist()
    a = one.search(*indexed_queries(one, ids), k=25, vectors=True)
    b = three.search(*indexed_queries(three, ids), k=25, vectors=True)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.distance, b.distance, equal_nan=True)


@pytest.mark.parametrize("kind", ["flat", "sq8"])
def test_float_parts_give_each_part_only_its_candidates(kind):
    """FloatParts.distances over 3 parts equals one store's, and no part is asked for another's rows."""
    from hashindex.index.kinds import FloatParts, StorePart, new_float_store, subset_distances

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((1000, 16)).astype(np.float32)
    one = new_float_store(kind, vecs)
    one.add(vecs)
    bounds = [0, 300, 310, 1000]
    asked = []

    class Spy(StorePart):
        def distances(self, x, local_pos):
            asked.append(local_pos)
            return super().distances(x, local_pos)

    parts = []
    for lo, hi in zip(bounds, bounds[1:]):
        store = faiss.clone_index(one)
        store.reset()
        store.add(vecs[lo:hi])
        parts.append(Spy(None, store))
    fp = FloatParts(parts, bounds[:-1], [hi - lo for lo, hi in zip(bounds, bounds[1:])], 16)
    pos = rng.integers(0, 1000, (7, 50))
    pos[rng.random(pos.shape) < 0.2] = -1
    pos[3] = rng.integers(0, 300, 50)  # a query whose candidates all lie in the first part
    x = rng.standard_normal((7, 16)).astype(np.float32)
    assert np.array_equal(fp.distances(x, pos), subset_distances(one, x, pos))
    for (lo, hi), lp in zip(zip(bounds, bounds[1:]), asked):
        assert lp.shape[1] == max(((pos >= lo) & (pos < hi)).sum(axis=1).max(), 1)  # packed, not the whole pool


def test_ivf_returns_k_results_when_its_lists_hold_fewer(cifar_shards, db, tmp_path):
    """nprobe 1 of 64 lists (~150 items each) asked for 2,000: the query is searched again with more lists
    until they hold 2,000 items; the index's own nprobe stays 1."""
    build(cifar_shards, tmp_path / "ivf", binary="ivf", nlist=64, nprobe=1, rerank="none", progress=False,
          log=lambda s: None)
    index = Index.load(tmp_path / "ivf")
    q = db["codes"][QUERIES]
    res = index.search(q, None, k=2000, rerank=False)
    brute = hamming_distances(q, db["codes"])
    assert (res.positions >= 0).all() and index.binary.nprobe == 1
    assert all(len(set(row)) == 2000 for row in res.positions.tolist())
    assert np.array_equal(res.hamming, np.take_along_axis(brute, res.positions, 1))
    kth = np.sort(brute, axis=1)[:, 1999:2000]
    assert tie_aware_recall(res.hamming, np.sort(brute, axis=1), k=2000) >= 0.9 and (res.hamming[:, 0] <= kth[:, 0]).all()


def test_multihash_returns_k_results_when_its_buckets_hold_fewer(cifar_shards, db, tmp_path):
    """MultiHash finds only codes with a substring within nflip bits of the query's: asked for 9,800, a query
    it finds fewer for is answered by an exact scan of the index's codes; the others keep its own answer.
    Four parts fill as one index does (on the merged counts). (The session's tiny model: at nflip 1, a median
    query finds 9,870 of the 10,000 items.)"""
    import faiss

    for s in (1, 4):
        build(cifar_shards, tmp_path / f"mh{s}", binary="multihash", rerank="none", shards=s, progress=False,
              log=lambda m: None)
    index, four = Index.load(tmp_path / "mh1"), Index.load(tmp_path / "mh4")
    q = db["codes"][QUERIES]
    raw_d, raw_p = index.binary.search(pad_codes(q, index.meta["binary"]["padded_bytes"]), 9800)
    short = raw_p[:, -1] < 0
    assert short.any() and (~short).any(), short.mean()  # both kinds of query are checked
    res = index.search(q, None, k=9800, rerank=False)
    brute = hamming_distances(q, db["codes"])
    assert (res.positions >= 0).all() and all(len(set(row)) == 9800 for row in res.positions.tolist())
    assert np.array_equal(res.hamming, np.take_along_axis(brute, res.positions, 1))
    exact = np.sort(brute, axis=1)[:, :9800]
    assert np.array_equal(res.hamming[short], exact[short])  # filled: the exact top 9,800
    assert np.array_equal(res.hamming[~short], np.sort(raw_d[~short], axis=1))  # not short: its own answer
    assert isinstance(index.binary, faiss.IndexBinaryMultiHash) and index.binary.nflip == 1
    parts = four.search(q, None, k=9800, rerank=False)
    assert np.array_equal(parts.hamming, res.hamming)


def test_the_result_table_names_classes_and_marks_unlabelled_items():
    """A named class prints its name, a label without a name its number, an unlabelled item (-1) '-'."""
    from hashindex.query import format_table

    hits = [{"rank": r + 1, "id": r, "path": f"p{r}.jpg", "label": label, "class": name, "hamming": r,
             "distance": None} for r, (label, name) in enumerate([(3, "cat"), (12, None), (-1, None)])]
    rows = format_table([{"query": "q.jpg", "results": hits}]).splitlines()
    assert rows[0] == "query q.jpg: 3 results"
    assert [line.split()[4] for line in rows[2:]] == ["cat", "12", "-"]


def test_exclude_self_leaves_an_indexed_item_out_of_its_own_results(flat_index, cifar_shards, tmp_path, db):
    """--exclude-self: the results of an indexed item are its results without itself, in the same order (the
    top k+1 less the item, for top k and radius alike); a batch job over the indexed collection gives each
    query the same rows as the API; a batch radius search is refused in one line."""
    from hashindex.query import query

    index = Index.load(flat_index)
    ids = [int(i) for i in db["ids"][[0, 17, 4242, 9999]]]
    plain = query(index, [], ids, k=6)
    left = query(index, [], ids, k=5, exclude_self=True)
    for i, p, e in zip(ids, plain, left):
        others = [r for r in p["results"] if r["id"] != i]
        assert [r["id"] for r in e["results"]] == [r["id"] for r in others][:5]
        assert all(r["id"] != i for r in e["results"])
        assert [r["hamming"] for r in e["results"]] == [r["hamming"] for r in others][:5]
    wide = query(index, [], ids, radius=1)
    narrow = query(index, [], ids, radius=1, exclude_self=True)
    for i, w, n in zip(ids, wide, narrow):
        assert [r["id"] for r in n["results"]] == [r["id"] for r in w["results"] if r["id"] != i]
    everything = query(index, [], ids[:1], k=index.count, exclude_self=True)[0]["results"]
    assert len(everything) == index.count - 1 and ids[0] not in {r["id"] for r in everything}
    out = tmp_path / "near.jsonl"
    batch_search(flat_index, cifar_shards, out, k=5, batch_size=3000, exclude_self=True, progress=False,
                 log=lambda s: None)
    rows = {r["query_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 10000 and all(q not in r["ids"] and len(r["ids"]) == 5 for q, r in rows.items())
    for i, e in zip(ids, left):
        assert rows[i]["ids"] == [r["id"] for r in e["results"]]
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--queries", str(cifar_shards), "--out",
                                   str(tmp_path / "r.h5"), "--radius", "1"])
    assert res.exit_code == 2 and res.output == ("hashindex: error: --radius: not for a batch job (--queries --out: "
                                                 "the top --k of every query)\n")
    res = CliRunner().invoke(cli, ["-q", "query", str(flat_index), "--by-id", str(ids[1]), "--k", "5",
                                   "--exclude-self", "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == left[1:2], res.output


def test_an_indexed_item_comes_first_whatever_the_signal(cifar_shards, cifar_queries, tmp_path):
    """Under the posterior signal an item's nearest is a more confident image of its class, not itself; a query
    that is an indexed item (by id, a batch job over the indexed collection, radius) finds itself first all the
    same, at Hamming 0 and its own signal distance, and the others follow as with --exclude-self."""
    from hashindex.query import indexed_queries, query

    build(cifar_shards, tmp_path / "ix", signal="posterior", progress=False, log=lambda s: None)
    index = Index.load(tmp_path / "ix")
    out, left = tmp_path / "self.h5", tmp_path / "left.h5"
    for path, exclude in ((out, False), (left, True)):
        batch_search(index, cifar_queries, path, k=4, exclude_self=exclude, progress=False, log=lambda s: None)
    got, others = read_results(out), read_results(left)
    assert np.array_equal(got["ids"][:, 0], got["query_ids"]) and (got["hamming"][:, 0] == 0).all()
    assert np.array_equal(got["ids"][:, 1:], others["ids"][:, :3])
    codes, vecs = indexed_queries(index, got["query_ids"][:50].tolist())
    raw = index.search(codes, vecs, k=1, vectors=True).ids[:, 0]
    assert (raw != got["query_ids"][:50]).sum() >= 10  # what the signal alone puts first
    d = index.float_distances(vecs[:1], index.positions_of(got["query_ids"][:1])[:, None], vectors=True)[0, 0]
    one = query(index, [], [int(got["query_ids"][0])], k=4)[0]["results"]
    assert [r["id"] for r in one] == got["ids"][0].tolist() and one[0]["distance"] == pytest.approx(float(d))
    near = query(index, [], [int(got["query_ids"][0])], radius=2)[0]["results"]
    assert near[0]["id"] == got["query_ids"][0] and near[0]["hamming"] == 0


def test_a_copy_of_an_indexed_image_under_another_name_comes_first(cifar_shards, tiny_model, tmp_path):
    """An image file whose pixels at the net's input are an indexed item's (a copy out of the tar the index
    was built from, under another name) is that item's query: first under the posterior signal, which alone
    puts a more confident image of its class there, or left out with exclude_self; the CLI and the service
    (both servers) and a batch job over a folder of the copies answer the same; an image not in the index has
    no such item."""
    import tarfile

    from hashindex.codes import input_digests
    from hashindex.query import indexed_queries, query
    from hashindex.service.basic import Searcher
    from hashindex.service.engine import Engine, Query
    from hashindex.service.params import own_of

    build(cifar_shards, tmp_path / "ix", signal="posterior", progress=False, log=lambda s: None)
    index = Index.load(tmp_path / "ix")
    ids = index.ids[:200]
    codes, vecs = indexed_queries(index, ids.tolist())
    moved = ids[index.search(codes, vecs, k=1, vectors=True).ids[:, 0] != ids][:3]  # the signal's first is another
    assert len(moved) == 3
    wanted = dict(zip(index.paths(index.positions_of(moved)), moved.tolist()))
    copies = {}
    with tarfile.open(CIFAR_TEST) as tf:
        for m in tf:
            if m.name in wanted:
                copies[wanted[m.name]] = tmp_path / "copies" / f"copy-{len(copies)}.jpg"
                copies[wanted[m.name]].parent.mkdir(exist_ok=True)
                copies[wanted[m.name]].write_bytes(tf.extractfile(m).read())
    files = [str(copies[i]) for i in moved.tolist()]
    got = query(index, files, [], model=str(tiny_model), k=4)
    assert [r["results"][0]["id"] for r in got] == moved.tolist()
    assert all(r["results"][0]["hamming"] == 0 for r in got)
    left = query(index, files, [], model=str(tiny_model), k=4, exclude_self=True)
    assert all(i not in [x["id"] for x in r["results"]] and len(r["results"]) == 4 for i, r in zip(moved, left))
    res = CliRunner().invoke(cli, ["-q", "query", str(tmp_path / "ix"), files[0], "--model", str(tiny_model),
                                   "--k", "4", "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == got[:1], res.output
    batch_search(index, tmp_path / "copies", tmp_path / "b.h5", k=4, model=str(tiny_model), progress=False,
                 log=lambda s: None)  # the folder's ids: its files in name order
    item_of = dict(zip((Path(f).name for f in files), moved.tolist()))
    assert read_results(tmp_path / "b.h5")["ids"][:, 0].tolist() == [item_of[n] for n in sorted(item_of)]
    server = Searcher(tmp_path / "ix", str(tiny_model))
    copy = copies[int(moved[0])].read_bytes()
    assert server.by_image(copy, {"k": 4})["results"][0]["id"] == moved[0]
    engine = Engine(tmp_path / "ix", str(tiny_model))  # the ASGI service's batcher
    try:
        rows = [engine.submit(Query("upload", {"k": 4, **extra}, array=engine.image_array(copy))).result(timeout=60)
                for extra in ({}, {"exclude_self": True})]
    finally:
        engine.close()
    assert rows[0]["results"][0]["id"] == moved[0] and moved[0] not in [r["id"] for r in rows[1]["results"]]
    stranger = np.zeros((1, 3, 16, 16), np.uint8)
    assert own_of(index, [None, int(moved[1])], [int(input_digests(stranger)[0]), None]).tolist() == \
        [-1, int(index.positions_of(moved[1:2])[0])]
    assert Index.in_memory(codes, None, 48).positions_of_inputs(input_digests(stranger)).tolist() == [-1]
    from hashindex.info import describe

    assert describe(tmp_path / "ix")["input_digests"].startswith("10000 of 10000 items")


def _drop_from_second_shard(shards, name: str) -> Path:
    """Delete field ``name`` from the second shard (as a shard written by an older version lacks it), with the
    manifest's checksum made to match, so that only the missing field differs; returns that shard's path."""
    from hashindex.files import sha256_file
    from hashindex.store import MANIFEST
    from hashindex.store.manifest import save_manifest

    second = shards.shard_paths()[1]
    with h5py.File(second, "a") as f:
        del f[name]
    manifest = json.loads((shards.dir / MANIFEST).read_text())
    manifest["shards"][1]["sha256"] = sha256_file(second)
    save_manifest(shards.dir, manifest)
    return second


def test_shards_without_input_digests_read_as_not_known(tmp_path):
    """A shard set of which one shard lacks input digests (an extraction begun by an older version and
    resumed) loads them as 0 for that shard's rows, and an index built from it keeps 0 ("not known") there:
    no query image is taken for those items, the others are found."""
    from hashindex.store import ShardSet, write_arrays

    rng = np.random.default_rng(0)
    digests = rng.integers(1, 2**63, 10, dtype=np.int64).astype(np.uint64)
    shards = write_arrays(tmp_path / "s", rng.integers(0, 256, (10, 2), dtype=np.uint8),
                          rng.normal(size=(10, 8)).astype(np.float32), shard_rows=5, input_digests=digests)
    _drop_from_second_shard(shards, "input_digests")
    loaded = ShardSet(shards.dir).load(("ids", "input_digests"))["input_digests"]
    assert loaded.tolist() == digests[:5].tolist() + [0] * 5
    build(shards.dir, tmp_path / "ix", rerank="flat", signal="l2", progress=False, log=lambda s: None)
    index = Index.load(tmp_path / "ix")
    assert index.positions_of_inputs(digests).tolist() == [0, 1, 2, 3, 4, -1, -1, -1, -1, -1]


def test_a_field_some_shards_lack_is_refused(tmp_path):
    """Any other field held by one shard and not another (here the mid features) is refused in one line
    naming the shard, rather than concatenated short against the ids."""
    from hashindex.store import write_arrays

    rng = np.random.default_rng(0)
    shards = write_arrays(tmp_path / "s", rng.integers(0, 256, (10, 2), dtype=np.uint8),
                          rng.normal(size=(10, 8)).astype(np.float32), shard_rows=5,
                          mid_features=rng.normal(size=(10, 4)).astype(np.float32))
    second = _drop_from_second_shard(shards, "mid_features")
    assert ShardSet(shards.dir).load(("ids", "codes"))["ids"].tolist() == list(range(10))
    with pytest.raises(HashindexError, match=f"shard_dir={second}: no 'mid_features'.*overwrite=True"):
        ShardSet(shards.dir).load(("ids", "mid_features"))


def test_input_digests_tell_the_same_pixels():
    """One digest per image, equal for equal pixels whatever the batch, another for one pixel changed, never 0
    (0 is "not known" in an index table)."""
    from hashindex.codes import input_digests

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    d = input_digests(images)
    assert d.dtype == np.uint64 and d.shape == (5,) and len(set(d.tolist())) == 5 and (d != 0).all()
    assert input_digests(images[3:4])[0] == d[3]
    changed = images.copy()
    changed[2, 1, 4, 4] ^= 1
    assert (input_digests(changed) == d).tolist() == [True, True, False, True, True]


def test_a_recorded_model_path_that_is_no_checkpoint_is_passed_over(tiny_model):
    """An edited index.json may record anything as its model: a missing file, a file that is no checkpoint, a path
    with a NUL byte, another model's checkpoint; each is passed over for the shipped models (here: none)."""
    from hashindex.checkpoint import find_model_for, read_checkpoint

    own = read_checkpoint(tiny_model)["model_id"]
    assert find_model_for(own, str(tiny_model)) == tiny_model
    for recorded in ("/nonexistent.pt", "/etc/hostname", "a\x00b.pt", str(tiny_model)):
        with pytest.raises(HashindexError, match="no shipped model has id 0123456789abcdef; give the checkpoint"):
            find_model_for("0123456789abcdef", recorded)


def test_info_of_a_file_inside_an_index_or_shard_directory_names_the_directory(flat_index, cifar_shards, tiny_model,
                                                                               tmp_path):
    """`info` of one shard, binary.faiss or the manifest says which directory to describe (it said "not a
    hashindex checkpoint"); a checkpoint kept inside an index directory is still described."""
    for part, whole, what in [(cifar_shards / "shard-00000.h5", cifar_shards, "shard directory"),
                              (cifar_shards / "manifest.json", cifar_shards, "shard directory"),
                              (flat_index / "binary.faiss", flat_index, "index")]:
        res = CliRunner().invoke(cli, ["info", str(part)])
        assert res.exit_code == 2 and res.output == (f"hashindex: error: PATH {part}: a file of the {what} {whole}: "
                                                     f"run hashindex info {whole}\n")
    inside = tmp_path / "index-with-model"
    shutil.copytree(flat_index, inside)
    shutil.copy(tiny_model, inside / "model.pt")
    res = CliRunner().invoke(cli, ["info", str(inside / "model.pt"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["bits"] == 48
