"""Metrics against independent, loop-by-loop numpy computations."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import ShardSet
from hashindex.cli import cli
from hashindex.evaluation import evaluate, format_confusion, format_metrics
from hashindex.codes import hamming_distances, row_distances
from hashindex.metrics import (average_precision, evaluate_arrays, per_distance_counts, tie_aware_ap,
                               tie_aware_precision_at_k)


def loop_ap(q_code, q_label, db_codes, db_labels, at=None):
    """AP of one query, written plainly: Hamming via unpackbits, stable sort."""
    d = np.unpackbits(q_code[None] ^ db_codes, axis=1).sum(1)
    order = np.argsort(d, kind="stable")
    rel = (db_labels[order] == q_label)[: at or len(order)]
    if rel.sum() == 0:
        return 0.0
    hits = 0
    total = 0.0
    for i, r in enumerate(rel, 1):
        if r:
            hits += 1
            total += hits / i
    return total / rel.sum()


def tied_rankings(seed: int):
    """20 small random queries: (distances, relevance, every ranking that orders ties differently)."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        d = rng.integers(0, 3, 7)
        rel = rng.random(7) < 0.5
        groups = [np.flatnonzero(d == v) for v in range(3)]
        orders = [np.concatenate([np.array(p, dtype=int) for p in perms])
                  for perms in itertools.product(*[itertools.permutations(g) for g in groups])]
        yield d, rel, orders


def test_code_statistics_of_known_codes():
    from hashindex.codes import code_statistics

    # 10 items of 12 bits: codes A x5, B x3, C x2; bit 0 always on, bit 11 never, bit 1 on in A only
    a, b, c = [0b000000000011, 0b000000000001, 0b000100000001]
    ints = np.array([a] * 5 + [b] * 3 + [c] * 2, dtype="<u2")
    codes = ints.view(np.uint8).reshape(10, 2)
    s = code_statistics(codes, 12)
    assert s["items"] == 10 and s["distinct_codes"] == 3 and s["largest_bucket"] == 5
    assert s["mean_bucket_of_an_item"] == (25 + 9 + 4) / 10
    p = np.array([0.5, 0.3, 0.2])
    assert abs(s["code_entropy_bits"] + (p * np.log2(p)).sum()) < 1e-12
    assert s["constant_bits"] == 10 and s["bit_on_fraction_min"] == 0 and s["bit_on_fraction_max"] == 1
    h02 = -(0.2 * np.log2(0.2) + 0.8 * np.log2(0.8))
    assert abs(s["bit_entropy_sum"] - (1 + h02)) < 1e-9  # bit 1 (on in 5 of 10) and bit 8 (2 of 10); 10 bits constant
    assert code_statistics(codes[:0], 12) == {"items": 0}


def test_tie_aware_ap_equals_mean_over_tie_orders():
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 8))])
    for d, rel, orders in tied_rankings(3):
        aps = [(np.cumsum(rel[o]) / np.arange(1, 8))[rel[o]].mean() if rel.any() else 0.0 for o in orders]
        n, rr = per_distance_counts(d[None], rel[None], 2)
        assert abs(tie_aware_ap(n, rr, harmonic)[0] - np.mean(aps)) < 1e-12


def test_tie_aware_precision_at_k_equals_mean_over_tie_orders():
    for d, rel, orders in tied_rankings(4):
        pks = [np.cumsum(rel[o]) / np.arange(1, 8) for o in orders]
        n, rr = per_distance_counts(d[None], rel[None], 2)
        assert np.allclose(tie_aware_precision_at_k(n, rr, 7)[0], np.mean(pks, axis=0), atol=1e-12)


def test_metrics_match_independent_numpy(cifar_shards):
    data = ShardSet(cifar_shards).load(("codes", "labels"))
    db_codes, db_labels = data["codes"], data["labels"]
    q = slice(0, 10000, 211)
    qc, ql = db_codes[q], db_labels[q]
    m = evaluate_arrays(qc, ql, db_codes, db_labels, 48, at=(100, 1000), pk_max=500)
    ref = [loop_ap(c, l, db_codes, db_labels) for c, l in zip(qc, ql)]
    assert abs(m["hamming"]["map"] - np.mean(ref)) < 1e-6
    ref100 = [loop_ap(c, l, db_codes, db_labels, 100) for c, l in zip(qc, ql)]
    assert abs(m["hamming"]["map@100"] - np.mean(ref100)) < 1e-6
    # precision within radius 2: a brute-force count, 0 for queries with nothing inside
    d = np.unpackbits(qc[:, None, :] ^ db_codes[None], axis=2).sum(2)
    inside = d <= 2
    prec = [(db_labels[row] == l).mean() if row.any() else 0.0 for row, l in zip(inside, ql)]
    assert abs(m["radius2"]["precision"] - np.mean(prec)) < 1e-9
    assert m["radius2"]["queries_with_no_item"] == int((~inside.any(1)).sum())
    # precision@k: plain count in the stable order
    order = np.argsort(d, axis=1, kind="stable")
    p500 = ((db_labels[order[:, :500]] == ql[:, None]).mean(1)).mean()
    assert abs(m["precision_at_k"][499] - p500) < 1e-9
    # the PR curve ends at recall 1 when every item is within radius K
    assert abs(m["pr_curve"]["recall"][-1] - 1.0) < 1e-9
    # per-class mAP: each class's mean of the loop APs; weighted by queries they give the mAP back
    per = {row["label"]: row for row in m["per_class"]}
    assert sorted(per) == sorted(set(ql.tolist()))
    for label, row in per.items():
        assert row["queries"] == int((ql == label).sum())
        assert abs(row["map"] - np.mean([a for a, l in zip(ref, ql) if l == label])) < 1e-6
    assert abs(sum(r["map"] * r["queries"] for r in per.values()) / len(ql) - m["hamming"]["map"]) < 1e-9


