"""Fine-stage signals and the ranking contract, on synthetic arrays (seconds) and on a real index.

Each signal's distances are checked against a direct numpy computation; the ranking must not depend
on k (the top 3 are the first 3 of the top 10); `Index.search`, `metrics.rerank_order` (what `eval`
scores), the CLI and the service rank the same way.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashindexError
from hashindex.cli import cli
from hashindex.index import Index, build
from hashindex.codes import hamming_distances
from hashindex.metrics import evaluate_arrays, rerank_order
from hashindex.model import pack_codes
from hashindex.query import indexed_queries, query
from hashindex.signals import (FOREIGN_RATIO, OWN_CLASSES_RATIO, SIGNALS, Head, choose, database_vectors,
                               query_vectors, unlabelled_choice)

BITS, DIM, CLASSES = 16, 24, 4


def synthetic(n: int = 3000, seed: int = 0):
    """Clustered features, a random head, codes from its latent layer, labels = clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (CLASSES, DIM)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    feats = (centres[labels] + rng.normal(0, 1.5, (n, DIM))).astype(np.float32)
    head = Head(rng.normal(0, 0.5, (BITS, DIM)).astype(np.float32), rng.normal(0, 0.1, BITS).astype(np.float32),
                rng.normal(0, 1, (CLASSES, BITS)).astype(np.float32), np.zeros(CLASSES, np.float32))
    codes = pack_codes(head.latent(feats))
    return feats, codes, labels.astype(np.int32), head


def direct_distance(signal: str, fq: np.ndarray, fx: np.ndarray, cx: np.ndarray, head: Head) -> np.ndarray:
    """The signal's distance computed from its definition, not from its vectors."""
    if signal == "l2":
        return ((fq[:, None] - fx[None]) ** 2).sum(-1)
    if signal in ("cosine", "mid"):  # mid: cosine of the rows given, which are the mid features there
        cos = (fq @ fx.T) / np.linalg.norm(fq, axis=1)[:, None] / np.linalg.norm(fx, axis=1)[None]
        return 2 - 2 * cos
    if signal == "latent":
        bits = np.unpackbits(cx, axis=1, count=BITS, bitorder="little").astype(np.float32)
        return ((head.latent(fq)[:, None] - bits[None]) ** 2).sum(-1)
    pq, px = head.posterior(fq), head.posterior(fx)
    return (pq ** 2).sum(1)[:, None] + 1 - 2 * pq @ px.T


@pytest.mark.parametrize("signal", SIGNALS)
def test_signal_distances_equal_direct_numpy(signal):
    feats, codes, labels, head = synthetic()
    index = Index.in_memory(codes, feats, BITS, signal=signal, head=head)
    q = slice(0, 3000, 150)
    res = index.search(codes[q], feats[q], k=50, candidates=50)
    expect = direct_distance(signal, feats[q], feats, codes, head)
    got = np.take_along_axis(expect, res.positions, 1)
    inside = ~np.isnan(res.distance)
    assert inside[:, :10].all()
    assert np.allclose(res.distance[inside], got[inside], rtol=1e-4, atol=1e-4)
    # within the pool the order is by the signal's distance
    for row_d, row_in in zip(res.distance, inside):
        assert (np.diff(row_d[row_in]) >= -1e-5).all()


def test_vectors_of_signals_reduce_to_squared_l2():
    feats, codes, _, head = synthetic(200)
    for signal in SIGNALS:
        dv, qv = database_vectors(signal, feats, codes, head), query_vectors(signal, feats[:7], head)
        via_vectors = ((qv[:, None] - dv[None]) ** 2).sum(-1)
        assert np.allclose(via_vectors, direct_distance(signal, feats[:7], feats, codes, head), atol=1e-4), signal


@pytest.mark.parametrize("signal", [None, *SIGNALS])
def test_top_k_is_a_prefix_whatever_k(signal):
    """8-bit codes: long ties everywhere; top 1/3/10/200/1500 are prefixes of top 2000."""
    feats, codes, _, head = synthetic(2500, seed=1)
    codes = codes[:, :1]  # 8 bits
    index = Index.in_memory(codes, feats, 8, signal=signal or "l2", head=Head(head.latent_w[:8], head.latent_b[:8],
                                                                                head.classifier_w[:, :8],
                                                                                head.classifier_b))
    q = slice(0, 2500, 125)
    f = feats[q] if signal else None
    full = index.search(codes[q], f, k=2000)
    for k in (1, 3, 10, 200, 1500):
        part = index.search(codes[q], f, k=k)
        assert np.array_equal(part.ids, full.ids[:, :k]), k
        assert np.array_equal(part.hamming, full.hamming[:, :k]), k


