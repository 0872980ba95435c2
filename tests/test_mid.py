"""The mid feature (block 2's output averaged over the image) and the ``mid`` signal that re-ranks by it:
computed as defined, stored by extract, read by build, query, eval, append and the service, chosen by auto,
and refused with one line where the shards lack it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hashindex import HashindexError, ShardSet, extract
from hashindex.checkpoint import load_model
from hashindex.cli import cli
from hashindex.index import Index, append, build
from hashindex.query import query
from hashindex.store import describe_shards, read_shard, write_arrays


@pytest.fixture(scope="module")
def mid_index(cifar_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("mid") / "mid"
    build(cifar_shards, out, signal="mid", progress=False, log=lambda s: None)
    return out


def images_folder(root, n: int = 6):
    """n small RGB photos of distinct content in class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def block_two_by_hand(net, images: np.ndarray) -> np.ndarray:
    """The trunk's layers run one by one up to its first average pooling; their output averaged over the image."""
    x = net.normalize(torch.from_numpy(images))
    with torch.inference_mode():
        for layer in net.trunk:
            if isinstance(layer, torch.nn.AvgPool2d):
                return x.mean((2, 3)).numpy()
            x = layer(x)
    raise AssertionError("no average pooling in the trunk")


def test_mid_feature_is_block_two_averaged(tiny_model):
    model = load_model(tiny_model, bf16=False)
    side = model.input_size
    images = np.random.default_rng(1).integers(0, 255, (9, 3, side, side), dtype=np.uint8)
    fields = model.encode_fields(images)
    codes, feats = model.encode(images)
    assert np.array_equal(fields["codes"], codes) and np.allclose(fields["features"], feats, atol=1e-6)
    assert fields["mid_features"].shape == (9, 192)
    assert np.allclose(fields["mid_features"], block_two_by_hand(model.net, images), atol=1e-5)
    assert "mid_features" not in model.encode_fields(images, mid=False)
    model.net.test_flip = True  # with the flip, the mean of the image's and its mirror image's
    mirrored = block_two_by_hand(model.net, images[..., ::-1].copy())
    assert np.allclose(model.encode_fields(images)["mid_features"],
                       (block_two_by_hand(model.net, images) + mirrored) / 2, atol=1e-5)


def test_extract_stores_mid_features_beside_features(tiny_model, tmp_path):
    folder = images_folder(tmp_path / "photos")
    extract(str(tiny_model), str(folder), tmp_path / "s", progress=False, workers=0, log=lambda s: None)
    shards = ShardSet(tmp_path / "s")
    rows = shards.load(("features", "mid_features", "paths"))
    assert shards.has_mid and shards.manifest["mid_feature_dim"] == 192
    assert rows["mid_features"].shape == (6, 192) and rows["mid_features"].dtype == np.float16
    model = load_model(tiny_model)
    want = model.encode_fields([str(folder / p) for p in rows["paths"]])["mid_features"]
    assert np.allclose(rows["mid_features"], want, atol=2e-3, rtol=2e-3)
    extract(str(tiny_model), str(folder), tmp_path / "none", features="none", progress=False, workers=0,
            log=lambda s: None)
    bare = ShardSet(tmp_path / "none")
    assert not bare.has_mid and bare.load(("mid_features",))["mid_features"] is None
    assert describe_shards(tmp_path / "s")["mid_features"] == "192 x float16"  # what `hashindex info` shows
    assert describe_shards(tmp_path / "none")["mid_features"] == "none"


