"""What `build`, `append` and `remove` share: the lock of an index directory, filling the binary index parts,
float stores and table from a shard directory, and replacing the directory atomically.

An INDEX_DIR is written in a temp folder beside it and swapped into place in one step (`replacing`), so a
directory named INDEX_DIR is always there and complete; a killed build or append leaves only temp folders,
which the next one under the same lock removes (where folders cannot be swapped in one step, a kill between
the two renames that replace them leaves the old index moved aside, and the next one puts it back).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import faiss
from tqdm import tqdm

from ..errors import HashindexError
from ..files import exchange, exclusive, sha256_file
from ..codes import pad_codes
from ..signals import Head, database_vectors, feature_field
from ..store import MANIFEST, ShardSet
from .buckets import BucketedBinary
from .kinds import make_binary_index
from .faiss_files import faiss_reads
from .layout import (INDEX_JSON, aside_path, binary_files, bucket_files, bucketed, leftovers, moved_aside,
                     new_temp_folder, read_index_meta, table_columns)


def open_shards(directory: str | Path, arg: str) -> ShardSet:
    """The shard directory a build or an append reads; an index directory given in its place is named as one
    (the store cannot tell: it knows no index)."""
    if (Path(directory) / INDEX_JSON).exists():
        raise HashindexError(f"{arg}={directory}: an index directory; expected a shard directory (the one "
                             "hashindex extract wrote)")
    return ShardSet(directory, arg)


def check_shards(shards: ShardSet, rerank: str) -> None:
    """One-line errors for a shard directory that cannot be indexed with this float store."""
    if shards.rows == 0:
        raise HashindexError(f"shard_dir={shards.dir}: holds no rows")
    if rerank != "none" and shards.manifest["feature_dtype"] == "none":
        raise HashindexError(f"rerank={rerank}: {shards.dir} was extracted with features=none; "
                             "use rerank=none or extract features")


def source_entry(store: ShardSet) -> dict[str, Any]:
    """Where an index's rows came from: the shard directory, its manifest's checksum, and the collection it
    was extracted from (fingerprint and spec: how `eval` knows queries that are indexed items)."""
    src = store.manifest["source"]
    return {"dir": str(store.dir.resolve()), "manifest_sha256": sha256_file(store.dir / MANIFEST),
            "fingerprint": src["fingerprint"], "spec": src.get("spec")}


@contextlib.contextmanager
def exclusive_index(index_dir: Path, arg: str = "out") -> Iterator[None]:
    """The lock of INDEX_DIR: one build, append or removal of it at a time, so none loses another's rows. Taken,
    it first puts back an index a write killed in the middle of its swap had moved aside (`_put_back`)."""
    with exclusive(index_dir, f"{arg}={index_dir}: another append to it is running, or a build or a removal"):
        _put_back(Path(index_dir))
        yield


def check_before_lock(index_dir: Path, arg: str) -> None:
    """A clear error for an INDEX_DIR that is not an index, before any lock file is made beside it; none where a
    killed swap left its index moved aside (`exclusive_index` puts it back)."""
    if moved_aside(index_dir) is None:
        read_index_meta(index_dir, arg)


def binary_names(binary_meta: dict[str, Any]) -> list[str]:
    """Every file of the binary index: its graph(s) or index file(s), and their bucket tables."""
    meta = {"binary": binary_meta}
    return binary_files(meta) + bucket_files(meta)


def empty_part(meta: dict[str, Any], index_dir: Path, name: str) -> faiss.IndexBinary | BucketedBinary:
    """An empty binary index of the index's kind and parameters for new rows of part ``name``: IVF keeps the
    part's trained quantizer (every part shares it); other kinds are made anew from index.json."""
    binary_meta = meta["binary"]
    if binary_meta["kind"] == "ivf":
        with faiss_reads(index_dir / name):
            part = faiss.read_index_binary(str(index_dir / name))
        part.reset()
        return part
    part = make_binary_index(binary_meta["kind"], binary_meta["padded_bytes"] * 8, binary_meta)
    if isinstance(part, BucketedBinary) and not bucketed(meta):
        part = part.graph  # an index built before graphs over distinct codes keeps its kind of part
    return part


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link an unchanged file into the new index folder (a copy across file systems).

    Safe because index files are only ever replaced, never modified in place.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fill(store: ShardSet, parts: list, fparts: list, bounds: list[int], pbytes: int, table,
         pos: int, progress: bool, signal: str = "l2", head: Head | None = None) -> None:
    """Add every shard's codes and signal vectors to the indexes and its rows to the table from position ``pos``.

    Rows go to binary index j (and float store j, when there are float parts) when their position lies in
    [bounds[j], bounds[j+1]).
    """
    columns = table_columns(table)
    field = feature_field(signal)
    fields = columns + ((field,) if fparts else ())
    for rows in tqdm(store.iter_rows(fields), total=len(store.shard_paths()), desc="build", unit="shard",
                     disable=not progress):
        codes = rows["codes"]
        m = len(codes)
        padded = pad_codes(codes, pbytes)
        vecs = database_vectors(signal, rows[field], codes, head) if fparts else None
        for j, part in enumerate(parts):
            lo, hi = max(bounds[j], pos), min(bounds[j + 1], pos + m)
            if lo < hi:
                part.add(padded[lo - pos:hi - pos])
                if fparts:
                    fparts[j].add(vecs[lo - pos:hi - pos])
        for name in columns:
            if rows[name] is not None:  # (input digests of shards extracted before them: left 0, "not known")
                table[name][pos:pos + m] = rows[name]
        pos += m


@contextlib.contextmanager
def replacing(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out`` that replaces it when the block succeeds and is removed if it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = new_temp_folder(out)
    try:
        yield tmp
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _put_back(out: Path) -> None:
    """A write killed between its two renames (where folders cannot be swapped in one step) left no ``out`` and
    the complete index it was replacing moved aside: put that back (called under the lock)."""
    aside = moved_aside(out)
    if aside is not None:
        aside.rename(out)


def _remove_leftovers(out: Path) -> int:
    """Remove the temp and old folders of killed builds or appends of ``out`` (called under its lock)."""
    stale = leftovers(out)
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Put the finished temp folder at ``out``, replacing an old index if present: swapped in one step where the
    system can (`files.exchange`), else renamed aside and replaced (a kill between the two renames is mended by
    `exclusive_index`)."""
    if not out.exists():
        tmp.rename(out)
        return
    if exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # the old index, now at the temp name
        return
    old = aside_path(out)
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
