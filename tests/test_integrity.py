"""Writes that touch only what is ours: build --overwrite replaces only a hashindex index, never its input or
an unrelated folder; one writer at a time (real processes); leftovers of killed builds are cleaned."""

from __future__ import annotations

import errno
import io
import json
import os
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
    assert left == [".index.v2.build-xyz.tmp"]  # and no lock file: the build removed it as it finished


def test_an_index_is_swapped_in_one_step_and_a_kill_mid_swap_loses_nothing(cifar_shards, tmp_path, monkeypatch):
    """A rebuild, append or removal swaps the new folder in with one rename (RENAME_EXCHANGE here): INDEX_DIR
    is never missing. Where the system cannot (the fallback: two renames), a kill between them leaves the
    old index moved aside: readers say where it waits, and the next write of it puts it back and goes on."""
    import hashindex.index.writing as writing
    from hashindex import Index, remove
    from hashindex.files import exchange

    out = tmp_path / "index"
    build(cifar_shards, out, rerank="none", **QUIET)
    swaps = []
    monkeypatch.setattr(writing, "exchange", lambda a, b: swaps.append((a.name, b.name)) or exchange(a, b))
    before = out.stat().st_ino
    build(cifar_shards, out, rerank="none", overwrite=True, **QUIET)
    assert len(swaps) == 1 and swaps[0][1] == "index" and swaps[0][0].startswith(".index.build-")
    assert out.stat().st_ino != before and Index.load(out).count == 10000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # the old index, swapped out, is removed

    monkeypatch.setattr(writing, "exchange", lambda a, b: False)  # the fallback, whole
    remove(out, ids=[5], **QUIET)
    assert Index.load(out).count == 9999 and sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    # the fallback killed between its renames: the old index moved aside, the new one still a temp folder
    out.rename(tmp_path / ".index.old-1700000000000")
    (tmp_path / ".index.build-abc123.tmp").mkdir()
    for args, arg in ((["query", str(out), "--by-id", "3"], "INDEX_DIR"), (["info", str(out)], "PATH"),
                      (["verify", str(out)], "PATH")):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and res.output == (
            f"hashindex: error: {arg} {out}: no such directory (a write of it was killed while swapping it: its "
            "index waits at .index.old-1700000000000, and the next build, append or removal of it puts it back)\n")
    with pytest.raises(HashindexError, match="already exists"):  # put back: a build still needs overwrite
        build(cifar_shards, out, rerank="none", **QUIET)
    out.rename(tmp_path / ".index.old-1700000000000")
    remove(out, ids=[6], **QUIET)  # put back, then the removal goes on
    index = Index.load(out)
    assert index.count == 9998 and 6 not in index.ids and 5 not in index.ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_exchange_swaps_in_one_call_on_linux_and_macos(tmp_path, monkeypatch):
    """`files.exchange`: a real swap here (Linux); on macOS the same through renamex_np(RENAME_SWAP) (a fake
    C library records the call); False where the system has no such call, so the caller renames twice."""
    from hashindex import files

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("from a"), (b / "y").write_text("from b")
    if sys.platform == "linux":
        assert files.exchange(a, b) and (a / "y").read_text() == "from b" and (b / "x").read_text() == "from a"

    class Libc:
        def __init__(self, result, code=0):
            self.calls, self.result, self.code = [], result, code

        def renamex_np(self, *args):
            self.calls.append(args)
            files.ctypes.set_errno(self.code)
            return self.result

    libc = Libc(0)
    monkeypatch.setattr(files.sys, "platform", "darwin")
    monkeypatch.setattr(files.ctypes, "CDLL", lambda name, use_errno: libc)
    assert files.exchange(a, b) is True and libc.calls == [(os.fsencode(a), os.fsencode(b), 2)]
    libc = Libc(-1, errno.ENOTSUP)  # a file system without the swap: the two-rename fallback
    assert files.exchange(a, b) is False
    libc = Libc(-1, errno.EACCES)
    with pytest.raises(PermissionError):
        files.exchange(a, b)


def test_one_writer_at_a_time(cifar_shards, tmp_path):
    """A process holding the index's lock: a build of the same INDEX_DIR is refused in one line, naming the holder."""
    out = tmp_path / "index"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from hashindex.index.writing import exclusive_index\n"
         "with exclusive_index(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(out)],
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