def test_pair_distances_equal_a_count_over_every_pair():
    """The Hamming distances of query-item pairs, relevant against others: counts at each distance, means and
    the chance a relevant pair is nearer than another pair, against a loop over every pair (a query's own
    item left out); codes that place each class alone score 1.0, codes blind to the labels about 0.5."""
    rng = np.random.default_rng(3)
    db_codes = rng.integers(0, 256, (200, 2), dtype=np.uint8)
    db_labels = rng.integers(0, 4, 200)
    db_codes[db_labels == 0] &= 0x0F  # class 0 a little nearer to itself
    own = np.full(30, -1)
    own[:5] = np.arange(5)  # five queries are database items
    q_codes, q_labels = db_codes[:30].copy(), db_labels[:30].copy()
    q_codes[5:] = rng.integers(0, 256, (25, 2), dtype=np.uint8)
    m = evaluate_arrays(q_codes, q_labels, db_codes, db_labels, 16, pk_max=10, own=own)["pair_distances"]
    rel_d, other_d = [], []
    for qi, (qc, ql) in enumerate(zip(q_codes, q_labels)):
        for i in range(200):
            if i != own[qi]:
                dist = int(np.unpackbits(qc ^ db_codes[i]).sum())
                (rel_d if db_labels[i] == ql else other_d).append(dist)
    assert m["relevant"] == np.bincount(rel_d, minlength=17).tolist()
    assert m["other"] == np.bincount(other_d, minlength=17).tolist()
    assert abs(m["mean_relevant"] - np.mean(rel_d)) < 1e-9 and abs(m["mean_other"] - np.mean(other_d)) < 1e-9
    a, b = np.array(rel_d)[:, None], np.array(other_d)[None, :]
    assert abs(m["auc"] - ((a < b).mean() + 0.5 * (a == b).mean())) < 1e-9
    codes = np.repeat(np.array([[0, 0], [255, 0], [0, 255], [255, 255]], np.uint8), 10, axis=0)
    labels = np.repeat(np.arange(4), 10)
    assert evaluate_arrays(codes, labels, codes, labels, 16, pk_max=5)["pair_distances"]["auc"] == 1.0
    blind = rng.integers(0, 256, (400, 2), dtype=np.uint8)
    assert abs(evaluate_arrays(blind[:100], labels.repeat(10)[:100] % 4, blind, np.arange(400) % 4, 16,
                               pk_max=5)["pair_distances"]["auc"] - 0.5) < 0.03


def test_confusion_counts_the_classes_of_each_query_class_top_k():
    """The classes of a query's top k results (ties in database order), by query class, against a loop; a
    query's own item and unlabelled items are not counted; the line names the most frequent mix-ups."""
    rng = np.random.default_rng(5)
    db_codes = rng.integers(0, 256, (120, 2), dtype=np.uint8)
    db_labels = rng.integers(-1, 3, 120)  # some unlabelled
    q_codes, q_labels = db_codes[:20].copy(), np.abs(db_labels[:20])
    own = np.where(db_labels[:20] >= 0, np.arange(20), -1)
    conf = evaluate_arrays(q_codes, q_labels, db_codes, db_labels, 16, pk_max=5, own=own, confusion_at=7)["confusion"]
    expected = np.zeros((3, 3), int)
    for qi in range(20):
        d = np.unpackbits(q_codes[qi] ^ db_codes, axis=1).sum(1)
        order = [i for i in np.argsort(d, kind="stable") if i != own[qi]][:7]
        for i in order:
            if db_labels[i] >= 0:
                expected[q_labels[qi], db_labels[i]] += 1
    assert conf["k"] == 7 and conf["ranking"] == "hamming" and np.array_equal(conf["counts"], expected)
    shares = expected / expected.sum(1, keepdims=True)
    np.fill_diagonal(shares, 0)
    top = sorted(((shares[i, j], "xyz"[i], "xyz"[j]) for i in range(3) for j in range(3) if i != j), reverse=True)
    assert format_confusion({**conf, "classes": ["x", "y", "z"]}).endswith(
        "most often: " + ", ".join(f"{x} -> {y} {v:.3f}" for v, x, y in top[:5]))
    sets = rng.random((20, 3)) < 0.5
    assert "confusion" not in evaluate_arrays(q_codes, sets, db_codes, rng.random((120, 3)) < 0.5, 16, pk_max=5)


