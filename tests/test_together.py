"""Several queries searched as one (`query --together`, `query.search_together`): the majority code and the mean
fine-stage vector; one query together is that query; the query items left out with exclude_self."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from hashindex.cli import cli
from hashindex.codes import majority
from hashindex.index import Index
from hashindex.query import indexed_queries, query, search_together, search_vectors


def test_majority_is_each_bits_vote():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    bits = np.unpackbits(codes, axis=1, bitorder="little")
    want = np.packbits((bits.sum(0) >= 3)[None], axis=1, bitorder="little")
    assert (majority(codes) == want).all() and (majority(codes[:1]) == codes[:1]).all()
    two = np.array([[0b0000_0011], [0b0000_0101]], np.uint8)  # a tie is on: at least half
    assert majority(two)[0, 0] == 0b0000_0111


def test_together_of_one_is_the_query_and_members_can_be_left_out(flat_index):
    index = Index.load(flat_index)
    codes, vecs = indexed_queries(index, [3, 40, 77])
    one = search_together(index, codes[:1], vecs[:1], ["a"], k=20)
    assert one[0]["results"] == search_vectors(index, codes[:1], vecs[:1], ["a"], k=20)[0]["results"]
    own = index.positions_of(np.array([3, 40, 77]))
    kept = search_together(index, codes, vecs, ["a", "b", "c"], k=20, own=own, exclude_self=False)
    left = search_together(index, codes, vecs, ["a", "b", "c"], k=20, own=own, exclude_self=True)
    ids = [h["id"] for h in left[0]["results"]]
    assert len(ids) == 20 and not {3, 40, 77} & set(ids) and [h["rank"] for h in left[0]["results"]] == list(
        range(1, 21))
    assert ids[:10] == [h["id"] for h in kept[0]["results"] if h["id"] not in (3, 40, 77)][:10]
    assert left[0]["query"] == "a + b + c"


def test_together_within_a_radius_keeps_every_item_in_it(flat_index):
    """A radius search together returns every item within the radius of the majority code, not the first k."""
    index = Index.load(flat_index)
    codes, vecs = indexed_queries(index, [3, 40, 77])
    got = search_together(index, codes, vecs, ["a", "b", "c"], radius=8)[0]["results"]
    within = index.range_search(majority(codes), 8)[0][0]
    assert len(got) == len(within) > 10 and {h["id"] for h in got} == set(index.ids[within].tolist())


def test_cli_together(flat_index, tmp_path):
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--by-id", "3", "--by-id", "40", "--together",
                                   "--exclude-self", "--k", "5", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 1 and rows[0]["query"] == "id:3 + id:40" and len(rows[0]["results"]) == 5
    assert rows == query(Index.load(flat_index), [], [3, 40], k=5, together=True, exclude_self=True)
    res = CliRunner().invoke(cli, ["query", str(flat_index), "--queries", str(flat_index), "--out",
                                   str(tmp_path / "r.csv"), "--together"])
    assert res.exit_code == 2 and "--together: not for a batch job" in res.output
