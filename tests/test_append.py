"""A growing collection: extract with --id-offset, then build --append into an existing index."""

import json
import shutil

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashindexError, ShardSet
from hashindex.cli import cli
from hashindex.extraction import extract
from hashindex.index import append, build
from hashindex.index import Index
from tests.conftest import CIFAR_TEST

QUERIES = slice(0, 10000, 211)
QUIET = {"progress": False, "log": lambda m: None}


@pytest.fixture(scope="module")
def new_shards(tiny_model, tmp_path_factory):
    """600 CIFAR-10 test images numbered from id 10,000: a second collection for the same model."""
    out = tmp_path_factory.mktemp("new") / "shards"
    extract(str(tiny_model), str(CIFAR_TEST), out, limit=600, id_offset=10000, shard_size=250, **QUIET)
    return out


@pytest.fixture(scope="module")
def both(cifar_shards, new_shards):
    """The two collections' rows, concatenated in index position order."""
    a = ShardSet(cifar_shards).load(("codes", "features", "ids", "labels"))
    b = ShardSet(new_shards).load(("codes", "features", "ids", "labels"))
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def test_id_offset_numbers_the_collection(new_shards):
    from hashindex.data import open_source

    ids = ShardSet(new_shards).load(("ids",))["ids"]
    assert np.array_equal(ids, 10000 + open_source(CIFAR_TEST).subset(600).ids())
    assert ShardSet(new_shards).manifest["source"]["id_offset"] == 10000


def test_resume_with_another_id_offset_is_refused(tiny_model, new_shards):
    with pytest.raises(HashindexError, match="another id_offset"):
        extract(str(tiny_model), str(CIFAR_TEST), new_shards, limit=600, id_offset=20000, shard_size=250, **QUIET)


@pytest.mark.parametrize("shards", [1, 3])
def test_appended_index_equals_one_over_both(shards, cifar_shards, new_shards, both, tmp_path):
    """Flat index over A, then A+B appended: the same results as one index over the concatenated rows."""
    out = tmp_path / "index"
    build(cifar_shards, out, signal="l2", shards=shards, **QUIET)
    meta = append(new_shards, out, **QUIET)
    assert meta["count"] == 10600 and meta["appended"][0]["start"] == 10000
    if shards > 1:  # the new rows form one more shard; the old shard files are untouched
        assert meta["binary"]["shards"][-1] == {"file": "binary-003.faiss", "start": 10000, "stop": 10600}
    grown = Index.load(out)
    whole = Index.in_memory(both["codes"], both["features"].astype(np.float32), 48, ids=both["ids"],
                            labels=both["labels"])
    assert np.array_equal(grown.ids, both["ids"]) and np.array_equal(grown.labels, both["labels"])
    q = np.concatenate([both["codes"][QUERIES], both["codes"][10000::37]])
    f = np.concatenate([both["features"][QUERIES], both["features"][10000::37]]).astype(np.float32)
    a, b = grown.search(q, None, k=30, rerank=False), whole.search(q, None, k=30, rerank=False)
    assert np.array_equal(a.hamming, b.hamming)
    inner = a.hamming < a.hamming[:, -1:]
    assert np.array_equal(np.where(inner, a.ids, -1), np.where(inner, b.ids, -1))
    ra, rb = grown.search(q, f, k=10, candidates=10600), whole.search(q, f, k=10, candidates=10600)
    assert np.array_equal(ra.ids, rb.ids) and np.allclose(ra.distance, rb.distance)
    for (pa, da), (pb, dbb) in zip(grown.range_search(q, 2), whole.range_search(q, 2)):
        assert np.array_equal(np.sort(pa), np.sort(pb)) and np.array_equal(np.sort(da), np.sort(dbb))


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "multihash"])
def test_appended_items_are_found_by_their_own_code(kind, cifar_shards, new_shards, both, tmp_path):
    out = tmp_path / kind
    build(cifar_shards, out, signal="l2", binary=kind, rerank="sq8", **QUIET)
    append(new_shards, out, **QUIET)
    grown = Index.load(out)
    assert grown.count == 10600 and grown.meta["binary"]["kind"] == kind
    q = both["codes"][10000:]

    def self_hits(rows: slice) -> float:  # share of items found at distance 0 (themselves or a twin)
        return float(np.mean(grown.search(both["codes"][rows], None, k=1, rerank=False).hamming[:, 0] == 0))

    new, old = self_hits(slice(10000, None)), self_hits(slice(0, 10000, 16))
    if kind == "hnsw":  # a graph: appended items are reached about as well as the ones built in
        assert new >= old - 0.05 and new > 0.85, (new, old)
    else:  # IVF lists / hash buckets hold an exact code match, and range search finds each item itself
        assert new == old == 1.0
        radius0 = grown.range_search(q[:50], 0)
        assert all(10000 + i in pos for i, (pos, _) in enumerate(radius0))


