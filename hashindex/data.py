"""Image sources: every collection hashindex reads, behind one interface.

A source is an ordered list of items. Item ``i`` has the stable id
``id_offset + i``; the order is fixed by the collection itself (sorted paths
for a folder, member order for a tar, line order for a list, record order for
IDX / CIFAR batches), so the same collection gives the same ids on every run.

``source.read(i)`` returns a decoded PIL image or raises `BadImage` with a
short reason; callers skip and count those, they never crash on them.

Supported (``open_source(spec)`` picks by what the path is):
  * a folder tree: label = name of the image's parent folder, images lying
    directly in the root are unlabelled (-1);
  * a tar / tar.gz of images (WebDataset-style), read in place, label = parent
    folder name of the member;
  * a text / CSV list of ``path[,label]`` lines;
  * MNIST / Fashion-MNIST IDX files (``DIR`` or ``DIR:test``);
  * the official CIFAR-10 python batches (``DIR`` or ``DIR:test``);
  * ``torchvision:cifar10[:test]``, ``torchvision:fashion-mnist``,
    ``torchvision:mnist``: downloaded through torchvision into the user's cache
    (for users on a connected machine; never used by the tests).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import pickle
import signal
import struct
import sys
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import HashindexError

log = logging.getLogger("hashindex")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
LIST_EXTENSIONS = (".txt", ".csv", ".lst", ".tsv")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DEFAULT_CACHE = Path(os.environ.get("HASHINDEX_CACHE", Path.home() / ".cache" / "hashindex"))


class BadImage(Exception):
    """An item that cannot be used as an image; ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, max_side: int | None = None) -> Image.Image:
    """Decode image bytes fully; raise BadImage(reason) for anything unusable.

    ``max_side`` lets JPEG decoding use DCT scaling (``draft``) so a 4000x3000
    photo bound for a 32x32 net is decoded at a fraction of the cost.
    """
    if not data:
        raise BadImage("empty", "0 bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 MP and refuses above 179 MP (DecompressionBombError);
            # big photos between the two are decoded (JPEGs at reduced scale via draft).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_side and img.format == "JPEG":
                img.draft(None, (max_side, max_side))
            img.load()
    except UnidentifiedImageError as e:
        raise BadImage("not-an-image", str(e)) from None
    except Image.DecompressionBombError as e:
        raise BadImage("too-large", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise BadImage(reason, str(e)) from None
    if img.width < 1 or img.height < 1:
        raise BadImage("corrupt", f"size {img.size}")
    return img


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to 8-bit greyscale (channels=1) or RGB (channels=3).

    Transparent images are composited on white (not black, which is what a
    bare ``convert('RGB')`` gives); 16-bit and float greyscale are rescaled;
    greyscale goes to RGB by replicating the channel.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """The net's input: a (channels, size, size) uint8 array, whole image squashed."""
    img = to_mode(img, channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- sources


@dataclass(repr=False, eq=False)
class ImageSource:
    """Base class: an ordered, labelled (or not) collection of images."""

    description: str
    paths: list[str]
    labels: np.ndarray  # int32, -1 = unknown
    class_names: list[str] = field(default_factory=list)
    greyscale: bool = False  # hint for training's default channel count
    id_offset: int = 0
    spec: str | None = None  # how to reopen it (absolute path spec), set by open_source

    def __len__(self) -> int:
        return len(self.paths)

    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64) + self.id_offset

    def read(self, i: int) -> Image.Image:
        """Decode item i (raises BadImage)."""
        return decode_image(self.read_bytes(i))

    def read_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def read_array(self, i: int, size: int, channels: int) -> np.ndarray:
        """Item i as the net's uint8 (C, size, size) input (raises BadImage)."""
        img = self._decode_for(i, size)
        try:
            return to_array(img, size, channels)
        except (ValueError, OSError) as e:  # e.g. a colour mode Pillow cannot convert
            raise BadImage("unsupported", f"mode {img.mode}: {e}") from None

    def _decode_for(self, i: int, size: int) -> Image.Image:
        return decode_image(self.read_bytes(i), max_side=2 * size)

    def subset(self, n: int) -> "ImageSource":
        """n items spread evenly over the collection (ids stay the collection's)."""
        if n >= len(self):
            return self
        pick = np.linspace(0, len(self) - 1, n).round().astype(np.int64)
        return _Subset(self, pick, f"limit={n}")

    def split_every(self, n: int, names: tuple[str, str] = ("queries", "database")
                    ) -> tuple["ImageSource", "ImageSource"]:
        """(every n-th item, all the others): a held-out query set and its database (or val / train)."""
        every = np.arange(0, len(self), n)
        rest = np.setdiff1d(np.arange(len(self)), every)
        return _Subset(self, every, f"every={n}:{names[0]}"), _Subset(self, rest, f"every={n}:{names[1]}")

    def remap_labels(self, class_names: list[str]) -> None:
        """Re-express labels in another class vocabulary (e.g. a model's).

        Raises HashindexError when this source has classes the vocabulary lacks.
        """
        if not self.class_names or self.class_names == class_names:
            return
        missing = [c for c in self.class_names if c not in class_names]
        if missing:
            raise HashindexError(
                f"{self.description}: classes {missing[:5]} are not among the model's "
                f"classes {class_names[:10]}"
            )
        lut = np.array([class_names.index(c) for c in self.class_names] + [-1], dtype=np.int32)
        self.labels = lut[self.labels]  # -1 indexes the trailing -1
        self.class_names = list(class_names)


class _Subset(ImageSource):
    """Items of a parent source at given positions; ids stay the parent's."""

    def __init__(self, parent: ImageSource, pick: np.ndarray, how: str):
        super().__init__(
            description=f"{parent.description} ({how})",
            paths=[parent.paths[i] for i in pick],
            labels=parent.labels[pick],
            class_names=parent.class_names,
            greyscale=parent.greyscale,
            spec=f"{parent.spec}#{how}" if parent.spec else None,
        )
        self.parent, self.pick = parent, pick

    def ids(self) -> np.ndarray:
        return self.parent.ids()[self.pick]

    def read_bytes(self, i: int) -> bytes:
        return self.parent.read_bytes(int(self.pick[i]))

    def _decode_for(self, i: int, size: int) -> Image.Image:
        return self.parent._decode_for(int(self.pick[i]), size)


def _labels_from_parents(parents: list[str]) -> tuple[np.ndarray, list[str]]:
    """Label = index of the parent folder name; '' (top level) is -1."""
    names = sorted({p for p in parents if p})
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index.get(p, -1) for p in parents], dtype=np.int32)
    return labels, names