def test_eval_ranking_is_the_search_ranking():
    """metrics.rerank_order (what eval scores) orders each query as Index.search does."""
    feats, codes, labels, head = synthetic(2500, seed=2)
    codes = codes[:, :1]
    small = Head(head.latent_w[:8], head.latent_b[:8], head.classifier_w[:, :8], head.classifier_b)
    index = Index.in_memory(codes, feats, 8, signal="posterior", head=small)
    q = np.arange(0, 2500, 100)
    vecs = index.query_vectors(feats[q])
    d = hamming_distances(codes[q], codes)
    order = np.argsort(d, axis=1, kind="stable")
    ranked, sizes = rerank_order(order, np.take_along_axis(d, order, 1),
                                 lambda sl, pos: index.float_distances(vecs[sl], pos, vectors=True),
                                 slice(None), 100, 20_000)
    res = index.search(codes[q], feats[q], k=400, candidates=100)
    assert np.array_equal(res.positions, ranked[:, :400])
    assert (sizes >= 100).all()  # pools widened to whole tie groups


def test_choose_prefers_the_best():
    best, scores = choose({"hamming": lambda: 0.5, "l2": lambda: 0.4, "posterior": lambda: 0.7})
    assert best == "posterior" and scores["hamming"] == 0.5
    assert choose({"hamming": lambda: 0.6, "cosine": lambda: 0.6})[0] == "hamming"  # ties: earlier


def test_the_label_free_test_compares_confidence_with_the_models_accuracy():
    """Mean top posterior / validation accuracy: >= OWN_CLASSES_RATIO posterior, <= FOREIGN_RATIO mid (cosine
    without mid features), between them, or without what the test needs, cosine; the figures against numpy."""
    feats, _, _, head = synthetic(500)
    confidence = float(head.posterior(feats).max(axis=1).mean())
    manual = np.exp(feats @ head.latent_w.T + head.latent_b)  # sigmoid, softmax and mean by hand
    logits = (manual / (1 + manual)) @ head.classifier_w.T + head.classifier_b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    assert confidence == pytest.approx(float((probs / probs.sum(1, keepdims=True)).max(1).mean()), rel=1e-5)

    def pick(accuracy, has_mid=True, **kw):
        return unlabelled_choice(replace(head, accuracy=accuracy, **kw), feats, has_mid)

    own = confidence / OWN_CLASSES_RATIO  # the accuracy at which this confidence is exactly the bound
    signal, facts = pick(own * 0.999)
    assert signal == "posterior" and "the net's own classes" in facts["by"]
    assert facts["confidence"] == round(confidence, 4) and facts["ratio"] == round(confidence / (own * 0.999), 4)
    assert pick(own * 1.01)[0] == "cosine" and "cannot tell" in pick(own * 1.01)[1]["by"]
    foreign = confidence / FOREIGN_RATIO
    assert pick(foreign * 1.001)[0] == "mid" and "not trained on" in pick(foreign * 1.001)[1]["by"]
    assert pick(foreign * 1.001, has_mid=False)[0] == "cosine"
    # the verdict index.json records, which the demo's note reads instead of comparing the ratio again
    assert [pick(a, **kw)[1]["classes"] for a, kw in ((own * 0.999, {}), (own * 1.01, {}), (foreign * 0.999, {}),
            (foreign * 1.001, {}), (foreign * 1.001, {"has_mid": False}))] == ["own", "unclear", "unclear", "other",
                                                                             "other"]
    assert pick(None) == ("cosine", {"by": "default (the model's validation accuracy is not recorded)"})
    assert pick(0.5, multi_label=True) == ("cosine", {"by": "default (a multi-label net)"})
    assert pick(0.49)[1]["by"] == "default (the model's validation accuracy 0.490 is near chance)"  # < 2 / 4 classes
    two = Head(head.latent_w, head.latent_b, head.classifier_w[:2], head.classifier_b[:2], accuracy=0.8)
    assert "ratio" in unlabelled_choice(two, feats, True)[1]  # 2 classes: 0.8 is above 0.75, halfway from chance
    assert "near chance" in unlabelled_choice(replace(two, accuracy=0.7), feats, True)[1]["by"]
    assert unlabelled_choice(None, feats, True) == ("cosine", {"by": "default (no head)"})


