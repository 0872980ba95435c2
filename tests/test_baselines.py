"""Unsupervised baselines: PCAH agrees with Faiss, ITQ lowers quantisation error and beats LSH on clusters."""

import faiss
import numpy as np
import pytest

from hashindex.baselines import fit, itq_rotation
from hashindex.codes import hamming_distances
from hashindex.metrics import evaluate_arrays


def clusters(n=3000, d=64, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 2
    labels = rng.integers(0, classes, n)
    x = centres[labels] + rng.normal(size=(n, d)) * 2.5 + rng.normal(size=d) * 5  # off-centre on purpose
    return x.astype(np.float32), labels


def test_pcah_matches_faiss_pca_then_sign():
    x, _ = clusters()
    ours = fit("pcah", x, 16).encode(x)
    ref = faiss.index_factory(x.shape[1], "PCA16,LSH")  # centre, project on 16 PCs, threshold at 0
    ref.train(x)
    theirs = ref.sa_encode(x)
    # a principal direction's sign is arbitrary: compare Hamming distances, which do not see per-bit flips;
    # float rounding may flip a bit of a point lying on a hyperplane, nothing more
    ours_d = hamming_distances(ours[:200], ours).astype(np.int64)
    theirs_d = hamming_distances(theirs[:200], theirs).astype(np.int64)
    assert (ours_d == theirs_d).mean() > 0.99 and np.abs(ours_d - theirs_d).max() <= 2


def test_itq_rotation_is_orthogonal_and_lowers_quantisation_error():
    x, _ = clusters()
    xc = x - x.mean(0)
    v = xc @ fit("pcah", x, 24).projection
    r = itq_rotation(v, iters=50)
    assert np.allclose(r @ r.T, np.eye(24), atol=1e-4)

    def error(m):  # ITQ's objective ||B - VR||^2 with B = sign(VR)
        return float(((np.sign(m) - m) ** 2).sum())

    start, few = itq_rotation(v, iters=0), itq_rotation(v, iters=5)  # the random rotation it starts from
    assert error(v @ r) <= error(v @ few) < error(v @ start)
    assert error(v @ r) < error(v)  # and below plain PCA signs


def test_itq_beats_lsh_on_clustered_data_and_encodes_in_chunks():
    x, y = clusters()
    q, qy, db, dby = x[:300], y[:300], x[300:], y[300:]
    scores = {}
    for method in ("lsh", "pcah", "itq"):
        model = fit(method, db, 32)
        codes = model.encode(db)
        assert codes.shape == (len(db), 4) and codes.dtype == np.uint8
        assert np.array_equal(model.encode(db, chunk=7), codes)
        scores[method] = evaluate_arrays(model.encode(q), qy, codes, dby, 32)["hamming"]["map"]
    chance = np.mean([(dby == c).mean() for c in qy])
    assert scores["itq"] > scores["lsh"] > 2 * chance, scores
    assert scores["itq"] > 0.8, scores


def test_fit_rejects_what_it_cannot_do():
    x, _ = clusters(n=100, d=8)
    with pytest.raises(ValueError, match="at most 8"):
        fit("itq", x, 12)
    with pytest.raises(ValueError, match="expected one of lsh, pcah, itq"):
        fit("sh", x, 4)
    assert fit("lsh", x, 12).encode(x).shape == (100, 2)  # random projections may exceed the dimension


def test_directions_computed_once_serve_every_code_length():
    from hashindex.baselines import principal_directions

    x, _ = clusters()
    directions = principal_directions(x - x.mean(axis=0), 32)
    for method in ("pcah", "itq"):
        for bits in (8, 32):
            a = fit(method, x, bits).encode(x)
            b = fit(method, x, bits, directions=directions).encode(x)
            assert np.array_equal(a, b), (method, bits)


def test_tool_scores_shard_features_and_reuses_its_rows(cifar_shards, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "tools" / "baselines.py"), "--features", str(cifar_shards), str(cifar_shards),
           "--bits", "8", "16", "--query-limit", "300", "--db-limit", "3000", "--out", str(tmp_path / "bl"),
           "--plot", str(tmp_path / "bl.png")]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert first.returncode == 0, first.stderr
    rows = json.loads((tmp_path / "bl" / "results.json").read_text())["rows"]
    assert [(r["method"], r["K"]) for r in rows] == [(m, k) for m in ("lsh", "pcah", "itq") for k in (8, 16)]
    assert all(r["queries"] == 300 and r["database"] == 3000 and 0.1 < r["map"] <= 1 for r in rows)
    assert (tmp_path / "bl.png").stat().st_size > 10_000
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert again.returncode == 0 and "s eval)" not in again.stdout  # nothing measured twice
    assert json.loads((tmp_path / "bl" / "results.json").read_text())["rows"] == rows
