"""Image lists: a text/CSV file of ``path[,label]`` lines, a Caffe list of ``path label`` lines (the
``train-file.txt`` lists DLBHC's and SSDH's ``ImageData`` layers read), or a one-hot list of ``path 0 0 1 0``
lines (HashNet's and DeepHash-pytorch's ``train.txt``; with several 1s on a line, the label sets of a
multi-label set such as NUS-WIDE or MS-COCO)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from ..errors import HashindexError
from ..targets import first_labels
from .labels import label_sets_from_text, labels_from_text
from .sources import FilesSource, read_file

LIST_EXTENSIONS = (".txt", ".csv", ".lst", ".tsv")
LABEL_SEPARATOR = "|"  # several labels in a CSV list's label field: an item's label set
# a first line whose first field is one of these (and no file of that name) is a header: "filename,class" as
# Kaggle's and most exported lists have one; read as an item, it became a missing file and a class "class"
HEADER_NAMES = frozenset({"path", "paths", "file", "files", "filename", "file_name", "filepath", "file_path",
                          "image", "images", "img", "image_path", "image_name", "image_id", "name", "id"})
__all__ = ["LIST_EXTENSIONS", "ListSource", "caffe_rows", "one_hot_rows", "read_list"]


def read_list(path: Path) -> str:
    """A text list's contents (one-line error when unreadable); a UTF-8 byte-order mark, which Excel's "CSV UTF-8"
    puts first, is no part of the first path (or header)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise HashindexError(f"{path}: cannot read file list ({e})") from None


_CAFFE_LINE = re.compile(r"(\S.*?)\s+(-?\d+)\s*$")