def test_auto_says_why_labels_could_not_choose():
    """The recorded reason names what is missing: labels, enough of them, or a second class."""
    from hashindex.index.tuning import _unmeasurable

    assert _unmeasurable(np.array([], dtype=np.int64)) == "an unlabelled collection"
    assert "15 labelled items, fewer than the 20" in _unmeasurable(np.arange(15) % 3)
    assert _unmeasurable(np.zeros(40, dtype=np.int64)).startswith("one class")
    assert _unmeasurable(np.arange(40) % 2) is None


def test_head_file_round_trip_and_no_pickle(tmp_path):
    _, _, _, head = synthetic(10)
    head.save(tmp_path / "head.npz")
    back = Head.load(tmp_path / "head.npz")
    assert all(np.array_equal(getattr(head, k), getattr(back, k))
               for k in ("latent_w", "latent_b", "classifier_w", "classifier_b"))
    assert back.accuracy is None  # not measured: stays unknown
    replace(head, accuracy=0.8125).save(tmp_path / "measured.npz")
    assert Head.load(tmp_path / "measured.npz").accuracy == 0.8125
    with np.load(tmp_path / "measured.npz") as z:  # a head file written before the accuracy: read as unknown
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files if k != "accuracy"})
    assert Head.load(tmp_path / "old.npz").accuracy is None
    with np.load(tmp_path / "measured.npz") as z:  # an accuracy that is no scalar: one line, not a traceback
        np.savez(tmp_path / "bad.npz", **{**{k: z[k] for k in z.files}, "accuracy": np.array([0.5, 0.6])})
    with pytest.raises(HashindexError, match="bad.npz: not a readable head file"):
        Head.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "evil.npz", latent_w=np.array([object()], dtype=object))
    with pytest.raises(HashindexError, match="not a readable head file"):
        Head.load(tmp_path / "evil.npz")


def test_auto_chooses_by_the_collections_labels(cifar_shards, tmp_path):
    """auto records its measurement; it never picks a signal below Hamming on the held-out items."""
    meta = build(cifar_shards, tmp_path / "auto", progress=False, log=lambda s: None)
    choice = meta["rerank"]["signal_choice"]
    assert meta["rerank"]["signal"] in (*SIGNALS, "hamming")
    assert set(choice["scores"]) == {"hamming", *SIGNALS}
    assert choice["scores"][meta["rerank"]["signal"]] == max(choice["scores"].values())
    assert 0.09 < choice["chance"] < 0.11 and max(choice["scores"].values()) > choice["chance"] + 0.01  # labels tell
    # beside the measurement, what the label-free test would choose: the tests' tiny model is at chance, so cosine
    assert choice["label_free"] == {"signal": "cosine", "by": choice["label_free"]["by"]}
    assert "near chance" in choice["label_free"]["by"]
    assert (tmp_path / "auto" / "head.npz").exists()


def test_a_random_orders_map_matches_simulation():
    """`random_order_ap` (closed form) against the mean AP of many random orders; `chance_map` per query."""
    from hashindex.metrics import average_precision, chance_map, random_order_ap

    rng = np.random.default_rng(0)
    for relevant, n in ((1, 5), (3, 20), (7, 50), (20, 20)):
        rel = np.zeros((20000, n), bool)
        rel[np.arange(20000)[:, None], np.argsort(rng.random((20000, n)), axis=1)[:, :relevant]] = True
        assert random_order_ap(np.array([relevant]), n)[0] == pytest.approx(average_precision(rel).mean(), abs=0.004)
    assert random_order_ap(np.array([0, 1]), 1).tolist() == [0.0, 1.0]
    db = np.array([0, 0, 1, 2, 2, 2, -1])  # an unlabelled item is never relevant, but counts in the order
    assert chance_map(np.array([0, 2, 5]), db) == pytest.approx(random_order_ap(np.array([2, 3, 0]), 7).mean())
    sets = np.eye(3, dtype=bool)[[0, 0, 1, 2, 2, 2]]
    assert chance_map(np.array([[1, 1, 0]], bool), sets) == pytest.approx(random_order_ap(np.array([3]), 6)[0])
    # a query that is item 0 of the database: left out of its own ranking (1 relevant of 6 left), as eval does
    assert chance_map(np.array([0, 2]), db, own=np.array([0, -1])) == pytest.approx(
        random_order_ap(np.array([1, 3]), np.array([6, 7])).mean())
    for n in (64, 65, 1000, 123_457):  # harmonic numbers summed or, past 64, from their expansion
        h = float(np.sum(1.0 / np.arange(1, n + 1)))
        assert random_order_ap(np.array([1]), n)[0] == pytest.approx(h / n, rel=1e-9)