def test_label_sets_score_a_shared_label_as_relevant():
    """Multi-label sets (NUS-WIDE, COCO): relevant = at least one shared label; checked against a plain loop,
    and a set of one label each scores exactly as the class labels do."""
    rng = np.random.default_rng(7)
    db_codes = rng.integers(0, 256, (300, 2), dtype=np.uint8)
    q_codes = rng.integers(0, 256, (25, 2), dtype=np.uint8)
    db_sets, q_sets = rng.random((300, 6)) < 0.25, rng.random((25, 6)) < 0.25
    db_sets[:10] = False  # unlabelled items: never relevant
    m = evaluate_arrays(q_codes, q_sets, db_codes, db_sets, 16, at=(50,), pk_max=20)
    ref, ref50 = [], []
    for qc, qs in zip(q_codes, q_sets):
        d = np.unpackbits(qc[None] ^ db_codes, axis=1).sum(1)
        order = np.argsort(d, kind="stable")
        rel = np.array([bool((db_sets[i] & qs).any()) for i in order])
        ref.append(_plain_ap(rel))
        ref50.append(_plain_ap(rel[:50]))
    assert abs(m["hamming"]["map"] - np.mean(ref)) < 1e-9 and abs(m["hamming"]["map@50"] - np.mean(ref50)) < 1e-9
    per = {row["label"]: row for row in m["per_class"]}  # a query counts in each of its classes
    assert sorted(per) == np.flatnonzero(q_sets.any(0)).tolist()
    for c, row in per.items():
        assert row["queries"] == int(q_sets[:, c].sum())
        assert abs(row["map"] - np.mean([a for a, qs in zip(ref, q_sets) if qs[c]])) < 1e-9
    labels, q_labels = rng.integers(0, 6, 300), rng.integers(0, 6, 25)
    single = evaluate_arrays(q_codes, q_labels, db_codes, labels, 16, pk_max=20)
    as_sets = evaluate_arrays(q_codes, np.eye(6, dtype=bool)[q_labels], db_codes, np.eye(6, dtype=bool)[labels], 16,
                              pk_max=20)
    for key in ("precision_at_k", "precision_at_k_tie_aware", "radius2"):
        assert single[key] == as_sets[key]
    assert as_sets["hamming"] == {**single["hamming"], "ndcg@100": as_sets["hamming"]["ndcg@100"],
                                  "acg@100": as_sets["hamming"]["acg@100"]}  # sets add graded figures
    with pytest.raises(ValueError, match="differ in kind"):
        evaluate_arrays(q_codes, q_labels, db_codes, db_sets, 16)


def test_ndcg_and_acg_of_label_sets_equal_a_plain_loop():
    """Graded relevance for label sets: an item's gain is the labels it shares with the query (DSRH's NDCG@k
    and ACG@k), for the Hamming ranking and the re-ranked one, against a loop written from the definition."""
    rng = np.random.default_rng(11)
    db_codes, q_codes = rng.integers(0, 256, (200, 1), dtype=np.uint8), rng.integers(0, 256, (12, 1), dtype=np.uint8)
    db_sets, q_sets = rng.random((200, 5)) < 0.4, rng.random((12, 5)) < 0.4
    q_sets[0] = False  # shares nothing: NDCG 0
    noise = rng.random((12, 200))
    m = evaluate_arrays(q_codes, q_sets, db_codes, db_sets, 8, graded_at=(10, 50), pk_max=5,
                        rerank=lambda sl, pos: np.take_along_axis(noise[sl], pos, 1), candidates=30)

    def plain(order_of):
        ndcg, acg = {10: [], 50: []}, {10: [], 50: []}
        for i, (qc, qs) in enumerate(zip(q_codes, q_sets)):
            gains = np.array([int((s & qs).sum()) for s in db_sets])
            order = order_of(i, qc)
            best = sorted(gains, reverse=True)
            for k in (10, 50):
                dcg = sum((2 ** gains[j] - 1) / np.log2(r + 2) for r, j in enumerate(order[:k]))
                idcg = sum((2 ** g - 1) / np.log2(r + 2) for r, g in enumerate(best[:k]))
                ndcg[k].append(dcg / idcg if idcg else 0.0)
                acg[k].append(gains[order[:k]].mean())
        return {**{f"ndcg@{k}": np.mean(v) for k, v in ndcg.items()}, **{f"acg@{k}": np.mean(v) for k, v in acg.items()}}

    def hamming_order(i, qc):
        return np.argsort(np.unpackbits(qc[None] ^ db_codes, axis=1).sum(1), kind="stable")

    def reranked_order(i, qc):
        d = np.unpackbits(qc[None] ^ db_codes, axis=1).sum(1)
        order = np.argsort(d, kind="stable")
        pool = order[:30]  # the 30 candidates (ties beyond them not widened: tie_cap = candidates)
        pool = pool[np.lexsort((pool, d[pool], noise[i, pool]))]
        return np.concatenate([pool, order[30:]])

    for ranking, order_of in (("hamming", hamming_order), ("reranked", reranked_order)):
        for key, value in plain(order_of).items():
            assert abs(m[ranking][key] - value) < 1e-9, (ranking, key)
    assert "ndcg@100" not in evaluate_arrays(q_codes, np.zeros(12, int), db_codes, np.zeros(200, int), 8)["hamming"]


def _plain_ap(rel: np.ndarray) -> float:
    hits = np.cumsum(rel)
    return float((hits / np.arange(1, len(rel) + 1))[rel].mean()) if rel.any() else 0.0


