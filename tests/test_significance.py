"""Standard errors and paired comparisons (`hashindex.significance`, `eval --compare`): against direct numpy,
the interval's coverage on draws from a known distribution, pairing by query id, and the CLI's errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex.cli import cli
from hashindex.errors import HashindexError
from hashindex.evaluation import compare_evaluations, evaluate
from hashindex.metrics import evaluate_arrays
from hashindex.significance import Z95, aligned, mean_interval, paired_difference


def test_mean_interval_equals_numpy_and_covers_the_true_mean_95_times_in_100():
    v = np.array([0.2, 0.9, 0.4, 0.7, 1.0, 0.0])
    m = mean_interval(v)
    se = v.std(ddof=1) / np.sqrt(len(v))
    assert m["mean"] == pytest.approx(v.mean()) and m["se"] == pytest.approx(se) and m["n"] == 6 and m["rough"]
    assert (m["low"], m["high"]) == pytest.approx((v.mean() - Z95 * se, v.mean() + Z95 * se))
    rng = np.random.default_rng(0)  # 2,000 draws of 300 skewed per-query values (mean 0.25): ~95% cover it
    draws = rng.beta(0.5, 1.5, size=(2000, 300))
    covered = [mean_interval(d)["low"] <= 0.25 <= mean_interval(d)["high"] for d in draws]
    assert 0.93 <= np.mean(covered) <= 0.97
    with pytest.raises(HashindexError, match="at least one"):
        mean_interval(np.zeros(0))


def test_paired_difference_sees_a_small_shift_that_two_separate_intervals_miss():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 500)  # hard and easy queries: a wide spread of APs
    b = np.clip(a + rng.normal(0.01, 0.02, 500), 0, 1)  # the same queries, a hundredth better, a little noise
    d = paired_difference(a, b)
    assert d["diff"] == pytest.approx((b - a).mean()) and d["se"] == pytest.approx((b - a).std(ddof=1) / np.sqrt(500))
    assert d["significant"] and d["low"] > 0 and d["b_better"] + d["a_better"] <= 500 and d["b_better"] > d["a_better"]
    ia, ib = mean_interval(a), mean_interval(b)
    assert ia["high"] > ib["low"]  # unpaired, the two intervals overlap: pairing is what shows the difference
    same = paired_difference(a, rng.permutation(a))  # a shuffle of the same APs: no mean difference
    assert same["diff"] == pytest.approx(0) and not same["significant"]
    exact = paired_difference(a, a)
    assert exact["diff"] == 0 and exact["se"] == 0 and not exact["significant"] and exact["b_better"] == 0
    with pytest.raises(HashindexError, match="one value per query on both sides"):
        paired_difference(a, b[:-1])


def test_aligned_pairs_queries_by_id_and_refuses_different_query_sets():
    ids_a, ids_b = np.array([5, 3, 9, 1]), np.array([9, 1, 5, 3])
    ia, ib = aligned(ids_a, ids_b)
    assert (ids_a[ia] == ids_b[ib]).all()
    with pytest.raises(HashindexError, match="hold different queries"):
        aligned(ids_a, np.array([9, 1, 5, 4]))
    with pytest.raises(HashindexError, match="repeat"):
        aligned(np.array([1, 1, 2]), np.array([1, 2, 3]))


def test_per_query_aps_average_to_the_map_and_give_its_standard_error():
    rng = np.random.default_rng(2)
    db = rng.integers(0, 256, (400, 6), dtype=np.uint8)
    q = rng.integers(0, 256, (50, 6), dtype=np.uint8)
    db_labels, q_labels = rng.integers(0, 4, 400), rng.integers(0, 4, 50)
    m = evaluate_arrays(q, q_labels, db, db_labels, 48, per_query=True, chunk=16,
                        rerank=lambda sl, pos: rng.random(pos.shape), candidates=50)
    for key in ("hamming", "reranked"):
        ap = m["per_query"][key]
        assert ap.shape == (50,) and m[key]["map"] == pytest.approx(ap.mean())
        assert m[key]["map_se"] == pytest.approx(ap.std(ddof=1) / np.sqrt(50))
    gain = paired_difference(m["per_query"]["hamming"], m["per_query"]["reranked"])
    assert m["reranked"]["over_hamming"]["diff"] == pytest.approx(m["reranked"]["map"] - m["hamming"]["map"])
    assert (m["reranked"]["over_hamming"]["low"], m["reranked"]["over_hamming"]["high"]) == (gain["low"], gain["high"])
    assert "per_query" not in evaluate_arrays(q, q_labels, db, db_labels, 48)


@pytest.fixture(scope="module")
def hamming_index(cifar_shards, tmp_path_factory):
    """The flat index's shards indexed again without a fine stage: the same codes, Hamming order only."""
    from hashindex.index import build

    out = tmp_path_factory.mktemp("cmp") / "hamming"
    build(cifar_shards, out, binary="flat", rerank="none", progress=False, log=lambda s: None)
    return out


