"""What class an item is: the folders of its path (its parent's name by default), a ``.cls`` / ``.json`` sidecar,
or the text of a list.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata

import numpy as np

from ..errors import HashindexError
from ..targets import first_labels
from .members import sample_key
from .members import suffix as name_suffix

JSON_LABEL_KEYS = ("label", "cls", "class", "class_name", "category")  # tried in this order
# a list under one of these (or the keys above) is a label set: a multi-label collection (COCO's categories)
JSON_LABEL_LIST_KEYS = ("labels", "tags", "categories", "classes")


def labels_from_folders(parents: list[str]) -> tuple[np.ndarray, list[str]]:
    """Label = index of the folder name (`folder_label`) in the sorted names; '' (the root) is -1."""
    names = sorted({p for p in parents if p})
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index.get(p, -1) for p in parents], dtype=np.int32)
    return labels, names


FOLDER_LABELS = ("parent", "top", "path")  # which folder of an item's path names its class


def folder_label(name: str, folders: str = "parent") -> str:
    """The class a member or file ``name`` (relative to its collection's root) gets from its folders: the
    parent folder's name (``parent``), the first folder under the root (``top``: ``cats/2019/x.jpg`` is a cat)
    or the whole folder path (``path``: Places365's ``a/apartment_building/outdoor``); '' at the root (a tar's
    ``./x.jpg`` too, as made by ``tar cf x.tar .``; no ``..`` is a class). Class names are NFC (`class_text`)."""
    return folder_class(os.path.dirname(name), folders)


def folder_labels(names: list[str], folders: str = "parent") -> list[str]:
    """`folder_label` of each name, worked out once per folder (a folder of photos shares it)."""
    by_folder: dict[str, str] = {}
    out = []
    for name in names:
        folder = name[:name.rfind("/") + 1]
        label = by_folder.get(folder)
        if label is None:
            label = by_folder[folder] = folder_class(folder, folders)
        out.append(label)
    return out


def folder_class(folder: str, folders: str = "parent") -> str:
    """`folder_label` of the items of ``folder`` (a path relative to the collection's root)."""
    parts = [p for p in folder.split("/") if p not in ("", ".", "..")]
    if not parts:
        return ""
    return class_text(parts[0] if folders == "top" else "/".join(parts) if folders == "path" else parts[-1])


def class_text(name: str) -> str:
    """A class name in one Unicode form (NFC): macOS writes 'é' in file names as 'e' + a combining accent
    (NFD), so a folder copied from a Mac and the same class named elsewhere were two classes that print alike."""
    return name if unicodedata.is_normalized("NFC", name) else unicodedata.normalize("NFC", name)


def sample_labels(images: list[str], sidecars: dict[str, str], read, where: str, folders: str = "parent"
                   ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Labels of image items: from their ``.cls`` / ``.json`` sidecar (WebDataset), else from their
    folders (`folder_label`); and their label sets when a JSON sidecar lists several labels (None otherwise).
    ``read(name)`` gives a sidecar's bytes. Without sidecars folder names are class names even when they
    are digits (as they always were); with them, all-integer labels stay integers."""
    parents = folder_labels(images, folders)
    if not sidecars:
        return (*labels_from_folders(parents), None)
    raw: list[list[str]] = []
    for n, parent in zip(images, parents):
        side = sidecars.get(sample_key(n))
        got = sidecar_label(read(side), name_suffix(side)) if side else parent
        raw.append([] if not got else [got] if isinstance(got, str) else got)
    if all(len(r) <= 1 for r in raw):
        values, names = labels_from_text([r[0] if r else "" for r in raw], where)
        return np.array(values, dtype=np.int32), names, None
    return label_sets_from_text(raw, where)


def sidecar_label(data: bytes, ext: str) -> str | list[str] | None:
    """The label a ``.cls`` or ``.json`` sidecar gives (as text), the labels of a JSON list (a label set:
    ``{"labels": ["dog", "person"]}``), or None when it gives none."""
    try:
        text = data.decode("utf-8-sig").strip()  # a BOM (Windows Notepad) is no part of the label
    except UnicodeDecodeError:
        return None
    if ext == ".cls":
        return text or None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    for key in JSON_LABEL_KEYS + JSON_LABEL_LIST_KEYS:
        value = doc.get(key)
        if _scalar(value) and key in JSON_LABEL_KEYS:
            return str(value).strip()
        if isinstance(value, list) and value and all(_scalar(v) for v in value):
            return sorted({str(v).strip() for v in value})
    return None


def _scalar(value) -> bool:
    """A label value: a non-empty string or an integer (not a bool)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool) and bool(str(value).strip())


def labels_from_text(raw: list[str], where: str) -> tuple[list[int], list[str]]:
    """Labels from text values ('' = none): integers stay integers (no class names), else class names
    (`class_text`: one Unicode form)."""
    raw = [class_text(r) for r in raw]
    given = [r for r in raw if r]
    if given and all(re.fullmatch(r"-?\d+", r) for r in given):
        values = [int(r) if r else -1 for r in raw]
        bad = next((v for v in values if not -1 <= v < 2**31 - 1), None)
        if bad is not None:
            raise HashindexError(f"{where}: label {bad} is out of range (integer labels are 0 to "
                                 f"{2**31 - 2}, or -1 for none)")
        return values, []
    names = sorted(set(given))
    index = {n: i for i, n in enumerate(names)}
    return [index.get(r, -1) for r in raw], names


def label_sets_from_text(raw: list[list[str]], where: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(first class, class names, label sets (N, C) bool) of items that each list their labels (text, as
    `labels_from_text` reads one; integers name the classes '0' to the largest, -1 none)."""
    flat = [t for r in raw for t in r]
    values, names = labels_from_text(flat, where)
    values = np.array(values, dtype=np.int64)
    names = names or [str(v) for v in range(int(values.max(initial=-1)) + 1)]
    sets = np.zeros((len(raw), len(names)), dtype=bool)
    rows = np.repeat(np.arange(len(raw)), [len(r) for r in raw])
    sets[rows[values >= 0], values[values >= 0]] = True  # an integer label -1 says "none"
    return first_labels(sets), names, sets
