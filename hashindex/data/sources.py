"""Image sources over files: a folder tree, a tar (read in place), a list of files, arrays in memory.

A source is an ordered list of items; item ``i`` has the stable id
``id_offset + i``. ``source.read(i)`` returns a decoded PIL image or raises
`BadImage`.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import HashindexError
from .images import BadImage, decode_image, to_array

log = logging.getLogger("hashindex")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
LIST_EXTENSIONS = (".txt", ".csv", ".lst", ".tsv")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")


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
        seen: set[tuple[int, int]] = set()  # directories walked, by (device, inode): a symlink loop is walked once
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames.sort()
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    rel.append(os.path.relpath(os.path.join(dirpath, name), self.root))
        parents = [os.path.basename(os.path.dirname(r)) for r in rel]
        labels, names = _labels_from_parents(parents)
        super().__init__(f"folder {self.root}", rel, labels, names)

    def read_bytes(self, i: int) -> bytes:
        return _read_file(self.root / self.paths[i])


MAX_FILE_BYTES = 1 << 30  # an image file larger than this is skipped as too-large, not read


def _read_file(path: Path) -> bytes:
    """A regular file's bytes. FIFOs, devices and sockets (a ``*.jpg`` that is a pipe or a link to
    /dev/zero) are skipped as ``not-a-file`` without blocking or reading: opened non-blocking, checked
    with fstat before any read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadImage("missing", str(path)) from None
    except OSError as e:
        raise BadImage("unreadable", str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage("not-a-file", f"{path}: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise BadImage("too-large", f"{path}: {st.st_size} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImage("unreadable", str(e)) from None
    finally:
        os.close(fd)


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
            values = [int(r) if r else -1 for r in raw]
            bad = next((v for v in values if not -1 <= v < 2**31 - 1), None)
            if bad is not None:
                raise HashindexError(f"{self.path}: label {bad} is out of range (integer labels are 0 to "
                                     f"{2**31 - 2}, or -1 for none)")
            return np.array(values, dtype=np.int32), []
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
