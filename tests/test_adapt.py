"""`derive --adapt-codes`: codes from a code head fitted to a collection (ITQ on the mid feature)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashindexError, build, extract, load_model
from hashindex.checkpoint import read_checkpoint
from hashindex.cli import cli
from hashindex.data import open_source
from hashindex.derive import derive
from hashindex.metrics import evaluate_arrays
from tests.conftest import DATA, need

FLOWERS_TEST = DATA / "flowers" / "test.tar"


def _arrays(spec: str, size: int, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items ``pick`` of a collection as the net's uint8 inputs (N, 3, size, size), and their labels."""
    src = open_source(spec)
    return np.stack([src.read_array(int(i), size, 3) for i in pick]), src.labels[pick]


def test_adapted_codes_are_the_signs_of_the_fitted_projection(tiny_model, tmp_path):
    """The copy keeps the trunk and classifier (same mid features and logits) and takes its codes from the
    centred, projected mid feature, fitted on the collection's images: a new model id, the same one again
    for the same fit, balanced bits on the images it was fitted on."""
    need(FLOWERS_TEST)
    out = tmp_path / "adapted.pt"
    summary = derive(str(tiny_model), str(out), adapt_codes=str(FLOWERS_TEST), adapt_sample=120, progress=False)
    assert summary["adapted_codes"] == {"data": f"tar {FLOWERS_TEST}", "images": 120, "feature": "mid",
                                        "method": "itq"}
    plain, adapted = load_model(tiny_model, bf16=False), load_model(out, bf16=False)
    assert summary["model_id"] == adapted.model_id != plain.model_id
    images, _ = _arrays(str(FLOWERS_TEST), 16, np.linspace(0, 735, 120).round().astype(int))
    got, base = adapted.encode_fields(images), plain.encode_fields(images)
    assert np.allclose(got["mid_features"], base["mid_features"], atol=1e-5)
    assert np.allclose(adapted.forward_numpy(images)[2], plain.forward_numpy(images)[2], atol=1e-5)
    sd = read_checkpoint(out)["state_dict"]
    z = (got["mid_features"] - sd["code_mean"].numpy()) @ sd["code_proj"].numpy()
    sure = np.abs(z) > 1e-4  # (a bit on the boundary may round either way)
    bits = np.unpackbits(got["codes"], axis=1, count=48, bitorder="little").astype(bool)
    assert np.array_equal(bits[sure], (z > 0)[sure]) and not np.array_equal(got["codes"], base["codes"])
    assert 0.3 < bits.mean(0).min() and bits.mean(0).max() < 0.7  # centred: each bit splits the images
    again = tmp_path / "again.pt"
    assert derive(str(out), str(again), adapt_codes=str(FLOWERS_TEST), adapt_sample=120,
                  progress=False)["model_id"] == adapted.model_id  # refitted from the trunk alone: the same fit
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)
    assert info["codes"] == f"a code head adapted to tar {FLOWERS_TEST}: ITQ on the mid feature of 120 images"


def test_latent_signal_is_refused_for_adapted_codes_and_bad_input_is_one_line(tiny_model, tmp_path):
    need(FLOWERS_TEST)
    out = tmp_path / "adapted.pt"
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "derive", str(tiny_model), "--adapt-codes", str(FLOWERS_TEST), "--adapt-sample",
                              "40", "--out", str(out)])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "few"
    folder.mkdir()
    src = open_source(str(FLOWERS_TEST))
    for i in range(0, 400, 20):
        (folder / f"{i:03d}.jpg").write_bytes(src.read_bytes(i))
    extract(str(out), str(folder), str(tmp_path / "shards"), workers=0, progress=False, log=lambda m: None)
    with pytest.raises(HashindexError, match="signal 'latent': this model's codes come from a code head"):
        build(str(tmp_path / "shards"), str(tmp_path / "index"), signal="latent", progress=False, log=lambda m: None)
    for args, message in ((["--adapt-codes", str(tmp_path / "nowhere")], "--adapt-codes"),
                          (["--adapt-codes", str(FLOWERS_TEST), "--adapt-sample", "1"], "--adapt-sample")):
        res = runner.invoke(cli, ["derive", str(tiny_model), *args, "--out", str(tmp_path / "x.pt")])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.pt").exists()


def test_adapted_codes_beat_the_shipped_codes_on_photos_of_other_classes(tmp_path):
    """Zero-shot on flowers (classes the CIFAR-10 net never saw): the shipped model's codes rank the photos
    little above chance by Hamming distance; codes fitted to the collection (no labels used) rank them better
    (on the whole flowers set: mAP@all 0.25 -> 0.32, docs/RESULTS.md "Codes adapted to a collection")."""
    need(FLOWERS_TEST)
    out = tmp_path / "adapted.pt"
    every = np.arange(0, 736, 2)  # the database, and the photos the code head is fitted on
    folder = tmp_path / "db"
    folder.mkdir()
    src = open_source(str(FLOWERS_TEST))
    for i in every:
        (folder / src.class_names[src.labels[i]]).mkdir(exist_ok=True)
        (folder / src.class_names[src.labels[i]] / f"{i:03d}.jpg").write_bytes(src.read_bytes(int(i)))
    derive("nin-cifar10-48-v3", str(out), adapt_codes=str(folder), progress=False)
    db, db_labels = _arrays(str(FLOWERS_TEST), 32, every)
    queries, q_labels = _arrays(str(FLOWERS_TEST), 32, np.arange(1, 736, 4))
    scores = {}
    for name in ("nin-cifar10-48-v3", str(out)):
        model = load_model(name)
        q, d = model.encode(queries)[0], model.encode(db)[0]
        scores[name] = evaluate_arrays(q, q_labels, d, db_labels, 48)["hamming"]["map"]
    assert scores[str(out)] > scores["nin-cifar10-48-v3"] + 0.03, scores


def test_a_model_with_more_bits_than_the_mid_feature_is_refused(tmp_path):
    """ITQ's bits are principal directions of the 192-d mid feature: a 196-bit model cannot be adapted."""
    from hashindex import train
    from tests.conftest import CIFAR_TRAIN

    need(CIFAR_TRAIN)
    wide = tmp_path / "wide.pt"
    train(str(CIFAR_TRAIN), str(wide), limit=40, epochs=1, bits=196, input_size=16, workers=0, progress=False,
          log=lambda m: None)
    with pytest.raises(HashindexError, match="a 196-bit model; a code head on the mid feature gives at most 192 bits"):
        derive(str(wide), str(tmp_path / "x.pt"), adapt_codes=str(CIFAR_TRAIN), progress=False)
    assert not (tmp_path / "x.pt").exists()
