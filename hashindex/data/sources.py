"""Image sources: what every source is (`ImageSource`), files named one by one, arrays in memory (a folder tree:
`folders`; archives read in place: `archives`; lists of files: `lists`), and how a collection's names become
items (`items_of`).

A source is an ordered list of items; item ``i`` has the stable id
``id_offset + i``. ``source.read(i)`` returns a decoded PIL image or raises
`BadImage`.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import HashindexError
from .images import DRAFT_FACTOR, GREY_MODES, BadImage, array_of, decode_image, image_header
from .labels import folder_class, sample_labels
from .members import SYSTEM_FOLDERS, TAR_EXTENSIONS, group_members, image_extensions, is_hidden
from .members import suffix as name_suffix

log = logging.getLogger("hashindex")

IMAGE_EXTENSIONS = image_extensions()  # every format the installed Pillow opens
GREY_SAMPLE = 16  # items `ImageSource.is_greyscale` looks at, spread over the collection
__all__ = ["IMAGE_EXTENSIONS", "TAR_EXTENSIONS", "ArraySource", "FilesSource", "ImageSource"]


@dataclass(repr=False, eq=False)
class ImageSource:
    """Base class: an ordered, labelled (or not) collection of images."""

    description: str
    paths: list[str]
    labels: np.ndarray  # int32, -1 = unknown
    class_names: list[str] = field(default_factory=list)
    greyscale: bool | None = None  # training's default channel count; None: the images say (`is_greyscale`)
    id_offset: int = 0
    spec: str | None = None  # how to reopen it (absolute path spec), set by open_source
    # items listed but never read, by position: (reason, detail); each is a counted skip
    unread: dict[int, tuple[str, str]] = field(default_factory=dict)
    # a multi-label source's label sets, (N, len(class_names)) bool; ``labels`` then holds each item's first
    # class (-1 for none), so what reads one class per item still reads something true
    label_sets: np.ndarray | None = None
    folder_labels = False  # classes named by folders (a folder tree, a tar, a zip): `shared_folder_names` looks

    @property
    def multi_label(self) -> bool:
        return self.label_sets is not None

    def is_greyscale(self) -> bool:
        """Whether the images are of one channel (training's default: a 1-channel net): what the source says (IDX
        files), else whether every image among up to GREY_SAMPLE items spread over it is, by the mode its header
        declares (nothing decoded; asked by training and prepare only, never at an open). One colour image
        among them makes it colour: a photo collection with a few grey scans stays RGB."""
        if self.greyscale is None:
            sample = self.subset(GREY_SAMPLE)
            heads = [h for i in range(len(sample)) if (h := sample.header(i)) is not None]
            self.greyscale = bool(heads) and all(mode in GREY_MODES for mode, _, _ in heads)
        return self.greyscale

    def header(self, i: int) -> tuple[str, int, int] | None:
        """Item i's (mode, width, height) from its file's header (`image_header`: nothing decoded), or None where
        it has no file or no readable header (a counted skip when it is decoded)."""
        try:
            return image_header(self.read_bytes(i))
        except (BadImage, OSError, NotImplementedError):  # (NotImplementedError: a prepared store's arrays)
            return None

    def targets(self) -> np.ndarray:
        """What training learns and relevance is judged on: the label sets of a multi-label source, else the
        labels."""
        return self.label_sets if self.label_sets is not None else self.labels

    def __len__(self) -> int:
        return len(self.paths)

    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64) + self.id_offset

    def item_of(self, recorded: str) -> int | None:
        """The position of the item whose path shards and indexes record as ``recorded`` (`files.encode_name` of
        its path), or None when the collection no longer holds it; the map is built once, at the first call."""
        by_path = self.__dict__.get("_by_path")
        if by_path is None:
            from ..files import encode_name

            by_path = self.__dict__["_by_path"] = {encode_name(p): i for i, p in enumerate(self.paths)}
        return by_path.get(recorded)

    def fingerprint(self) -> str:
        """Identity of the collection: its items' paths, labels and ids, in order."""
        import hashlib

        h = hashlib.sha256()
        h.update("\n".join(self.paths).encode("utf-8", "surrogateescape"))
        h.update(np.ascontiguousarray(self.labels, dtype=np.int32).tobytes())
        h.update(np.ascontiguousarray(self.ids(), dtype=np.int64).tobytes())
        if self.label_sets is not None:
            h.update(np.packbits(self.label_sets, axis=1).tobytes())
        return h.hexdigest()[:16]

    def read(self, i: int, max_side: int | None = None) -> Image.Image:
        """Decode item i (raises BadImage); ``max_side``: a JPEG may be decoded at reduced scale down to this side
        (`decode_image`: what a picture of it drawn small needs)."""
        return decode_image(self.read_bytes(i), max_side=max_side)

    def read_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def preloaded(self, size: int, channels: int) -> np.ndarray | None:
        """Every item as the net's input, already decoded (a prepared store), or None: decode them."""
        return None

    def _refuse_unread(self, i: int) -> None:
        """Raise the counted skip of an item that is listed but not read (not an image, a link, ...)."""
        if i in self.unread:
            raise BadImage(*self.unread[i])

    def check_size(self, size: int, channels: int) -> None:
        """Raise HashindexError if the items cannot be read as (channels, size, size) inputs; any size can be
        decoded from an image, but a prepared store holds one (checked before work starts, not in a worker)."""

    def read_array(self, i: int, size: int, channels: int) -> np.ndarray:
        """Item i as the net's uint8 (C, size, size) input (raises BadImage)."""
        return array_of(self._decode_for(i, size), size, channels)

    def _decode_for(self, i: int, size: int) -> Image.Image:
        return decode_image(self.read_bytes(i), max_side=DRAFT_FACTOR * size)  # as `net_array` reads a file

    def subset(self, n: int) -> "ImageSource":
        """n items spread evenly over the collection (ids stay the collection's)."""
        if n >= len(self):
            return self
        pick = np.linspace(0, len(self) - 1, n).round().astype(np.int64)
        return _Subset(self, pick, f"limit={n}")

    def select(self, positions: np.ndarray, how: str) -> "ImageSource":
        """The items at ``positions`` as a collection of their own, numbered from its own ``id_offset`` (a
        folder's new files, appended to an index built from the folder: `hashindex sync`). Its spec stays this
        source's: reopened from it, its items are found there by path (`item_of`)."""
        part = _Subset(self, np.asarray(positions, np.int64), how, renumber=True)
        part.spec = self.spec
        return part

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
        if self.label_sets is not None:
            sets = np.zeros((len(self.label_sets), len(class_names)), dtype=bool)
            sets[:, lut[:-1]] = self.label_sets
            self.label_sets = sets
        self.class_names = list(class_names)


