"""Shared fixtures: real data from ../shared/data and tiny image files made here."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import os
import shutil
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HASHINDEX_DATA", ROOT.parent / "shared" / "data"))
CIFAR_TRAIN = DATA / "cifar10-jpeg" / "train.tar"
CIFAR_TEST = DATA / "cifar10-jpeg" / "test.tar"
SVHN = ROOT / "tests" / "data" / "svhn"  # two small SVHN .mat files written by SciPy (tests/test_data.py)
MNIST_TEST = DATA / "mnist-png" / "test.tar"
FASHION = DATA / "fashion-mnist"


def pytest_configure(config) -> None:
    """Under pytest-xdist, each worker gets its share of the cores: torch's and Faiss's OpenMP threads that
    outnumber the cores spin at their barriers (hashindex.runtime.set_threads), in the worker and in the
    processes it starts."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        from hashindex.runtime import set_threads

        set_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def made_once(tmp_path_factory, name: str, make: Callable[[Path], Path]) -> Path:
    """What `make(directory)` returns, made once per test run: under pytest-xdist the first worker to ask makes
    it in a directory all workers share (under a lock; the others wait for it), so a session fixture costs
    its time once, not once per worker."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / name
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / ".made"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            done.write_text(str(make(root).relative_to(root)))
        return root / done.read_text()


def load_tool(name: str) -> ModuleType:
    """The script tools/NAME.py imported as a module (the tools are scripts, not a package), so that a test
    calls its functions rather than parsing its printout."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need(path: Path) -> Path:
    """Skip the test (with the reason) when a shared data file is absent."""
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (set HASHINDEX_DATA)")
    return path


def jpeg_bytes(n=2) -> list[tuple[str, bytes]]:
    """(name, bytes) of the first ``n`` CIFAR-10 test JPEGs (a query a client uploads)."""
    need(CIFAR_TEST)
    out = []
    with tarfile.open(CIFAR_TEST) as tf:
        for m in tf:
            if m.isfile():
                out.append((m.name, tf.extractfile(m).read()))
            if len(out) == n:
                return out


def same_ranking(got: list[dict], want: list[dict]) -> bool:
    """The same items in the same order with the same codes; distances equal to float32 noise. An image
    encoded in a batch of three and alone can differ in the last digits: oneDNN's float32 convolutions
    block the work by batch size (seen on an AVX2 CPU: 7.9266e-08 vs 7.9247e-08 for an image's own item)."""
    strip = [[{k: v for k, v in r.items() if k != "distance"} for r in rows] for rows in (got, want)]
    return strip[0] == strip[1] and [r["distance"] for r in got] == pytest.approx(
        [r["distance"] for r in want], rel=1e-3, abs=1e-6)


