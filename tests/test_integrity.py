"""Writes that touch only what is ours: build --overwrite replaces only a hashindex index, never its input or
an unrelated folder; one writer at a time (real processes); leftovers of killed builds are cleaned."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from hashindex import HashindexError
from hashindex.cli import cli
from hashindex.index import build

QUIET = {"progress": False, "log": lambda m: None}


def test_overwrite_refuses_what_is_not_an_index(cifar_shards, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    res = CliRunner().invoke(cli, ["build", str(cifar_shards), "--out", str(folder), "--overwrite"])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert f"--out {folder}: exists and is not a hashindex index; refusing to replace it" in res.output
    assert (folder / "holiday.jpg").read_bytes() == b"precious"
    # the command's own input, or a folder holding it
    for out in (cifar_shards, cifar_shards.parent):
        with pytest.raises(HashindexError, match="is or holds the shard directory being indexed"):
            build(cifar_shards, out, overwrite=True, **QUIET)
        assert (cifar_shards / "manifest.json").exists()


def test_overwrite_replaces_an_index_and_cleans_leftovers(cifar_shards, tmp_path):
    out = tmp_path / "index"
    build(cifar_shards, out, rerank="none", **QUIET)
    # what a build or append killed mid-way leaves beside the index
    (tmp_path / ".index.build-abc123.tmp").mkdir()
    (tmp_path / ".index.old-1700000000000").mkdir()
    (tmp_path / ".index.v2.build-xyz.tmp").mkdir()  # another index's temp folder: not ours
    meta = build(cifar_shards, out, rerank="none", overwrite=True, **QUIET)
    assert meta["count"] == 10000
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == [".index.lock", ".index.v2.build-xyz.tmp"]


def test_one_writer_at_a_time(cifar_shards, tmp_path):
    """A process holding the index's lock: a build of the same INDEX_DIR is refused in one line, naming the holder."""
    out = tmp_path / "index"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from hashindex.index.builder import _exclusive\n"
         "with _exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = CliRunner().invoke(cli, ["build", str(cifar_shards), "--out", str(out), "--rerank", "none"])
        assert res.exit_code == 2 and res.output.count("\n") == 1
        assert "another append to it is running, or a build" in res.output and f"pid {holder.pid}" in res.output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    build(cifar_shards, out, rerank="none", **QUIET)  # the holder died: its lock went with it
    assert (out / "index.json").exists()


