"""A collection that shrinks: `hashindex remove` takes items out of an index, which then answers as one built
without them."""

import json

import faiss
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashindexError, ShardSet
from hashindex.cli import cli
from hashindex.extraction import extract
from hashindex.index import Index, append, build, remove
from hashindex.index.layout import collections, next_id
from tests.conftest import CIFAR_TEST

QUIET = {"progress": False, "log": lambda m: None}
RNG = np.random.default_rng(7)
SCATTERED = np.sort(RNG.choice(10000, 400, replace=False))


@pytest.fixture(scope="module")
def rows(cifar_shards):
    return ShardSet(cifar_shards).load(("codes", "features", "ids", "labels"))


def _contents(folder):
    """The index's files (not the cache of files found right, which an open after a copy rewrites)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def _kept(rows, gone_positions):
    keep = np.ones(len(rows["ids"]), bool)
    keep[gone_positions] = False
    return {k: v[keep] for k, v in rows.items()}, keep


@pytest.mark.parametrize("shards,rerank", [(1, "flat"), (3, "flat"), (3, "sq8")])
def test_an_index_after_removal_equals_one_built_without_the_items(shards, rerank, cifar_shards, rows, tmp_path):
    """Scattered items and a whole part (the middle one of three) removed: the same results, ids,
    labels and stored vectors as an index over the remaining rows; the untouched part is the same file."""
    out = tmp_path / "index"
    build(cifar_shards, out, signal="l2", shards=shards, rerank=rerank, **QUIET)
    parts = json.loads((out / "index.json").read_text())["binary"].get("shards")
    middle = np.arange(parts[1]["start"], parts[1]["stop"]) if shards == 3 else np.zeros(0, int)
    gone = np.union1d(SCATTERED, middle)
    sq8_before = faiss.read_index(str(out / "rerank-002.faiss")) if rerank == "sq8" else None
    meta = remove(out, ids=rows["ids"][gone], **QUIET)
    kept, keep = _kept(rows, gone)
    assert meta["count"] == len(kept["ids"]) == 10000 - len(gone)
    if shards == 3:  # the emptied middle part is dropped, the others renumbered over the new positions
        first = int(keep[:parts[0]["stop"]].sum())
        assert [(s["file"], s["start"], s["stop"]) for s in meta["binary"]["shards"]] == [
            ("binary-000.faiss", 0, first), ("binary-001.faiss", first, meta["count"])]
    index = Index.load(out)
    assert np.array_equal(index.ids, kept["ids"]) and np.array_equal(index.labels, kept["labels"])
    whole = Index.in_memory(kept["codes"], kept["features"].astype(np.float32), 48, ids=kept["ids"],
                            labels=kept["labels"])
    q, f = rows["codes"][::97], rows["features"][::97].astype(np.float32)
    a, b = index.search(q, None, k=30, rerank=False), whole.search(q, None, k=30, rerank=False)
    assert np.array_equal(a.hamming, b.hamming) and np.array_equal(a.ids, b.ids)
    assert not np.isin(a.ids, rows["ids"][gone]).any()
    if rerank == "flat":
        ra, rb = index.search(q, f, k=10, candidates=10000), whole.search(q, f, k=10, candidates=10000)
        assert np.array_equal(ra.ids, rb.ids) and np.allclose(ra.distance, rb.distance)
    else:  # a quantized store keeps each remaining row's bytes: the last part's codes, minus the removed rows
        after = faiss.read_index(str(out / "rerank-001.faiss"))
        old = faiss.vector_to_array(sq8_before.codes).reshape(sq8_before.ntotal, -1)
        new = faiss.vector_to_array(after.codes).reshape(after.ntotal, -1)
        assert np.array_equal(new, old[keep[parts[2]["start"]:]])
    assert meta["removed"][-1]["count"] == len(gone) and meta["removed"][-1]["max_id"] == rows["ids"][gone].max()
    res = CliRunner().invoke(cli, ["verify", str(out)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("kind,shards", [("ivf", 1), ("hnsw", 1), ("multihash", 1), ("hnsw", 3)])
def test_approximate_kinds_keep_finding_what_remains(kind, shards, cifar_shards, rows, tmp_path):
    """Three HNSW parts: items of the first removed, the middle one emptied, the last untouched (its graph and
    bucket table hard-linked under the part's new name)."""
    out = tmp_path / kind
    build(cifar_shards, out, signal="l2", binary=kind, rerank="sq8", shards=shards, **QUIET)
    before = json.loads((out / "index.json").read_text())["binary"]
    gone = SCATTERED
    if shards == 3:
        parts = before["shards"]
        gone = np.union1d(SCATTERED[SCATTERED < parts[0]["stop"]], np.arange(parts[1]["start"], parts[1]["stop"]))
    last = {name: (out / name).stat().st_ino for name in ("binary-002.faiss", "binary-002.buckets.npy")
            } if shards == 3 else {}
    remove(out, ids=rows["ids"][gone], **QUIET)
    kept, _ = _kept(rows, gone)
    index = Index.load(out)
    after = json.loads((out / "index.json").read_text())["binary"]
    assert {**after, "shards": None} == {**before, "shards": None}  # kinds and parameters kept
    if last:
        assert [(out / n.replace("002", "001")).stat().st_ino for n in last] == list(last.values())
    res = index.search(kept["codes"][::50], None, k=5, rerank=False)
    assert (res.hamming[:, 0] == 0).all()  # each remaining item is found by its own code
    assert np.array_equal(index.items(res.positions[:, 0])[0], kept["codes"][::50])  # positions map to the rows
    res = index.search(rows["codes"][gone], None, k=20, rerank=False)
    assert not np.isin(res.ids, rows["ids"][gone]).any()


@pytest.fixture(scope="module")
def grown(tiny_model, cifar_shards, tmp_path_factory):
    """An index of the 10,000 test images with 300 of them appended again (ids from 10,000)."""
    base = tmp_path_factory.mktemp("grown")
    extract(str(tiny_model), str(CIFAR_TEST), base / "new", limit=300, id_offset=10000, **QUIET)
    build(cifar_shards, base / "index", signal="l2", **QUIET)
    append(base / "new", base / "index", **QUIET)
    return base


def test_removal_from_an_appended_index_keeps_each_collections_range(grown, tmp_path, rows):
    import shutil

    from hashindex.evaluation import evaluate

    out = tmp_path / "index"
    shutil.copytree(grown / "index", out)
    new_ids = ShardSet(grown / "new").load(("ids",))["ids"]
    gone_ids = np.concatenate([rows["ids"][SCATTERED], new_ids[[0, 1, -1]]])
    meta = remove(out, ids=gone_ids, **QUIET)
    assert [(c["start"], c["stop"]) for c in collections(meta)] == [(0, 9600), (9600, 9897)]
    index = Index.load(out)
    assert index.ids[9600] == new_ids[2] and not np.isin(gone_ids, index.ids).any()
    # the appended collection as queries: each found item is still recognised as the query's own (left out)
    result = evaluate(out, grown / "new", progress=False)
    assert result["self_excluded"] == 297
    assert next_id(meta, index.ids) == new_ids[-1] + 1  # the largest id was removed: it is not given again


def test_remove_by_recorded_path_and_errors(flat_index, rows, tmp_path):
    import shutil

    out = tmp_path / "index"
    shutil.copytree(flat_index, out)
    index = Index.load(out)
    path, item = index.paths(np.array([5]))[0], int(index.ids[5])
    res = CliRunner().invoke(cli, ["-q", "remove", str(out), "--path", path, "7", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 9998
    assert not np.isin([item, 7], Index.load(out).ids).any()
    (tmp_path / "ids.txt").write_bytes("8\r\n\r\n9\r\n".encode("utf-8-sig"))  # saved by Notepad: a BOM, CRLF
    assert CliRunner().invoke(cli, ["-q", "remove", str(out), "--ids-file", str(tmp_path / "ids.txt")]).exit_code == 0
    assert Index.load(out).count == 9996
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).stdout)
    assert info["count"] == 9996 and info["removed"] == 4
    before = _contents(out)
    for args, message in [
        (["7"], "ids: 1 not in"),
        (["--path", "no/such.jpg"], "'no/such.jpg' is recorded for no item"),
        (["--ids-file", str(tmp_path / "none.txt")], "--ids-file"),
        ([], "name the items to remove"),
    ]:
        res = CliRunner().invoke(cli, ["-q", "remove", str(out)] + args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    (tmp_path / "bad.txt").write_text("12\nx13\n")
    res = CliRunner().invoke(cli, ["-q", "remove", str(out), "--ids-file", str(tmp_path / "bad.txt")])
    assert res.exit_code == 2 and "'x13' is not an id" in res.output
    with pytest.raises(HashindexError, match="would remove all 9996 items"):
        remove(out, ids=Index.load(out).ids, **QUIET)
    assert _contents(out) == before  # nothing changed by a refused removal


def test_a_path_recorded_for_several_items_is_refused(grown, tmp_path):
    """The appended 300 images are the first 300 of the same tar: each of their paths names two items."""
    index = Index.load(grown / "index")
    path = index.paths(np.array([10000]))[0]
    with pytest.raises(HashindexError, match="recorded for 2 items .*: remove them by id"):
        remove(grown / "index", paths=[path], **QUIET)


def test_a_failed_removal_leaves_the_index_whole(flat_index, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "index"
    shutil.copytree(flat_index, out)
    before = _contents(out)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        remove(out, ids=[3, 4], **QUIET)
    assert _contents(out) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with h5py.File(out / "table.h5") as t:
        assert len(t["ids"]) == 10000


def test_photos_deleted_from_an_indexed_folder(tiny_model, tmp_path):
    """`remove --missing` takes out the items whose files left their folder, `--path FILE` the item of a file
    (deleted already or not); --dry-run lists them and changes nothing; a folder that is gone is left alone."""
    import shutil
    import tarfile

    photos = tmp_path / "photos"
    with tarfile.open(CIFAR_TEST) as tf:
        members = [m for m in tf if m.isfile()][:60:3]
        for m in members:
            (photos / m.name).parent.mkdir(parents=True, exist_ok=True)
            (photos / m.name).write_bytes(tf.extractfile(m).read())
    extract(str(tiny_model), str(photos), tmp_path / "shards", **QUIET)
    out = tmp_path / "index"
    build(tmp_path / "shards", out, signal="l2", **QUIET)
    index = Index.load(out)
    files = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    gone, kept_file = files[3], files[7]
    (photos / gone).unlink()
    (photos / files[5]).rename(tmp_path / "moved.jpg")
    run = lambda *args: CliRunner().invoke(cli, ["-q", "remove", str(out), *args])  # noqa: E731
    res = run("--missing", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    assert sorted(r["path"] for r in json.loads(res.stdout)) == sorted([gone, files[5]])
    assert Index.load(out).count == 20
    res = run("--missing")
    assert res.exit_code == 0 and Index.load(out).count == 18, res.output
    assert "nothing to remove" in run("--missing").output
    assert json.loads(run("--missing", "--dry-run", "--json").stdout) == []
    assert json.loads(run("--missing", "--json").stdout)["count"] == 18
    res = run("--path", str(photos / kept_file))  # a file of the folder, still there
    assert res.exit_code == 0 and Index.load(out).count == 17, res.output
    assert kept_file not in Index.load(out).paths(np.arange(17))
    shutil.rmtree(photos)  # the whole folder gone (say, a drive unmounted): not taken for deleted photos
    assert "nothing to remove" in run("--missing").output and Index.load(out).count == 17
    assert index.count == 20


def test_an_index_opened_before_a_removal_answers_from_what_it_opened(flat_index, tmp_path):
    """A served index reads paths and codes lazily; after a removal swapped a new INDEX_DIR in (before SIGHUP, or
    while the service reloads), those reads must come from the table it opened, not the new one's shifted rows."""
    import shutil

    out = tmp_path / "index"
    shutil.copytree(flat_index, out)
    opened = Index.load(out)
    at = np.array([0, 1, 2, 5000, 9999])
    paths, (codes, _) = opened.paths(at), opened.items(at)
    remove(out, ids=[0, 1, 4999], **QUIET)
    assert opened.paths(at) == paths
    assert np.array_equal(opened.items(at)[0], codes) and np.array_equal(opened.table_codes()[at], codes)
    assert Index.load(out).paths(np.array([0]))[0] == paths[2]  # the new index: shifted rows


def test_missing_never_takes_items_that_are_not_files_of_the_folder(tiny_model, tmp_path):
    """A folder holding tar shards is read as their members (paths inside the tars), a prepared store as its
    source's paths: none of them is a file in the folder, and --missing must not take them for deleted."""
    from tests.conftest import image_bytes, make_tar

    root = tmp_path / "mixed"
    root.mkdir()
    make_tar(root / "part.tar", {f"cat/{i}.jpg": image_bytes(seed=i) for i in range(6)})
    extract(str(tiny_model), str(root), tmp_path / "shards", **QUIET)
    prepared = tmp_path / "prep"
    assert CliRunner().invoke(cli, ["-q", "prepare", "--data", str(root), "--size", "16", "--out",
                                    str(prepared)]).exit_code == 0
    extract(str(tiny_model), str(prepared), tmp_path / "shards2", id_offset=100, **QUIET)
    out = tmp_path / "index"
    build(tmp_path / "shards", out, signal="l2", rerank="none", **QUIET)
    append(tmp_path / "shards2", out, **QUIET)
    res = CliRunner().invoke(cli, ["-q", "remove", str(out), "--missing"])
    assert res.exit_code == 0 and "nothing to remove" in res.output, res.output
    assert Index.load(out).count == 12