def image_bytes(fmt: str = "JPEG", size=(40, 30), mode: str = "RGB", seed: int = 0) -> bytes:
    """A small random image encoded in `fmt`."""
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    arr = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if bands == 1 else arr, "L" if bands == 1 else ("RGBA" if bands == 4 else "RGB"))
    if mode not in ("L", "RGB", "RGBA"):
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_mixed_folder(root: Path) -> dict[str, str]:
    """Good and broken images in class folders; returns {relative path: expected reason or ''}."""
    good = image_bytes("JPEG", seed=1)
    files = {
        "cat/good.jpg": (good, ""),
        "cat/grey.jpg": (image_bytes("JPEG", mode="L", seed=2), ""),
        "cat/rgba.png": (image_bytes("PNG", mode="RGBA", seed=3), ""),
        "dog/tiny.png": (image_bytes("PNG", size=(1, 1), seed=4), ""),
        "dog/palette.gif": (image_bytes("GIF", mode="P", seed=5), ""),
        "dog/cmyk.jpg": (image_bytes("JPEG", mode="CMYK", seed=6), ""),
        "dog/big.jpg": (image_bytes("JPEG", size=(4000, 3000), seed=7), ""),
        "dog/pic.webp": (image_bytes("WEBP", seed=8), ""),
        "dog/pic.bmp": (image_bytes("BMP", seed=9), ""),
        "cat/truncated.jpg": (good[: len(good) // 2], "truncated"),
        "cat/empty.jpg": (b"", "empty"),
        "dog/text.jpg": (b"this is not an image\n", "not-an-image"),
        "dog/notes.txt": (b"not an image extension: counted, never read\n", "not-an-image"),
    }
    for rel, (data, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel: reason for rel, (_, reason) in files.items()}


def assert_same_shards(a_dir: Path, b_dir: Path) -> None:
    """Two shard directories hold the same rows and manifest entries (checksums and times aside)."""
    from hashindex import ShardSet

    def contents(directory):
        shards = ShardSet(directory)
        data = shards.load(("codes", "features", "ids", "labels", "paths"))
        entries = [{k: v for k, v in s.items() if k != "sha256"} for s in shards.manifest["shards"]]
        return data, entries, shards.manifest["totals"]

    a, b = contents(a_dir), contents(b_dir)
    for key in ("codes", "features", "ids", "labels"):
        assert np.array_equal(a[0][key], b[0][key]), key
    assert a[0]["paths"] == b[0]["paths"] and a[1] == b[1] and a[2] == b[2]


def fill_disk(monkeypatch, under: Path, free_blocks: int = 16) -> None:
    """Make the filesystem under ``under`` report ``free_blocks`` blocks of 4 KB free (64 KB by default), as
    os.statvfs tells `hdf5.ensure_room`; other paths report what they have."""
    real, st = os.statvfs, os.statvfs(under)
    full = os.statvfs_result((st.f_bsize, 4096, st.f_blocks, free_blocks, free_blocks, st.f_files, st.f_ffree,
                              st.f_favail, st.f_flag, st.f_namemax))
    monkeypatch.setattr(os, "statvfs", lambda p: full if str(p).startswith(str(under)) else real(p))


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    mode = {".gz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real checkpoint: 48 bits, trained 1 epoch on 300 CIFAR-10 images (about 10 s).

    It reads images at 16 px (`input_size`, as a photo model reads them at 64 or 96): a quarter of the
    32-px net's work, so the session's extractions take a quarter of the time (the 10,000 images of
    `cifar_shards`: 16 s instead of 65 s on 2 AVX2 cores). The shipped models' tests run the 32-px net."""
    from hashindex import train

    need(CIFAR_TRAIN)

    def make(directory: Path) -> Path:
        train(str(CIFAR_TRAIN), str(directory / "tiny.pt"), val=str(CIFAR_TEST), val_limit=200, limit=300,
              epochs=1, bits=48, input_size=16, workers=0, progress=False)
        return directory / "tiny.pt"

    return made_once(tmp_path_factory, "model", make)


@pytest.fixture(scope="session")
def cifar_shards(tiny_model, tmp_path_factory) -> Path:
    """The 10,000 CIFAR-10 test images extracted with the tiny model (3 shards)."""
    from hashindex import extract

    need(CIFAR_TEST)

    def make(directory: Path) -> Path:
        extract(str(tiny_model), str(CIFAR_TEST), directory / "test", shard_size=4000, progress=False,
                log=lambda s: None)
        return directory / "test"

    return made_once(tmp_path_factory, "shards", make)


@pytest.fixture(scope="session")
def cifar_queries(tiny_model, tmp_path_factory) -> Path:
    """1,000 of `cifar_shards`' images (spread over the collection, ids and paths the same): queries for tests
    that check what an evaluation or a batch job reports, not its figures at scale (a tenth of the work)."""
    from hashindex import extract

    def make(directory: Path) -> Path:
        extract(str(tiny_model), str(CIFAR_TEST), directory / "test-1000", limit=1000, workers=0, progress=False,
                log=lambda s: None)
        return directory / "test-1000"

    return made_once(tmp_path_factory, "queries", make)


@pytest.fixture(scope="session")
def flat_index(cifar_shards, tmp_path_factory) -> Path:
    from hashindex.index import build

    def make(directory: Path) -> Path:
        build(cifar_shards, directory / "flat", binary="flat", rerank="flat", signal="l2", progress=False,
              log=lambda s: None)
        return directory / "flat"

    return made_once(tmp_path_factory, "index", make)