def _data_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a list's entries: blank lines and '#' comments left out."""
    return [(n, line) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def caffe_rows(text: str) -> list[tuple[int, list[str]]] | None:
    """The entries of a Caffe image list (``path label`` per line, space-separated: what DLBHC's and SSDH's
    ``ImageData`` layers read), or None when ``text`` is not one. Decided for the whole file, never per line:
    every entry ends in whitespace and an integer and none holds a comma (a CSV list's separator)."""
    lines = _data_lines(text)
    matches = [_CAFFE_LINE.match(line) for _, line in lines]
    if not lines or any(m is None or "," in line for m, (_, line) in zip(matches, lines)):
        return None
    return [(n, [m.group(1), m.group(2)]) for m, (n, _) in zip(matches, lines)]


_BITS = ("0", "1")
_BIT_SET = frozenset(_BITS)


def _trailing_bits(line: str) -> int:
    """How many 0/1 columns end ``line``."""
    tokens = line.split()
    n = 0
    while n < len(tokens) - 1 and tokens[-1 - n] in _BITS:
        n += 1
    return n


def one_hot_rows(text: str) -> tuple[list[tuple[int, list[str]]], np.ndarray] | None:
    """The entries of a one-hot list (``path`` then one 0/1 column per class, space-separated: the lists of
    HashNet and DeepHash-pytorch), as ``[path, first class set]`` rows ('' for a row of zeros: unlabelled) and
    the (N, classes) bool matrix of the columns; None when ``text`` is not one. Decided for the whole file:
    every entry ends in the same number (at least two) of 0/1 columns and none holds a comma. Rows with several
    1s are the label sets of a multi-label set (NUS-WIDE, MS-COCO)."""
    lines = _data_lines(text)
    width = _trailing_bits(lines[0][1]) if lines else 0
    if width < 2:
        return None
    rows, bits = [], []
    for n, line in lines:
        # split from the right: 1.4x a regex's speed on ImageNet-100's 130,000 lines of 100 columns
        # (tools/bench_lists.py, 2 cores idle: 0.72-0.77 s against 1.00-1.09 s); 1.3x with the label-set
        # matrix built as well, which the regex baseline does not build (1.99 s against 2.54 s, cores busy)
        head, *cols = line.rsplit(None, width)
        if "," in line or len(cols) != width or not _BIT_SET.issuperset(cols) or head.split()[-1] in _BITS:
            return None
        rows.append((n, [head.strip(), str(cols.index("1")) if "1" in cols else ""]))
        bits.append("".join(cols))
    sets = np.frombuffer("".join(bits).encode("ascii"), np.uint8).reshape(len(rows), width) == ord("1")
    return rows, sets


class ListSource(FilesSource):
    """A text/CSV file of ``path[,label]`` lines, a Caffe list of ``path label`` lines or a one-hot list of
    ``path 0 0 1 0`` lines (``.txt`` / ``.lst``); relative paths are relative to the list, and an item's path is
    the one its line gives (as a folder's items are named relative to the folder), so shards, indexes and a
    reopened list name an item alike from any working directory.

    Labels may be class names or integers; several in one field, separated by ``|`` (``beach|sunset``), make
    the list a multi-label collection. Blank lines and lines starting with '#' are ignored; a first line
    naming its columns (``path,label``, ``filename,class``: `HEADER_NAMES`) is a header.
    """

    def __init__(self, path: str | Path, text: str | None = None):
        """``text``: the list's contents when the caller has read them already (`read_list`)."""
        self.path = Path(path)
        self.base = base = self.path.parent
        text = read_list(self.path) if text is None else text
        paths, raw = [], []
        rows, sets = self._rows(text)
        for lineno, row in rows:
            if lineno == 1 and _is_header(row[0], base):
                continue
            if len(row) > 2:
                raise HashindexError(f"{self.path}:{lineno}: expected 'path[,label]', got {len(row)} fields")
            paths.append(row[0].strip())
            raw.append(row[1].strip() if len(row) == 2 else "")
        if sets is None and any(LABEL_SEPARATOR in r for r in raw):  # 'photo.jpg,beach|sunset': label sets
            labels, names, sets = label_sets_from_text(
                [[t.strip() for t in r.split(LABEL_SEPARATOR) if t.strip()] for r in raw], str(self.path))
        elif sets is not None and (sets.sum(axis=1) > 1).any():  # a multi-label one-hot list: columns are classes
            sets = sets[len(sets) - len(paths):]  # without a dropped header line
            labels, names = first_labels(sets), [str(c) for c in range(sets.shape[1])]
        else:
            labels, names = self._parse_labels(raw)
            sets = None
        super().__init__(paths, f"list {self.path}", labels, names, label_sets=sets)

    def read_bytes(self, i: int) -> bytes:
        return read_file(self.file(i))

    def file(self, i: int) -> Path:
        """Where item i's file is: its line's path, from the list's folder (an absolute one stays itself)."""
        return self.base / self.paths[i]

    def _rows(self, text: str) -> tuple[list[tuple[int, list[str]]], np.ndarray | None]:
        """(line number, fields) of each entry: a one-hot list's ``path`` and class index, a Caffe list's
        ``path label``, else CSV (tab-separated for .tsv); and a one-hot list's columns (else None)."""
        if self.path.suffix.lower() in (".txt", ".lst"):
            one_hot = one_hot_rows(text)
            if one_hot is not None:
                return one_hot
            spaced = caffe_rows(text)
            if spaced is not None:
                return spaced, None
        delim = "\t" if self.path.suffix.lower() == ".tsv" else ","
        rows = enumerate(csv.reader(io.StringIO(text), delimiter=delim), 1)
        return [(n, row) for n, row in rows if row and row[0].strip() and not row[0].lstrip().startswith("#")], None

    def _parse_labels(self, raw: list[str]) -> tuple[np.ndarray, list[str]]:
        values, names = labels_from_text(raw, str(self.path))
        return np.array(values, dtype=np.int32), names


def _is_header(first: str, base: Path) -> bool:
    """Whether a list's first field on its first line names the path column rather than a file."""
    first = first.strip()
    return first.lower() in HEADER_NAMES and not (base / first).exists()
