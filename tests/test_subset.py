"""Searching some of an index's items (`hashindex.index.subset`, `query --only-class/--only-folder/--only-ids`,
the service's only_* parameters, a batch job's filter): ranked as an index of those items alone would rank them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex.cli import cli
from hashindex.errors import HashindexError
from hashindex.index import Index, Only, restrict
from hashindex.query import query


def synthetic(n: int = 3000, seed: int = 0):
    """Codes with many ties (300 distinct), features, 5 classes, ids that are not positions."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (300, 6), dtype=np.uint8)[rng.integers(0, 300, n)]
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    labels = rng.integers(0, 5, n).astype(np.int32)
    return codes, feats, labels, np.arange(n) * 3 + 7


def in_memory(codes, feats, labels, ids, binary="flat") -> Index:
    index = Index.in_memory(codes, feats, 48, ids=ids, labels=labels, binary=binary)
    index.meta["class_names"] = list("abcde")
    return index


@pytest.mark.parametrize("binary", ["flat", "ivf"])
def test_a_filtered_search_ranks_as_an_index_of_the_subset_alone(binary):
    """Same ids, Hamming distances and signal distances as an index built from the subset's items, for every k,
    pool size and with or without the fine stage; over an IVF parent too (the subset is scanned exactly)."""
    codes, feats, labels, ids = synthetic()
    full = in_memory(codes, feats, labels, ids, binary)
    sub = np.flatnonzero(np.isin(labels, [1, 3]))
    alone = in_memory(codes[sub], feats[sub], labels[sub], ids[sub])
    view = restrict(full, Only(classes=("b", "d")))
    assert view.count == len(sub) and (view.ids == ids[sub]).all()
    rng = np.random.default_rng(1)
    q, qf = rng.integers(0, 256, (25, 6), dtype=np.uint8), rng.normal(size=(25, 16)).astype(np.float32)
    for k, candidates, rerank in [(1, None, True), (10, 50, True), (200, 100, True), (30, None, False)]:
        got, want = view.search(q, qf, k, candidates, rerank), alone.search(q, qf, k, candidates, rerank)
        assert (got.ids == want.ids).all() and (got.hamming == want.hamming).all()
        np.testing.assert_allclose(got.distance, want.distance, rtol=1e-6, equal_nan=True)
    top3, top10 = view.search(q, qf, 3), view.search(q, qf, 10)
    assert (top3.ids == top10.ids[:, :3]).all()
    for (p, d), (p2, d2) in zip(view.range_search(q, 12), alone.range_search(q, 12)):
        assert (view.ids[p] == alone.ids[p2]).all() and (d == d2).all()
    assert restrict(full, Only(classes=("b", "d"))) is view  # kept for the next search with that filter
    assert restrict(full, None) is full


def test_a_small_subset_is_re_ranked_whole_by_default():
    """Where the subset's vectors fit in `WHOLE` read budgets the default pool is all of it (the fine stage's
    exact top k among the allowed items); a larger subset keeps the index's default pool."""
    from hashindex.index.pool import FINE_BUDGET
    from hashindex.index.subset import WHOLE

    rng = np.random.default_rng(4)
    n, dim = 30_000, 192
    codes = rng.integers(0, 256, (n, 6), dtype=np.uint8)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    labels = (np.arange(n) % 5).astype(np.int32)
    full = in_memory(codes, feats, labels, np.arange(n))
    small, large = restrict(full, Only(classes=("a",))), restrict(full, Only(classes=("a", "b")))
    assert small.count * dim <= WHOLE * FINE_BUDGET < large.count * dim
    assert small.default_candidates == small.count and large.default_candidates == full.default_candidates == 1000
    q, qf = codes[:5] ^ 0x5A, rng.normal(size=(5, dim)).astype(np.float32)
    sub = np.flatnonzero(labels == 0)
    nearest = np.argsort(((feats[sub][None] - qf[:, None]) ** 2).sum(-1), axis=1)[:, :10]
    assert (small.search(q, qf, 10).ids == sub[nearest]).all()