class _Subset(ImageSource):
    """Items of a parent source at given positions; ids stay the parent's (``renumber``: numbered from its own
    ``id_offset`` instead)."""

    def __init__(self, parent: ImageSource, pick: np.ndarray, how: str, renumber: bool = False):
        super().__init__(
            description=f"{parent.description} ({how})",
            paths=[parent.paths[i] for i in pick],
            labels=parent.labels[pick],
            class_names=parent.class_names,
            greyscale=parent.greyscale,
            spec=f"{parent.spec}#{how}" if parent.spec else None,
            label_sets=parent.label_sets[pick] if parent.label_sets is not None else None,
        )
        self.parent, self.pick, self.renumber = parent, pick, renumber

    def ids(self) -> np.ndarray:
        return super().ids() if self.renumber else self.parent.ids()[self.pick]

    def preloaded(self, size: int, channels: int) -> np.ndarray | None:
        whole = self.parent.preloaded(size, channels)
        return whole[self.pick] if whole is not None else None

    def read_bytes(self, i: int) -> bytes:
        return self.parent.read_bytes(int(self.pick[i]))

    def check_size(self, size: int, channels: int) -> None:
        self.parent.check_size(size, channels)

    def read_array(self, i: int, size: int, channels: int) -> np.ndarray:
        # the parent's own reading: a prepared store's items are arrays, not images to decode (through
        # _decode_for, `extract --limit` of a prepared store skipped every item as unreadable)
        return self.parent.read_array(int(self.pick[i]), size, channels)

    def _decode_for(self, i: int, size: int) -> Image.Image:
        return self.parent._decode_for(int(self.pick[i]), size)


def source_parts(source: ImageSource) -> list[ImageSource]:
    """The parts of a shard set (`webdataset.ConcatSource`: a folder's loose files, its tars and zips), or the
    source itself."""
    return getattr(source, "parts", [source])


def labelled_by_folders(source: ImageSource) -> bool:
    """Whether every part of ``source`` names its classes by folders (what ``#labels=top|path`` changes)."""
    return all(part.folder_labels for part in source_parts(source))


