"""Image collections in column files: Parquet, as the Hugging Face Hub holds datasets (and pandas, Spark or DuckDB
write them), and Arrow files, as `datasets` saves them (``save_to_disk``) and caches them.

A Hugging Face dataset keeps each split as files (``data/train-00000-of-00004.parquet``, ``train/data-00000-of-
00001.arrow``, ``cifar10-test.arrow``) with an ``Image`` column (a struct of the encoded file's ``bytes`` and its
``path``) and a ``ClassLabel`` column (integers; the class names in the schema's ``huggingface`` metadata).
hashindex reads them in place: the label column whole when the collection is opened (a few bytes a row), the
images a row group (an Arrow file: a record batch, memory-mapped) at a time, on demand, in any worker.

Item ``i`` is row ``r`` of file ``f``, recorded as ``f#r`` (``f`` relative to the folder given). pyarrow is
needed only here, and imported only when such a file is read (``pip install 'hashindex[parquet]'``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HashindexError
from ..targets import first_labels
from .images import BadImage
from .sources import MAX_FILE_BYTES, ImageSource, read_file

log = logging.getLogger("hashindex")

PARQUET_EXTENSIONS = (".parquet", ".pq")
ARROW_EXTENSIONS = (".arrow",)
COLUMNAR_EXTENSIONS = PARQUET_EXTENSIONS + ARROW_EXTENSIONS
IMAGE_COLUMN_NAMES = ("image", "img", "picture", "photo", "jpg", "jpeg", "png", "webp")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target", "fine_label")
SPLITS = ("train", "test", "validation", "valid", "val", "dev")
CACHED_GROUPS = 2  # row groups of images held per process: a worker reads its batches in order
OPEN_FILES = 16  # readers held open per process (file descriptors, memory maps)


def is_columnar_name(name: str) -> bool:
    """A Parquet or Arrow file, by its name."""
    return name.lower().endswith(COLUMNAR_EXTENSIONS)


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HashindexError("reading Parquet or Arrow files needs pyarrow: pip install 'hashindex[parquet]'") \
            from None
    return pq


def split_files(root: Path, names: list[str], split: str) -> list[str]:
    """The files of one split among a dataset folder's (relative, sorted): those named after the split
    (``train-00000-of-00004.parquet``, ``test.parquet``, ``cifar10-test.arrow``) or lying in a folder named after
    it (``default/train/0000.parquet``, ``train/data-00000-of-00001.arrow``); every file when none is named after
    any split."""
    def split_of(name: str) -> str | None:
        *folders, base = name.lower().split("/")
        stem = base.rsplit(".", 1)[0]
        for s in SPLITS:
            if s in folders or re.search(rf"(^|[-_.]){s}([-_.]|$)", stem):
                return s
        return None

    named = {n: split_of(n) for n in names}
    if not any(named.values()):
        return names
    picked = [n for n in names if named[n] == split]
    if not picked:
        present = sorted({s for s in named.values() if s})
        raise HashindexError(f"{root}: no '{split}' split among its Parquet or Arrow files (splits: "
                             f"{', '.join(present)}); name one as {root}:test, or give one file")
    return picked


class _Parquet:
    """A Parquet file: its row groups are the units images are read in."""

    def __init__(self, path: str):
        self.file = _pyarrow().ParquetFile(path)
        self.schema = self.file.schema_arrow
        self.group_rows = [self.file.metadata.row_group(g).num_rows for g in range(self.file.metadata.num_row_groups)]

    def column(self, name: str):
        return self.file.read(columns=[name]).column(0)

    def group(self, g: int, name: str) -> list:
        return self.file.read_row_group(g, columns=[name]).column(0).to_pylist()


class _Arrow:
    """An Arrow IPC file (stream or file format), as `datasets` saves one (``save_to_disk``, its cache),
    memory-mapped: its record batches are the units images are read in, no copy of the rest is made."""

    def __init__(self, path: str):
        _pyarrow()
        import pyarrow as pa

        source = pa.memory_map(path)
        try:
            self.table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            self.table = pa.ipc.open_file(source).read_all()
        self.schema = self.table.schema
        self.group_rows = [b.num_rows for b in self.table.to_batches()]

    def column(self, name: str):
        return self.table.column(name)

    def group(self, g: int, name: str) -> list:
        return self.table.column(name).chunk(g).to_pylist()


class ColumnarSource(ImageSource):
    """Rows of Parquet or Arrow files as images: the image column's encoded bytes, labels from a ClassLabel column
    (names from the Hugging Face metadata), an integer or string label column, or a list column (label sets).

    ``names``: the files, relative to the folder ``root``; ``label_column``: which column labels the rows (None:
    the ClassLabel column, else one named ``label`` or alike, else none). Every file must have the columns of the
    first. An image stored by path is read only inside the folder of the file naming it, unless ``follow_links``
    (a downloaded dataset must not make the service hand out other files of the machine: an ``outside-root``
    skip, as a folder's links out of it are).
    """

    folder_labels = False

    def __init__(self, root: Path, names: list[str], label_column: str | None, description: str,
                 follow_links: bool = False):
        self.root, self.names, self.follow_links = root, names, follow_links
        self._handles: dict[int, Any] = {}
        self._pid: int | None = None
        self._groups: dict[tuple[int, int], list] = {}
        first = self._file(0)
        schema = first.schema
        features = _hf_features(schema)
        self.image_column = _image_column(schema, features, self._where(0))
        label_col = _label_column(schema, features, label_column, self._where(0))
        is_list = _label_kind(schema, label_col, self._where(0)) if label_col else False
        rows, self.group_starts, values = [], [], []
        for j in range(len(names)):  # one file open at a time beyond `OPEN_FILES`: a set may have thousands
            f = self._file(j)
            if f.schema.names != schema.names:
                raise HashindexError(f"{self._where(j)}: columns {f.schema.names} differ from "
                                     f"{self._where(0)}'s {schema.names}")
            self.group_starts.append(np.cumsum([0] + f.group_rows))
            rows.append(int(sum(f.group_rows)))
            values += self._labels_of(j, f, label_col) if label_col else [None] * rows[-1]
        self.starts = np.cumsum([0] + rows)
        paths = [f"{name}#{r}" for name, n in zip(names, rows) for r in range(n)]
        labels, class_names, sets = _read_labels(values, is_list, label_col, features.get(label_col or ""),
                                                 self._where(0))
        what = f"labels from column '{label_col}'" if label_col else "no labels"
        super().__init__(f"{description}; images from column '{self.image_column}', {what}", paths, labels,
                         class_names, label_sets=sets)
        self.label_column = label_col

    def _labels_of(self, j: int, reader, column: str) -> list:
        """File j's label column as Python values (read whole: a few bytes a row; no Arrow buffer kept, so no
        memory map stays open for it)."""
        try:
            return reader.column(column).to_pylist()
        except (OSError, ValueError) as e:  # a damaged page: pyarrow's IOError or ArrowInvalid
            raise HashindexError(f"{self._where(j)}: label column '{column}' cannot be read "
                                 f"({str(e).splitlines()[0]})") from None

    def _where(self, j: int) -> str:
        return str(self.root / self.names[j])

    def _file(self, j: int):
        """File j's reader, opened once per process (readers do not cross into workers)."""
        if self._pid != os.getpid():
            self._handles, self._groups, self._pid = {}, {}, os.getpid()
        if j not in self._handles:
            path = self._where(j)
            kind, what = (_Arrow, "an Arrow") if path.lower().endswith(ARROW_EXTENSIONS) else (_Parquet, "a Parquet")
            try:
                reader = kind(path)
            except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
                raise HashindexError(f"{path}: not {what} file pyarrow reads ({str(e).splitlines()[0]})") from None
            while len(self._handles) >= OPEN_FILES:  # the least recently opened is closed (its reader dropped)
                self._handles.pop(next(iter(self._handles)))
            self._handles[j] = reader
        return self._handles[j]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"], state["_groups"], state["_pid"] = {}, {}, None
        return state

    def _group(self, j: int, g: int) -> list:
        """The image column of row group (record batch) g of file j, as Python values (the last few kept)."""
        key = (j, g)
        if key not in self._groups:
            try:
                values = self._file(j).group(g, self.image_column)
            except (OSError, ValueError) as e:  # a damaged page: pyarrow's IOError or ArrowInvalid
                raise BadImage("unreadable", f"{self._where(j)}: row group {g}: {str(e).splitlines()[0]}") from None
            while len(self._groups) >= CACHED_GROUPS:
                self._groups.pop(next(iter(self._groups)))
            self._groups[key] = values
        return self._groups[key]

    def read_bytes(self, i: int) -> bytes:
        j = int(np.searchsorted(self.starts, i, side="right")) - 1
        row = i - int(self.starts[j])
        g = int(np.searchsorted(self.group_starts[j], row, side="right")) - 1
        value = self._group(j, g)[row - int(self.group_starts[j][g])]
        return self._image_bytes(value, j, row)

    def _image_bytes(self, value, j: int, row: int) -> bytes:
        """The encoded image of a cell: the bytes, or (a Hugging Face Image stored by path) the file it names,
        absolute or beside the Parquet file."""
        where = f"{self._where(j)}#{row}"
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                folder = Path(self._where(j)).parent
                full = Path(path) if os.path.isabs(path) else folder / path
                if not self.follow_links and not _inside(full, folder):
                    raise BadImage("outside-root", f"{where}: names {path}, outside {folder} (follow_links=True "
                                   "to read it)")
                return read_file(full)
            value = data
        if value is None:
            raise BadImage("missing", f"{where}: no image in column '{self.image_column}'")
        if len(value) > MAX_FILE_BYTES:
            raise BadImage("too-large", f"{where}: {len(value)} bytes")
        return bytes(value)


