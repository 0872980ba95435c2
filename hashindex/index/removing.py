"""`remove`: items taken out of an INDEX_DIR (photos deleted from a collection, a takedown request).

The remaining items keep their ids, labels, codes and order; positions after a removed item move down. A part
that held none of the removed items is hard-linked into the new directory; a binary part that held one is rebuilt
from the codes the table stores (IVF keeps its trained quantizer), its float store loses the rows in place
(Faiss ``remove_ids`` compacts a flat-codes store: the other rows' bytes unchanged), and a part left empty is
dropped. The new directory is swapped in as a build's is (`writing.replacing`), so INDEX_DIR is complete at every
moment, and index.json records each removal (how many, the largest id, so the service never gives a removed
id to a new item). The shard directories the index was built from are not touched.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from ..errors import HashindexError
from ..files import atomic_write_json
from ..codes import pad_codes
from .faiss_files import buckets_file, read_float, write_binary, write_float
from .layout import (BINARY_FILE, HEAD_FILE, INDEX_JSON, RERANK_FILE, TABLE_FILE, bucketed, check_index,
                     find_ids, label_set_classes, memory_figures, new_table, open_table, part_file, read_index_meta,
                     read_table, record_checksums, rerank_files, table_columns)
from .writing import binary_names, check_before_lock, empty_part, exclusive_index, link_or_copy, replacing


def remove(index_dir: str | Path, ids: Iterable[int] = (), paths: Iterable[str] = (), *, progress: bool = True,
           log=print) -> dict[str, Any]:
    """Take the items with these ids, and those recorded with these paths, out of INDEX_DIR; returns the new
    index.json. Every id and path must name an item (a path recorded for several items is refused: remove
    those by id), and at least one item must remain."""
    t0 = time.time()
    index_dir = Path(index_dir)
    ids, paths = np.asarray(list(ids), dtype=np.int64), [str(p) for p in paths]
    if not len(ids) and not paths:
        raise HashindexError("ids, paths: name at least one item to remove")
    check_before_lock(index_dir, "index_dir")
    with exclusive_index(index_dir, "index_dir"):
        meta = read_index_meta(index_dir)
        check_index(index_dir, meta)
        gone = removed_positions(index_dir, ids, paths)
        if len(gone) == meta["count"]:
            raise HashindexError(f"index_dir={index_dir}: that would remove all {meta['count']} items "
                                 "(delete the directory instead)")
        return _remove(meta, index_dir, gone, t0, progress, log)


def removed_positions(index_dir: Path, ids: np.ndarray, paths: list[str]) -> np.ndarray:
    """The sorted, distinct positions of the items named by id or by recorded path (one-line errors for names
    that match no item, and for a path that matches several)."""
    table = read_table(index_dir, ("ids", "paths") if paths else ("ids",))
    at, found = find_ids(table["ids"], np.argsort(table["ids"], kind="stable"), ids)
    if not found.all():
        missing = ids[~found]
        raise HashindexError(f"ids: {len(missing)} not in {index_dir} (e.g. id {missing[0]}; already removed?)")
    positions = [at]
    if paths:
        recorded = np.array([p.decode() if isinstance(p, bytes) else p
                             for p in table["paths"]], dtype=object)
        for path in dict.fromkeys(paths):
            hits = np.flatnonzero(recorded == path)
            if len(hits) != 1:
                raise HashindexError(f"paths: {path!r} is recorded for no item of {index_dir}" if not len(hits) else
                                     f"paths: {path!r} is recorded for {len(hits)} items of {index_dir} (ids "
                                     f"{', '.join(str(i) for i in table['ids'][hits[:5]])}): remove them by id")
            positions.append(hits)
    return np.unique(np.concatenate(positions))


def _remove(meta: dict[str, Any], index_dir: Path, gone: np.ndarray, t0: float, progress: bool, log
            ) -> dict[str, Any]:
    """The work of `remove`, under the index's lock."""
    n = meta["count"]
    keep = np.ones(n, bool)
    keep[gone] = False
    before = np.concatenate([[0], np.cumsum(keep)])  # old position p -> new position before[p]
    removed_ids = read_table(index_dir, ("ids",), gone)["ids"]
    with replacing(index_dir) as tmp:
        reuse: dict[str, str] = {}
        binary_meta = _rewrite_parts(meta, index_dir, tmp, keep, before, reuse, progress)
        rerank_meta = _rewrite_float(meta, index_dir, tmp, keep, before, reuse)
        _copy_kept_rows(index_dir, tmp / TABLE_FILE, keep, meta["code_bytes"])
        if (index_dir / HEAD_FILE).exists():
            link_or_copy(index_dir / HEAD_FILE, tmp / HEAD_FILE)
            reuse[HEAD_FILE] = (meta.get("files") or {}).get(HEAD_FILE)
        count = int(keep.sum())
        new_meta = {**meta, "count": count, "binary": binary_meta, "rerank": rerank_meta,
                    "removed": meta.get("removed", []) + [{
                        "count": len(gone), "max_id": int(removed_ids.max()),
                        "removed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "remove_s": round(time.time() - t0, 3)}],
                    "memory": memory_figures(tmp, count, binary_names(binary_meta),
                                             rerank_files({"rerank": rerank_meta}))}
        if meta.get("appended"):
            new_meta["appended"] = [{**e, "start": int(before[e["start"]]), "stop": int(before[e["stop"]])}
                                    for e in meta["appended"]]
        new_meta["files"] = record_checksums(tmp, reuse={k: v for k, v in reuse.items() if v})
        atomic_write_json(tmp / INDEX_JSON, new_meta)
    log(f"removed {len(gone)} items from {index_dir}: {count} items now, {time.time() - t0:.1f} s")
    return new_meta


def _ranges(entry: dict[str, Any], single: str, n: int) -> list[tuple[str, int, int]]:
    """(file, start, stop) of each part of a "binary" or "rerank" entry (one part over [0, n) when unsharded)."""
    shards = entry.get("shards")
    return [(s["file"], s["start"], s["stop"]) for s in shards] if shards else [(single, 0, n)]


def _rewrite_parts(meta: dict[str, Any], index_dir: Path, tmp: Path, keep: np.ndarray, before: np.ndarray,
                   reuse: dict[str, str | None], progress: bool) -> dict[str, Any]:
    """Write the binary parts without the removed rows into ``tmp``; returns the new "binary" entry."""
    codes = functools.cache(lambda: read_table(index_dir, ("codes",))["codes"])  # read once, if a part is rebuilt

    def rebuild(name: str, start: int, stop: int, kept: np.ndarray, path: Path) -> None:
        part = empty_part(meta, index_dir, name)
        part.add(pad_codes(codes()[start:stop][kept], meta["binary"]["padded_bytes"]))
        write_binary(part, path)

    return _rewrite(meta, "binary", BINARY_FILE, index_dir, tmp, keep, before, reuse, rebuild,
                    buckets_file if bucketed(meta) else None, progress)


def _rewrite_float(meta: dict[str, Any], index_dir: Path, tmp: Path, keep: np.ndarray, before: np.ndarray,
                   reuse: dict[str, str | None]) -> dict[str, Any]:
    """Write the float store's parts without the removed rows into ``tmp``; returns the new "rerank" entry."""
    if meta["rerank"]["kind"] == "none":
        return dict(meta["rerank"])

    def compact(name: str, start: int, stop: int, kept: np.ndarray, path: Path) -> None:
        store = read_float(index_dir / name, mmap=False)
        store.remove_ids(np.flatnonzero(~kept).astype(np.int64))  # order-preserving compaction
        write_float(store, path)

    return _rewrite(meta, "rerank", RERANK_FILE, index_dir, tmp, keep, before, reuse, compact)


def _rewrite(meta: dict[str, Any], key: str, single: str, index_dir: Path, tmp: Path, keep: np.ndarray,
             before: np.ndarray, reuse: dict[str, str | None], rewrite, companion=None, progress: bool = False
             ) -> dict[str, Any]:
    """The parts of index.json's ``key`` store ("binary" or "rerank") without the removed rows, in ``tmp``: a
    part left empty is dropped, one untouched is hard-linked (with its ``companion(file)``, a bucket table),
    any other is written by ``rewrite(file, start, stop, kept rows, new path)``; parts are renumbered in
    order. Returns the store's new entry."""
    entry, sums, entries = dict(meta[key]), meta.get("files") or {}, []
    sharded = "shards" in entry
    parts = _ranges(entry, single, meta["count"])
    for name, start, stop in tqdm(parts, desc="remove", unit="part", disable=not progress or len(parts) < 2):
        kept = keep[start:stop]
        if not kept.any():
            continue  # a part left empty is dropped
        new = part_file(key, len(entries)) if sharded else single
        if kept.all():
            for old, to in [(name, new)] + ([(companion(name), companion(new))] if companion else []):
                link_or_copy(index_dir / old, tmp / to)
                reuse[to] = sums.get(old)
        else:
            rewrite(name, start, stop, kept, tmp / new)
        entries.append({"file": new, "start": int(before[start]), "stop": int(before[stop])})
    if sharded:
        entry["shards"] = entries
    return entry


def _copy_kept_rows(index_dir: Path, path: Path, keep: np.ndarray, code_bytes: int, step: int = 1 << 20) -> None:
    """The table without the removed rows, copied a block of rows at a time."""
    with open_table(index_dir) as old, \
            new_table(path, int(keep.sum()), code_bytes, label_set_classes(index_dir)) as table:
        for name in table_columns(old):
            pos = 0
            for lo in range(0, len(keep), step):
                rows = old[name][lo:lo + step][keep[lo:lo + step]]
                table[name][pos:pos + len(rows)] = rows
                pos += len(rows)
