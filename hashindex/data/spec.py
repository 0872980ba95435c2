"""What a ``--data`` spec names: `open_source` picks the reader by what the path is."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ..errors import HashindexError
from .formats import (_find, _torchvision_source, cifar100_source, cifar_source, idx_source, is_cifar100, is_stl10,
                      is_svhn, stl10_source, svhn_source)
from .members import ZIP_EXTENSIONS, is_image_name, is_tar_name, suffix as name_suffix
from .lists import LIST_EXTENSIONS, ListSource, read_list
from .archives import TarSource, ZipSource
from .labels import FOLDER_LABELS
from .folders import FolderSource
from .columnar import COLUMNAR_EXTENSIONS, ColumnarSource, is_columnar_name, open_columnar, open_columnar_files
from .sources import IMAGE_EXTENSIONS, TAR_EXTENSIONS, ArraySource, FilesSource, ImageSource, labelled_by_folders
from .webdataset import (ConcatSource, list_entries, listed_files, open_pattern, open_shard_list, pattern_files,
                         shard_list, shard_parts)

NAMED_SPLITS = ("train", "test", "validation")  # what ``DIR:SPLIT`` may name
FOLLOW_LINKS = "follow-links"  # the spec selection that reopens a folder with follow_links=True
LABEL_SETS = "label-sets"  # the spec suffix that reads a folder tree's copies as one item with a label set each
LABELS = "labels"  # the spec suffix ``#labels=top|path``: which folder names an item's class (default: its parent)


def open_source(spec: str | Path, arg: str = "data", split: str | None = None,
                follow_links: bool = False) -> ImageSource:
    """Open an image collection from a path, a brace pattern of tar shards or of Parquet or Arrow files, or
    ``torchvision:NAME[:split]``.

    ``DIR:train`` / ``DIR:test`` picks a split of IDX, CIFAR, STL-10 or SVHN folders,
    or of a dataset's Parquet or Arrow files (``DIR:validation`` too; default train;
    `columnar.split_files`); naming a split of anything else is an error. ``#labels=COLUMN``
    picks their label column. ``follow_links`` follows symbolic links that lead out of a
    folder, and reads the image files a Parquet or Arrow file names outside its folder (they are counted skips
    otherwise). ``DIR#label-sets`` reads a folder tree
    whose photos are copied into every class (or album) folder they belong to: one
    item per distinct file, labelled with all of those folders (`FolderSource`).
    ``SPEC#labels=top`` names a folder tree's, tar's or zip's classes by the first
    folder under its root (``cats/2019/x.jpg``: cats), ``#labels=path`` by the whole
    folder path; the default is the parent folder (`labels.folder_label`).
    Raises HashindexError naming ``arg`` if the spec is not a collection hashindex
    can read or holds no images.
    """
    spec = str(spec)
    if spec.startswith("torchvision:"):
        parts = spec.split(":")
        source = _torchvision_source(parts[1], parts[2] if len(parts) > 2 else split or "train")
        source.spec = spec
        return _non_empty(source, arg, spec)
    spec, label_sets, folders = _options(spec, arg)
    labelled_by = f"#{LABELS}={folders}" if folders != "parent" else ""
    bare, named_split = _named_split(spec)
    may_be_tables = Path(bare).is_dir() or is_columnar_name(bare) or bare.lower().endswith(LIST_EXTENSIONS)
    if folders not in FOLDER_LABELS and (label_sets or not may_be_tables):
        raise HashindexError(f"{arg}={spec}{labelled_by}: expected #{LABELS}=parent, top or path (a label column "
                             "is chosen so in Parquet and Arrow files only)")
    files = pattern_files(spec, arg)
    if files is not None:
        if all(is_columnar_name(f.name) for f in files):
            pattern = open_columnar_files(files, _column(folders, Path(spec)), follow_links, f"files {spec}")
            follow = f"#{FOLLOW_LINKS}" if follow_links else ""
        else:
            pattern, follow = open_pattern(spec, files, arg, folders), ""
        pattern.spec = os.path.abspath(spec) + follow + labelled_by  # braces and all: reopened by expanding again
        return _non_empty(pattern, arg, spec)
    path = Path(spec)
    if label_sets:
        if not path.is_dir():
            raise HashindexError(f"{arg}={spec}#{LABEL_SETS}: " + ("label sets are read from a folder tree"
                                 if path.exists() else "no such directory"))
    named = named_split is not None
    if named:
        path, split = Path(bare), named_split
    if not path.exists():
        raise HashindexError(f"{arg}={spec}: no such file or directory")
    try:
        source = FolderSource(path, follow_links, label_sets=True, folders=folders) if label_sets else \
            _open_path(path, split or "train", follow_links, folders)
    except HashindexError as e:
        raise HashindexError(f"{arg}={e}") from None
    if source is None:
        raise HashindexError(f"{arg}={spec}: expected a folder, a .tar (.gz, .bz2, .xz) or .zip, a brace pattern of "
                             "tars, a .txt/.csv list, Parquet or Arrow files, IDX, CIFAR, STL-10 or SVHN files, or an "
                             "image file")
    if labelled_by and not labelled_by_folders(source) and not _by_column(source, folders):
        raise HashindexError(f"{arg}={spec}{labelled_by}: classes are named by folders in a folder tree, a tar or "
                             f"zip, or tar shards; {source.description} has labels of its own")
    # a folder of splits (a .mat file is one)
    split_named = isinstance(source, (ArraySource, ColumnarSource)) and path.is_dir()
    if named and (not split_named or (split == "validation" and not isinstance(source, ColumnarSource))):
        raise HashindexError(f"{arg}={spec}: {source.description} has no '{split}' split (a split names part of a "
                             "dataset folder: train or test of IDX, CIFAR, STL-10 or SVHN files; train, test or "
                             "validation of Parquet or Arrow files)")
    source.spec = (str(path.resolve()) + (f":{split or 'train'}" if split_named else "")
                   + (f"#{FOLLOW_LINKS}" if follow_links and (path.is_dir() or isinstance(source, ColumnarSource))
                      else "")
                   + (f"#{LABEL_SETS}" if label_sets else "") + labelled_by)
    return _non_empty(source, arg, spec)


def reopen_source(spec: str) -> ImageSource:
    """Open a source from its recorded ``spec`` (with #limit= / #every= selections)."""
    base, *selections = spec.split("#")
    options = [sel for sel in selections if sel == LABEL_SETS or sel.startswith(f"{LABELS}=")]
    source = open_source("#".join([base, *options]), "source", follow_links=FOLLOW_LINKS in selections)
    for sel in selections:
        if sel == FOLLOW_LINKS or sel in options:
            continue
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


def _named_split(spec: str) -> tuple[str, str | None]:
    """``DIR:test`` -> (``DIR``, ``test``) for a split in `NAMED_SPLITS`; any other spec, or one that is itself
    an existing path (a file may be named ``x:test``), -> (spec, None)."""
    head, _, tail = spec.rpartition(":")
    if head and tail in NAMED_SPLITS and not Path(spec).exists():
        return head, tail
    return spec, None


def _options(spec: str, arg: str) -> tuple[str, bool, str]:
    """(spec, label sets?, folder labels): the options ``#label-sets`` and ``#labels=parent|top|path`` (or, for
    Parquet and Arrow files, ``#labels=COLUMN``) split off the end of a spec; a path that exists as written is
    never split (a folder may be named ``x#y``)."""
    label_sets, folders = False, "parent"
    while "#" in spec and not Path(spec).exists():
        head, _, option = spec.rpartition("#")
        if option == LABEL_SETS:
            label_sets = True
        elif option.startswith(f"{LABELS}="):
            folders = option.partition("=")[2]  # a folder choice, or a column of a table file
            if not folders:
                raise HashindexError(f"{arg}={spec}: #{option}: expected #{LABELS}=parent, top or path, or a "
                                     "Parquet or Arrow file's label column")
        else:
            break
        spec = head
    return spec, label_sets, folders


def _open_path(path: Path, split: str, follow_links: bool = False, folders: str = "parent") -> ImageSource | None:
    """The source type a path is, or None if it is none of them; ``folders``: which folder names a class."""
    name = path.name.lower()
    if path.is_dir():
        if (path / "prepared.json").is_file():  # hashindex prepare's output (h5py: imported only then)
            from .prepared import PreparedSource

            return PreparedSource(path)
        if _find(path, "train-images-idx3-ubyte") or _find(path, "t10k-images-idx3-ubyte"):
            return idx_source(path, split)
        if (path / "data_batch_1").exists() or (path / "cifar-10-batches-py").is_dir():
            return cifar_source(path, split)
        if is_cifar100(path):
            return cifar100_source(path, split)
        if is_stl10(path):
            return stl10_source(path, split)
        if is_svhn(path):
            return svhn_source(path, split)
        folder = FolderSource(path, follow_links, folders=folders if folders in FOLDER_LABELS else "parent")
        tables = [p for p in folder.paths if is_columnar_name(p)]
        if tables and not folder.containers and not any(name_suffix(p) in IMAGE_EXTENSIONS for p in folder.paths):
            return open_columnar(path, split, _column(folders, path), tables, follow_links)  # (and its card)
        if folders not in FOLDER_LABELS:
            raise HashindexError(f"{path}#{LABELS}={folders}: expected #{LABELS}=parent, top or path (a label "
                                 "column is chosen so in Parquet and Arrow files only)")
        if not folder.containers:
            return folder
        parts = ([("", folder)] if len(folder) else []) + shard_parts([path / c for c in folder.containers], path,
                                                                      folders)
        return ConcatSource(parts, f"folder {path} ({len(folder.containers)} archives)")
    if is_columnar_name(name):
        return open_columnar(path, split, _column(folders, path), follow_links=follow_links)
    if name.endswith(TAR_EXTENSIONS):
        return TarSource(path, folders)
    if name.endswith(ZIP_EXTENSIONS):
        return ZipSource(path, folders)
    if is_svhn(path):  # a .mat file (folders were decided above)
        return svhn_source(path, split)
    if name.endswith(LIST_EXTENSIONS):
        text = read_list(path)  # read once: a list of shards, of Parquet or Arrow files, or of images
        entries = list_entries(text)
        shards = shard_list(path, entries)
        if shards is not None:
            return open_shard_list(path, shards, folders)
        tables = shard_list(path, entries, is_columnar_name)
        if tables is not None:
            return open_columnar_files(listed_files(path, tables, "files"), _column(folders, path), follow_links,
                                       f"list {path}")
        if shard_list(path, entries, lambda e: is_tar_name(e) or is_columnar_name(e)) is not None:
            raise HashindexError(f"{path}: lists both tars and Parquet/Arrow files; a list names one kind "
                                 "(tars, tables or images): make one list of each")
        return ListSource(path, text)
    if path.is_file() and is_image_name(name):
        return FilesSource([str(path)], f"image {path}")
    return None


def _column(folders: str, path: Path) -> str | None:
    """The label column a ``#labels=`` option names in a Parquet or Arrow spec (None: the default choice)."""
    if folders in ("top", "path"):
        raise HashindexError(f"{path}#{LABELS}={folders}: classes of Parquet or Arrow rows come from a column, not "
                             f"folders (#{LABELS}=COLUMN)")
    return None if folders == "parent" else folders


def _by_column(source: ImageSource, folders: str) -> bool:
    """Whether ``#labels=`` named the label column of a Parquet or Arrow source (recorded in its spec like a folder
    choice)."""
    return isinstance(source, ColumnarSource) and folders == source.label_column


def names_a_collection(path: Path) -> bool:
    """``path`` is read as a collection of images (a folder, a tar, a list, SVHN's .mat), not as one image."""
    archive_or_list = path.name.lower().endswith(TAR_EXTENSIONS + ZIP_EXTENSIONS + LIST_EXTENSIONS
                                                 + COLUMNAR_EXTENSIONS)
    return path.is_dir() or archive_or_list or is_svhn(path)


def _non_empty(source: ImageSource, arg: str, spec: str) -> ImageSource:
    """The source, unless it lists nothing to read: no items, or only items skipped by their names (a folder of
    other files: a shard directory given as --data would be extracted into an empty one)."""
    if len(source) == 0:
        raise HashindexError(f"{arg}={spec}: holds no images")
    if len(source.unread) == len(source):
        reasons = Counter(reason for reason, _ in source.unread.values())
        entries = f"{len(source)} entries" if len(source) > 1 else "1 entry"
        raise HashindexError(f"{arg}={spec}: holds no images it can read ({entries}, each skipped: "
                             + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) + ")")
    return source
