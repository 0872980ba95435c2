"""Collections stored as arrays: MNIST / Fashion-MNIST IDX files, CIFAR-10 / CIFAR-100 python batches,
STL-10 binaries, SVHN's .mat files, torchvision sets.

CIFAR batches are pickles; they are read with a restricted unpickler that
builds only numpy arrays, lists, numbers and bytes, so a crafted file (or a
path taken from a manifest) cannot run code.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import HashindexError
from .matlab import read_mat
from .sources import ArraySource, ImageSource

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DEFAULT_CACHE = Path(os.environ.get("HASHINDEX_CACHE", Path.home() / ".cache" / "hashindex"))


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array."""
    try:
        with _open_maybe_gz(path) as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number (expected unsigned-byte IDX)")
        dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise HashindexError(f"{path}: not a valid IDX file ({e})") from None


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def idx_source(directory: Path, split: str) -> ArraySource:
    """MNIST-layout IDX files in ``directory``; split 'train' or 'test' (t10k)."""
    prefix = "train" if split == "train" else "t10k"
    img_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    lab_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:
        raise HashindexError(f"{directory}: no {prefix}-images/labels IDX files for split '{split}'")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if len(images) != len(labels):
        raise HashindexError(f"{directory}: {len(images)} images but {len(labels)} labels")
    fashion = "fashion" in str(directory.resolve()).lower()
    names = FASHION_MNIST_CLASSES if fashion else [str(d) for d in range(10)]
    kind = "fashion-mnist" if fashion else "mnist"
    return ArraySource(f"{kind} idx {directory} ({split})", images, labels, names, img_path.name)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists, dicts, numbers and bytes, and refuses anything else.

    Plain pickle.load runs whatever a file names (os.system included); a CIFAR
    batch needs only numpy's array reconstruction.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only arrays, lists, numbers, bytes)")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            doc = _ArraysOnly(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a bad file, not a bug
        raise HashindexError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(doc, dict):
        raise HashindexError(f"{path}: not a CIFAR python batch (holds a {type(doc).__name__}, not a dict)")
    return doc


def _batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR python batch's images (N, 32, 32, 3) uint8 and labels (N,) int32, checked."""
    doc = _unpickle(path)
    try:
        data = np.asarray(doc[b"data"], dtype=np.uint8)
        labels = np.asarray(doc[label_key], dtype=np.int32)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError, TypeError) as e:
        raise HashindexError(f"{path}: not a CIFAR python batch (expected 'data' rows of 3,072 bytes and "
                             f"'{label_key.decode()}'; {type(e).__name__}: {e})") from None
    if len(images) != len(labels):
        raise HashindexError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _names(meta: Path, key: bytes, count: int) -> list[str]:
    """Class names from a CIFAR meta file (or the label numbers when it is absent)."""
    if not meta.exists():
        return [str(i) for i in range(count)]
    names = _unpickle(meta).get(key)
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise HashindexError(f"{meta}: expected a list '{key.decode()}' of class names")
    return [n.decode() for n in names]


def cifar_source(directory: Path, split: str) -> ArraySource:
    """The official CIFAR-10 python batches (data_batch_1..5 / test_batch)."""
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in files:
        if not (directory / name).exists():
            raise HashindexError(f"{directory}: missing CIFAR-10 batch '{name}'")
        batch_images, batch_labels = _batch(directory / name, b"labels")
        images.append(batch_images)
        labels.append(batch_labels)
    names = _names(directory / "batches.meta", b"label_names", 10)
    return ArraySource(f"cifar10 batches {directory} ({split})", np.concatenate(images),
                       np.concatenate(labels), names, str(directory / files[0]))


def is_cifar100(directory: Path) -> bool:
    """The official CIFAR-100 python layout: ``cifar-100-python/`` or its ``meta`` beside ``train``/``test``."""
    return (directory / "cifar-100-python").is_dir() or (
        (directory / "meta").is_file() and ((directory / "train").is_file() or (directory / "test").is_file()))


def cifar100_source(directory: Path, split: str) -> ArraySource:
    """The official CIFAR-100 python files (``train`` / ``test``, ``meta``), with the 100 fine labels."""
    if (directory / "cifar-100-python").is_dir():
        directory = directory / "cifar-100-python"
    name = "test" if split == "test" else "train"
    if not (directory / name).is_file():
        raise HashindexError(f"{directory}: missing CIFAR-100 file '{name}'")
    images, labels = _batch(directory / name, b"fine_labels")
    names = _names(directory / "meta", b"fine_label_names", 100)
    return ArraySource(f"cifar100 {directory} ({split})", images, labels, names, str(directory / name))


def is_stl10(directory: Path) -> bool:
    """The official STL-10 binary layout: ``stl10_binary/`` or its ``train_X.bin`` / ``test_X.bin``."""
    return (directory / "stl10_binary").is_dir() or any((directory / f"{s}_X.bin").is_file() for s in ("train", "test"))