def test_cli_eval_json_plots_and_errors(flat_index, cifar_queries, tmp_path, tiny_model):
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(cifar_queries), "--json",
                              "--plot", str(tmp_path / "plots"), "--candidates", "200"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    direct = evaluate(flat_index, cifar_queries, candidates=200, progress=False)
    assert abs(m["hamming"]["map"] - direct["hamming"]["map"]) < 1e-12
    assert 0 < m["reranked"]["map"] <= 1 and m["reranked"]["candidates"] == 200
    for name in ("pr_curve.png", "precision_at_k.png", "hamming_distances.png", "confusion.png", "per_class_map.png",
                 "results_grid.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000
    assert [r["name"] for r in sorted(m["per_class"], key=lambda r: r["label"])][:2] == ["airplane", "automobile"]
    assert all(0 <= r["map_reranked"] <= 1 for r in m["per_class"])
    table = runner.invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(cifar_queries)])
    assert "mAP per query class, worst first: " in table.output and "airplane" in table.output
    assert f"a relevant pair is the nearer with probability {m['pair_distances']['auc']:.4f}" in table.output
    assert m["confusion"]["classes"][:2] == ["airplane", "automobile"] and m["confusion"]["ranking"] == "reranked"
    assert "results of another class in the top 100 (re-ranked), most often: " in table.output  # (its pool: 1000)
    assert m["database_codes"]["items"] == 10000 and "database codes: " in table.output
    info = json.loads(runner.invoke(cli, ["info", str(flat_index), "--json"]).output)
    assert info["codes"] == m["database_codes"]
    from hashindex.report import plot_comparison

    plot_comparison({"a": m, "b": direct}, tmp_path / "cmp.png", "two runs")
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    # tools/results_table.py reads the same metrics.json and the checkpoint beside it
    import shutil
    import subprocess
    import sys

    runs = tmp_path / "runs"
    (runs / "eval-tiny").mkdir(parents=True)
    shutil.copy(tiny_model, runs / "tiny.pt")
    (runs / "eval-tiny" / "metrics.json").write_text(json.dumps(m))
    tool = Path(__file__).resolve().parent.parent / "tools" / "results_table.py"
    doc = runs / "RESULTS.md"
    # a row measured in another work tree (no run here) is kept; the stale line of the measured row is replaced
    doc.write_text("intro\n<!-- results-table -->\n| row | old columns |\n| --- | --- |\n| kept | 0.5 |\n"
                   "| tiny | stale |\n<!-- /results-table -->\noutro\n")
    out = subprocess.run([sys.executable, str(tool), "--runs", str(runs), "--plot", str(runs / "t.png"),
                          "--update", str(doc)], capture_output=True, text=True, check=True).stdout
    header, tiny = out.splitlines()[:2], out.splitlines()[2]
    assert doc.read_text() == "intro\n<!-- results-table -->\n" + "\n".join(header + ["| kept | 0.5 |", tiny]) + \
        "\n<!-- /results-table -->\noutro\n"
    assert f"| tiny | {m['queries']:,} vs {m['database']:,} | 48 | 1 |" in out and f"**{m['hamming']['map']:.4f}**" in out
    assert (runs / "t.png").stat().st_size > 10_000
    table = runner.invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(cifar_queries), "--no-rerank"])
    assert table.exit_code == 0 and "count precision 0" in table.output

    from hashindex import extract
    from tests.conftest import make_mixed_folder

    make_mixed_folder(tmp_path / "imgs")
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "imgs").rglob("*.jpg"):
        (flat / p.name).write_bytes(p.read_bytes())
    extract(str(tiny_model), str(flat), tmp_path / "unlabelled", workers=0, progress=False, log=lambda s: None)
    res = runner.invoke(cli, ["eval", str(flat_index), "--queries", str(tmp_path / "unlabelled")])
    assert res.exit_code == 2 and "have no labels" in res.output and res.output.count("\n") == 1


