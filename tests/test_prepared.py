"""Prepared images (hashindex prepare): decoded once, equal to decoding the source, resumable, verified on read."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex.cli import cli
from hashindex.data import load_arrays, open_source
from hashindex.data.prepared import PROGRESS, prepare
from hashindex.errors import HashindexError
from tests.conftest import CIFAR_TEST, make_mixed_folder, make_tar, need

QUIET = {"progress": False, "log": lambda m: None}


def test_prepared_arrays_equal_decoding_the_source(tmp_path):
    expected = make_mixed_folder(tmp_path / "imgs")
    source = open_source(tmp_path / "imgs")
    meta = prepare(source, tmp_path / "p", 48, workers=0, **QUIET)
    bad = sorted(r for r in expected.values() if r)
    assert meta["count"] == len(expected) - len(bad)
    assert meta["skipped_by_reason"] == {r: bad.count(r) for r in set(bad)}
    x, y, ids = load_arrays(source, 48, 3, workers=0, progress=False)
    prepared = open_source(tmp_path / "p")
    px, py, pids = load_arrays(prepared, 48, 3, workers=0, progress=False)
    assert px.shape == x.shape and np.array_equal(px, x) and np.array_equal(py, y) and np.array_equal(pids, ids)
    assert prepared.class_names == source.class_names
    again = prepare(source, tmp_path / "p", 48, workers=0, **QUIET)  # complete: nothing to do
    assert again["sha256"] == meta["sha256"]
    (tmp_path / "imgs" / "cat" / "new.jpg").write_bytes((tmp_path / "imgs" / "cat" / "good.jpg").read_bytes())
    grown = open_source(tmp_path / "imgs")  # a photo added since: named as such, the store left as it was
    with pytest.raises(HashindexError, match=rf"holds {re.escape(grown.description)} as it was "
                                             rf"\({len(source)} items then, {len(grown)} now: its files changed"):
        prepare(grown, tmp_path / "p", 48, workers=0, **QUIET)
    with pytest.raises(HashindexError, match="holds another preparation"):  # another size: as before
        prepare(grown, tmp_path / "p", 32, workers=0, **QUIET)
    assert prepare(source, tmp_path / "p", 48, workers=0, **QUIET)["sha256"] == meta["sha256"]


def test_train_from_a_prepared_store(tmp_path):
    src = open_source(need(CIFAR_TEST)).subset(1000)
    make_tar(tmp_path / "photos.tar", {src.paths[i]: src.read_bytes(i) for i in range(len(src))})
    res = CliRunner().invoke(cli, ["-q", "prepare", "--data", str(tmp_path / "photos.tar"), "--out",
                                   str(tmp_path / "p"), "--size", "32", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 1000
    res = CliRunner().invoke(cli, ["-q", "train", "--data", str(tmp_path / "p"), "--limit", "400", "--epochs", "1",
                                   "--val-every", "5", "--out", str(tmp_path / "m.pt"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["-q", "train", "--data", str(tmp_path / "p"), "--input-size", "64",
                                   "--out", str(tmp_path / "m64.pt")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "prepared at 32 px x 3 channel(s), not 64 px x 3; prepare it again at that size" in res.output


def test_a_flipped_byte_is_caught_and_kill_9_resumes(tmp_path):
    need(CIFAR_TEST)
    cmd = [sys.executable, "-m", "hashindex", "-q", "prepare", "--data", str(CIFAR_TEST), "--size", "32",
           "--workers", "0"]
    subprocess.run(cmd + ["--out", str(tmp_path / "clean")], check=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)])
    deadline = time.time() + 60
    while time.time() < deadline and not (killed / PROGRESS).exists():
        time.sleep(0.01)
    time.sleep(0.3)  # kill -9 partway (the whole job takes ~2-3 s here)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "prepared.json").exists()
    assert 0 < json.loads((killed / PROGRESS).read_text())["done"] < 10000
    subprocess.run(cmd + ["--out", str(killed)], check=True)
    a, b = open_source(tmp_path / "clean"), open_source(killed)
    assert np.array_equal(a.preloaded(32, 3), b.preloaded(32, 3)) and np.array_equal(a.labels, b.labels)
    data = bytearray((killed / "images.h5").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (killed / "images.h5").write_bytes(bytes(data))
    res = CliRunner().invoke(cli, ["train", "--data", str(killed), "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "images.h5 is not the file prepare wrote" in res.output


def test_an_edited_progress_file_is_a_fresh_start_not_a_traceback(tmp_path):
    """The progress file of an interrupted run vouches for the rows kept; one that is not the dict prepare
    writes (a list, a negative count, text) vouches for nothing: the run starts over and ends as a clean one."""
    from hashindex.data.prepared import POSITIONS, RAW

    make_mixed_folder(tmp_path / "imgs")
    source = open_source(tmp_path / "imgs")
    clean = prepare(source, tmp_path / "clean", 32, workers=0, **QUIET)
    want = {"size": 32, "channels": 3}
    for k, text in enumerate(["[1, 2]", json.dumps({**want, "rows": -5, "done": 3, "skipped": []}), '"x"',
                              json.dumps({**want, "rows": "9", "done": 3, "skipped": []})]):
        out = tmp_path / f"p{k}"
        out.mkdir()
        (out / PROGRESS).write_text(text)
        (out / RAW).write_bytes(b"\0" * 100)
        (out / POSITIONS).write_bytes(b"")
        assert prepare(source, out, 32, workers=0, **QUIET)["sha256"] == clean["sha256"], text


def test_a_temp_file_left_by_a_kill_is_cleared_and_a_foreign_one_refused(tmp_path):
    """kill -9 inside an atomic write leaves '.NAME.XXXX.tmp' of one of prepare's files: the rerun removes it
    and goes on (CI once killed the job just there, and the rerun refused the folder); another program's
    temp file is not ours: refused in one line, and left alone."""
    from hashindex.errors import HashindexError

    make_mixed_folder(tmp_path / "imgs")
    source = open_source(tmp_path / "imgs")
    out = tmp_path / "p"
    out.mkdir()
    (out / f".{PROGRESS}.k3j9x2.tmp").write_text("{")
    meta = prepare(source, out, 32, workers=0, **QUIET)
    assert meta["count"] > 0 and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    other = tmp_path / "q"
    other.mkdir()
    (other / ".notes.txt.abc.tmp").write_text("mine")
    try:
        prepare(source, other, 32, workers=0, **QUIET)
        raise AssertionError("a folder with another program's file was written into")
    except HashindexError as e:
        assert "folder holds other files" in str(e)
    assert (other / ".notes.txt.abc.tmp").read_text() == "mine"


def test_extract_from_a_prepared_store_equals_extracting_its_images(tmp_path, tiny_model):
    """`extract --limit` of a prepared store read every item as unreadable (a subset decoded what is not an
    image); a store of another size than the model's is a one-line error before any work."""
    from hashindex import ShardSet

    make_mixed_folder(tmp_path / "imgs")
    runner = CliRunner()
    for args in (["--size", "16"], ["--size", "24"]):
        assert runner.invoke(cli, ["-q", "prepare", "--data", str(tmp_path / "imgs"), "--workers", "0",
                                   "--out", str(tmp_path / f"p{args[1]}")] + args).exit_code == 0
    rows = {}
    for name, data, extra in (("images", tmp_path / "imgs", []), ("prepared", tmp_path / "p16", []),
                              ("limited", tmp_path / "p16", ["--limit", "4"])):
        res = runner.invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(data), "--workers", "0",
                                  "--out", str(tmp_path / name)] + extra)
        assert res.exit_code == 0, res.output
        rows[name] = ShardSet(tmp_path / name).load(("codes", "features", "ids"))
    assert len(rows["limited"]["ids"]) == 4
    assert np.array_equal(rows["prepared"]["codes"], rows["images"]["codes"])
    at = np.searchsorted(rows["prepared"]["ids"], rows["limited"]["ids"])
    assert np.array_equal(rows["limited"]["codes"], rows["prepared"]["codes"][at])
    res = runner.invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(tmp_path / "p24"),
                              "--out", str(tmp_path / "wrong")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "prepared at 24 px x 3 channel(s), not 16 px x 3" in res.output
