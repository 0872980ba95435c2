"""The image behind an index position: the collections an index holds, reopened (read-only) from their specs.

A result grid (`report`) and the service's ``GET /items/ID/image`` show the indexed photos themselves. Each
collection (the one the index was built from, then each appended one: `index.layout.collections`) is reopened
once, when an image of it is first asked for, from the spec index.json records (or, for indexes built before
specs were recorded, the one its shard directory's manifest holds). A collection that is no longer where it was
read from, or whose items were never kept (images added through the service), has no images: ``None``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .errors import HashindexError


class Originals:
    """The image files of an index's items, by position (`locate`, `read_bytes`, `read`)."""

    def __init__(self, index):
        from .index.layout import collections

        self.index = index
        self._entries = collections(index.meta)
        self._opened: dict[int, Any] = {}
        self._lock = threading.Lock()  # the service asks from several threads

    def _collection(self, position: int) -> Any:
        """The reopened source of the collection holding ``position``, or None."""
        from .provenance import collection_spec

        j = next((j for j, e in enumerate(self._entries) if e["start"] <= position < e["stop"]), None)
        if j is None:
            return None
        with self._lock:
            if j not in self._opened:
                self._opened[j] = reopen_or_none(collection_spec(self._entries[j]))
            return self._opened[j]

    def reachable(self) -> bool:
        """Whether any collection of the index can be read now."""
        return any(self._collection(e["start"]) is not None for e in self._entries if e["stop"] > e["start"])

    def locate(self, position: int, path: str | None = None) -> tuple[Any, int] | None:
        """(source, item) of the image at ``position`` (``path``: its recorded path, if known), or None."""
        opened = self._collection(int(position))
        if opened is None:
            return None
        path = self.index.paths(np.array([position]))[0] if path is None else path
        item = opened.item_of(path)
        return None if item is None else (opened, item)

    def read_bytes(self, position: int, path: str | None = None) -> bytes | None:
        """The image file's bytes (None: not reachable; `BadImage` when the file is there but unreadable)."""
        found = self.locate(position, path)
        return None if found is None else found[0].read_bytes(found[1])

    def read(self, position: int, path: str | None = None, max_side: int | None = None):
        """The decoded image (a PIL image) or None; ``max_side`` as `ImageSource.read`'s."""
        found = self.locate(position, path)
        return None if found is None else found[0].read(found[1], max_side)


def reopen_or_none(spec: str | None):
    """The image source a recorded ``spec`` names, reopened, or None (no spec, or not readable there now)."""
    from .data import reopen_source

    if not spec:
        return None
    try:
        return reopen_source(spec)
    except HashindexError:
        return None