def test_eval_encodes_image_queries_on_the_fly(flat_index, tiny_model, tmp_path, monkeypatch):
    """eval --queries IMAGES: encoded with --model into a temporary shard directory (removed afterwards), with
    the figures of the same images extracted first; unlabelled images and a missing model are one-line errors."""
    import tempfile

    from hashindex import extract
    from hashindex.data import open_source
    from tests.conftest import CIFAR_TEST

    src = open_source(CIFAR_TEST).subset(60)
    for i, path in enumerate(src.paths):  # test/<class>/NNNN.jpg: a labelled folder of 60 photos
        (tmp_path / "imgs" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / path).write_bytes(src.read_bytes(i))
    images = tmp_path / "imgs" / "test"
    (tmp_path / "tmp").mkdir()  # this test's own temp folder: another worker's eval must not count here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    temp_dirs = lambda: {p.name for p in Path(tempfile.gettempdir()).glob("hashindex-eval-*")}  # noqa: E731
    before = temp_dirs()
    on_the_fly = evaluate(flat_index, images, model=str(tiny_model), progress=False)
    extract(str(tiny_model), str(images), tmp_path / "q", workers=0, progress=False, log=lambda s: None)
    extracted = evaluate(flat_index, tmp_path / "q", progress=False)
    assert on_the_fly["queries"] == 60 and on_the_fly["hamming"] == extracted["hamming"]
    assert on_the_fly["reranked"] == extracted["reranked"] and on_the_fly["queries_dir"] == str(images)
    res = CliRunner().invoke(cli, ["-q", "eval", str(flat_index), "--queries", str(images), "--model", str(tiny_model),
                                   "--json", "--plot", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)  # stdout is the JSON; the extraction's line went to stderr
    assert m["hamming"] == extracted["hamming"] and m["queries_dir"] == str(images)
    assert "extracted 60 images" in res.stderr
    assert (tmp_path / "plots" / "results_grid.png").stat().st_size > 10_000
    assert temp_dirs() == before  # the temporary shards are gone
    res = CliRunner().invoke(cli, ["eval", str(flat_index), "--queries", str(tmp_path / "imgs" / "test" / "cat")])
    assert res.exit_code == 2 and "no labelled images" in res.output and res.output.count("\n") == 1, res.output
    recorded = evaluate(flat_index, images, progress=False)  # no model: the checkpoint the shards recorded
    assert recorded["hamming"] == extracted["hamming"]


def test_eval_refuses_queries_of_another_model(flat_index, tmp_path):
    from hashindex import extract
    from hashindex.checkpoint import atomic_torch_save, build_meta
    from hashindex.model import NINHash
    from tests.conftest import CIFAR_TEST

    other = tmp_path / "other.pt"
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    atomic_torch_save(build_meta(NINHash(48, 10), class_names=classes, input_size=32), other)
    extract(str(other), str(CIFAR_TEST), tmp_path / "q", limit=50, workers=0, progress=False, log=lambda s: None)
    res = CliRunner().invoke(cli, ["eval", str(flat_index), "--queries", str(tmp_path / "q")])
    assert res.exit_code == 2 and "differs from the index's model" in res.output
    assert res.output.count("\n") == 1


@pytest.mark.parametrize("nbytes", [1, 2, 6, 8, 9, 16, 64])
def test_hamming_distances_equal_a_bit_by_bit_count(nbytes):
    """Word-at-a-time distances against unpacked bits, for code sizes inside, at and across 64-bit words."""
    rng = np.random.default_rng(nbytes)
    q, db = rng.integers(0, 256, (5, nbytes), dtype=np.uint8), rng.integers(0, 256, (300, nbytes), dtype=np.uint8)
    want = (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(axis=2)
    got = hamming_distances(q, db)
    assert got.dtype == np.uint16 and np.array_equal(got, want)
    assert hamming_distances(q[:0], db).shape == (0, 300)
    assert np.array_equal(row_distances(q, db[:5]), np.diagonal(want))  # query i against item i


def test_an_approximate_index_is_also_scored_as_served(cifar_shards, tmp_path):
    """eval ranks by exact Hamming distance whatever the coarse index; an IVF index also gets the ranking its
    search serves: exhaustive (nprobe = nlist) it equals the exact figures, at nprobe 1 its coarse stage
    misses neighbours and says so."""
    from hashindex.index import build
    from hashindex.store import write_arrays

    quiet = {"progress": False, "log": lambda s: None}
    store = ShardSet(cifar_shards)
    rows = store.rows_at(np.arange(0, store.rows, 10), ("codes", "features", "labels"))
    queries = write_arrays(tmp_path / "q", rows["codes"], rows["features"], labels=rows["labels"], bits=store.bits,
                           class_names=store.class_names, model_id=store.model_id).dir
    build(cifar_shards, tmp_path / "ivf", binary="ivf", nlist=32, nprobe=32, signal="l2", **quiet)
    whole = evaluate(tmp_path / "ivf", queries, at=(100,), progress=False)
    sv = whole["served"]
    assert sv["coarse"] == "ivf" and sv["params"] == {"nlist": 32, "nprobe": 32} and sv["reranked"]
    assert sv["coarse_recall@10"] == 1.0
    assert sv["map@100"] == pytest.approx(whole["reranked"]["map@100"], abs=1e-9)
    plain = evaluate(tmp_path / "ivf", queries, at=(100,), rerank=False, progress=False)
    assert plain["served"]["map@100"] == pytest.approx(plain["hamming"]["map@100"], abs=1e-9)
    assert plain["served"]["precision@10"] == pytest.approx(plain["precision_at_k"][9], abs=1e-9)
    # nprobe 1 on codes whose neighbours spread over the lists (uniform random codes: the session's tiny
    # model gives so few distinct codes that, trained in bf16 on an AVX-512 CPU, one list held them all)
    codes = np.random.default_rng(7).integers(0, 256, (10_000, 6), dtype=np.uint8)
    labels = np.random.default_rng(8).integers(0, 10, 10_000).astype(np.int32)
    spread = write_arrays(tmp_path / "spread", codes, labels=labels, bits=48).dir
    query_codes = codes[::10]
    spread_queries = write_arrays(tmp_path / "spread-q", query_codes, labels=labels[::10], bits=48).dir
    build(spread, tmp_path / "ivf1", binary="ivf", nlist=32, nprobe=1, rerank="none", **quiet)
    build(spread, tmp_path / "flat1", binary="flat", rerank="none", **quiet)
    one = evaluate(tmp_path / "ivf1", spread_queries, at=(100,), progress=False)
    flat_one = evaluate(tmp_path / "flat1", spread_queries, at=(100,), progress=False)
    assert one["served"]["coarse_recall@10"] < 0.9 and not one["served"]["reranked"]
    # the coarse recall against numpy: served top 10 within the exact 10th distance (ties count)
    from hashindex.index import Index
    from hashindex.codes import hamming_distances

    ivf1 = Index.load(tmp_path / "ivf1")
    kth = np.sort(hamming_distances(query_codes, ivf1.table_codes()), axis=1)[:, 9:10]
    got = ivf1.search(query_codes, None, k=10, rerank=False)
    assert one["served"]["coarse_recall@10"] == pytest.approx(((got.hamming <= kth) & (got.positions >= 0)).mean())
    assert one["served"]["mean_results"] == one["served"]["k"] == 100  # lists of ~300 items: filled
    assert one["hamming"] == flat_one["hamming"]  # the exact figures do not depend on the coarse index
    text = format_metrics(one)
    assert "as served by the ivf coarse index (nlist 32, nprobe 1): map@100 " in text and "coarse recall@10 " in text
    assert "served" not in flat_one  # flat: served = exact


def test_a_query_that_is_a_database_item_is_left_out_of_its_own_ranking():
    """``own`` (leave-one-out): every figure equals the query scored against a database without its own item,
    one query at a time; Hamming (ties included), tie-aware, radius, re-ranked pools and graded label sets."""
    rng = np.random.default_rng(11)
    n = 120
    db_codes = rng.integers(0, 256, (n, 1), dtype=np.uint8)  # 8 bits: large tie groups
    vecs = rng.normal(size=(n, 4)).astype(np.float32)
    own = np.array([5, 17, -1, 40, 99, -1, 0, 119])
    qi = np.where(own >= 0, own, [3, 3, 60, 3, 3, 77, 3, 3])  # two queries that are not items (their codes differ)
    q_codes = db_codes[qi].copy()
    q_codes[own < 0] ^= 0b101
    q_vecs = vecs[qi] + 0.01
    args = {"at": (10,), "pk_max": 50, "candidates": 20, "tie_cap": 40, "graded_at": (10,), "radius": 2}
    for targets in (rng.integers(0, 3, n), rng.random((n, 4)) < 0.3):
        got = evaluate_arrays(q_codes, targets[qi], db_codes, targets, 8, own=own, **args,
                              rerank=lambda sl, pos: ((q_vecs[sl][:, None] - vecs[pos]) ** 2).sum(-1))
        one = []
        for i, o in enumerate(own):
            rest = np.arange(n) != o
            rr = lambda sl, pos, v=vecs[rest], i=i: ((q_vecs[i:i + 1][:, None] - v[pos]) ** 2).sum(-1)  # noqa: E731
            one.append(evaluate_arrays(q_codes[i:i + 1], targets[qi][i:i + 1], db_codes[rest], targets[rest], 8,
                                       rerank=rr, **args))
        assert got["database"] == n and any(m["database"] == n - 1 for m in one)
        for part in ("hamming", "reranked"):
            for key, value in got[part].items():
                if key not in ("candidates", "map_se", "over_hamming"):  # no means of per-query figures
                    assert value == pytest.approx(np.mean([m[part][key] for m in one]), abs=1e-12), (part, key)
        for key in ("precision_at_k", "precision_at_k_tie_aware", "precision_at_k_reranked"):
            assert np.allclose(got[key], np.mean([m[key] for m in one], axis=0), atol=1e-12), key
        for key in ("precision", "recall"):
            assert got["radius2"][key] == pytest.approx(np.mean([m["radius2"][key] for m in one]), abs=1e-12)
        assert got["radius2"]["queries_with_no_item"] == sum(m["radius2"]["queries_with_no_item"] for m in one)
    with_self = evaluate_arrays(q_codes, targets[qi], db_codes, targets, 8, pk_max=5)
    assert with_self["precision_at_k"][0] > got["precision_at_k"][0]  # finding itself had counted as a hit


def test_queries_with_no_relevant_item_are_counted_and_named():
    """A one-photo class under leave-one-out and a class the database lacks: AP 0 whatever the ranking, counted
    in ``queries_without_relevant``; the text gives the mAP of the other queries (the mean over them alone)."""
    rng = np.random.default_rng(5)
    db_codes = rng.integers(0, 256, (40, 2), dtype=np.uint8)
    db_labels = np.r_[np.zeros(20, int), np.ones(19, int), [2]]  # class 2: one item, item 39
    q_codes = np.r_[db_codes[[0, 25, 39]], rng.integers(0, 256, (2, 2), dtype=np.uint8)]
    q_labels = np.array([0, 1, 2, 3, 0])  # class 3: not in the database
    own = np.array([0, 25, 39, -1, -1])
    m = evaluate_arrays(q_codes, q_labels, db_codes, db_labels, 16, own=own, per_query=True)
    ap = m["per_query"]["hamming"]
    assert m["queries_without_relevant"] == 2 and ap[2] == ap[3] == 0
    expected = np.mean([loop_ap(q_codes[i], q_labels[i], np.delete(db_codes, own[i], 0) if own[i] >= 0 else db_codes,
                                np.delete(db_labels, own[i]) if own[i] >= 0 else db_labels) for i in (0, 1, 4)])
    m["model_id"] = ""
    text = format_metrics(m)
    assert "no relevant item in the database: 2 of 5 (" in text and f"Hamming {expected:.4f}" in text
    assert evaluate_arrays(q_codes[[0, 1, 4]], q_labels[[0, 1, 4]], db_codes, db_labels, 16,
                           own=own[[0, 1, 4]])["queries_without_relevant"] == 0
    alone = evaluate_arrays(q_codes[3:4], q_labels[3:4], db_codes, db_labels, 16) | {"model_id": ""}
    assert "none of the 1 queries has a relevant item" in format_metrics(alone)


def rows_path(rows, i: int) -> str:
    """Row i's path in the shards, as text."""
    p = rows["paths"][i]
    return p.decode() if isinstance(p, bytes) else p


def test_eval_leaves_out_queries_that_are_indexed_items(tiny_model, tmp_path):
    """eval of an index with its own collection (its shard directory, the same arrays written again, its images
    encoded again, a subset of it or more) scores each query against the other items; a different collection
    of the same size is not taken for it; --include-self keeps the self-matches; an approximate index serves
    them left out."""
    from hashindex import extract
    from hashindex.data import open_source
    from hashindex.index import Index, build
    from hashindex.store import write_arrays
    from tests.conftest import CIFAR_TEST

    quiet = {"progress": False, "log": lambda s: None}
    src = open_source(CIFAR_TEST).subset(80)
    for i, path in enumerate(src.paths):
        (tmp_path / "imgs" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / path).write_bytes(src.read_bytes(i))
    images = tmp_path / "imgs" / "test"
    extract(str(tiny_model), str(images), tmp_path / "s", workers=0, **quiet)
    build(tmp_path / "s", tmp_path / "ix", binary="flat", signal="l2", **quiet)
    index = Index.load(tmp_path / "ix")
    rows = ShardSet(tmp_path / "s").load(("codes", "features", "labels", "ids", "paths"))
    want = evaluate_arrays(rows["codes"], rows["labels"], index.table_codes(), index.labels, 48, at=(1000,),
                           own=index.positions_of(rows["ids"]))
    m = evaluate(tmp_path / "ix", tmp_path / "s", progress=False)
    assert m["self_excluded"] == 80 and m["hamming"] == want["hamming"]
    assert "80 queries are indexed items" in format_metrics(m)
    again = evaluate(tmp_path / "ix", images, model=str(tiny_model), progress=False)  # the same photos, encoded again
    assert again["self_excluded"] == 80 and again["hamming"] == m["hamming"]
    # an index whose index.json does not record its collection's spec (built before it did): the spec is read
    # from the collection's shard directory, as for every other use of it
    meta_file = tmp_path / "ix" / "index.json"
    kept_meta = meta_file.read_text()
    meta = json.loads(kept_meta)
    del meta["source"]["spec"]
    meta_file.write_text(json.dumps(meta))
    assert evaluate(tmp_path / "ix", images, model=str(tiny_model), progress=False)["self_excluded"] == 80
    meta_file.write_text(kept_meta)
    # a subset of the collection (extract --limit) against the whole, either way: its items are found by id and path
    extract(str(tiny_model), str(images), tmp_path / "s30", limit=30, workers=0, **quiet)
    build(tmp_path / "s30", tmp_path / "ix30", binary="flat", signal="l2", **quiet)
    assert evaluate(tmp_path / "ix", tmp_path / "s30", progress=False)["self_excluded"] == 30
    assert evaluate(tmp_path / "ix30", tmp_path / "s", progress=False)["self_excluded"] == 30
    # query with one of the folder's files: it is the indexed item read from it, left out with exclude_self
    from hashindex.query import query

    photo = images / rows_path(rows, 7)
    first = query(index, [str(photo)], [], k=3, model=str(tiny_model))[0]["results"]
    alone = query(index, [str(photo)], [], k=3, exclude_self=True, model=str(tiny_model))[0]["results"]
    assert first[0]["id"] == int(rows["ids"][7]) and first[0]["hamming"] == 0
    assert int(rows["ids"][7]) not in [r["id"] for r in alone] and len(alone) == 3
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(photo.read_bytes())  # the same pixels outside the folder: a copy of the item, as it
    assert query(index, [str(outside)], [], k=3, exclude_self=True, model=str(tiny_model))[0]["results"] == alone
    assert query(index, [str(outside)], [], k=3, model=str(tiny_model))[0]["results"] == first
    # under the posterior signal too (which ranks confident images of a class above an unsure image's own copy)
    from hashindex.index import Index as Opened

    build(tmp_path / "s", tmp_path / "ixp", binary="flat", signal="posterior", **quiet)
    by_post = Opened.load(tmp_path / "ixp")
    mine = query(by_post, [str(photo)], [], k=3, model=str(tiny_model))[0]["results"]
    others = query(by_post, [str(photo)], [], k=2, exclude_self=True, model=str(tiny_model))[0]["results"]
    assert mine[0]["id"] == int(rows["ids"][7]) and mine[0]["hamming"] == 0
    assert [{**r, "rank": r["rank"] - 1} for r in mine[1:]] == others
    kept = evaluate(tmp_path / "ix", tmp_path / "s", exclude_self=False, progress=False)
    assert kept["self_excluded"] == 0 and kept["precision_at_k"][0] > m["precision_at_k"][0]
    res = CliRunner().invoke(cli, ["-q", "eval", str(tmp_path / "ix"), "--queries", str(tmp_path / "s"), "--json",
                                   "--include-self"])
    assert res.exit_code == 0 and json.loads(res.stdout)["hamming"] == kept["hamming"], res.output
    # arrays: the same content written again is the same collection; other codes of the same size are not
    arr = write_arrays(tmp_path / "a", rows["codes"], rows["features"], labels=rows["labels"], ids=rows["ids"],
                       bits=48, model_id=index.model_id, class_names=index.class_names).dir
    build(arr, tmp_path / "hnsw", binary="hnsw", signal="l2", **quiet)
    copy = write_arrays(tmp_path / "a2", rows["codes"], rows["features"], labels=rows["labels"], ids=rows["ids"],
                        bits=48, model_id=index.model_id, class_names=index.class_names).dir
    other = write_arrays(tmp_path / "a3", rows["codes"][::-1], rows["features"][::-1], labels=rows["labels"][::-1],
                         ids=rows["ids"], bits=48, model_id=index.model_id, class_names=index.class_names).dir
    served = evaluate(tmp_path / "hnsw", copy, at=(50,), progress=False)
    assert served["self_excluded"] == 80 and evaluate(tmp_path / "hnsw", other, progress=False)["self_excluded"] == 0
    hnsw = Index.load(tmp_path / "hnsw")
    res = hnsw.search(rows["codes"], rows["features"].astype(np.float32), k=51, candidates=80)  # 79 others
    mine = res.positions == hnsw.positions_of(rows["ids"])[:, None]
    assert mine.any(axis=1).all()  # searched with itself, every item finds itself...
    others = np.array([row[~m][:50] for row, m in zip(res.positions, mine)])
    rel = hnsw.labels[others] == rows["labels"][:, None]  # ...and is served the others, in their order
    assert served["served"]["k"] == served["served"]["mean_results"] == 50
    assert served["served"]["map@50"] == pytest.approx(average_precision(rel, 50).mean(), abs=1e-12)
    # searched exhaustively, the served leave-one-out ranking is the exact one eval scores (pools included)
    build(arr, tmp_path / "ivf", binary="ivf", nlist=2, nprobe=2, signal="l2", **quiet)
    for pool in (None, 10):  # the default pool (all 80 here), and one that cuts the ranking
        whole = evaluate(tmp_path / "ivf", copy, at=(50,), candidates=pool, progress=False)
        assert whole["self_excluded"] == 80 and whole["served"]["coarse_recall@10"] == 1.0
        assert whole["served"]["map@50"] == pytest.approx(whole["reranked"]["map@50"], abs=1e-12), pool


def test_layer_features_tool_ranks_as_a_plain_loop(tiny_model, tmp_path):
    """tools/layer_features.py: the trunk's output row is the model's own feature, and every row's
    leave-one-out mAP is what ranking the other images by cosine in a plain loop gives."""
    import subprocess
    import sys

    from PIL import Image

    from hashindex.checkpoint import load_model
    from hashindex.data import load_arrays, open_source

    rng = np.random.default_rng(2)
    for c in range(3):
        (tmp_path / "photos" / f"class{c}").mkdir(parents=True)
        for i in range(8):
            base = rng.integers(0, 256, 3) * (c + 1) // 3
            pixels = np.clip(base + rng.integers(-40, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / f"class{c}" / f"{i}.png")
    tool = Path(__file__).resolve().parents[1] / "tools" / "layer_features.py"
    res = subprocess.run([sys.executable, str(tool), "--model", str(tiny_model), "--data", str(tmp_path / "photos"),
                          "--size", "16", "--json"], capture_output=True, text=True, check=True)
    rows = {r["feature"]: r for r in json.loads(res.stdout)}
    model = load_model(tiny_model, bf16=False)  # the tool runs the trunk in float32
    images, labels, _ = load_arrays(open_source(str(tmp_path / "photos")), 16, 3, 0, False)
    _, feature, _ = model.forward_numpy(images)

    def loop_map(f):
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        aps = []
        for q in range(len(f)):
            others = [i for i in np.argsort(-(f @ f[q]), kind="stable") if i != q]
            aps.append(_plain_ap(np.array([labels[i] == labels[q] for i in others])))
        return np.mean(aps)

    assert rows["output"]["images"] == 24 and rows["output"]["dim"] == 192
    assert rows["output"]["map"] == pytest.approx(loop_map(feature), abs=1e-9)
    assert 0 < rows["colour histogram 4x4x4"]["map"] <= 1 and len([r for r in rows if r.startswith("layer")]) == 9


def test_an_unlabelled_query_finds_nothing_relevant():
    """-1 is no class: an unlabelled query is not relevant to unlabelled items (nor to any other)."""
    from hashindex.targets import Relevance, relevant_items

    q, db = np.array([-1, 1]), np.array([-1, 1, 1])
    assert Relevance(q, db)(slice(0, 2)).tolist() == [[False, False, False], [False, True, True]]
    assert relevant_items(q, db, np.array([[0, 1], [0, 1]])).tolist() == [[False, False], [False, True]]