def open_columnar(path: Path, split: str, label_column: str | None, names: list[str] | None = None,
                  follow_links: bool = False) -> ColumnarSource:
    """A Parquet or Arrow file, or the ones (``names``, relative) of a dataset folder's ``split``."""
    if names is None:
        return ColumnarSource(path.parent, [path.name], label_column, f"{_kind(path.name)} {path}", follow_links)
    picked = split_files(path, sorted(names), split)
    return ColumnarSource(path, picked, label_column, _described(picked, f"{path} ({split}: "), follow_links)


def open_columnar_files(files: list[Path], label_column: str | None, follow_links: bool, what: str
                        ) -> ColumnarSource:
    """The Parquet or Arrow ``files`` a brace pattern or a list names, all of them in order, as one source (its
    folder for images stored by path: the files' common folder)."""
    root = Path(os.path.commonpath([os.path.abspath(f.parent) for f in files]))
    names = [os.path.relpath(os.path.abspath(f), root) for f in files]
    return ColumnarSource(root, names, label_column, _described(names, f"{what} ("), follow_links)


def _described(names: list[str], what: str) -> str:
    """``parquet WHAT(N files)``: a set of table files described by their kinds and count."""
    kinds = " and ".join(sorted({_kind(n) for n in names}))
    return f"{kinds} {what}{len(names)} file{'s' if len(names) > 1 else ''})"


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, links resolved, lies in ``folder``."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _kind(name: str) -> str:
    return "arrow" if name.lower().endswith(ARROW_EXTENSIONS) else "parquet"