def test_append_errors_and_cli(cifar_shards, new_shards, tiny_model, tmp_path):
    runner = CliRunner()
    out = tmp_path / "index"
    build(cifar_shards, out, signal="l2", **QUIET)
    res = runner.invoke(cli, ["-q", "build", str(new_shards), "--out", str(out), "--append", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 10600
    info = runner.invoke(cli, ["info", str(out), "--json"])
    assert json.loads(info.output)["appended"][0]["dir"] == str(new_shards.resolve())
    from hashindex.query import example_results
    from hashindex.originals import Originals
    from hashindex.grids import results_grid

    grown = Index.load(out)
    originals = Originals(grown)  # the results grid reads each row from its own collection
    assert [len(originals.locate(p)[0]) for p in (0, 9999, 10000, 10599)] == [10000, 10000, 600, 600]
    grid = results_grid(grown, example_results(grown, new_shards), tmp_path / "grid.png")
    assert grid.stat().st_size > 10_000

    clash = tmp_path / "clash"  # the same images numbered from 0 again: ids already in the index
    extract(str(tiny_model), str(CIFAR_TEST), clash, limit=300, shard_size=300, **QUIET)
    other_model = tmp_path / "other"
    shutil.copytree(new_shards, other_model)
    manifest = json.loads((other_model / "manifest.json").read_text())
    manifest["model_id"] = "0123456789abcdef"
    (other_model / "manifest.json").write_text(json.dumps(manifest))
    no_features = tmp_path / "no_features"
    shutil.copytree(new_shards, no_features)
    manifest = json.loads((no_features / "manifest.json").read_text())
    manifest.update(feature_dim=0, feature_dtype="none")
    (no_features / "manifest.json").write_text(json.dumps(manifest))
    before = (out / "index.json").read_text()
    next_id = int(ShardSet(new_shards).load(("ids",))["ids"].max()) + 1  # 20000: the hint for a clash
    cases = [
        ([str(new_shards), "--out", str(out), "--append"], "already in"),
        ([str(clash), "--out", str(out), "--append"], f"--id-offset {next_id}"),
        ([str(other_model), "--out", str(out), "--append"], "codes of different models"),
        ([str(no_features), "--out", str(out), "--append"], "extracted with --features none, but"),
        ([str(new_shards), "--out", str(out), "--append", "--binary", "ivf"], "--append: --binary cannot"),
        ([str(new_shards), "--out", str(tmp_path / "none"), "--append"], "no such directory"),
        ([str(new_shards), "--out", str(out)], "or --append"),
        ([str(out), "--out", str(out), "--append"], "an index directory; expected a shard directory"),
        ([str(out / "index.json"), "--out", str(out), "--append"], "a file; expected a shard directory"),
    ]
    for args, message in cases:
        res = runner.invoke(cli, ["-q", "build", *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and res.output.count("\n") == 1, (args, res.output)
    assert (out / "index.json").read_text() == before  # refused appends leave the index as it was


def test_concurrent_append_is_refused(cifar_shards, new_shards, tmp_path):
    """A second append while one holds the index's lock: a one-line error, not a lost update."""
    import fcntl

    out = tmp_path / "index"
    build(cifar_shards, out, signal="l2", **QUIET)
    with open(tmp_path / ".index.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = CliRunner().invoke(cli, ["-q", "build", str(new_shards), "--out", str(out), "--append"])
    assert res.exit_code == 2 and "another append to it is running" in res.output, res.output
    assert Index.load(out).count == 10000
    append(new_shards, out, **QUIET)  # the lock released: it goes through
    assert Index.load(out).count == 10600


def test_failed_append_leaves_the_index_whole(cifar_shards, new_shards, tmp_path, monkeypatch):
    out = tmp_path / "index"
    build(cifar_shards, out, signal="l2", shards=2, **QUIET)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        append(new_shards, out, **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp folder left behind
    monkeypatch.undo()
    append(new_shards, out, **QUIET)
    assert Index.load(out).count == 10600


def test_a_batch_job_is_not_taken_as_done_or_resumed_across_an_append(cifar_shards, new_shards, tmp_path,
                                                                      monkeypatch):
    """The index's build time stays the same through an append: a rerun was taken for the finished job (stale
    results, without the new items) and an interrupted job resumed batches searched before the append."""
    import hashindex.batch as batch

    out, res = tmp_path / "index", tmp_path / "r.h5"
    build(cifar_shards, out, signal="l2", **QUIET)
    batch.batch_search(out, new_shards, res, k=3, batch_size=200, **QUIET)
    append(new_shards, out, **QUIET)
    with pytest.raises(HashindexError, match="already exists"):  # another index now: not "already complete"
        batch.batch_search(out, new_shards, res, k=3, batch_size=200, **QUIET)
    batch.batch_search(out, new_shards, res, k=3, batch_size=200, overwrite=True, **QUIET)
    import h5py

    with h5py.File(res) as f:  # each query now finds its own item, appended, at Hamming 0
        assert (f["hamming"][:, 0] == 0).all() and set(f["ids"][()].ravel()) & set(range(10000, 10600))

    calls = []
    real = batch.search_part

    def dies_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    res2 = tmp_path / "r2.h5"
    build(cifar_shards, out, signal="l2", overwrite=True, **QUIET)
    monkeypatch.setattr(batch, "search_part", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        batch.batch_search(out, new_shards, res2, k=3, batch_size=200, **QUIET)
    monkeypatch.undo()
    append(new_shards, out, **QUIET)
    with pytest.raises(HashindexError, match="an unfinished job with other settings"):
        batch.batch_search(out, new_shards, res2, k=3, batch_size=200, **QUIET)
