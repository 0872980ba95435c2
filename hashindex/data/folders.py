"""A folder tree of image files as a source: each file an item or a counted skip, labels from folders or
sidecars, links out of the tree refused unless asked, and (label sets) copies of one photo merged into one item.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import HashindexError
from ..targets import first_labels
from .images import BadImage
from .members import is_archive_name, is_hidden
from .sources import ImageSource, items_of, read_file


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class FolderSource(ImageSource):
    """A folder tree of image files; label = the image's parent folder name (or the first folder under the root,
    or the folder path: ``folders``, `folder_label`), or its ``.cls`` / ``.json`` sidecar's.

    Every file in the tree is an item or a counted skip (see hashindex.data.members); tar files in it are
    not items but ``containers`` (so are zips), opened as shards by `open_source`. Symbolic links that lead out of the
    folder are not followed unless ``follow_links=True`` (each is a counted ``outside-root`` skip), and a
    symlink loop is walked once.
    """
    folder_labels = True

    def __init__(self, root: str | Path, follow_links: bool = False, label_sets: bool = False,
                 folders: str = "parent"):
        self.root = Path(root)
        real_root = os.path.realpath(self.root)
        names: list[str] = []
        outside: dict[str, tuple[str, str]] = {}
        self.containers: list[str] = []  # tars and zips found in the tree (relative paths)
        seen: set[tuple[int, int]] = set()  # directories walked, by (device, inode): a symlink loop is walked once
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            for d in sorted(dirnames):
                full = os.path.join(dirpath, d)
                if is_hidden(d):  # one counted skip for the folder, not walked (a .git or .thumbnails tree)
                    dirnames.remove(d)
                    names.append(os.path.relpath(full, self.root))
                elif not follow_links and os.path.islink(full) and not _inside(full, real_root):
                    dirnames.remove(d)
                    rel = os.path.relpath(full, self.root)
                    names.append(rel)
                    outside[rel] = ("outside-root", f"{rel}: a link to a folder outside {self.root} "
                                    "(follow_links=True to read it)")
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root)
                if not follow_links and os.path.islink(full) and not _inside(full, real_root):
                    outside[rel] = ("outside-root", f"{rel}: a link to a file outside {self.root} "
                                    "(follow_links=True to read it)")
                elif is_archive_name(name) and not is_hidden(name):
                    self.containers.append(rel)
                    continue
                names.append(rel)
        paths, labels, class_names, unread, sets = items_of(names, outside, lambda n: _read_small(self.root / n),
                                                            f"folder {self.root}", folders)
        description = f"folder {self.root}"
        self.copies = 0  # files merged into another item with the same bytes (label_sets=True)
        if label_sets:
            if self.containers:
                raise HashindexError(f"{self.root}#label-sets: holds archives ({self.containers[0]}); label sets "
                                     "are read from a folder of image files")
            paths, sets, unread, self.copies = _merge_copies(self.root, paths, labels, sets, unread,
                                                             len(class_names))
            labels = first_labels(sets)
            description += f" (label sets from folders; {self.copies} copies merged)"
        super().__init__(description, paths, labels, class_names, unread=unread, label_sets=sets)

    def read_bytes(self, i: int) -> bytes:
        self._refuse_unread(i)
        return read_file(self.root / self.paths[i])


def _merge_copies(root: Path, paths: list[str], labels: np.ndarray, sets: np.ndarray | None,
                  unread: dict[int, tuple[str, str]], classes: int
                  ) -> tuple[list[str], np.ndarray, dict[int, tuple[str, str]], int]:
    """A folder tree read as label sets: files with the same bytes (a photo copied into each album or class
    folder it belongs to) become one item, at its first path, whose label set is every copy's labels.
    Returns (paths, label sets, unread by new position, copies merged). Only files of equal size are hashed."""
    import hashlib

    if sets is None:  # one class per file so far: its folder's
        sets = np.zeros((len(paths), classes), bool)
        sets[np.flatnonzero(labels >= 0), labels[labels >= 0]] = True
    else:
        sets = sets.copy()
    by_size: dict[int, list[int]] = {}
    for i, path in enumerate(paths):
        if i not in unread:
            try:
                by_size.setdefault((root / path).stat().st_size, []).append(i)
            except OSError:
                continue  # unreadable now: extraction counts it as a skip
    first_of = np.arange(len(paths))
    for group in (g for g in by_size.values() if len(g) > 1):
        seen: dict[bytes, int] = {}
        for i in group:
            try:
                digest = hashlib.sha256(read_file(root / paths[i])).digest()
            except BadImage:
                continue
            first_of[i] = seen.setdefault(digest, i)
    copies = first_of != np.arange(len(paths))
    np.logical_or.at(sets, first_of[copies], sets[copies])
    keep = np.flatnonzero(~copies)
    new_at = {int(old): new for new, old in enumerate(keep)}
    return ([paths[i] for i in keep], sets[keep], {new_at[i]: r for i, r in unread.items() if i in new_at},
            int(copies.sum()))


def _read_small(path: Path, limit: int = 1 << 20) -> bytes:
    """A label sidecar's bytes ('' for anything unreadable, a special file or over 1 MiB)."""
    try:
        data = read_file(path)
    except BadImage:
        return b""
    return data if len(data) <= limit else b""