def shared_folder_names(source: ImageSource) -> dict[str, list[str]]:
    """Classes named after a parent folder whose name several folders share (``cats/sub`` and ``dogs/sub``
    make one class ``sub``): class name -> those folders. Empty when every class is one folder, as in a tree
    of class folders. Why a user should look: the images are one class for training and evaluation;
    ``DIR#labels=top`` or ``#labels=path`` names classes otherwise."""
    folders: dict[str, set[str]] = {}
    for part in source_parts(source):  # the shards of a set each hold the class folders
        if not (part.folder_labels and part.class_names):
            continue
        # each folder's first labelled item's class, then the check once per folder: on CIFAR-10's 50,000 images
        # 0.03-0.07 s, where checking each item took 0.85 s (cores shared with a training run both times)
        first: dict[str, int] = {}
        for path, label in zip(part.paths, part.labels.tolist()):
            if label >= 0:
                first.setdefault(path.rpartition("/")[0], label)
        for folder, label in first.items():
            if folder_class(folder) == part.class_names[label]:
                folders.setdefault(part.class_names[label], set()).add(folder_class(folder, "path"))
    return {name: sorted(f) for name, f in sorted(folders.items()) if len(f) > 1}


def warn_shared_folder_names(source: ImageSource, arg: str) -> None:
    """Log a warning naming the classes several folders share (`shared_folder_names`): training would learn
    ``cats/sub`` and ``dogs/sub`` as one class without a word otherwise."""
    shared = shared_folder_names(source)
    if not shared:
        return
    what = "; ".join(f"class '{name}' gathers the images of {len(folders)} folders ({', '.join(folders[:2])}"
                     f"{', ...' if len(folders) > 2 else ''})" for name, folders in list(shared.items())[:2])
    more = f" (and {len(shared) - 2} more classes)" if len(shared) > 2 else ""
    log.warning("%s=%s: %s%s; to name classes by the first folder under the path, add '#labels=top' to it, or "
                "'#labels=path' for the whole folder path", arg, source.spec or source.description, what, more)


def items_of(names: list[str], extra_unread: dict[str, tuple[str, str]], read, where: str, folders: str = "parent"
           ) -> tuple[list[str], np.ndarray, list[str], dict[int, tuple[str, str]], np.ndarray | None]:
    """A collection's files (in order) as items: (paths, labels, class names, unread positions, label sets or
    None); ``folders``: which folder names an item's class (`folder_label`)."""
    extra_unread = {**{n: ("hidden", f"{n}: hidden, or system metadata (a name starting with '.', "
                              f"{' or '.join(SYSTEM_FOLDERS)}): not read") for n in names if is_hidden(n)},
                    **extra_unread}
    images, sidecars, unread = group_members([n for n in names if n not in extra_unread])
    image_set = set(images)
    reasons = {n: (r, f"{n}: extension {name_suffix(n)} is not an image format Pillow reads")
               for n, r in unread.items()}
    reasons.update(extra_unread)
    paths = [n for n in names if n in image_set or n in reasons]
    image_labels, class_names, image_sets = sample_labels(images, sidecars, read, where, folders)
    by_name = dict(zip(images, image_labels))
    labels = np.array([by_name.get(n, -1) for n in paths], dtype=np.int32)
    sets = None
    if image_sets is not None:  # rows of the items never read stay empty
        row = {n: i for i, n in enumerate(images)}
        at = np.array([row.get(n, -1) for n in paths], dtype=np.int64)
        sets = np.zeros((len(paths), len(class_names)), dtype=bool)
        sets[at >= 0] = image_sets[at[at >= 0]]
    return paths, labels, class_names, {i: reasons[n] for i, n in enumerate(paths) if n in reasons}, sets


MAX_FILE_BYTES = 1 << 30  # an image file larger than this is skipped as too-large, not read


def read_file(path: Path) -> bytes:
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


class FilesSource(ImageSource):
    """Image files named one by one (e.g. the images given to ``hashindex query``)."""

    def __init__(self, paths: list[str], description: str | None = None,
                 labels: np.ndarray | None = None, class_names: list[str] | None = None,
                 label_sets: np.ndarray | None = None):
        labels = np.full(len(paths), -1, np.int32) if labels is None else labels
        super().__init__(description or f"{len(paths)} image files", list(paths), labels,
                         class_names or [], label_sets=label_sets)

    def read_bytes(self, i: int) -> bytes:
        return read_file(Path(self.paths[i]))


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

    def read(self, i: int, max_side: int | None = None) -> Image.Image:
        return Image.fromarray(self.images[i])

    def read_bytes(self, i: int) -> bytes:
        buf = io.BytesIO()
        self.read(i).save(buf, format="PNG")
        return buf.getvalue()
