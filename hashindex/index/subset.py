"""Searching some of an index's items: those of some classes, under some folders, or of given ids.

`Only` names the items (classes OR'ed, folders OR'ed, ids; the three kinds AND'ed); `restrict` gives an `Index`
over exactly them, so everything that searches an index (`query.search_vectors`, the services, the batch job)
searches the subset unchanged. The ranking is the one an index built from those items alone would give (ties in
position order, the fine stage on the same stored vectors; tested against an index built from the subset), with
one difference: a small subset (`WHOLE`) is re-ranked whole by default, since the items allowed nearest a query
are often far from it in Hamming distance (a photo of a tulip, results among roses), where a pool of the first
1,000 by Hamming finds a third of them. The coarse stage scans the subset's codes exactly, whatever the parent's
kind: an IVF or HNSW index would drop allowed items its probes miss, and narrow filters would leave its top k
mostly empty. A scan of 1M codes takes ~0.6 ms a query here (docs/RESULTS.md, "Search"), so a subset costs at
most a flat search of its own size, once built; building reads the subset's codes from the table (the paths too
for ``folders``) and is kept for the next search with the same filter (`KEEP` filters per index).

Results report the parent's ids, paths and labels; `SubsetIndex.local` maps the parent's positions in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from ..codes import pad_codes
from ..errors import HashindexError
from .faiss_files import fast_topk
from .pool import FINE_BUDGET
from .searcher import Index, SearchResult

KEEP = 8  # filters whose subset an index keeps built (a service answers the same few filters again and again)
# A subset whose stored vectors fit in this many read budgets (`FINE_BUDGET`: 10,000 items of 192-d features) is
# re-ranked whole by default. Measured at 1M items filtered to one class of 100 (9,877 items, queries from every
# class): the default pool of 1,000 found 0.34 of the 10 allowed items nearest by the signal, the whole subset
# all of them, 1.6 ms a query against the unfiltered search's 2.05 (tools/bench_filter.py, docs/RESULTS.md).
WHOLE = 10
_READ_ALL = 64  # read the whole codes column when the subset is more than 1/64 of it (h5py's point reads are slow)


FIELDS = ("classes", "folders", "ids", "not_classes", "not_folders")
ARGS = ("only_class", "only_folder", "only_ids", "not_class", "not_folder")  # their names on the CLI and service


@dataclass(frozen=True)
class Only:
    """Which items a search may return: of any of ``classes`` (class names; a multi-label item carrying any),
    under any of ``folders`` (its path as `query` shows it starts with the folder), among ``ids``, of none of
    ``not_classes`` and under none of ``not_folders`` (other photos than the query's album, say). Empty fields
    do not restrict; an empty `Only` is no filter."""

    classes: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    not_classes: tuple[str, ...] = ()
    not_folders: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in FIELDS)

    def record(self) -> dict[str, list]:
        """As JSON (a batch job records its filter, so a resume with another one is refused)."""
        return {f: list(getattr(self, f)) for f in FIELDS if getattr(self, f)}

    @classmethod
    def from_record(cls, record: dict[str, list]) -> "Only":
        return cls(*(tuple(record.get(f, ())) for f in FIELDS))

    def describe(self) -> str:
        parts = [f"{arg}={list(getattr(self, f))[:5]!r}" for f, arg in zip(FIELDS, ARGS) if getattr(self, f)]
        return ", ".join(parts) + (" ..." if len(self.ids) > 5 else "")


def only(classes=(), folders=(), ids=(), not_classes=(), not_folders=()) -> Only | None:
    """An `Only` from any iterables (the CLI's repeated flags, a service's comma lists), None when all are empty."""
    o = Only(tuple(str(c) for c in classes), tuple(str(f) for f in folders), tuple(int(i) for i in ids),
             tuple(str(c) for c in not_classes), tuple(str(f) for f in not_folders))
    return o if o else None


def matching(index: Index, where: Only) -> np.ndarray:
    """Positions (ascending) of the items ``where`` allows; a one-line error for a class the index does not
    have, a folder no item is under, an id it does not hold, or a filter nothing passes."""
    mask = np.ones(index.count, bool)
    if where.classes:
        mask &= _of_classes(index, where.classes)
    if where.folders:
        mask &= _under(index, where.folders)
    if where.not_classes:
        mask &= ~_of_classes(index, where.not_classes, "not_class")
    if where.not_folders:
        mask &= ~_under(index, where.not_folders, "not_folder")
    if where.ids:
        found = index.positions_of(np.asarray(where.ids, np.int64), missing=-1)
        if (found < 0).any():
            raise HashindexError(f"only_ids={int(np.asarray(where.ids)[found < 0][0])}: no item with this id "
                                 f"in {index.dir or 'the index'}")
        chosen = np.zeros(index.count, bool)
        chosen[found] = True
        mask &= chosen
    positions = np.flatnonzero(mask)
    if not len(positions):
        raise HashindexError(f"{where.describe()}: no item of the index passes all of these")
    return positions


def _of_classes(index: Index, classes: tuple[str, ...], arg: str = "only_class") -> np.ndarray:
    names = list(index.class_names)
    for c in classes:
        if c not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise HashindexError(f"{arg}={c!r}: no such class in the index (its classes: {shown or 'none'})")
    wanted = [names.index(c) for c in classes]
    targets = index.targets()
    return targets[:, wanted].any(axis=1) if targets.ndim == 2 else np.isin(targets, wanted)


def _under(index: Index, folders: tuple[str, ...], arg: str = "only_folder") -> np.ndarray:
    paths = index.paths(np.arange(index.count))
    mask = np.zeros(index.count, bool)
    for folder in folders:
        prefix = folder.strip("/")
        if not prefix:
            raise HashindexError(f"{arg}={folder!r}: expected a folder of the collection (e.g. 'cats' or "
                                 "'2024/june'), as paths show it")
        hits = np.fromiter((p == prefix or p.startswith(prefix + "/") for p in paths), bool, len(paths))
        if not hits.any():
            raise HashindexError(f"{arg}={folder!r}: no indexed item's path is under it "
                                 f"(paths look like {paths[0]!r})")
        mask |= hits
    return mask


class _Rows:
    """The parent's float store seen through the subset's positions: what `Index` reads of a store."""

    def __init__(self, store: Any, base: np.ndarray):
        self.store, self.base, self.d, self.ntotal = store, base, store.d, len(base)

    def reconstruct_batch(self, positions: np.ndarray) -> np.ndarray:
        return self.store.reconstruct_batch(self.base[np.asarray(positions, np.int64)])


class SubsetIndex(Index):
    """An `Index` over some items of ``parent`` (``base``: their positions there, ascending)."""

    def __init__(self, parent: Index, base: np.ndarray):
        self.parent, self.base = parent, base
        pbytes = parent.meta["binary"]["padded_bytes"]
        binary = fast_topk(faiss.IndexBinaryFlat(pbytes * 8))  # as a built flat index is read (faiss_files)
        binary.add(pad_codes(_codes(parent, base), pbytes))
        meta = dict(parent.meta, count=len(base), binary={"kind": "flat", "padded_bytes": pbytes})
        rows = _Rows(parent.rerank, base) if parent.rerank is not None else None
        label_sets = parent.label_sets[base] if parent.label_sets is not None else None
        super().__init__(meta, binary, rows, parent.ids[base], parent.labels[base], parent.dir, parent.head,
                         label_sets)
        whole = rows is not None and len(base) * rows.d <= WHOLE * FINE_BUDGET
        self.default_candidates = len(base) if whole else parent.default_candidates

    def local(self, positions: np.ndarray) -> np.ndarray:
        """The subset's positions of parent positions (-1 where the item is not in the subset, or was -1)."""
        positions = np.asarray(positions, np.int64)
        at = np.minimum(np.searchsorted(self.base, positions), len(self.base) - 1)
        return np.where((positions >= 0) & (self.base[at] == positions), at, -1)

    def positions_of_inputs(self, digests: np.ndarray) -> np.ndarray:
        return self.local(self.parent.positions_of_inputs(digests))

    def _column(self, name: str, positions: np.ndarray | None = None) -> np.ndarray:
        return self.parent._column(name, self.base if positions is None else self.base[positions])

    def float_distances(self, features: np.ndarray, pos: np.ndarray, *, vectors: bool = False) -> np.ndarray:
        pos = np.asarray(pos, np.int64)
        mapped = np.where(pos < 0, pos, self.base[np.maximum(pos, 0)])
        return self.parent.float_distances(features, mapped, vectors=vectors)

    def _binary_call(self, method: str, codes: np.ndarray, arg: int, nprobe: int | None):
        self.parent.check_nprobe(nprobe)  # checked as the parent's, unused: the subset is scanned exactly
        return super()._binary_call(method, codes, arg, None)

    def search(self, codes, features=None, k: int = 10, *args, **kwargs) -> SearchResult:
        """`Index.search`; a k past the subset's size gives every item, the rest of the k columns -1."""
        if k <= self.count:
            return super().search(codes, features, k, *args, **kwargs)
        res = super().search(codes, features, self.count, *args, **kwargs)
        pad = k - self.count
        return SearchResult(*(np.pad(a, ((0, 0), (0, pad)), constant_values=fill) for a, fill in (
            (res.ids, -1), (res.positions, -1), (res.hamming, -1), (res.distance, np.nan))))


def _codes(parent: Index, base: np.ndarray) -> np.ndarray:
    """The unpadded codes of the parent's items at ``base``: from its table, or its binary index (in memory)."""
    if getattr(parent, "_table", None) is None and not isinstance(parent, SubsetIndex):
        if hasattr(parent.binary, "make_direct_map"):  # an IVF index reconstructs by id only with its map
            parent.binary.make_direct_map()
        return parent.binary.reconstruct_n(0, parent.count)[base, :parent.meta["code_bytes"]]
    if len(base) * _READ_ALL < parent.count:
        return parent._column("codes", base)
    return parent.table_codes()[base]


def restrict(index: Index, where: Only | None) -> Index:
    """``index`` itself without a filter, else the `SubsetIndex` of the items ``where`` allows (kept for the
    next search with the same filter, up to `KEEP` filters)."""
    if not where:
        return index
    kept: dict[Only, SubsetIndex] = index.__dict__.setdefault("_subsets", {})
    if where not in kept:
        view = SubsetIndex(index, matching(index, where))
        if len(kept) >= KEEP:
            kept.pop(next(iter(kept)))
        kept[where] = view
    return kept[where]
