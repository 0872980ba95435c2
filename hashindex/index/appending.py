"""`append`: a complete shard directory's items added to an existing INDEX_DIR (a collection that grows).

The new rows take positions after the old ones, so every result the index gave before keeps its
position and id. Files the append does not change are hard-linked into the new directory, which
replaces the old one as a build's does (`writing.replacing`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import HashindexError
from ..files import atomic_write_json
from ..store import ShardSet
from .faiss_files import buckets_file, read_binary, read_float, write_binary, write_float
from .layout import (BINARY_FILE, HEAD_FILE, INDEX_JSON, RERANK_FILE, TABLE_FILE, bucketed, check_index,
                     copy_table, label_set_classes, memory_figures, new_table, next_id, part_file, read_head,
                     read_index_meta, read_table, record_checksums, rerank_files, rerank_signal)
from .writing import (binary_names, check_before_lock, check_shards, empty_part, exclusive_index, fill, link_or_copy,
                      open_shards, replacing, source_entry)


def _check_appendable(meta: dict[str, Any], store: ShardSet, index_dir: Path) -> None:
    """One-line errors for shards that cannot join an existing index."""
    where = f"shard_dir={store.dir}"
    if store.model_id != meta["model_id"]:
        raise HashindexError(f"{where}: extracted with model {store.model_id}, but {index_dir} holds codes of "
                             f"model {meta['model_id']} (codes of different models cannot be compared)")
    if store.class_names and store.class_names != meta["class_names"]:
        raise HashindexError(f"{where}: classes {store.class_names[:5]} differ from the index's "
                             f"{meta['class_names'][:5]}")
    if store.multi_label != (label_set_classes(index_dir) > 0):  # the column's shape, not its (N, C) values
        kinds = ("label sets", "one class per item")
        raise HashindexError(f"{where}: holds {kinds[not store.multi_label]}, {index_dir} holds "
                             f"{kinds[store.multi_label]} (a multi-label collection joins a multi-label index)")
    dim = meta["rerank"]["dim"]
    if dim and store.manifest["feature_dim"] == 0:
        raise HashindexError(f"{where}: extracted with features=none, but {index_dir} re-ranks with features")
    if dim and rerank_signal(meta) in ("l2", "cosine") and store.manifest["feature_dim"] != dim:
        raise HashindexError(f"{where}: {store.manifest['feature_dim']}-d features, the index re-ranks {dim}-d")
    if dim and rerank_signal(meta) == "mid" and store.manifest.get("mid_feature_dim", 0) != dim:
        raise HashindexError(f"{where}: no {dim}-d mid features (extracted before hashindex stored them: extract "
                             f"again), but {index_dir} re-ranks with them")
    sha = source_entry(store)["manifest_sha256"]
    if sha in [s["manifest_sha256"] for s in [meta["source"], *meta.get("appended", [])]]:
        raise HashindexError(f"{where}: already in {index_dir}")


def _check_new_ids(meta: dict[str, Any], old_ids: np.ndarray, store: ShardSet, index_dir: Path) -> None:
    """New ids must be unique and absent from the index (results are reported by id)."""
    new_ids = np.concatenate([np.asarray(part) for part in store.memmap("ids")])
    uniq = np.unique(new_ids)
    if len(uniq) < len(new_ids):
        raise HashindexError(f"shard_dir={store.dir}: holds duplicate ids")
    clash = uniq[np.isin(uniq, old_ids, assume_unique=True)]
    if len(clash):
        raise HashindexError(
            f"shard_dir={store.dir}: {len(clash)} of its ids are already in {index_dir} (e.g. id {clash[0]}); "
            f"extract the new images with id_offset={next_id(meta, old_ids)} (or higher)")


def append(shard_dir: str | Path, index_dir: str | Path, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Add a complete shard directory's items to an existing INDEX_DIR; returns the new index.json.

    The appended rows take positions after the existing ones, so every result
    the index gave before keeps its position and id. Index kinds and parameters
    are the index's: a single binary index gets the codes added (IVF codes go
    to the lists of the existing quantizer), a ``--shards S`` index gets one
    more shard holding exactly the new rows; the float store and the table are
    rewritten with the new rows at the end. The new index is built beside the
    old one and swapped in, so INDEX_DIR is complete at every moment.
    """
    t0 = time.time()
    index_dir = Path(index_dir)
    store = open_shards(shard_dir, "shard_dir")
    check_before_lock(index_dir, "out")
    with exclusive_index(index_dir):
        meta = read_index_meta(index_dir, "out")  # as it is now that no other append runs
        check_index(index_dir, meta, "out")
        _check_appendable(meta, store, index_dir)
        check_shards(store, meta["rerank"]["kind"])
        return _append(store, meta, index_dir, t0, progress, log)