def _hf_features(schema) -> dict[str, Any]:
    """The Hugging Face ``features`` recorded in a Parquet or Arrow schema's metadata ({} where there are none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        features = json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _feature_type(feature: Any) -> str:
    return feature.get("_type", "") if isinstance(feature, dict) else ""


def _class_names(feature: Any) -> list[str] | None:
    """A ClassLabel feature's names, or a list feature's of ClassLabel (Sequence / List, or an old ``[f]``)."""
    if isinstance(feature, list) and len(feature) == 1:
        feature = {"_type": "List", "feature": feature[0]}
    if _feature_type(feature) in ("Sequence", "List", "LargeList"):
        feature = feature.get("feature")
    if _feature_type(feature) == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(n) for n in feature["names"]]
    return None


def _image_column(schema, features: dict[str, Any], where: str) -> str:
    """The column of encoded images: a Hugging Face Image feature, a struct with a binary ``bytes`` field, or a
    binary column (one named like ``image`` first)."""
    import pyarrow as pa

    def encoded(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    hf = [n for n in schema.names if _feature_type(features.get(n)) == "Image"]
    structs = [f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0
               and encoded(f.type.field("bytes").type)]
    binary = [f.name for f in schema if encoded(f.type)]
    for found in (hf, structs, binary):
        if found:
            named = [n for n in found if n.lower() in IMAGE_COLUMN_NAMES]
            return (named or found)[0]
    raise HashindexError(f"{where}: no image column (expected a Hugging Face Image column or a binary column of "
                         f"encoded images); columns: {', '.join(schema.names)}")


def _label_column(schema, features: dict[str, Any], asked: str | None, where: str) -> str | None:
    """The column that labels rows: ``asked``, else the ClassLabel one (the first, said when there are several),
    else one named like ``label``; None for none."""
    if asked is not None:
        if asked not in schema.names:
            raise HashindexError(f"{where}#labels={asked}: no such column; columns: {', '.join(schema.names)}")
        return asked
    classes = [n for n in schema.names if _class_names(features.get(n)) is not None]
    if len(classes) > 1:
        log.warning("%s: labels from column '%s' (%s label rows too: pick one with #labels=COLUMN)",
                    where, classes[0], ", ".join(classes[1:]))
    if classes:
        return classes[0]
    named = [n for n in schema.names if n.lower() in LABEL_COLUMN_NAMES]
    return named[0] if named else None


def _label_kind(schema, column: str, where: str) -> bool:
    """Whether the label column holds lists (label sets); a one-line error unless it holds integers, strings or
    lists of them."""
    import pyarrow as pa

    kind = schema.field(column).type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    item_type = kind.value_type if is_list else kind
    if not (pa.types.is_integer(item_type) or pa.types.is_string(item_type) or pa.types.is_large_string(item_type)):
        raise HashindexError(f"{where}: label column '{column}' holds {kind}; expected integers, strings or "
                             "lists of them")
    return is_list


def _read_labels(rows: list | None, is_list: bool, column: str | None, feature: Any, where: str
                 ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(labels, class names, label sets or None) from the label column's values, every row's (None: no label
    column): ClassLabel integers named by the feature; other integers or strings named by their sorted distinct
    values; lists as label sets."""
    n = len(rows or [])
    if column is None:
        return np.full(n, -1, np.int32), [], None
    names = _class_names(feature)
    if names is None:  # named by the distinct values, in their order (integers as their decimal text)
        distinct = sorted({x for v in rows if v is not None for x in (v if is_list else [v]) if x is not None})
        names = [str(x) for x in distinct]
        code = {x: i for i, x in enumerate(distinct)}
    else:
        code = {i: i for i in range(len(names))}
    bad = next((x for v in rows if v is not None for x in (v if is_list else [v])
                if x is not None and x not in code and x != -1), None)
    if bad is not None:
        raise HashindexError(f"{where}: label {bad!r} in column '{column}' is not one of its "
                             f"{len(names)} class names")
    if not is_list:
        return np.array([code.get(v, -1) if v is not None else -1 for v in rows], np.int32), names, None
    sets = np.zeros((n, len(names)), bool)
    for r, v in enumerate(rows):
        for x in v or []:
            if x in code:
                sets[r, code[x]] = True
    return first_labels(sets), names, sets