def test_labels_that_say_nothing_of_the_images_leave_the_choice_to_the_label_free_test(cifar_shards, tmp_path):
    """The same shards with their labels shuffled (folders by date): every signal scores at chance, so auto
    does not take the noisiest winner but the label-free test's choice, and says why; as given, it measures."""
    from hashindex.index.tuning import labels_tell
    from hashindex.store import ShardSet, write_arrays

    assert labels_tell(0.12, 0.10) and not labels_tell(0.105, 0.10) and not labels_tell(0.0045, 0.0)
    assert labels_tell(0.85, 0.82) and not labels_tell(0.83, 0.82)  # one big class: 10% of what chance leaves
    shards = ShardSet(cifar_shards)
    rows = {k: v[:4000] for k, v in shards.load(("codes", "features", "ids", "labels", "mid_features")).items()}
    write_arrays(tmp_path / "shuffled", rows["codes"], rows["features"], ids=rows["ids"], bits=shards.bits,
                 labels=np.random.default_rng(0).permutation(rows["labels"]), class_names=shards.class_names,
                 model_id=shards.model_id, mid_features=rows["mid_features"])
    choice = build(tmp_path / "shuffled", tmp_path / "ix", progress=False, log=lambda s: None)
    choice = choice["rerank"]["signal_choice"]
    assert "scores" not in choice and choice["labels"].startswith("labels that tell nothing of the images")
    assert max(choice["label_scores"].values()) - choice["chance"] < 0.01  # all at chance (0.10 here)
    assert choice["by"].startswith("default (no head)")  # the copy has no head file: the test cannot run
    # the labels as given clear it: test_auto_chooses_by_the_collections_labels


def test_api_cli_and_service_rank_alike(cifar_shards, tiny_model, tmp_path):
    """The same by-id request through the library (`query`), `hashindex query --json` and the service: each item
    first, then the others as Index.search ranks them without it."""
    from hashindex.service.basic import Searcher
    from hashindex.service.params import search_options

    build(cifar_shards, tmp_path / "ix", signal="posterior", progress=False, log=lambda s: None)
    index = Index.load(tmp_path / "ix")
    ids = [3, 500, 7777]
    codes, vecs = indexed_queries(index, ids)
    raw = index.search(codes, vecs, k=13, vectors=True).ids  # the index's own order, knowing no identity
    api = [[i] + [x for x in row if x != i][:11] for i, row in zip(ids, raw.tolist())]
    res = CliRunner().invoke(cli, ["query", str(tmp_path / "ix"), "--k", "12", "--json",
                                   *[a for i in ids for a in ("--by-id", str(i))]])
    assert res.exit_code == 0, res.output
    cli_ids = [[h["id"] for h in row["results"]] for row in json.loads(res.output)]
    searcher = Searcher(tmp_path / "ix", model=str(tiny_model))
    served = [[h["id"] for h in searcher.by_id(i, search_options({"k": "12"}))["results"]] for i in ids]
    lib = [[h["id"] for h in row["results"]] for row in query(index, [], ids, k=12)]
    assert api == cli_ids == served == lib
    assert any(row[0] != i for i, row in zip(ids, raw.tolist()))  # the posterior would not have put each first