def test_an_extraction_begun_without_mid_features_goes_on_without_them(tiny_model, tmp_path):
    """Resuming what an older version began: the shards it adds stay like the first (no mid features)."""
    folder = images_folder(tmp_path / "photos")
    out = tmp_path / "s"
    extract(str(tiny_model), str(folder), out, shard_size=3, progress=False, workers=0, log=lambda s: None)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / manifest["shards"][1]["file"]).unlink()
    manifest.update(complete=False, shards=manifest["shards"][:1])
    del manifest["mid_feature_dim"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    extract(str(tiny_model), str(folder), out, shard_size=3, progress=False, workers=0, log=lambda s: None)
    shards = ShardSet(out)
    assert not shards.has_mid and shards.rows == 6
    assert read_shard(shards.shard_paths()[1], ("mid_features",))["mid_features"] is None


def test_mid_index_ranks_by_cosine_of_mid_features(mid_index, cifar_shards, tiny_model, tmp_path):
    """An image query's pool is ordered by 1 - cos between its mid feature and each item's stored one; the API,
    the CLI and the service give the same ranking."""
    from hashindex.service.basic import Searcher
    from hashindex.service.params import search_options

    index = Index.load(mid_index)
    assert index.signal == "mid" and index.feature_field == "mid_features" and index.meta["rerank"]["dim"] == 192
    img = tmp_path / "q.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    rows = query(index, [str(img)], [], model=str(tiny_model), k=20)[0]["results"]
    q = load_model(tiny_model).encode_fields([str(img)])["mid_features"][0]
    stored = ShardSet(cifar_shards).load(("ids", "mid_features"))
    mids = stored["mid_features"].astype(np.float32)[np.searchsorted(stored["ids"], [r["id"] for r in rows])]
    cos = mids @ q / np.linalg.norm(mids, axis=1) / np.linalg.norm(q)
    assert [r["distance"] for r in rows] == pytest.approx(2 - 2 * cos, abs=1e-3)
    assert all(np.diff([r["distance"] for r in rows]) >= -1e-6)
    res = CliRunner().invoke(cli, ["query", str(mid_index), str(img), "--k", "20", "--json",
                                   "--model", str(tiny_model)])
    assert res.exit_code == 0, res.output
    served = Searcher(mid_index, model=str(tiny_model)).by_image(img.read_bytes(), search_options({"k": "20"}))
    ids = [r["id"] for r in rows]
    assert [h["id"] for h in json.loads(res.output)[0]["results"]] == ids
    assert [h["id"] for h in served["results"]] == ids
    fields = load_model(tiny_model).encode_fields([str(img)])  # the API given every field picks the mid ones
    assert index.search(fields, k=20).ids[0].tolist() == ids
    assert index.search(fields["codes"], fields["mid_features"], k=20).ids[0].tolist() == ids
    with pytest.raises(HashindexError, match="codes: no 'mid_features' among the fields given"):
        index.search({"codes": fields["codes"], "features": fields["features"]}, k=20)


def test_auto_measures_mid_only_where_shards_hold_it(cifar_shards, tmp_path):
    rows = ShardSet(cifar_shards).load(("codes", "features", "labels"))
    old = write_arrays(tmp_path / "old", rows["codes"], rows["features"], labels=rows["labels"], bits=48,
                       class_names=ShardSet(cifar_shards).class_names)
    meta = build(old.dir, tmp_path / "ix", progress=False, log=lambda s: None)
    assert "mid" not in meta["rerank"]["signal_choice"]["scores"]
    with pytest.raises(HashindexError, match="signal 'mid': needs mid features, which these shards lack"):
        build(old.dir, tmp_path / "ix2", signal="mid", progress=False, log=lambda s: None)
    res = CliRunner().invoke(cli, ["build", str(old.dir), "--out", str(tmp_path / "ix3"), "--signal", "mid"])
    assert res.exit_code != 0 and "signal 'mid': needs mid features" in res.output and "Traceback" not in res.output
    # without labels and without the model's head nothing can be measured: cosine, with mid features or without
    mids = ShardSet(cifar_shards).load(("mid_features",))["mid_features"]
    for name, mid, want in (("u-mid", mids, "cosine"), ("u-old", None, "cosine")):
        unlabelled = write_arrays(tmp_path / name, rows["codes"], rows["features"], bits=48, mid_features=mid)
        meta = build(unlabelled.dir, tmp_path / f"ix-{name}", progress=False, log=lambda s: None)
        assert meta["rerank"]["signal"] == want
        assert meta["rerank"]["signal_choice"] == {"by": "default (no head)", "labels": "an unlabelled collection"}


def test_without_labels_the_model_tells_its_own_classes(cifar_shards, tiny_model, tmp_path):
    """extract records the model's validation accuracy in head.npz, and unlabelled shards are judged by their
    mean top posterior against it: the shipped model's own classes (CIFAR-10 test images) get the posterior,
    digits (MNIST) the mid feature, the figures as the head computes them again; a model at chance abstains."""
    from hashindex import DEFAULT_MODEL
    from hashindex.checkpoint import read_checkpoint
    from hashindex.store import write_head
    from tests.conftest import CIFAR_TEST, MNIST_TEST, need

    def unlabelled(shard_dir, name):
        """The shards' codes and features without their labels (the head beside them, as extract leaves it)."""
        shards = ShardSet(shard_dir)
        rows = shards.load(("codes", "features", "mid_features"))
        copy = write_arrays(tmp_path / name, rows["codes"], rows["features"], bits=48,
                            mid_features=rows["mid_features"], model_id=shards.model_id)
        write_head(copy.dir, shards.head())
        return copy, rows

    head = ShardSet(cifar_shards).head()
    assert head.accuracy == read_checkpoint(tiny_model)["accuracy"]
    copy, _ = unlabelled(cifar_shards, "tiny")
    meta = build(copy.dir, tmp_path / "ix-tiny", progress=False, log=lambda s: None)
    assert meta["rerank"]["signal"] == "cosine" and "near chance" in meta["rerank"]["signal_choice"]["by"]
    need(MNIST_TEST)
    accuracy = read_checkpoint(DEFAULT_MODEL)["accuracy"]
    for name, data, want in (("cifar", CIFAR_TEST, "posterior"), ("digits", MNIST_TEST, "mid")):
        extract(DEFAULT_MODEL, str(data), tmp_path / f"{name}-shards", limit=300, progress=False, log=lambda s: None)
        copy, rows = unlabelled(tmp_path / f"{name}-shards", name)
        assert copy.head().accuracy == accuracy
        meta = build(copy.dir, tmp_path / f"ix-{name}", progress=False, log=lambda s: None)
        choice = meta["rerank"]["signal_choice"]
        confidence = float(copy.head().posterior(rows["features"].astype(np.float32)).max(axis=1).mean())
        assert meta["rerank"]["signal"] == want, choice
        assert choice["confidence"] == pytest.approx(confidence, abs=1e-4)
        assert choice["ratio"] == pytest.approx(confidence / accuracy, abs=1e-4) and choice["accuracy"] == accuracy
        assert choice["labels"] == "an unlabelled collection"


def test_shards_without_mid_features_cannot_feed_a_mid_index(mid_index, cifar_shards, tmp_path):
    """eval's queries and append's new items must carry mid features: one line, the index untouched."""
    rows = ShardSet(cifar_shards).load(("codes", "features", "labels", "ids"))
    names = ShardSet(cifar_shards).class_names
    old = write_arrays(tmp_path / "q", rows["codes"][:50], rows["features"][:50], labels=rows["labels"][:50],
                       bits=48, class_names=names, model_id=ShardSet(cifar_shards).model_id)
    res = CliRunner().invoke(cli, ["eval", str(mid_index), "--queries", str(old.dir)])
    assert res.exit_code != 0 and "no mid features, which" in res.output and "signal 'mid'" in res.output
    index_dir = tmp_path / "ix"
    shutil.copytree(mid_index, index_dir)
    new = write_arrays(tmp_path / "new", rows["codes"][:5], rows["features"][:5], ids=np.arange(20_000, 20_005),
                       bits=48, class_names=names, model_id=ShardSet(cifar_shards).model_id)
    with pytest.raises(HashindexError, match="no 192-d mid features"):
        append(new.dir, index_dir, progress=False, log=lambda s: None)
    assert Index.load(index_dir).count == 10_000
    with_mid = write_arrays(tmp_path / "new2", rows["codes"][:5], rows["features"][:5],
                            ids=np.arange(20_000, 20_005), bits=48, class_names=names,
                            model_id=ShardSet(cifar_shards).model_id,
                            mid_features=ShardSet(cifar_shards).load(("mid_features",))["mid_features"][:5])
    append(with_mid.dir, index_dir, progress=False, log=lambda s: None)
    grown = Index.load(index_dir)
    codes, vecs = grown.items(grown.positions_of(np.arange(20_000, 20_005)))
    res = grown.search(codes, vecs, k=2, vectors=True)
    # each new item is a copy of item i: the two come first, at distance 0 of their own mid feature
    assert [sorted(r) for r in res.ids.tolist()] == [[i, 20_000 + i] for i in range(5)]
    assert np.allclose(res.distance, 0, atol=1e-3)


def test_a_writable_service_adds_mid_features_with_its_uploads(mid_index, tiny_model, tmp_path):
    """POST /items on a mid index stores the upload's mid feature: the image then finds itself at distance 0."""
    import httpx

    from hashindex.service.engine import Engine
    from tests.test_serve import start_asgi
    from tests.test_service import jpeg_bytes

    index_dir = tmp_path / "index"
    shutil.copytree(mid_index, index_dir)
    (_, a), = jpeg_bytes(1)
    url, stop = start_asgi({"m": Engine(index_dir, str(tiny_model), name="m")}, writable=True)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            assert client.post("/items", content=a, params={"path": "a.jpg"}).json()["ids"] == [10000]
            found = client.post("/search", params={"k": 30}, content=a).json()["results"]
    finally:
        stop()
    mine = next(r for r in found if r["id"] == 10000)
    assert mine["hamming"] == 0 and mine["distance"] == pytest.approx(0, abs=1e-3)
