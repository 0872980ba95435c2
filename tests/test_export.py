"""`hashindex export`: a model as one ONNX file whose outputs are the model's, checked before it is written."""

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hashindex import HashindexError, load_model
from hashindex.cli import cli
from hashindex.data import open_source
from hashindex.export import OUTPUTS, OnnxEncoder, export_onnx, read_onnx_meta
from hashindex.model import HashModel, NINHash, pack_codes
from tests.conftest import CIFAR_TEST, load_tool, need

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _random_model(bits: int, channels: int, test_flip: bool, test_shift: int, adapted: bool) -> HashModel:
    """An untrained net with the options set (code width, grey input, test views, an adapted code head)."""
    torch.manual_seed(0)
    net = NINHash(bits, 5, channels=channels, test_flip=test_flip, test_shift=test_shift, adapted_codes=adapted)
    if adapted:
        net.code_mean.normal_()
        net.code_proj.normal_()
    meta = {"model_id": "0123456789abcdef", "bits": bits, "input_size": 16, "channels": channels,
            "class_names": list("abcde"), "test_flip": test_flip, "test_shift": test_shift}
    return HashModel(net.eval(), meta, bf16=False)


def test_exported_model_gives_the_models_codes_on_real_images(tmp_path):
    """The shipped default (test flip) exported: on 200 CIFAR-10 JPEGs read as extraction reads them, ONNX
    Runtime gives the float32 model's codes bit for bit and its features, mid features and logits within
    1e-4, for any batch size (1, 7, 200); the file carries the checkpoint's facts, shown by `info`."""
    need(CIFAR_TEST)
    out = tmp_path / "v4.onnx"
    result = CliRunner().invoke(cli, ["export", "nin-cifar10-48-v4", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    model = load_model("nin-cifar10-48-v4", bf16=False)
    assert summary["model_id"] == model.model_id and summary["check"]["ok"] and summary["bytes"] > 3_000_000
    src = open_source(str(CIFAR_TEST)).subset(200)
    images = np.stack([src.read_array(i, 32, 3) for i in range(len(src))])
    fields = model.encode_fields(images)
    latent, _, logits = model.forward_numpy(images)
    encoder = OnnxEncoder(out)
    for n in (1, 7, 200):
        got = encoder(images[:n])
        assert got["codes"].dtype == np.uint8 and np.array_equal(got["codes"], fields["codes"][:n])
        assert np.allclose(got["latent"], latent[:n], atol=1e-4)
        assert np.allclose(got["features"], fields["features"][:n], atol=1e-4)
        assert np.allclose(got["mid_features"], fields["mid_features"][:n], atol=1e-4)
        assert np.allclose(got["logits"], logits[:n], atol=1e-4)
    meta = read_onnx_meta(out)
    assert meta["model_id"] == model.model_id and meta["bits"] == 48 and meta["input_size"] == 32
    assert meta["class_names"] == model.class_names and meta["outputs"] == list(OUTPUTS)
    assert "mirror" in meta["views"] and meta["posterior"] == "softmax"
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)
    assert info["kind"] == "onnx model" and info["model_id"] == model.model_id and info["bytes"] == summary["bytes"]


@pytest.mark.parametrize("bits, channels, flip, shift, adapted", [(12, 1, False, 0, False), (20, 3, True, 2, True)])
def test_export_carries_every_option_of_the_model(tmp_path, bits, channels, flip, shift, adapted):
    """Codes not a whole number of bytes (padded as the index packs them), a one-channel input, ten test views
    and an adapted code head: the file's outputs are the model's."""
    model = _random_model(bits, channels, flip, shift, adapted)
    summary = export_onnx(model, tmp_path / "m.onnx")
    assert summary["check"]["ok"] and summary["check"]["bits_differing"] == 0
    images = np.random.default_rng(1).integers(0, 256, (9, channels, 16, 16), dtype=np.uint8)
    got = OnnxEncoder(tmp_path / "m.onnx")(images)
    latent, features, _ = model.forward_numpy(images)
    assert got["codes"].shape == (9, (bits + 7) // 8) and np.array_equal(got["codes"], pack_codes(latent))
    assert np.allclose(got["features"], features, atol=1e-4)


def test_an_export_that_differs_is_not_written(tmp_path, monkeypatch):
    """ONNX Runtime's outputs off by more than rounding: an error with the figures, no file; an existing
    file is kept unless overwrite, a missing folder is named."""
    model = _random_model(16, 3, False, 0, False)
    out = tmp_path / "m.onnx"
    real = OnnxEncoder.__call__
    monkeypatch.setattr(OnnxEncoder, "__call__", lambda self, x: {**real(self, x), "features": real(self, x)[
        "features"] + 1e-3})
    with pytest.raises(HashindexError, match=r"^out=.*m\.onnx: not written, ONNX Runtime's outputs differ"):
        export_onnx(model, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(OnnxEncoder, "__call__", real)
    export_onnx(model, out)
    with pytest.raises(HashindexError, match="already exists"):
        export_onnx(model, out)
    assert export_onnx(model, out, overwrite=True)["check"]["ok"]
    with pytest.raises(HashindexError, match=r"no is not a folder$"):
        export_onnx(model, tmp_path / "no" / "m.onnx")
    with pytest.raises(HashindexError, match=r": a folder \(expected a file to write, such as .*model\.onnx\)$"):
        export_onnx(model, tmp_path, overwrite=True)


def test_export_errors_are_one_line(tmp_path, monkeypatch):
    """A missing exporter package, a file that is not a model, an ONNX model hashindex did not write: one line
    naming the file or the package to install, exit 2."""
    import onnx
    import onnxscript

    model = _random_model(16, 3, False, 0, False)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(HashindexError, match=r"needs the onnxscript package: pip install 'hashindex\[onnx\]'"):
        export_onnx(model, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", onnxscript)  # (the module torch's exporter holds)
    export_onnx(model, tmp_path / "m.onnx", check=False)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "other.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    runner = CliRunner()
    for name, message in (("other.onnx", "an ONNX model, but not one hashindex exported"),
                          ("junk.onnx", "not an ONNX model"), ("none.onnx", "no such file")):
        result = runner.invoke(cli, ["info", str(tmp_path / name)])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output, result.output
    result = runner.invoke(cli, ["export", "nin-cifar10-48", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "--out" in result.output and "already exists" in result.output


def test_a_changed_export_is_refused_on_read(tmp_path):
    """The graph's SHA-256 recorded at export is checked by `info` and `verify`: one weight changed in the file
    (its metadata kept) is refused in one line; the file as written verifies."""
    import onnx
    from onnx import numpy_helper

    export_onnx(_random_model(16, 3, False, 0, False), tmp_path / "m.onnx")
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0 and "matches the SHA-256 recorded at export" in result.output
    proto = onnx.load(str(tmp_path / "m.onnx"))
    weights = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(weights).copy()
    array.flat[0] += 0.01
    weights.CopyFrom(numpy_helper.from_array(array, weights.name))
    onnx.save(proto, str(tmp_path / "changed.onnx"))
    for command in ("verify", "info"):
        result = runner.invoke(cli, [command, str(tmp_path / "changed.onnx")])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert "its graph does not match the SHA-256 recorded when it was exported" in result.output
    proto = onnx.load(str(tmp_path / "m.onnx"))
    next(p for p in proto.metadata_props if p.key == "hashindex.bits").value = "sixteen"
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    result = runner.invoke(cli, ["info", str(tmp_path / "edited.onnx")])
    assert result.exit_code == 2 and "its hashindex metadata is malformed (ValueError" in result.output
    result = runner.invoke(cli, ["extract", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path),
                                 "--out", str(tmp_path / "shards")])
    assert result.exit_code == 2 and "an exported ONNX model; hashindex encodes with the checkpoint" in result.output


def test_the_reference_client_reads_photos_as_extraction_does(tmp_path):
    """tools/onnx_client.py (numpy, Pillow and onnxruntime only: the reference for encoding elsewhere) gives
    each file the net input extraction gives it, pixel for pixel (a camera-size JPEG decoded at reduced scale, a
    sideways EXIF photo, a transparent PNG, a 16-bit greyscale PNG, a palette GIF, a phone's HEIC), and so the
    float32 model's codes through the exported file."""
    from PIL import Image

    from hashindex.data import net_array

    need(CIFAR_TEST)
    client = load_tool("onnx_client")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((1600, 1200))
    photo.save(tmp_path / "big.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated
    photo.resize((400, 300)).save(tmp_path / "sideways.jpg", exif=exif)
    rgba = np.dstack([rng.integers(0, 256, (40, 30, 3)), rng.integers(0, 2, (40, 30)) * 255]).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (50, 50)).astype(np.uint16)).save(tmp_path / "grey16.png")
    photo.resize((90, 70)).convert("P").save(tmp_path / "palette.gif")
    names = ["big.jpg", "sideways.jpg", "alpha.png", "grey16.png", "palette.gif"]
    if client.Image.registered_extensions().get(".heic"):  # pillow-heif installed (the test extra has it)
        photo.resize((80, 60)).save(tmp_path / "phone.heic")
        names.append("phone.heic")
    paths = [str(tmp_path / n) for n in names]
    for path in paths:
        for side, channels in ((32, 3), (16, 1)):
            want = net_array(open(path, "rb").read(), side, channels)
            assert np.array_equal(client.net_input(path, side, channels), want), (path, side, channels)
    model = load_model("nin-cifar10-48-v4", bf16=False)
    export_onnx(model, tmp_path / "v4.onnx", check=False)
    encoder = client.Encoder(str(tmp_path / "v4.onnx"))
    assert (encoder.model_id, encoder.side, encoder.channels) == (model.model_id, 32, 3)
    assert np.array_equal(encoder(paths)["codes"], model.encode(paths)[0])


def test_the_reference_client_searches_a_service_with_its_photos_encoded(flat_index, tiny_model, tmp_path):
    """tools/onnx_client.py --url: the photos encoded by the exported file, sent as JSON queries in POST /batch
    requests of up to 64 (the service's cap), one answer a photo in order: each the ranking the service gives the
    float32 model's outputs for that photo; a service that refuses the client (a read token) a one-line exit."""
    import threading

    from hashindex.service.basic import Searcher, make_server
    from tests.conftest import jpeg_bytes, same_ranking

    client = load_tool("onnx_client")
    names = []
    for i, (_, data) in enumerate(jpeg_bytes(3)):
        names.append(str(tmp_path / f"q{i}.jpg"))
        (tmp_path / f"q{i}.jpg").write_bytes(data)
    paths = names * 23  # 69 photos: two requests
    model = load_model(str(tiny_model), bf16=False)
    export_onnx(model, tmp_path / "tiny.onnx", check=False)
    searcher = Searcher(flat_index, model=str(tiny_model))
    servers = [make_server(searcher, port=0), make_server(searcher, port=0, read_token="secret")]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        encoder = client.Encoder(str(tmp_path / "tiny.onnx"))
        url = f"http://127.0.0.1:{servers[0].server_address[1]}"
        rows = client.search(url, encoder, encoder(paths), k=6)
        fields = model.encode_fields(names)
        options = {"k": 6, "candidates": None, "radius": None, "rerank": True, "complete_ties": True}
        for i, row in enumerate(rows):
            given = {"model_id": model.model_id, "code": fields["codes"][i % 3].tobytes().hex(),
                     "features": fields["features"][i % 3].tolist()}
            want = searcher.by_encoded(given, options)
            assert row["query"] == f"encoded:{i % 64}" and same_ranking(row["results"], want["results"]), i
        assert len(rows) == len(paths)
        with pytest.raises(SystemExit, match="/: GET /: needs the read token"):
            client.search(f"http://127.0.0.1:{servers[1].server_address[1]}", encoder, encoder(names), k=6)
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