def test_eval_candidates_all_and_signal_reported(cifar_shards, cifar_queries, tmp_path):
    build(cifar_shards, tmp_path / "ix", signal="cosine", progress=False, log=lambda s: None)
    res = CliRunner().invoke(cli, ["-q", "eval", str(tmp_path / "ix"), "--queries", str(cifar_queries),
                                   "--candidates", "all", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    # the queries are indexed items: each is ranked against the 9,999 others, all of them re-ranked
    assert m["reranked"]["signal"] == "cosine" and m["reranked"]["candidates"] == 9999 and m["self_excluded"] == 1000
    # beside the figures, what a random order scores: each query's 999 others of its class among 9,999 items
    from hashindex.metrics import random_order_ap
    assert m["chance_map"] == pytest.approx(random_order_ap(np.array([999]), 9999)[0], rel=1e-9)
    res = CliRunner().invoke(cli, ["-q", "eval", str(tmp_path / "ix"), "--queries", str(cifar_queries)])
    assert res.exit_code == 0 and f"random order             {m['chance_map']:.4f}" in res.output, res.output
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "ix"), "--queries", str(cifar_queries),
                                   "--candidates", "many"])
    assert res.exit_code == 2 and "--candidates many: expected a positive number or 'all'" in res.output


def test_evaluate_arrays_without_tie_cap_keeps_the_old_pool():
    """tie_cap defaults to candidates: exactly the first candidates items are re-ranked."""
    feats, codes, labels, head = synthetic(600, seed=3)
    codes = codes[:, :1]
    calls = []

    def dist(sl, pos):
        calls.append(pos.shape[1])
        return np.zeros(pos.shape, np.float32)

    evaluate_arrays(codes[:50], labels[:50], codes, labels, 8, at=(), pk_max=1, rerank=dist, candidates=37)
    assert set(calls) == {37}


def test_image_queries_without_a_float_store(cifar_shards, tiny_model, tmp_path):
    """An index built with rerank none answers image and id queries in Hamming order (no signal to compute)."""
    from PIL import Image

    build(cifar_shards, tmp_path / "ix", rerank="none", progress=False, log=lambda s: None)
    index = Index.load(tmp_path / "ix")
    assert index.rerank is None and index.signal == "none"
    img = tmp_path / "q.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(img)
    rows = query(index, [str(img)], [7], model=str(tiny_model), k=5)
    for row in rows:
        assert len(row["results"]) == 5 and all(h["distance"] is None for h in row["results"])
        assert [h["hamming"] for h in row["results"]] == sorted(h["hamming"] for h in row["results"])


def test_first_k_order_equals_a_full_sort_cut_at_k():
    """The partial ordering of a re-ranked pool gives exactly the full lexsort's first k (ties, inf, any k)."""
    from hashindex.index.pool import first_k_order

    rng = np.random.default_rng(0)
    for _ in range(300):
        q, w = int(rng.integers(1, 6)), int(rng.integers(1, 300))
        d = rng.integers(0, 5, (q, w)).astype(np.float32)  # many ties
        d[rng.random((q, w)) < 0.2] = np.inf
        ham = rng.integers(0, 4, (q, w)).astype(np.int32)
        pos = np.stack([rng.permutation(w) for _ in range(q)]).astype(np.int64)
        k = int(rng.integers(1, w + 5))
        assert np.array_equal(first_k_order(d, ham, pos, k), np.lexsort((pos, ham, d), axis=-1)[:, :k])


def test_a_head_file_without_the_accuracy_borrows_the_shipped_models(tmp_path):
    """Shards of a shipped model extracted before heads recorded the accuracy: the label-free test reads the
    shipped checkpoint's; shards of an unknown model keep their head (and the test abstains)."""
    from hashindex import DEFAULT_MODEL
    from hashindex.checkpoint import read_checkpoint
    from hashindex.index.tuning import head_for
    from hashindex.store import write_arrays, write_head

    ckpt = read_checkpoint(DEFAULT_MODEL)
    feats, codes, _, head = synthetic(50)
    for name, model_id, want in (("shipped", ckpt["model_id"], ckpt["accuracy"]),
                                 ("unknown", "0123456789abcdef", None)):
        shards = write_arrays(tmp_path / name, codes, feats, bits=BITS, model_id=model_id)
        write_head(shards.dir, replace(head, accuracy=None))
        assert head_for(shards).accuracy == want
