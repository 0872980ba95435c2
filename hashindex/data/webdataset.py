"""Shard sets, as WebDataset and img2dataset users hold their collections: many tars read as one.

``--data`` may name a folder of ``.tar`` shards or ``.zip`` parts (with or without loose images beside them), a brace
pattern (``shards/{00000..00099}.tar``) or a text list of shard paths; the result is one source whose
items are every shard's items in order (folder's loose files first, then shards in sorted path order;
patterns and lists in their own order). Item paths are ``SHARD/MEMBER``. Labels are brought into one
vocabulary: class names are merged (sorted); integer labels stay integers. When any part holds label sets
(JSON sidecars listing several labels), every item gets one in the merged vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import HashindexError
from ..targets import first_labels, one_hot_sets
from .members import ZIP_EXTENSIONS, expand_braces, is_tar_name
from .archives import TarSource, ZipSource
from .sources import ImageSource


class ConcatSource(ImageSource):
    """Several sources read as one, in order (item i of part j is item offset[j] + i)."""

    def __init__(self, parts: list[tuple[str, ImageSource]], description: str):
        self.parts = [source for _, source in parts]
        self.starts = np.cumsum([0] + [len(s) for s in self.parts])
        paths = [f"{prefix}/{p}" if prefix else p for prefix, source in parts for p in source.paths]
        labels, names, sets = _merge_labels(self.parts)
        unread = {int(self.starts[j]) + i: why for j, s in enumerate(self.parts) for i, why in s.unread.items()}
        super().__init__(description, paths, labels, names, unread=unread, label_sets=sets)

    def _locate(self, i: int) -> tuple[ImageSource, int]:
        j = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[j], i - int(self.starts[j])

    def read_bytes(self, i: int) -> bytes:
        part, k = self._locate(i)
        return part.read_bytes(k)

    def _decode_for(self, i: int, size: int) -> Image.Image:
        part, k = self._locate(i)
        return part._decode_for(k, size)


def _merge_labels(parts: list[ImageSource]) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """All parts' labels in one vocabulary: the sorted union of class names (integer labels of a part
    without names join it as their decimal text), or integers when no part has names; and the label sets
    in that vocabulary when any part has them (a single-label part's items: sets of one)."""
    if not any(p.class_names for p in parts):
        return (np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, np.int32)), [], None
    text = [list(p.class_names) if p.class_names else [str(v) for v in range(int(p.labels.max(initial=-1)) + 1)]
            for p in parts]
    names = sorted({n for t in text for n in t})
    index = {n: i for i, n in enumerate(names)}
    out = [np.array([index[t[v]] if v >= 0 else -1 for v in p.labels], np.int32) for p, t in zip(parts, text)]
    if not any(p.multi_label for p in parts):
        return np.concatenate(out), names, None
    sets = []
    for p, t, labels in zip(parts, text, out):
        if p.label_sets is None:
            sets.append(one_hot_sets(labels, len(names)))
            continue
        part = np.zeros((len(p), len(names)), dtype=bool)
        part[:, [index[n] for n in t]] = p.label_sets
        sets.append(part)
    merged = np.concatenate(sets)
    return first_labels(merged), names, merged


def shard_parts(paths: list[Path], base: Path | None = None, folders: str = "parent"
                ) -> list[tuple[str, ImageSource]]:
    """(prefix, TarSource or ZipSource) per shard; the prefix is the shard's path relative to ``base`` (or its
    name); ``folders``: which folder of a member names its class (`labels.folder_label`)."""
    out = []
    for p in paths:
        prefix = str(p.relative_to(base)) if base is not None else p.name
        kind = ZipSource if p.name.lower().endswith(ZIP_EXTENSIONS) else TarSource
        out.append((prefix, kind(p, folders)))
    return out


def pattern_files(spec: str, arg: str) -> list[Path] | None:
    """The files a brace pattern (``shards/{00000..00099}.tar``) names, all existing, or None when ``spec`` is not
    one."""
    if "{" not in spec or Path(spec).exists():
        return None
    try:
        names = expand_braces(spec)
    except HashindexError as e:
        raise HashindexError(f"{arg}={e}") from None
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise HashindexError(f"{arg}={spec}: {missing[0]} does not exist ({len(missing)} of the pattern's "
                             f"{len(names)} files missing)")
    return [Path(n) for n in names]


def open_pattern(spec: str, files: list[Path], arg: str, folders: str = "parent") -> ImageSource:
    """The tar shards of a brace pattern (`pattern_files`) as one source."""
    if not all(is_tar_name(f.name) for f in files):
        raise HashindexError(f"{arg}={spec}: a brace pattern must name .tar / .tar.gz shards, or Parquet or Arrow "
                             "files")
    return ConcatSource(shard_parts(files, folders=folders), f"shards {spec} ({len(files)} tars)")


def list_entries(text: str) -> list[str]:
    """The entries of a text list: its non-blank lines that are not ``#`` comments, stripped."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def shard_list(path: Path, entries: list[str], kind: Callable[[str], bool] = is_tar_name) -> list[Path] | None:
    """The shards (files whose name is of ``kind``) the text list ``path`` names (its `list_entries`), relative
    to the list, or None when it lists something else (images: a ListSource). Parsed once by the caller and
    asked of each kind in turn: a list of images fails each at its first line, not after a pass over all."""
    if not entries or not all(kind(e) for e in entries):
        return None
    return [Path(e) if Path(e).is_absolute() else path.parent / e for e in entries]


def listed_files(path: Path, files: list[Path], noun: str = "shards") -> list[Path]:
    """``files`` (what the list ``path`` names), when every one exists; one line naming the first missing."""
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise HashindexError(f"{path}: lists {missing[0]}, which does not exist ({len(missing)} of "
                             f"{len(files)} {noun} missing)")
    return files


def open_shard_list(path: Path, shards: list[Path], folders: str = "parent") -> ImageSource:
    listed_files(path, shards)
    return ConcatSource(shard_parts(shards, folders=folders), f"shard list {path} ({len(shards)} tars)")