def stl10_source(directory: Path, split: str) -> ArraySource:
    """The official STL-10 binaries (``train_X.bin`` / ``test_X.bin``: 96x96 colour images stored channel by
    channel, column-major; ``*_y.bin`` labels 1-10; ``class_names.txt``). Memory-mapped: never read whole."""
    if (directory / "stl10_binary").is_dir():
        directory = directory / "stl10_binary"
    name = "test" if split == "test" else "train"
    images_path, labels_path = directory / f"{name}_X.bin", directory / f"{name}_y.bin"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise HashindexError(f"{directory}: missing STL-10 file '{path.name}'")
    side = 96 * 96 * 3
    if images_path.stat().st_size % side:
        raise HashindexError(f"{images_path}: not STL-10 images (size not a multiple of {side} bytes)")
    raw = np.memmap(images_path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
    labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int32) - 1
    if len(labels) != len(raw) or (len(labels) and not 0 <= labels.min() <= labels.max() <= 9):
        raise HashindexError(f"{labels_path}: expected {len(raw)} labels from 1 to 10")
    names_path = directory / "class_names.txt"
    names = names_path.read_text().split() if names_path.is_file() else [str(i) for i in range(10)]
    if len(names) != 10:
        raise HashindexError(f"{names_path}: expected 10 class names, one per line")
    return ArraySource(f"stl10 {directory} ({split})", raw.transpose(0, 3, 2, 1), labels, names,
                       str(images_path))


SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}  # extra_32x32.mat: name the file


def is_svhn(path: Path) -> bool:
    """SVHN's cropped-digit files: a ``.mat`` file, or a folder holding ``train_32x32.mat`` / ``test_32x32.mat``."""
    if path.is_file():
        return path.suffix.lower() == ".mat"
    return any((path / name).is_file() for name in SVHN_FILES.values())


def svhn_source(path: Path, split: str) -> ArraySource:
    """SVHN's format 2 (``X``: 32x32x3xN uint8, ``y``: labels 1-10, where 10 is the digit 0), from a folder
    (``DIR`` / ``DIR:test``) or one ``.mat`` file (``extra_32x32.mat``). Read without SciPy (`read_mat`)."""
    mat = path if path.is_file() else path / SVHN_FILES["test" if split == "test" else "train"]
    if not mat.is_file():
        raise HashindexError(f"{path}: missing SVHN file '{mat.name}'")
    arrays = read_mat(mat, ("X", "y"))
    images, labels = arrays["X"], arrays["y"].reshape(-1)
    if images.ndim != 4 or images.shape[2] != 3 or images.dtype != np.uint8:
        raise HashindexError(f"{mat}: expected X of HxWx3xN uint8 images (SVHN's format 2), got "
                             f"{images.dtype} {images.shape}")
    if len(labels) != images.shape[3] or (len(labels) and not 1 <= labels.min() <= labels.max() <= 10):
        raise HashindexError(f"{mat}: expected {images.shape[3]} labels y from 1 to 10")
    labels = labels.astype(np.int32) % 10  # SVHN labels the digit 0 as 10
    return ArraySource(f"svhn {mat}", images.transpose(3, 0, 1, 2), labels, [str(d) for d in range(10)], str(mat))


def _torchvision_source(name: str, split: str) -> ImageSource:
    """Download a standard set with torchvision into the cache (needs internet)."""
    import torchvision.datasets as tvd

    root = DEFAULT_CACHE / "torchvision"
    train = split == "train"
    try:
        if name == "cifar10":
            tvd.CIFAR10(str(root), train=train, download=True)
            return cifar_source(root / "cifar-10-batches-py", split)
        if name == "cifar100":
            tvd.CIFAR100(str(root), train=train, download=True)
            return cifar100_source(root / "cifar-100-python", split)
        if name == "stl10":
            tvd.STL10(str(root), split=split, download=True)
            return stl10_source(root / "stl10_binary", split)
        if name == "svhn":  # the file only: torchvision's SVHN class would load it with SciPy
            url, filename, md5 = tvd.SVHN.split_list["test" if split == "test" else "train"]
            tvd.utils.download_url(url, str(root / "svhn"), filename, md5)
            return svhn_source(root / "svhn" / filename, split)
        cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
        ds = cls(str(root), train=train, download=True)
        return idx_source(Path(ds.raw_folder), split)
    except KeyError:
        raise HashindexError(f"torchvision:{name}: unknown set (cifar10, cifar100, stl10, svhn, mnist, fashion-mnist)") from None
    except (OSError, RuntimeError) as e:
        raise HashindexError(f"torchvision:{name}: download failed ({e}); pass a local path instead") from None