def test_eval_compare_pairs_two_indexes_on_the_same_queries(flat_index, hamming_index, cifar_queries, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(cifar_queries),
                              "--compare", str(hamming_index), "--json"])
    assert res.exit_code == 0, res.output
    c = json.loads(res.output)
    a = evaluate(flat_index, cifar_queries, progress=False, per_query=True)
    b = evaluate(hamming_index, cifar_queries, progress=False, per_query=True)
    assert c["queries"] == 1000 and c["hamming"]["diff"] == 0 and not c["hamming"]["significant"]  # same codes
    assert c["ranking"]["signals"] == [a["reranked"]["signal"], "hamming"]
    assert c["ranking"]["a"] == pytest.approx(a["reranked"]["map"])
    assert c["ranking"]["b"] == pytest.approx(b["hamming"]["map"])
    direct = b["per_query"]["hamming"] - a["per_query"]["reranked"]
    assert c["ranking"]["diff"] == pytest.approx(direct.mean())
    assert c["ranking"]["se"] == pytest.approx(direct.std(ddof=1) / np.sqrt(1000))
    assert c["metrics"]["a"]["hamming"]["map"] == pytest.approx(a["hamming"]["map"])
    assert "per_query" not in c["metrics"]["a"]
    assert compare_evaluations(a, b)["ranking"]["diff"] == pytest.approx(c["ranking"]["diff"])
    table = runner.invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(cifar_queries),
                                "--compare", str(hamming_index)])
    assert table.exit_code == 0 and "paired comparison over 1,000 queries" in table.output
    assert "no difference shown" in table.output.splitlines()[2]  # the Hamming row: the same codes
    drawn = json.loads(runner.invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(cifar_queries),
                                           "--compare", str(hamming_index), "--plot", str(tmp_path / "p"),
                                           "--json"]).output)["plots"]
    for name in ("comparison", "paired_differences"):
        png = tmp_path / "p" / f"{name}.png"
        assert drawn[name] == str(png) and png.stat().st_size > 10_000
    plain = runner.invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(cifar_queries)])
    assert f"Hamming +-{Z95 * a['hamming']['map_se']:.4f}" in plain.output


def test_eval_compare_errors_are_one_line(flat_index, hamming_index, cifar_queries, tmp_path):
    from hashindex import extract
    from hashindex.checkpoint import atomic_torch_save, build_meta
    from hashindex.index import build
    from hashindex.model import NINHash
    from tests.conftest import CIFAR_TEST

    runner = CliRunner()
    base = ["-q", "eval", str(flat_index), "--queries", str(cifar_queries)]
    for missing, expected in ((tmp_path / "none", "no such directory"),
                              (cifar_queries, "a shard directory, not an index; index it first: hashindex build")):
        res = runner.invoke(cli, base + ["--compare", str(missing)])
        assert res.exit_code == 2 and f"--compare {missing}: {expected}" in res.output, res.output
    usage = " ".join(runner.invoke(cli, ["eval", "--help"]).output.split())
    assert "B - A with a 95% interval" in usage and "%%" not in usage
    res = runner.invoke(cli, base + ["--compare-queries", str(cifar_queries)])
    assert res.exit_code == 2 and "--compare-queries: needs --compare" in res.output, res.output
    assert res.output.count("\n") == 1
    other = tmp_path / "other.pt"  # an index of another model
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    atomic_torch_save(build_meta(NINHash(48, 10), class_names=classes, input_size=16), other)
    extract(str(other), str(CIFAR_TEST), tmp_path / "s", limit=300, workers=0, progress=False, log=lambda s: None)
    build(tmp_path / "s", tmp_path / "ix", binary="flat", rerank="none", progress=False, log=lambda s: None)
    res = runner.invoke(cli, base + ["--compare", str(tmp_path / "ix")])
    assert res.exit_code == 2 and "--queries" in res.output and "--compare-queries" in res.output
    assert res.output.count("\n") == 1, res.output
    res = runner.invoke(cli, base + ["--compare", str(tmp_path / "ix"), "--compare-queries", str(tmp_path / "s")])
    assert res.exit_code == 2 and "hold different queries (1000 and 300" in res.output, res.output
    assert res.output.count("\n") == 1
