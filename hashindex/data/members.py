"""What each file of a collection is: an image, a label sidecar, a tar shard, or something not read (and why).

The WebDataset convention groups a collection's files into samples by *key*: a file's directory plus its
base name up to the first dot (``train/00042.jpg``, ``train/00042.cls`` and ``train/00042.json`` are one
sample). hashindex follows it in folders and tars alike:

- every file whose extension the installed Pillow opens is an image item (``.jfif``, ``.webp``, ``.avif``,
  ...); a file without an extension is an item too (decoding decides, and counts it if it is not an image);
- ``.cls`` / ``.json`` files that share an image's key give its label (they override the parent folder);
- any other file that shares an image's key is a field of that sample (a caption, metadata) and goes with it;
- every remaining file is an item skipped with a reason (``not-an-image``), so nothing in the tree is
  dropped without being counted in the manifest and skipped.txt.
"""

from __future__ import annotations

import re
from functools import lru_cache

from PIL import Image

from ..errors import HashindexError
from .images import register_optional_formats

LABEL_SIDECARS = (".cls", ".json")  # label files that share an image's key
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ZIP_EXTENSIONS = (".zip",)
# Pillow plugins that only identify a format (stubs needing an external handler) or read no pixels
_NOT_IMAGES = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF"}
HEIF_EXTENSIONS = (".heic", ".heif", ".hif")  # phones' photos: read with pillow-heif, else skipped saying so


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Extensions (lower case, with the dot) of every format the installed Pillow can open (with the optional
    decoders registered: HEIC through pillow-heif)."""
    register_optional_formats()
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in _NOT_IMAGES)


def sample_key(name: str) -> str:
    """The WebDataset key of a file: its directory and its base name up to the first dot."""
    cut = name.rfind("/") + 1
    base = name[cut:]
    return name if base.startswith(".") else name[:cut] + base.split(".", 1)[0]


def suffix(name: str) -> str:
    """The last extension of a name, lower case ('' for none; a dot file has none)."""
    base = name[name.rfind("/") + 1:]  # string methods, not posixpath: called for every member of a collection
    dot = base.rfind(".")
    return "" if dot < 0 or not base[:dot].strip(".") else base[dot:].lower()


def is_image_name(name: str) -> bool:
    """True for names that may hold an image: Pillow's extensions, and names without one."""
    ext = suffix(name)
    return ext == "" or ext in image_extensions()


SYSTEM_FOLDERS = ("__MACOSX", "@eaDir")  # macOS archive resource forks; Synology thumbnails


def is_hidden(name: str) -> bool:
    """True when a path component is hidden (``.DS_Store``, ``._photo.jpg``, ``.ipynb_checkpoints/``,
    ``.thumbnails/``) or a system metadata folder: such files are not the collection's images, and a
    hidden folder of images would otherwise become a class of its own."""
    if not (name.startswith(".") or "/." in name or any(f in name for f in SYSTEM_FOLDERS)):
        return False  # most names: no component can be hidden, and splitting them is most of the cost
    return any((part.startswith(".") and part not in (".", "..")) or part in SYSTEM_FOLDERS
               for part in name.split("/"))


def is_tar_name(name: str) -> bool:
    return name.lower().endswith(TAR_EXTENSIONS)


def is_archive_name(name: str) -> bool:
    """A tar or a zip: in a folder, a container whose members are read (as a downloaded set in parts)."""
    return name.lower().endswith(TAR_EXTENSIONS + ZIP_EXTENSIONS)


def group_members(names: list[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Sort a collection's file names (in order) into image items, label sidecars and the rest.

    Returns (images, sidecars: key -> sidecar name, unread: name -> reason). Fields of a sample other
    than its image and label (captions, metadata) appear in none of them: they travel with the sample.
    """
    is_image = [is_image_name(n) for n in names]
    images = [n for n, image in zip(names, is_image) if image]
    others = [n for n, image in zip(names, is_image) if not image]
    keys = {sample_key(n) for n in images} if others else set()  # keys matter only to the other files
    sidecars: dict[str, str] = {}
    unread: dict[str, str] = {}
    for n in others:
        key = sample_key(n)
        if key not in keys:
            unread[n] = "needs-pillow-heif" if suffix(n) in HEIF_EXTENSIONS else "not-an-image"
        elif suffix(n) in LABEL_SIDECARS and (key not in sidecars or suffix(n) == ".cls"):
            sidecars[key] = n  # .cls wins over .json when a sample has both
    return images, sidecars, unread


_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{00000..00099}`` ranges (zero padding kept) and ``{a,b,c}`` lists, left to right."""
    m = _BRACES.search(pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo or hi - lo > 10_000_000:
            raise HashindexError(f"{pattern}: range {{{body}}} must count up (at most 10 million)")
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        items = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(head + item + tail)]
