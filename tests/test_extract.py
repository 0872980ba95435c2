"""Extraction into HDF5 shards: exact codes, kill -9 and resume, broken images, user errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import ShardSet, extract, load_model
from hashindex.cli import cli
from hashindex.data import open_source
from tests.conftest import CIFAR_TEST, assert_same_shards, make_mixed_folder, need


def test_cifar_test_tar_exact(tiny_model, cifar_shards):
    """The session's extraction of the whole CIFAR-10 test tar (conftest: shard_size 4000), checked row for row."""
    out = cifar_shards
    manifest = ShardSet(out).manifest
    assert manifest["complete"] and manifest["totals"] == {
        "read": 10000, "written": 10000, "skipped": 0, "skipped_by_reason": {}}
    assert [s["rows"] for s in manifest["shards"]] == [4000, 4000, 2000]
    shards = ShardSet(out)
    data = shards.load(("codes", "features", "ids", "labels", "paths"))
    src = open_source(CIFAR_TEST)
    assert np.array_equal(data["ids"], np.arange(10000))
    assert data["paths"] == src.paths
    assert np.array_equal(data["labels"], src.labels)
    assert data["codes"].shape == (10000, 6) and data["features"].dtype == np.float16
    # bit for bit what model.encode gives for the same images in the same batches
    model = load_model(tiny_model)
    images = np.stack([src.read_array(i, model.input_size, 3) for i in range(512)])
    codes, feats = model.encode(images, batch_size=256)
    assert np.array_equal(codes, data["codes"][:512])
    assert np.allclose(feats.astype(np.float16), data["features"][:512])
    # memory-mapped reads give the same arrays
    assert np.array_equal(np.concatenate(shards.memmap("codes")), data["codes"])
    assert not shards.verify()
    with h5py.File(out / "shard-00000.h5") as f:
        assert f.attrs["model_id"] == model.model_id and f.attrs["bits"] == 48
    # rerun: nothing to do, nothing rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = extract(str(tiny_model), str(CIFAR_TEST), out, shard_size=4000, progress=False, log=lambda s: None)
    assert again["shards"] == manifest["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def _run_extract(model, out, *extra):
    return [sys.executable, "-m", "hashindex", "-q", "extract", "--model", str(model), "--data",
            str(CIFAR_TEST), "--out", str(out), "--shard-size", "200", "--limit", "1200",
            "--workers", "1", *extra]


def _children(pid: int) -> list[int]:
    """Live child processes of pid (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_and_resume_equals_uninterrupted(tiny_model, tmp_path):
    need(CIFAR_TEST)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    extract(str(tiny_model), str(CIFAR_TEST), clean, shard_size=200, limit=1200, workers=1, progress=False,
            log=lambda s: None)  # in this process: the reference the killed command's rerun must equal
    proc = subprocess.Popen(_run_extract(tiny_model, killed))
    deadline, workers = time.time() + 120, []
    while time.time() < deadline:
        m = killed / "manifest.json"
        workers = _children(proc.pid)
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 2 and workers:
            break  # two shards done and decode workers running for the next
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # its decode workers die with it (PR_SET_PDEATHSIG), not up to 5 s later when torch's watchdog looks,
    # and never left blocked on a pipe nobody reads
    deadline = time.time() + 2
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert workers and not any(_alive(w) for w in workers), workers
    partial = json.loads((killed / "manifest.json").read_text())
    assert not partial["complete"] and 2 <= len(partial["shards"]) < 6, partial["shards"]
    # an unfinished directory is refused by readers
    with pytest.raises(Exception, match="unfinished"):
        ShardSet(killed)
    subprocess.run(_run_extract(tiny_model, killed), check=True)
    assert_same_shards(clean, killed)
    assert not [p for p in os.listdir(killed) if p.endswith(".tmp")]


def test_broken_images_are_counted(tiny_model, tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    res = CliRunner().invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data",
                                   str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "extracted 9 images" in res.output
    assert "4 skipped (1 empty, 2 not-an-image, 1 truncated)" in res.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["totals"]["skipped_by_reason"] == {"empty": 1, "not-an-image": 2, "truncated": 1}
    lines = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[2] for line in lines) == ["empty", "not-an-image", "not-an-image", "truncated"]
    assert ShardSet(tmp_path / "out").load(("codes",))["codes"].shape == (9, 6)


def test_a_collection_with_nothing_readable_says_so(tiny_model, tmp_path, caplog):
    """Every file skipped: a complete shard directory of no rows, and a warning that says where the reasons are
    (before `build` refuses it)."""
    import logging

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_text("not a jpeg")
    (tmp_path / "imgs" / "b.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="hashindex"):
        manifest = extract(str(tiny_model), str(tmp_path / "imgs"), tmp_path / "out", workers=0, progress=False,
                           log=lambda s: None)
    assert manifest["complete"] and manifest["totals"]["written"] == 0
    assert f"holds no rows (why each was skipped: {tmp_path / 'out' / 'skipped.txt'})" in caplog.text


def test_the_shipped_model_is_the_default(tmp_path):
    from hashindex import DEFAULT_MODEL
    from hashindex.checkpoint import load_model

    make_mixed_folder(tmp_path / "imgs")
    res = CliRunner().invoke(cli, ["-q", "extract", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"),
                                   "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert ShardSet(tmp_path / "out").model_id == load_model(DEFAULT_MODEL).model_id


def test_user_errors(tiny_model, tmp_path):
    runner = CliRunner()
    (tmp_path / "imgs").mkdir()
    make_mixed_folder(tmp_path / "imgs")
    notckpt = tmp_path / "notes.txt"
    notckpt.write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-images").mkdir()  # other files only: a shard directory given as --data, say
    for name in ("manifest.json", "shard-00000.h5", ".hidden.jpg"):
        (tmp_path / "no-images" / name).write_bytes(b"{}")
    cases = [
        (["--model", str(tmp_path / "none.pt"), "--data", str(tmp_path / "imgs")], "no such checkpoint"),
        (["--model", str(notckpt), "--data", str(tmp_path / "imgs")], "not a hashindex checkpoint"),
        (["--model", str(tiny_model), "--data", str(tmp_path / "empty")], "holds no images"),
        (["--model", str(tiny_model), "--data", str(tmp_path / "no-images")],
         "no-images: holds no images it can read (3 entries, each skipped: 2 not-an-image, 1 hidden)"),
    ]
    for args, message in cases:
        out = tmp_path / "o"
        res = runner.invoke(cli, ["extract", *args, "--out", str(out)])
        assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
        assert not (out / "manifest.json").exists()
    # a shard dir of another model is refused, and left as it was
    from hashindex.checkpoint import atomic_torch_save, build_meta
    from hashindex.model import NINHash

    other = tmp_path / "other.pt"
    atomic_torch_save(build_meta(NINHash(48, 10), class_names=load_model(tiny_model).class_names,
                                 input_size=32), other)
    out = tmp_path / "mixed"
    ok = runner.invoke(cli, ["-q", "extract", "--model", str(other), "--data", str(tmp_path / "imgs"),
                             "--out", str(out), "--workers", "0"])
    assert ok.exit_code == 0
    before = (out / "manifest.json").read_bytes()
    res = runner.invoke(cli, ["extract", "--model", str(tiny_model), "--data", str(tmp_path / "imgs"),
                              "--out", str(out), "--workers", "0"])
    assert res.exit_code == 2 and "another model" in res.output
    assert (out / "manifest.json").read_bytes() == before
    res = runner.invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(tmp_path / "imgs"),
                              "--out", str(out), "--workers", "0", "--overwrite", "--bf16"])
    assert res.exit_code == 0 and ShardSet(out).model_id == load_model(tiny_model).model_id
    assert ShardSet(out).manifest["precision"] == "bfloat16"  # --bf16: on any CPU
    # the same shards are not continued in another precision
    res = runner.invoke(cli, ["extract", "--model", str(tiny_model), "--data", str(tmp_path / "imgs"),
                              "--out", str(out), "--workers", "0", "--no-bf16"])
    assert res.exit_code == 2 and "another precision (bfloat16, this run float32" in res.output
    assert res.output.count("\n") == 1
    res = runner.invoke(cli, ["info", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["rows"] == 9
    # the same folder with a photo added since: named as changed, with the way to catch an index up
    then = ShardSet(out).manifest["source"]["items"]
    (tmp_path / "imgs" / "cat" / "new.jpg").write_bytes((tmp_path / "imgs" / "cat" / "good.jpg").read_bytes())
    res = runner.invoke(cli, ["extract", "--model", str(tiny_model), "--data", str(tmp_path / "imgs"),
                              "--out", str(out), "--workers", "0", "--bf16"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"holds shards of {tmp_path / 'imgs'} as it was ({then} items then, {then + 1} now" in res.output
    assert "hashindex sync INDEX_DIR" in res.output and "--overwrite" in res.output
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.jpg").write_bytes((tmp_path / "imgs" / "cat" / "good.jpg").read_bytes())
    res = runner.invoke(cli, ["extract", "--model", str(tiny_model), "--data", str(tmp_path / "elsewhere"),
                              "--out", str(out), "--workers", "0", "--bf16"])  # another folder: as before
    assert res.exit_code == 2 and "holds shards made with another source (source differs)" in res.output


def test_split_folders_default_to_train_everywhere(tiny_model, tmp_path):
    """A bare IDX folder is its training split for extract as for train; ':test' picks the test split."""
    import gzip

    from hashindex import ShardSet, extract

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 9), ("t10k", 4)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (tmp_path / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    opts = dict(workers=0, progress=False, log=lambda s: None)
    extract(str(tiny_model), str(tmp_path), tmp_path / "train", **opts)
    extract(str(tiny_model), f"{tmp_path}:test", tmp_path / "test", **opts)
    assert ShardSet(tmp_path / "train").rows == 9 and ShardSet(tmp_path / "test").rows == 4


def test_bf16_and_float32_extractions_compared(tiny_model, tmp_path):
    """tools/compare_shards.py on a bf16 and a float32 extraction of the same 300 images: its counts equal
    a direct numpy count, features agree to bf16 rounding, and other items are refused in one line."""
    need(CIFAR_TEST)
    opts = dict(limit=300, workers=0, progress=False, log=lambda s: None)
    extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "bf16", bf16=True, **opts)
    extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "fp32", bf16=False, **opts)
    assert ShardSet(tmp_path / "bf16").manifest["precision"] == "bfloat16"
    assert ShardSet(tmp_path / "fp32").manifest["precision"] == "float32"
    tool = Path(__file__).resolve().parents[1] / "tools" / "compare_shards.py"
    res = subprocess.run([sys.executable, str(tool), str(tmp_path / "bf16"), str(tmp_path / "fp32"), "--json"],
                         capture_output=True, text=True, check=True)
    r = json.loads(res.stdout)
    a = ShardSet(tmp_path / "bf16").load(("codes", "features"))
    b = ShardSet(tmp_path / "fp32").load(("codes", "features"))
    flips = np.unpackbits(a["codes"] ^ b["codes"], axis=1).sum(axis=1)
    assert r["items"] == 300 and r["bits_differing"] == pytest.approx(flips.sum() / (300 * 48))
    assert r["items_with_a_different_code"] == pytest.approx((flips > 0).mean())
    assert sum(r["hamming_between_encodings"].values()) == 300 and r["max_hamming"] == flips.max()
    assert r["bits_differing"] < 0.05 and 0 < r["feature_relative_l2"]["mean"] < 0.05
    extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "other", **{**opts, "limit": 250})
    res = subprocess.run([sys.executable, str(tool), str(tmp_path / "bf16"), str(tmp_path / "other")],
                         capture_output=True, text=True)
    assert res.returncode != 0 and res.stderr.count("\n") == 1 and "other items" in res.stderr, res.stderr