class FolderSource(ImageSource):
    """A folder tree of image files; label = the image's parent folder name."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        rel: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    rel.append(os.path.relpath(os.path.join(dirpath, name), self.root))
        parents = [os.path.basename(os.path.dirname(r)) for r in rel]
        labels, names = _labels_from_parents(parents)
        super().__init__(f"folder {self.root}", rel, labels, names)

    def read_bytes(self, i: int) -> bytes:
        return _read_file(self.root / self.paths[i])


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadImage("missing", str(path)) from None
    except OSError as e:
        raise BadImage("unreadable", str(e)) from None


class TarSource(ImageSource):
    """Image members of a tar or tar.gz, read in place by offset.

    Plain tars are read with pread at the member's offset, so any worker can
    read any item. Gzipped tars are read through a per-process gzip stream
    that only moves forward; reading in order (as extraction does) costs one
    decompression pass per worker.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.gzipped = self.path.name.endswith((".gz", ".tgz"))
        names, offsets, sizes = [], [], []
        try:
            with tarfile.open(self.path, "r:*") as tf:
                for m in tf:
                    if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS:
                        names.append(m.name)
                        offsets.append(m.offset_data)
                        sizes.append(m.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            first = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
            raise HashindexError(f"{self.path}: not a readable tar archive ({first})") from None
        self.offsets = np.array(offsets, dtype=np.int64)
        self.sizes = np.array(sizes, dtype=np.int64)
        parents = [os.path.basename(os.path.dirname(n)) for n in names]
        labels, class_names = _labels_from_parents(parents)
        super().__init__(f"tar {self.path}", names, labels, class_names)
        self._fh = None
        self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"], state["_pid"] = None, None  # file handles do not cross processes
        return state

    def _handle(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")
            self._pid = os.getpid()
        return self._fh

    def read_bytes(self, i: int) -> bytes:
        off, size = int(self.offsets[i]), int(self.sizes[i])
        try:
            fh = self._handle()
            if self.gzipped:
                if fh.tell() > off:  # gzip seeks backwards by restarting: reopen instead
                    fh.close()
                    self._fh = None
                    fh = self._handle()
                fh.seek(off)
                return fh.read(size)
            return os.pread(fh.fileno(), size, off)
        except (OSError, EOFError) as e:
            raise BadImage("unreadable", str(e)) from None


class FilesSource(ImageSource):
    """Image files named one by one (e.g. the images given to ``hashindex query``)."""

    def __init__(self, paths: list[str], description: str | None = None,
                 labels: np.ndarray | None = None, class_names: list[str] | None = None):
        labels = np.full(len(paths), -1, np.int32) if labels is None else labels
        super().__init__(description or f"{len(paths)} image files", list(paths), labels,
                         class_names or [])

    def read_bytes(self, i: int) -> bytes:
        return _read_file(Path(self.paths[i]))


class ListSource(FilesSource):
    """A text/CSV file of ``path[,label]`` lines; relative paths are relative to the list.

    Labels may be class names or integers. Blank lines and lines starting
    with '#' are ignored; a first line ``path[,label]`` is a header.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        base = self.path.parent
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise HashindexError(f"{self.path}: cannot read file list ({e})") from None
        delim = "\t" if self.path.suffix == ".tsv" else ","
        paths, raw = [], []
        for lineno, row in enumerate(csv.reader(io.StringIO(text), delimiter=delim), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) > 2:
                raise HashindexError(f"{self.path}:{lineno}: expected 'path[,label]', got {len(row)} fields")
            p = row[0].strip()
            paths.append(p if os.path.isabs(p) else str(base / p))
            raw.append(row[1].strip() if len(row) == 2 else "")
        labels, names = self._parse_labels(raw)
        super().__init__(paths, f"list {self.path}", labels, names)

    def _parse_labels(self, raw: list[str]) -> tuple[np.ndarray, list[str]]:
        given = [r for r in raw if r]
        if given and all(r.lstrip("-").isdigit() for r in given):
            return np.array([int(r) if r else -1 for r in raw], dtype=np.int32), []
        return _labels_from_parents(raw)


class ArraySource(ImageSource):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3): IDX and CIFAR batches."""

    def __init__(self, description: str, images: np.ndarray, labels: np.ndarray,
                 class_names: list[str], path_prefix: str):
        self.images = images
        paths = [f"{path_prefix}#{i}" for i in range(len(images))]
        super().__init__(description, paths, labels.astype(np.int32), class_names,
                         greyscale=images.ndim == 3)

    def _decode_for(self, i: int, size: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def read(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def read_bytes(self, i: int) -> bytes:
        buf = io.BytesIO()
        self.read(i).save(buf, format="PNG")
        return buf.getvalue()


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


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # any unpickling failure is a bad file, not a bug
        raise HashindexError(f"{path}: not a CIFAR-10 python batch ({e})") from None


def cifar_source(directory: Path, split: str) -> ArraySource:
    """The official CIFAR-10 python batches (data_batch_1..5 / test_batch)."""
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in files:
        if not (directory / name).exists():
            raise HashindexError(f"{directory}: missing CIFAR-10 batch '{name}'")
        batch = _unpickle(directory / name)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int32))
    meta = directory / "batches.meta"
    names = [n.decode() for n in _unpickle(meta)[b"label_names"]] if meta.exists() else [str(i) for i in range(10)]
    return ArraySource(f"cifar10 batches {directory} ({split})", np.concatenate(images),
                       np.concatenate(labels), names, str(directory / files[0]))


def _torchvision_source(name: str, split: str) -> ImageSource:
    """Download a standard set with torchvision into the cache (needs internet)."""
    import torchvision.datasets as tvd

    root = DEFAULT_CACHE / "torchvision"
    train = split == "train"
    try:
        if name == "cifar10":
            tvd.CIFAR10(str(root), train=train, download=True)
            return cifar_source(root / "cifar-10-batches-py", split)
        cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
        ds = cls(str(root), train=train, download=True)
        return idx_source(Path(ds.raw_folder), split)
    except KeyError:
        raise HashindexError(f"torchvision:{name}: unknown set (cifar10, mnist, fashion-mnist)") from None
    except (OSError, RuntimeError) as e:
        raise HashindexError(f"torchvision:{name}: download failed ({e}); pass a local path instead") from None


def open_source(spec: str | Path, flag: str = "--data", split: str | None = None) -> ImageSource:
    """Open an image collection from a path or ``torchvision:NAME[:split]``.

    ``DIR:train`` / ``DIR:test`` picks a split of IDX or CIFAR-batch folders
    (default train). Raises HashindexError naming ``flag`` if the spec is not a
    collection hashindex can read or holds no images.
    """
    spec = str(spec)
    if spec.startswith("torchvision:"):
        parts = spec.split(":")
        source = _torchvision_source(parts[1], parts[2] if len(parts) > 2 else split or "train")
        source.spec = spec
        return _non_empty(source, flag, spec)
    path = Path(spec)
    if not path.exists() and spec.rsplit(":", 1)[-1] in ("train", "test"):
        head, split = spec.rsplit(":", 1)
        path = Path(head)
    if not path.exists():
        raise HashindexError(f"{flag} {spec}: no such file or directory")
    try:
        source = _open_path(path, split or "train")
    except HashindexError as e:
        raise HashindexError(f"{flag} {e}") from None
    if source is None:
        raise HashindexError(
            f"{flag} {spec}: expected a folder, a .tar/.tar.gz, a .txt/.csv list, IDX or CIFAR-10 batches"
        )
    source.spec = str(path.resolve()) + (f":{split or 'train'}" if isinstance(source, ArraySource) else "")
    return _non_empty(source, flag, spec)


def reopen_source(spec: str) -> ImageSource:
    """Open a source from its recorded ``spec`` (with #limit= / #every= selections)."""
    base, *selections = spec.split("#")
    source = open_source(base, "source")
    for sel in selections:
        key, _, value = sel.partition("=")
        if key == "limit":
            source = source.subset(int(value))
        elif key == "every":
            n, _, part = value.partition(":")
            queries, database = source.split_every(int(n))
            source = queries if part == "queries" else database
        else:
            raise HashindexError(f"source spec {spec}: unknown selection '{sel}'")
    return source


def _open_path(path: Path, split: str) -> ImageSource | None:
    """The source type a path is, or None if it is none of them."""
    name = path.name.lower()
    if path.is_dir():
        if _find(path, "train-images-idx3-ubyte") or _find(path, "t10k-images-idx3-ubyte"):
            return idx_source(path, split)
        if (path / "data_batch_1").exists() or (path / "cifar-10-batches-py").is_dir():
            return cifar_source(path, split)
        return FolderSource(path)
    if name.endswith(TAR_EXTENSIONS):
        return TarSource(path)
    if name.endswith(LIST_EXTENSIONS):
        return ListSource(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return FilesSource([str(path)], f"image {path}")
    return None


def _non_empty(source: ImageSource, flag: str, spec: str) -> ImageSource:
    if len(source) == 0:
        raise HashindexError(f"{flag} {spec}: holds no images")
    return source


# --------------------------------------------------------------------------- loading


class SkipLog:
    """Counts skipped items by reason and remembers which they were."""

    def __init__(self, max_warnings: int = 20):
        self.counts: Counter[str] = Counter()
        self.items: list[tuple[int, str, str]] = []  # (id, path, reason)
        self.max_warnings = max_warnings

    def add(self, item_id: int, path: str, reason: str) -> None:
        self.counts[reason] += 1
        self.items.append((item_id, path, reason))
        if len(self.items) <= self.max_warnings:
            log.warning("skipped %s: %s", path, reason)
        elif len(self.items) == self.max_warnings + 1:
            log.warning("more skipped images; warnings stop here, the count goes on")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return skip_summary(self.counts)


def skip_summary(counts: dict[str, int]) -> str:
    """'0 skipped' or '3 skipped (1 empty, 2 truncated)'."""
    total = sum(counts.values())
    if not total:
        return "0 skipped"
    return f"{total} skipped (" + ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) + ")"


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset over a source: (uint8 CHW array or None, position, reason)."""

    def __init__(self, source: ImageSource, size: int, channels: int):
        self.source, self.size, self.channels = source, size, channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            return self.source.read_array(i, self.size, self.channels), i, ""
        except BadImage as e:
            return None, i, e.reason


def collate(batch):
    """Stack the good items; keep the positions and reasons of the bad ones."""
    good = [(a, i) for a, i, _ in batch if a is not None]
    bad = [(i, r) for a, i, r in batch if a is None]
    images = torch.from_numpy(np.stack([a for a, _ in good])) if good else None
    positions = np.array([i for _, i in good], dtype=np.int64)
    return images, positions, bad


def _die_with_parent(_worker_id: int) -> None:
    """Decode worker init: on Linux, get SIGKILL when the parent dies.

    Without it, a worker of a job killed with SIGKILL can block forever writing a
    batch nobody reads, and stay behind holding its memory.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def iter_batches(source: ImageSource, size: int, channels: int, batch_size: int = 256,
                 workers: int = 2, start: int = 0, stop: int | None = None,
                 ) -> Iterator[tuple[torch.Tensor | None, np.ndarray, list[tuple[int, str]]]]:
    """Decode items [start, stop) in order, in worker processes, batch by batch.

    Yields (uint8 images NCHW or None, positions of those images, [(position,
    reason)] for the items that failed).
    """
    stop = len(source) if stop is None else stop
    subset = torch.utils.data.Subset(ImageDataset(source, size, channels), range(start, stop))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate, persistent_workers=False, worker_init_fn=_die_with_parent,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def load_arrays(source: ImageSource, size: int, channels: int, workers: int = 2,
                progress: bool = True, skips: SkipLog | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a whole source into memory: (uint8 N,C,H,W images, labels, ids).

    Used for training, where 32x32 inputs make a 50,000-image set 150 MB and
    decoding once beats decoding every epoch on a 2-core machine.
    """
    from tqdm import tqdm

    skips = skips if skips is not None else SkipLog()
    ids = source.ids()
    out = np.empty((len(source), channels, size, size), dtype=np.uint8)
    keep = np.zeros(len(source), dtype=bool)
    bar = tqdm(total=len(source), desc=f"decode {source.description}", unit="img",
               disable=not progress, leave=False)
    for images, positions, bad in iter_batches(source, size, channels, workers=workers):
        if images is not None:
            out[positions] = images.numpy()
            keep[positions] = True
        for pos, reason in bad:
            skips.add(int(ids[pos]), source.paths[pos], reason)
        bar.update(len(positions) + len(bad))
    bar.close()
    return out[keep], source.labels[keep], ids[keep]