def _append(store: ShardSet, meta: dict[str, Any], index_dir: Path, t0: float, progress: bool, log
            ) -> dict[str, Any]:
    """The work of `append`, under the index's lock."""
    _check_new_ids(meta, read_table(index_dir, ("ids",))["ids"], store, index_dir)
    n_old, m = meta["count"], store.rows
    n = n_old + m
    pbytes = meta["binary"]["padded_bytes"]
    part, bounds, rewritten, binary_meta = _binary_to_grow(meta, index_dir, n)
    fpart, frewritten, rerank_meta = _float_to_grow(meta, index_dir, n)
    head = read_head(index_dir)

    with replacing(index_dir) as tmp:
        with new_table(tmp / TABLE_FILE, n, meta["code_bytes"], label_set_classes(index_dir)) as table:
            copy_table(index_dir, table, n_old)
            fill(store, [part], [fpart] if fpart is not None else [], bounds, pbytes, table, n_old, progress,
                 rerank_signal(meta), head)
        write_binary(part, tmp / rewritten)
        if fpart is not None:
            write_float(fpart, tmp / frewritten)
        kept = [name for name in binary_names(meta["binary"]) + rerank_files(meta)
                if name not in (rewritten, buckets_file(rewritten), frewritten)]
        for name in kept:
            link_or_copy(index_dir / name, tmp / name)
        if head is not None:
            link_or_copy(index_dir / HEAD_FILE, tmp / HEAD_FILE)
        new_meta = {**meta, "count": n, "binary": binary_meta, "rerank": rerank_meta,
                    "appended": meta.get("appended", []) + [{
                        **source_entry(store), "start": n_old, "stop": n,
                        "appended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "append_s": round(time.time() - t0, 3)}],
                    "memory": memory_figures(tmp, n, binary_names(binary_meta),
                                             rerank_files({"rerank": rerank_meta}))}
        linked = {name: sha for name, sha in (meta.get("files") or {}).items() if name in kept}
        new_meta["files"] = record_checksums(tmp, reuse=linked)
        atomic_write_json(tmp / INDEX_JSON, new_meta)
    shards = binary_meta.get("shards")
    log(f"appended {m} items to {index_dir}: {n} items now"
        + (f", shard {len(shards) - 1} added" if shards else "") + f", {time.time() - t0:.1f} s")
    return new_meta


def _binary_to_grow(meta: dict[str, Any], index_dir: Path, n: int
                    ) -> tuple[faiss.IndexBinary, list[int], str, dict[str, Any]]:
    """(binary index the new rows go to, its position bounds, its file name, the new "binary" entry).

    A single index is loaded whole and grows; a sharded one gets a new, empty
    shard over [count, n) (IVF: a copy of the last shard, emptied, so it keeps
    the shared quantizer).
    """
    binary_meta = dict(meta["binary"])
    shards = [dict(s) for s in binary_meta.get("shards", [])]
    if not shards:
        part = read_binary(index_dir / BINARY_FILE, False, bucketed(meta))
        return part, [0, n], BINARY_FILE, binary_meta
    part = empty_part(meta, index_dir, shards[-1]["file"])
    name = part_file("binary", len(shards))
    binary_meta["shards"] = shards + [{"file": name, "start": meta["count"], "stop": n}]
    return part, [meta["count"], n], name, binary_meta


def _float_to_grow(meta: dict[str, Any], index_dir: Path, n: int
                   ) -> tuple[faiss.Index | None, str | None, dict[str, Any]]:
    """(float store the new rows go to, its file name, the new "rerank" entry): the single store, loaded
    whole; or, for a store kept in parts, a new empty part over [count, n) (a trained copy of the last)."""
    rerank_meta = dict(meta["rerank"])
    if rerank_meta["kind"] == "none":
        return None, None, rerank_meta
    shards = [dict(s) for s in rerank_meta.get("shards", [])]
    if not shards:
        return read_float(index_dir / RERANK_FILE, mmap=False), RERANK_FILE, rerank_meta
    part = read_float(index_dir / shards[-1]["file"], mmap=False)
    part.reset()  # keeps what was trained (scalar ranges, PQ codebooks)
    name = part_file("rerank", len(shards))
    rerank_meta["shards"] = shards + [{"file": name, "start": meta["count"], "stop": n}]
    return part, name, rerank_meta