@pytest.mark.parametrize("name, says", [
    ("binary.faiss", "binary.faiss is not an index Faiss can read (it ends early); rebuild the index"),
    ("rerank.faiss", "rerank.faiss is not an index Faiss can read (it ends early); rebuild the index"),
    ("table.h5", "table.h5 is not an HDF5 file h5py can read (truncated file: eof = "),
    ("head.npz", "head.npz: not a readable head file (File is not a zip file)")])
def test_a_short_index_file_whose_checksum_matches_is_one_line(cifar_shards, tmp_path, name, says):
    """A file cut short where its recorded checksum is the short file's (a write whose failure went unnoticed,
    as Faiss's own writer let a failed close pass): one line naming it, not the reading library's error."""
    import hashlib

    out = tmp_path / "ix"
    build(cifar_shards, out, signal="cosine", **QUIET)
    data = (out / name).read_bytes()[:(out / name).stat().st_size // 2]
    (out / name).write_bytes(data)
    meta = json.loads((out / "index.json").read_text())
    meta["files"][name] = hashlib.sha256(data).hexdigest()
    (out / "index.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(cli, ["query", str(out), "--by-id", "3"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and says in res.output, res.output


def test_a_short_shard_whose_checksum_matches_is_one_line(cifar_shards, tmp_path):
    import hashlib
    import shutil

    shards = tmp_path / "s"
    shutil.copytree(cifar_shards, shards)
    data = (shards / "shard-00001.h5").read_bytes()[:1000]
    (shards / "shard-00001.h5").write_bytes(data)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][1]["sha256"] = hashlib.sha256(data).hexdigest()
    (shards / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(cli, ["build", str(shards), "--out", str(tmp_path / "ix")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"SHARD_DIR {shards}: shard-00001.h5 is not an HDF5 file h5py can read (" in res.output
    assert res.output.endswith("; rerun extract with --overwrite to redo it\n") and not (tmp_path / "ix").exists()


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
    without end nor indexes an image twice; the two non-files are counted skips (the link leaves the data
    folder: outside-root; followed with --follow-links, it is a device: not-a-file)."""
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
    for flags, reasons in (([], {"not-a-file": 1, "outside-root": 1}), (["--follow-links"], {"not-a-file": 2})):
        out = tmp_path / f"s{len(flags)}"
        res = CliRunner().invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(root),
                                       "--out", str(out), "--workers", "0"] + flags)
        assert res.exit_code == 0, res.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["totals"]["written"] == 3
        assert manifest["totals"]["skipped_by_reason"] == reasons


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_disk_full_is_one_line_and_loses_nothing(cifar_shards, tmp_path, monkeypatch):
    from hashindex.index import faiss_files

    def full_disk(path, mode="r", *args, **kwargs):  # binary.faiss lands on a device with no room left
        return open("/dev/full", mode) if str(path).endswith("binary.faiss") else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(faiss_files, "open", full_disk, raising=False)
    res = CliRunner().invoke(cli, ["-q", "build", str(cifar_shards), "--out", str(tmp_path / "ix"), "--rerank", "none"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("hashindex: error: no space left on the device writing ")
    assert "nothing already written is lost" in res.output
    assert not (tmp_path / "ix").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_faiss_and_torch_write_failures_are_os_errors_naming_the_file(tmp_path, monkeypatch):
    """Given a path, Faiss ignores a failed close (a small index onto a full disk: "close error" printed, no
    exception, a short file) and torch reports a full disk as RuntimeError; written through Python's file
    objects, each failure is OSError(ENOSPC) naming the file, small or large."""
    from contextlib import contextmanager
    from pathlib import Path

    import faiss
    import numpy as np

    from hashindex import checkpoint
    from hashindex.files import naming
    from hashindex.index.faiss_files import write_binary, write_float

    for n in (100, 100_000):
        floats, codes = faiss.IndexFlatL2(8), faiss.IndexBinaryFlat(48)
        floats.add(np.ones((n, 8), np.float32))
        codes.add(np.ones((n, 6), np.uint8))
        for write, index in ((write_float, floats), (write_binary, codes)):
            with pytest.raises(OSError) as e:
                write(index, Path("/dev/full"))
            assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"

    @contextmanager
    def onto_a_full_disk(path):  # atomic_path's naming, with its temp file on a device with no room left
        with naming(path):
            yield Path("/dev/full")

    monkeypatch.setattr(checkpoint, "atomic_path", onto_a_full_disk)
    with pytest.raises(OSError) as e:
        checkpoint.atomic_torch_save({"w": np.zeros(10)}, tmp_path / "m.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "m.pt")


def _shard_data(n: int):
    """A shard's worth of rows (1.5 MB at n=2000): random features, so a round trip is a real check."""
    import numpy as np

    from hashindex.store.shards import ShardData

    return ShardData(codes=np.ones((n, 6), np.uint8), features=np.random.rand(n, 192).astype(np.float32),
                     ids=np.arange(n), labels=np.zeros(n, np.int32), paths=[f"{i}.jpg" for i in range(n)], skipped=[])


def test_hdf5_writers_ask_for_room_before_writing(cifar_shards, tmp_path, monkeypatch):
    """HDF5 2.0 crashes the process (SIGSEGV) when a write fails for want of space (measured on a full tmpfs:
    docs/RELIABILITY.md, 'disk full'), so table.h5 and shards are refused before h5py opens them for writing:
    one line saying how much was needed and is free, nothing left behind."""
    import h5py

    from hashindex.store.shards import write_shard
    from tests.conftest import fill_disk

    real_file, st = h5py.File, os.statvfs(tmp_path)
    fill_disk(monkeypatch, tmp_path)  # 64 KB free under tmp_path
    opened = []
    monkeypatch.setattr(h5py, "File", lambda name, mode="r", *a, **k: opened.append((str(name), mode)) or
                        real_file(name, mode, *a, **k))
    res = CliRunner().invoke(cli, ["-q", "build", str(cifar_shards), "--out", str(tmp_path / "ix"), "--rerank", "none"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("hashindex: error: no space left on the device writing ")
    assert "table.h5 (about " in res.output and "MB needed, 0.1 MB free)" in res.output, res.output
    assert not (tmp_path / "ix").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    data = _shard_data(2000)
    with pytest.raises(OSError) as e:
        write_shard(tmp_path / "shard-00000.h5", data, {})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "shard-00000.h5")
    assert not list(tmp_path.glob("*.h5*")) and not [o for o in opened if o[1] != "r"]
    sizeless = os.statvfs_result((st.f_bsize, 4096, 0, 0, 0, 0, 0, 0, st.f_flag, st.f_namemax))
    monkeypatch.setattr(os, "statvfs", lambda p: sizeless)  # a mount that reports no size (some FUSE ones)
    write_shard(tmp_path / "shard-00000.h5", data, {})  # is not judged: written
    assert (tmp_path / "shard-00000.h5").stat().st_size > data.features.nbytes


class _FillsUp(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes: a partial write, then ENOSPC."""
    room = 64 * 1024

    def write(self, data):
        self.written = getattr(self, "written", 0)
        if self.written >= self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = super().write(memoryview(data)[:self.room - self.written])
        self.written += n
        return n


def test_a_disk_filling_up_during_an_hdf5_write_is_one_line_not_a_crash(cifar_shards, tmp_path, monkeypatch):
    """ensure_room passed, then another writer filled the disk: HDF5 2.0 would crash the process on closing
    the file (SIGSEGV, measured on a tmpfs); written through hdf5.create_h5 the failure is OSError(ENOSPC)
    naming the file once it is closed, and nothing is left behind. A file that fits reads back whole."""
    import numpy as np

    from hashindex import hdf5
    from hashindex.store.shards import read_shard, write_shard

    data = _shard_data(2000)
    monkeypatch.setattr(hdf5, "_raw_file", lambda path: _FillsUp(path, "w+"))
    for path in (tmp_path / "shard-00000.h5", tmp_path / "x" / "shard-00000.h5"):
        with pytest.raises(OSError) as e:
            write_shard(path, data, {})
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
        assert not path.exists() and not [p for p in path.parent.iterdir()]
    res = CliRunner().invoke(cli, ["-q", "build", str(cifar_shards), "--out", str(tmp_path / "iy"), "--rerank", "none"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("hashindex: error: no space left on the device writing ") and "table.h5" in res.output
    assert not (tmp_path / "iy").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    write_shard(tmp_path / "a.h5", data, {})
    back = read_shard(tmp_path / "a.h5")
    assert np.array_equal(back["features"], data.features) and list(back["paths"]) == data.paths


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


def test_a_lock_file_goes_with_its_holder(tmp_path, monkeypatch):
    """The holder removes its lock file as it finishes; a killed holder's is locked and removed by the next
    writer; a writer that locked a file its holder removed meanwhile locks the path's new file instead."""
    from hashindex import files
    from hashindex.files import exclusive

    out, lock = tmp_path / "results.h5", tmp_path / ".results.h5.lock"
    with exclusive(out, "busy"):
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
    assert not lock.exists()
    killed = subprocess.Popen([sys.executable, "-c", "import sys, time; from hashindex.files import exclusive\n"
                               "with exclusive(sys.argv[1], 'busy'):\n    print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    assert lock.exists()  # kill -9: left behind, and released by the kernel
    with exclusive(out, "busy"):
        pass
    assert not lock.exists()
    real, seen = files._flock, []

    def removed_meanwhile(f, path, busy):  # the previous holder removes the file just after we opened it
        real(f, path, busy)
        if not seen:
            path.unlink()
        seen.append(os.fstat(f.fileno()).st_ino)

    monkeypatch.setattr(files, "_flock", removed_meanwhile)
    with exclusive(out, "busy"):
        assert len(seen) == 2 and lock.exists() and lock.stat().st_ino == seen[1]
    assert not lock.exists()


def _edit_json(path, change):
    import json

    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set(*path):
    """A change that sets doc[path[0]]...[path[-2]] to path[-1]."""
    *keys, value = path

    def change(doc):
        for k in keys[:-1]:
            doc = doc[k]
        doc[keys[-1]] = value
    return change


@pytest.mark.parametrize("change, expected", [
    (_set("shards", 0, "rows", "abc"), 'shards[0].rows: expected an integer >= 0, got "abc"'),
    (lambda m: m.pop("model_id"), "model_id: missing"),
    (_set("shards", 1, "file", "../../etc/passwd"), "shards[1].file: expected a file name inside the directory"),
    (_set("bits", True), "bits: expected an integer > 0, got True"),
    (_set("shards", 0, "rows", 3999), "says shard-00000.h5 holds 3999 rows, it holds 4000"),
    (_set("shards", 0, "rows", 4100), "start/stop/rows 0/4000/4100 do not fit shard 0"),
    (_set("shards_planned", 2), "shards_planned: 2 (expected 3 for 10000 items)"),
    (lambda m: m["shards"].pop(), "complete: true with 2 of 3 shards"),
    (_set("source", "spec", ["x"]), "source.spec: expected a string, got ['x']"),
])
def test_a_hand_edited_manifest_is_one_line(cifar_shards, tmp_path, change, expected):
    """Every inconsistency of manifest.json with docs/FORMAT.md is one line naming the key, never a traceback,
    and nothing is built from it (a raised row count used to build phantom items)."""
    shards = copy_tree(cifar_shards, tmp_path / "shards")
    _edit_json(shards / "manifest.json", change)
    res = CliRunner().invoke(cli, ["build", str(shards), "--out", str(tmp_path / "ix")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert expected in res.output and "manifest.json" in res.output
    assert not (tmp_path / "ix").exists()


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.pop("rerank"), "rerank: missing"),
    (_set("count", 9999), "item counts disagree (table.h5 10000, binary index 10000, index.json count 9999"),
    (_set("binary", "kind", "bogus"), 'binary.kind: expected one of flat, ivf, hnsw, multihash, got "bogus"'),
    (_set("binary", "shards", [{"file": "/tmp/binary-000.faiss", "start": 0, "stop": 10000}]),
     "binary.shards[0].file: expected a binary-NNN.faiss file name inside the index directory"),
    (_set("binary", "shards", [{"file": "../binary-000.faiss", "start": 0, "stop": 10000}]),
     "binary.shards[0].file: expected a binary-NNN.faiss file name inside the index directory"),
    (lambda m: m["files"].update({"../../outside": "0" * 64}), "files.../../outside: expected a file name inside"),
    (_set("binary", "padded_bytes", 16), "says 128-bit codes, the binary index holds 64-bit ones"),
    (_set("rerank", "dim", 7), "says rerank.dim 7, rerank.faiss holds 192-d vectors"),
    (lambda m: m.clear(), "not a hashindex-index v1 index"),
])
def test_a_hand_edited_index_json_is_one_line(flat_index, tmp_path, change, expected):
    """index.json is validated on open: a wrong key is one line, and it can name no file outside the index."""
    ix = copy_tree(flat_index, tmp_path / "ix")
    _edit_json(ix / "index.json", change)
    for args in (["query", str(ix), "--by-id", "3"], ["info", str(ix)], ["verify", str(ix)]):
        if args[0] == "info" and ("disagree" in expected or "holds" in expected):
            continue  # info reads index.json alone; what the files hold is checked when they are opened
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and res.output.count("\n") == 1, (args, res.output)
        assert expected in res.output, (args, res.output)


def test_undecodable_names_are_stored_losslessly(tiny_model, tmp_path):
    """A file name that is not valid UTF-8 (any bytes Linux allows) is extracted, indexed and named in results
    as text that decodes back to the exact bytes; a broken one lands in skipped.txt as its own bytes."""
    import os

    from hashindex.files import decode_name
    from hashindex.query import query
    from tests.conftest import image_bytes

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    good = os.fsencode(root / "cat") + b"/caf\xe9 \\x41.jpg"  # Latin-1 e-acute and a literal backslash
    bad = os.fsencode(root / "cat") + b"/\xff\xfe.jpg"
    with open(good, "wb") as f:
        f.write(image_bytes("JPEG", seed=3))
    with open(bad, "wb") as f:
        f.write(b"not an image")
    (root / "cat" / "plain.jpg").write_bytes(image_bytes("JPEG", seed=4))
    res = CliRunner().invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(root),
                                   "--out", str(tmp_path / "s"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "skipped.txt").read_bytes().split(b"\t")[1] == b"cat/\xff\xfe.jpg"
    build(tmp_path / "s", tmp_path / "ix", signal="l2", **QUIET)
    names = {h["path"] for row in query(tmp_path / "ix", [], [0], k=2) for h in row["results"]}
    assert names == {"cat/caf\\xe9 \\\\x41.jpg", "cat/plain.jpg"}
    assert {os.fsencode(decode_name(n)) for n in names} == {b"cat/caf\xe9 \\x41.jpg", b"cat/plain.jpg"}


def test_links_out_of_the_data_root_need_a_flag(tiny_model, tmp_path):
    """Symlinks that leave the --data folder are counted skips (outside-root) unless --follow-links is given."""
    import os

    from tests.conftest import image_bytes

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(image_bytes("JPEG", seed=5))
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(image_bytes("JPEG", seed=6))
    os.symlink(outside / "secret.jpg", root / "cat" / "b.jpg")
    os.symlink(outside, root / "linked")
    os.symlink(root / "cat" / "a.jpg", root / "cat" / "inside.jpg")  # stays inside: read
    base = ["-q", "extract", "--model", str(tiny_model), "--data", str(root), "--workers", "0", "--json"]
    res = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["totals"] == {"read": 4, "written": 2, "skipped": 2, "skipped_by_reason": {"outside-root": 2}}
    res = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "s2"), "--follow-links"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["totals"]["written"] == 4


@pytest.fixture(scope="module")
def reference_builds(cifar_shards, tiny_model, tmp_path_factory):
    """An index over `cifar_shards`, 800 more images (ids from 100,000) and that index with them appended:
    what the killed runs below must leave, made once, in this process (the API is what the CLI runs)."""
    import shutil

    from hashindex import extract
    from hashindex.index import append
    from tests.conftest import CIFAR_TRAIN

    root = tmp_path_factory.mktemp("kill9")
    build(cifar_shards, root / "ref", signal="l2", **QUIET)
    extract(str(tiny_model), str(CIFAR_TRAIN), root / "more", limit=800, id_offset=100_000, workers=0, **QUIET)
    shutil.copytree(root / "ref", root / "grown-ref")
    append(root / "more", root / "grown-ref", **QUIET)
    return root / "ref", root / "more", root / "grown-ref"


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_of_build_and_append_at_random_points(cifar_shards, reference_builds, tmp_path, seed):
    """A build or an append killed at a random moment leaves the old index or the new one, never a mix; the
    rerun equals an uninterrupted run (real processes, kill -9)."""
    import random
    import signal

    import h5py

    def table(ix):
        with h5py.File(ix / "table.h5", "r") as t:
            return t["ids"][()].tobytes() + t["codes"][()].tobytes()

    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "hashindex", "-q", "build", str(cifar_shards), "--signal", "l2"]
    ref, more, grown_ref = reference_builds
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)])
    time.sleep(rng.uniform(0.5, 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists() or table(killed) == table(ref)  # absent or complete
    subprocess.run(cmd + ["--out", str(killed), "--overwrite"], check=True)
    assert table(killed) == table(ref) and not list(tmp_path.glob(".killed.*.tmp"))
    import shutil

    append = [sys.executable, "-m", "hashindex", "-q", "build", str(more), "--append"]
    grown = tmp_path / "grown"
    shutil.copytree(ref, grown)
    proc = subprocess.Popen(append + ["--out", str(grown)])
    time.sleep(rng.uniform(0.5, 2.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = table(grown)
    assert state in (table(ref), table(grown_ref))
    if state == table(ref):
        subprocess.run(append + ["--out", str(grown)], check=True)
    assert table(grown) == table(grown_ref)


def test_a_finished_batch_job_rerun_is_a_no_op(flat_index, cifar_shards, tmp_path):
    """A batch job killed just after it finished (or simply run twice) is not refused: same request, same file."""
    out = tmp_path / "r.h5"
    args = ["-q", "query", str(flat_index), "--queries", str(cifar_shards), "--out", str(out), "--k", "5"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = out.read_bytes()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "already complete (10000 queries); nothing to do" in res.output
    assert out.read_bytes() == before
    res = CliRunner().invoke(cli, args[:-1] + ["6"])
    assert res.exit_code == 2 and "already exists" in res.output


def test_verify_checks_every_kind_of_file_hashindex_writes(tiny_model, cifar_queries, flat_index, tmp_path):
    """`hashindex verify` on a prepared store, a checkpoint (or a shipped model's name) and a batch results
    file: each passes as written, and a flipped byte (a changed weight) is one line naming it, exit 2."""
    import shutil

    import torch

    import hashindex
    from hashindex.batch import batch_search
    from hashindex.data import open_source
    from hashindex.data.prepared import prepare
    from hashindex.index import remove
    from tests.conftest import make_mixed_folder

    make_mixed_folder(tmp_path / "imgs")
    prepare(open_source(tmp_path / "imgs"), tmp_path / "prep", 16, workers=0, **QUIET)
    results, index = tmp_path / "results.h5", shutil.copytree(flat_index, tmp_path / "ix")
    batch_search(index, cifar_queries, results, k=3, **QUIET)
    for now in ("same", "changed", "gone"):  # `info` on a results file: its job, and the index it searched
        if now == "changed":
            remove(index, ids=[5], **QUIET)
        if now == "gone":
            shutil.rmtree(index)
        info = json.loads(CliRunner().invoke(cli, ["info", str(results), "--json"]).output)
        assert info["kind"] == "batch results" and info["queries_count"] == 1000 and info["k"] == 3, info
        assert info["index"] == str(index.resolve()) and info["index_now"] == now
    model = tmp_path / "m.pt"
    model.write_bytes(tiny_model.read_bytes())
    runner = CliRunner()
    for path, kind in [(tmp_path / "prep", "prepared store"), (results, "batch results file"),
                       (model, "checkpoint"), ("nin-cifar10-48-v3", "checkpoint")]:
        res = runner.invoke(cli, ["verify", str(path), "--json"])
        assert res.exit_code == 0 and json.loads(res.output)["kind"] == kind, res.output
    assert hashindex.verify(results)["queries_count"] == 1000
    assert "match its model id 102dde7517ddd8ab" in runner.invoke(cli, ["verify", "nin-cifar10-48-v3"]).output

    flip_byte(tmp_path / "prep" / "images.h5")
    flip_byte(results)
    ckpt = torch.load(model, weights_only=True)
    ckpt["state_dict"]["latent.bias"][0] += 1
    torch.save(ckpt, model)
    for path, message in [(tmp_path / "prep", "images.h5 is not the file prepare wrote"),
                          (results, "results.h5: not the file the batch job wrote (SHA-256"),
                          (model, "m.pt: weights do not match the recorded model id"),
                          (tmp_path / "imgs", "not a shard directory, an index, a prepared store, a checkpoint"),
                          (tmp_path / "nothing", "no such file or folder")]:
        res = runner.invoke(cli, ["verify", str(path)])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output