def test_exclusions_take_items_out():
    """not_classes / not_folders: every item but those; with the inclusions, both apply."""
    codes, feats, labels, ids = synthetic(400)
    full = in_memory(codes, feats, labels, ids)
    assert set(restrict(full, Only(not_classes=("a", "c"))).ids) == set(ids[~np.isin(labels, [0, 2])])
    both = restrict(full, Only(classes=("a", "b"), not_classes=("b",)))
    assert set(both.ids) == set(ids[labels == 0])
    with pytest.raises(HashindexError, match="not_class='z': no such class in the index"):
        restrict(full, Only(not_classes=("z",)))
    with pytest.raises(HashindexError, match="no item of the index passes all of these"):
        restrict(full, Only(classes=("a",), not_classes=("a",)))


def test_a_k_past_the_subset_returns_it_all():
    codes, feats, labels, ids = synthetic(400)
    full = in_memory(codes, feats, labels, ids)
    chosen = tuple(int(i) for i in ids[[5, 50, 300]])
    res = restrict(full, Only(ids=chosen)).search(codes[:2], feats[:2], k=10)
    assert res.ids.shape == (2, 10) and sorted(res.ids[0, :3]) == sorted(chosen) and (res.ids[:, 3:] == -1).all()


def test_filters_combine_and_name_what_matched_nothing():
    codes, feats, labels, ids = synthetic(400)
    full = in_memory(codes, feats, labels, ids)
    both = restrict(full, Only(classes=("a",), ids=tuple(int(i) for i in ids[:40])))
    assert set(both.ids) == set(ids[:40][labels[:40] == 0])
    for where, message in [
            (Only(classes=("z",)), "only_class='z': no such class in the index (its classes: a, b, c, d, e)"),
            (Only(ids=(1,)), "only_ids=1: no item with this id in the index"),
            (Only(classes=("a",), ids=(int(ids[np.flatnonzero(labels == 1)[0]]),)), "no item of the index passes"),
            (Only(folders=("x",)), "built in memory: it has no table of paths")]:
        with pytest.raises(HashindexError, match=message.replace("(", r"\(").replace(")", r"\)")):
            restrict(full, where)


def full_order(index: Index, item: int) -> list[int]:
    """Every other item's id in the order a query by ``item`` ranks them with the whole index re-ranked."""
    rows = query(index, [], [item], k=index.count, candidates=index.count, exclude_self=True)
    return [h["id"] for h in rows[0]["results"]]


def test_api_cli_and_service_filter_alike(flat_index, tiny_model):
    """On a real index (CIFAR-10 test images, the tiny model): with the whole index re-ranked, a filtered
    ranking is the full ranking with the other items taken out; the CLI and both servers give the same; a folder
    filter is a path prefix (the tar's class folders), the same items as the class."""
    from hashindex.service.basic import Searcher
    from hashindex.service.params import search_options

    index = Index.load(flat_index)
    n = index.count
    cat = index.class_names.index("cat")
    want = [i for i in full_order(index, 3) if index.labels[index.positions_of(np.array([i]))[0]] == cat][:15]
    api = query(index, [], [3], k=15, candidates=n, exclude_self=True, only=Only(classes=("cat",)))
    assert [h["id"] for h in api[0]["results"]] == want
    by_folder = query(index, [], [3], k=15, candidates=n, exclude_self=True, only=Only(folders=("test/cat/",)))
    assert by_folder == api
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--by-id", "3", "--k", "15", "--candidates", str(n),
                                   "--exclude-self", "--only-class", "cat", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == api
    searcher = Searcher(flat_index, model=str(tiny_model))
    served = searcher.by_id(3, search_options({"k": "15", "candidates": str(n), "exclude_self": "1",
                                                "only_class": "cat"}))
    assert served["results"] == api[0]["results"]


def test_the_service_filters_by_class_folder_and_ids(flat_index, tiny_model):
    import httpx

    from hashindex.service.engine import Engine
    from tests.test_serve import start_asgi

    url, stop = start_asgi({"flat": Engine(flat_index, str(tiny_model), name="flat")})
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            got = client.get("/search", params={"id": 3, "k": 5, "only_class": "cat,dog"}).json()
            assert {h["class"] for h in got["results"]} <= {"cat", "dog"} and len(got["results"]) == 5
            got = client.get("/search", params={"id": 3, "k": 5, "only_ids": "10,20,30"}).json()
            assert sorted(h["id"] for h in got["results"]) == [10, 20, 30]
            got = client.get("/search", params={"id": 3, "k": 50, "not_folder": "test/cat,test/dog"}).json()
            assert len(got["results"]) == 50 and not {h["class"] for h in got["results"]} & {"cat", "dog"}
            for params, message in [({"only_class": "kat"}, "only_class='kat': no such class"),
                                    ({"only_folder": "train"}, "only_folder='train': no indexed item's path"),
                                    ({"only_ids": "1,x"}, "only_ids=x: expected integer ids")]:
                r = client.get("/search", params={"id": 3, **params})
                assert r.status_code == 400 and message in r.json()["error"], r.text
    finally:
        stop()