def flip_byte(path, at=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_flipped_byte_in_a_shard_is_caught_on_read(cifar_shards, tmp_path):
    shards = copy_tree(cifar_shards, tmp_path / "shards")
    flip_byte(shards / "shard-00001.h5")
    res = CliRunner().invoke(cli, ["build", str(shards), "--out", str(tmp_path / "ix")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"SHARD_DIR {shards}: shard-00001.h5 is not the shard extraction wrote (SHA-256" in res.output
    assert not (tmp_path / "ix").exists()
    res = CliRunner().invoke(cli, ["verify", str(shards)])
    assert res.exit_code == 2 and "shard-00001.h5 is not the shard extraction wrote" in res.output


@pytest.mark.parametrize("name", ["table.h5", "binary.faiss", "rerank.faiss", "head.npz"])
def test_a_flipped_byte_in_an_index_is_caught_on_read(cifar_shards, tmp_path, name):
    out = tmp_path / "ix"
    build(cifar_shards, out, signal="cosine", **QUIET)
    assert CliRunner().invoke(cli, ["verify", str(out)]).exit_code == 0
    flip_byte(out / name)
    res = CliRunner().invoke(cli, ["query", str(out), "--by-id", "3"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"INDEX_DIR {out}: {name} is not the file build wrote" in res.output
    res = CliRunner().invoke(cli, ["verify", str(out), "--json"])
    assert res.exit_code == 2 and f"PATH {out}: {name} is not the file build wrote" in res.output


def test_an_unchanged_index_is_not_rehashed_on_every_open(cifar_shards, tmp_path, monkeypatch):
    import hashindex.files
    from hashindex.index import Index

    out = tmp_path / "ix"
    build(cifar_shards, out, rerank="none", **QUIET)
    hashed = []
    real = hashindex.files.sha256_file
    monkeypatch.setattr(hashindex.files, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    Index.load(out)
    Index.load(out)
    assert hashed == []  # build hashed its files as it wrote them; unchanged files are trusted
    (out / "table.h5").write_bytes((out / "table.h5").read_bytes())  # same bytes, a new write: rehashed
    Index.load(out)
    assert [p.name for p in hashed] == ["table.h5"]
    Index.load(out)
    assert len(hashed) == 1  # and trusted again once found right


def test_special_files_are_skipped_and_loops_walked_once(tiny_model, tmp_path):
    """A FIFO named *.jpg, a *.jpg link to /dev/zero and a symlink loop: extract neither hangs nor reads
    without end nor indexes an image twice; the two non-files are counted skips."""
    import json
    import os

    from tests.conftest import image_bytes

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        (root / "cat" / f"{i}.jpg").write_bytes(image_bytes("JPEG", seed=i))
    os.mkfifo(root / "cat" / "pipe.jpg")
    os.symlink("/dev/zero", root / "cat" / "zero.jpg")
    os.symlink("..", root / "cat" / "loop")  # cat/loop -> imgs: walking it would list cat/ again and again
    res = CliRunner().invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(root),
                                   "--out", str(tmp_path / "s"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["totals"]["written"] == 3
    assert manifest["totals"]["skipped_by_reason"] == {"not-a-file": 2}


def test_disk_full_is_one_line_and_loses_nothing(cifar_shards, tmp_path, monkeypatch):
    import errno

    import faiss

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ix" / "binary.faiss"))

    monkeypatch.setattr(faiss, "write_index_binary", full)
    res = CliRunner().invoke(cli, ["-q", "build", str(cifar_shards), "--out", str(tmp_path / "ix"), "--rerank", "none"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("hashindex: error: no space left on the device writing ")
    assert "nothing already written is lost" in res.output
    assert not (tmp_path / "ix").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_out_of_range_label_is_one_line(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("a.jpg,99999999999\n")
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "list.csv"), "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "label 99999999999 is out of range" in res.output


def test_skipped_txt_escapes_names(tiny_model, tmp_path):
    """A broken image whose name holds a tab and a newline stays one line of three fields in skipped.txt."""
    root = tmp_path / "imgs" / "cat"
    root.mkdir(parents=True)
    from tests.conftest import image_bytes

    (root / "ok.jpg").write_bytes(image_bytes("JPEG"))
    (root / "bad\tname\nx.jpg").write_bytes(b"not an image")
    res = CliRunner().invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(tmp_path / "imgs"),
                                   "--out", str(tmp_path / "s"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "s" / "skipped.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[1:] == ["cat/bad\\tname\\nx.jpg", "not-an-image"]


@pytest.mark.parametrize("command", ["extract", "batch"])
def test_one_extract_or_batch_job_per_output(command, tiny_model, cifar_shards, flat_index, tmp_path):
    """A second writer of the same shard directory or results file is refused in one line, naming the holder."""
    out = tmp_path / ("shards" if command == "extract" else "results.h5")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hashindex.files import exclusive\n"
         "with exclusive(sys.argv[1], 'busy'):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = (["extract", "--model", str(tiny_model), "--data", str(cifar_shards.parent), "--out", str(out)]
                if command == "extract" else ["query", str(flat_index), "--queries", str(cifar_shards),
                                               "--out", str(out)])
        res = CliRunner().invoke(cli, args)
        what = "another extract into it is running" if command == "extract" else \
            "another batch job writing it is running"
        assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
        assert f"--out {out}: {what}" in res.output and f"pid {holder.pid}" in res.output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