def test_a_batch_job_records_its_filter(flat_index, cifar_queries, tmp_path):
    """A batch job's results are the filtered searches query gives, and its record says which filter."""
    from hashindex.batch import batch_search

    from hashindex import read_results

    out = tmp_path / "r.jsonl"
    job = batch_search(flat_index, cifar_queries, out, k=5, only=Only(classes=("ship",)), exclude_self=True,
                       progress=False, log=lambda s: None)
    assert job["only"] == {"classes": ["ship"]}
    rows = {r["query_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    ids = sorted(rows)[:3]
    want = query(Index.load(flat_index), [], ids, k=5, exclude_self=True, only=Only(classes=("ship",)))
    for i, row in zip(ids, want):
        assert rows[i]["ids"] == [h["id"] for h in row["results"]]
    h5 = batch_search(flat_index, cifar_queries, tmp_path / "r.h5", k=5, only=Only(classes=("ship",)),
                      exclude_self=True, progress=False, log=lambda s: None)  # the filter as an HDF5 attribute
    back = read_results(tmp_path / "r.h5")
    assert h5["only"] == job["only"] and [list(back["ids"][list(back["query_ids"]).index(i)]) for i in ids] == \
        [rows[i]["ids"] for i in ids]


def test_cli_filter_errors_are_one_line(flat_index, tmp_path):
    bad, empty = tmp_path / "ids.txt", tmp_path / "empty.txt"
    bad.write_text("3\nseven\n")
    empty.write_text("\n")
    for args, message in [(["--only-class", "kat"], "--only-class 'kat': no such class in the index"),
                          (["--only-folder", "nowhere"], "--only-folder 'nowhere': no indexed item's path is under"),
                          (["--only-ids", str(bad)], f"--only-ids {bad}: 'seven' is not an id"),
                          (["--only-ids", str(tmp_path / "none.txt")], "--only-ids"),
                          (["--only-ids", str(empty)], f"--only-ids {empty}: no ids in it"),
                          (["--only-class", "cat", "--only-folder", "test/dog"], "no item of the index passes"),
                          (["--not-folder", "test/kat"], "--not-folder 'test/kat': no indexed item's path is under"),
                          (["--not-class", "kat"], "--not-class 'kat': no such class")]:
        res = CliRunner().invoke(cli, ["query", str(flat_index), "--by-id", "3", *args])
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_info_lists_the_classes_a_filter_takes(flat_index):
    """`hashindex info INDEX_DIR` names each class with its items: what --only-class takes."""
    res = CliRunner().invoke(cli, ["info", str(flat_index), "--json"])
    assert res.exit_code == 0, res.output
    classes = json.loads(res.output)["classes"]
    assert len(classes) == 10 and set(classes.values()) == {1000} and "cat" in classes


def test_a_multi_label_item_passes_a_class_it_carries(tmp_path):
    """In a multi-label index a class filter keeps every item carrying the class (not only those whose first class
    it is), and info counts each item in each of its classes."""
    from hashindex.index import build
    from hashindex.store import write_arrays
    from tests.test_multilabel import synthetic as tagged

    codes, sets = tagged(400, 6, 0)
    names = [f"tag{c}" for c in range(6)]
    write_arrays(tmp_path / "db", codes, np.random.default_rng(2).random((400, 8)), label_sets=sets,
                 class_names=names)
    build(tmp_path / "db", tmp_path / "ix", signal="l2", progress=False, log=lambda s: None)
    index = Index.load(tmp_path / "ix")
    view = restrict(index, Only(classes=("tag2",)))
    assert view.count == int(sets[:, 2].sum()) > int((index.labels == 2).sum())
    rows = query(index, [], [0], k=20, only=Only(classes=("tag2",)))
    assert all("tag2" in h["classes"] for h in rows[0]["results"]) and len(rows[0]["results"]) == 20
    res = CliRunner().invoke(cli, ["info", str(tmp_path / "ix"), "--json"])
    assert json.loads(res.output)["classes"] == {n: int(c) for n, c in zip(names, sets.sum(0)) if c}
