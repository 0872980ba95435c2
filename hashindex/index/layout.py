"""The INDEX_DIR contract: file names, index.json, and the only code that opens an index's files.

An index directory holds ``index.json`` (what was built, from what, with which
kinds and parameters), the binary index file(s), the float store
(``rerank.faiss``) of the fine-stage signal's vectors, ``head.npz`` (the net's
layers above the pooled feature, hashindex.signals.Head) and ``table.h5``
(position -> id, label, unpadded code, source path). docs/FORMAT.md documents
each. Faiss files are memory-mapped where Faiss allows.
"""

from __future__ import annotations

import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import HashindexError
from ..files import file_checksums, naming, read_json, remember_verified, verify_files
from ..hdf5 import create_h5, ensure_room, open_h5
from ..schema import Check, Map, Nullable, SchemaError, hex_digest, nonneg, plain_name, positive, validate
from ..signals import SIGNALS, Head
from ..store import MANIFEST
from .faiss_files import buckets_file, read_binary, read_float
from .kinds import BINARY_KINDS, RERANK_KINDS, FloatParts, StorePart

FORMAT = "hashindex-index"
FORMAT_VERSION = 1
INDEX_JSON = "index.json"
BINARY_FILE = "binary.faiss"
RERANK_FILE = "rerank.faiss"
TABLE_FILE = "table.h5"
TABLE_PATH_BYTES = 64  # room asked for per path in table.h5 (measured: CIFAR-10 tar 19 bytes on average, flowers 50)
HEAD_FILE = "head.npz"


def _one_of(values: tuple[str, ...]) -> Check:
    return Check(str, lambda v: v in values, "one of " + ", ".join(values))


# index.json as docs/FORMAT.md documents it (what every reader may rely on; other keys are allowed). Every
# file it names must be a plain name inside the index directory: never an absolute or ../ path.
def _part(prefix: str) -> dict:
    return {"file": Check(str, lambda v: v.startswith(prefix) and v.endswith(".faiss") and "/" not in v,
                          f"a {prefix}NNN.faiss file name inside the index directory"), "start": nonneg, "stop": nonneg}


_PART, _RPART = _part("binary-"), _part("rerank-")
_SHARE = Check(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
_TUNING = {"target": _SHARE, "at": positive, "recall": _SHARE, "param": _one_of(("nprobe", "efSearch", "nflip")),
           "value": nonneg, "queries": positive, "items?": positive, "curve": [[float]], "queries_from?": str}
INDEX_SCHEMA = {
    "format": str, "format_version": int, "model_id": str, "bits": positive, "code_bytes": positive,
    "count": nonneg, "class_names?": [str], "built?": str, "model?": str,
    "binary": {"kind": _one_of(BINARY_KINDS), "padded_bytes": positive, "shards?": [_PART],
               "nlist?": positive, "nprobe?": positive, "M?": positive, "efConstruction?": positive,
               "efSearch?": positive, "nhash?": positive, "b?": positive, "nflip?": nonneg,
               "requested?": str, "tuning?": _TUNING, "buckets?": bool},
    "rerank": {"kind": _one_of(RERANK_KINDS), "dim?": nonneg, "shards?": [_RPART],
               "signal?": Nullable(_one_of(SIGNALS + ("hamming", "none")))},
    "source": {"dir": str, "manifest_sha256?": str, "fingerprint?": str, "spec?": Nullable(str)},
    "files?": Map(hex_digest),
    "appended?": [{"dir": str, "start": nonneg, "stop": nonneg, "manifest_sha256?": str, "fingerprint?": str,
                   "spec?": Nullable(str)}],
    "removed?": [{"count": positive, "max_id": int}],
}


def index_problem(meta: dict[str, Any]) -> str | None:
    """The first way an index.json departs from docs/FORMAT.md (schema, then consistency), or None."""
    try:
        validate(meta, INDEX_SCHEMA)
        for name in meta.get("files") or {}:
            validate(name, plain_name, f"files.{name}")
    except SchemaError as e:
        return str(e)
    b = meta["binary"]
    if meta["code_bytes"] != (meta["bits"] + 7) // 8 or b["padded_bytes"] < meta["code_bytes"]:
        return f"bits/code_bytes/binary.padded_bytes {meta['bits']}/{meta['code_bytes']}/{b['padded_bytes']} disagree"
    for key in ("binary", "rerank"):
        parts = meta[key].get("shards")
        if parts is not None:
            bounds = [p["start"] for p in parts] + [parts[-1]["stop"] if parts else 0]
            if bounds[0] != 0 or bounds[-1] != meta["count"] or any(p["stop"] != q["start"] for p, q in zip(parts, parts[1:])):
                return f"{key}.shards: parts must cover positions 0..{meta['count']} in order"
            if len({p["file"] for p in parts}) != len(parts):
                return f"{key}.shards: a file is named twice"
    if meta["rerank"].get("shards") is not None and \
            [(p["start"], p["stop"]) for p in meta["rerank"]["shards"]] != \
            [(p["start"], p["stop"]) for p in b.get("shards") or []]:
        return "rerank.shards: must cover the binary parts' position ranges"
    return None


def collections(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The shard directories an index holds (built from, then appended), each with the positions
    ``[start, stop)`` of its rows."""
    appended = meta.get("appended", [])
    first = {**meta["source"], "start": 0, "stop": appended[0]["start"] if appended else meta["count"]}
    return [first, *appended]


def next_id(meta: dict[str, Any], ids: np.ndarray) -> int:
    """The first id after every id the index holds or held: a removed item's id is never given to another."""
    held = int(ids.max()) if len(ids) else -1
    return max([held] + [r["max_id"] for r in meta.get("removed", [])]) + 1


def find_ids(ids: np.ndarray, order: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each ``wanted`` id among an index's ``ids`` (by position; ``order``: their stable
    argsort). Where not found, the position is meaningless."""
    sorted_ids = ids[order]
    at = np.minimum(np.searchsorted(sorted_ids, wanted), max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[at] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
    return (order[at] if len(order) else np.zeros(len(wanted), np.int64)), found


def part_file(store: str, j: int) -> str:
    """The file of part j of the "binary" or "rerank" store of an index built with shards (binary-000.faiss)."""
    return f"{store}-{j:03d}.faiss"


def binary_files(meta: dict[str, Any]) -> list[str]:
    """The binary index file(s) an index directory holds."""
    shards = meta["binary"].get("shards")
    return [s["file"] for s in shards] if shards else [BINARY_FILE]


def bucketed(meta: dict[str, Any]) -> bool:
    """Whether the index's binary graph(s) hold its distinct codes, each with a bucket table (index/buckets.py)."""
    return bool(meta["binary"].get("buckets"))


def bucket_files(meta: dict[str, Any]) -> list[str]:
    """The bucket tables an index directory holds: one per binary file when its graph is over distinct codes."""
    return [buckets_file(f) for f in binary_files(meta)] if bucketed(meta) else []


def rerank_files(meta: dict[str, Any]) -> list[str]:
    """The float store file(s) an index directory holds: one, one per binary part, or none."""
    if meta["rerank"]["kind"] == "none":
        return []
    shards = meta["rerank"].get("shards")
    return [s["file"] for s in shards] if shards else [RERANK_FILE]


def read_float_parts(directory: Path, meta: dict[str, Any], mmap: bool) -> FloatParts:
    """A float store kept in parts (``build shards=S``), opened here as one."""
    shards = meta["rerank"]["shards"]
    parts = [StorePart(None, read_float(directory / s["file"], mmap)) for s in shards]
    return FloatParts(parts, [s["start"] for s in shards], [s["stop"] - s["start"] for s in shards],
                      parts[0].store.d if parts else meta["rerank"].get("dim", 0))


def read_part(binary_path: str | None, store_path: str | None, buckets: bool = False) -> StorePart:
    """One part of a sharded index (its binary index and float slice), as a Ray actor opens it."""
    return StorePart(read_binary(binary_path, True, buckets) if binary_path else None,
                     read_float(store_path, True) if store_path else None)


def rerank_signal(meta: dict[str, Any]) -> str:
    """The fine-stage signal an index was built with (indexes older than signals re-rank by l2)."""
    return meta["rerank"].get("signal") or "l2"


def new_temp_folder(index_dir: Path) -> Path:
    """A fresh ``.NAME.build-*.tmp`` folder beside INDEX_DIR: where a build, append or removal makes the new index."""
    return Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.build-", suffix=".tmp", dir=index_dir.parent))


def aside_path(index_dir: Path) -> Path:
    """``.NAME.old-T`` (T: now, in ms): where a swap in two renames moves the index it replaces."""
    return index_dir.with_name(f".{index_dir.name}.old-{int(time.time() * 1000)}")


def leftovers(index_dir: Path, kind: str = r"build-[a-z0-9_]+\.tmp|old-\d+") -> list[Path]:
    """The folders writes of INDEX_DIR leave beside it when killed: temp ones (``.NAME.build-*.tmp``) and the
    index being replaced, moved aside (``.NAME.old-T``, T in ms: by name, oldest first)."""
    if not index_dir.parent.is_dir():
        return []
    mine = re.compile(rf"\.{re.escape(index_dir.name)}\.({kind})")
    return sorted((p for p in index_dir.parent.iterdir() if p.is_dir() and mine.fullmatch(p.name)),
                  key=lambda p: p.name)


def moved_aside(index_dir: Path) -> Path | None:
    """Where INDEX_DIR's index waits when a write was killed between moving it aside and moving the new one in
    (only where folders cannot be swapped in one step); None when INDEX_DIR is there or nothing waits."""
    if index_dir.exists():
        return None
    olds = leftovers(index_dir, r"old-\d+")
    return olds[-1] if olds else None


def read_index_meta(directory: str | Path, arg: str = "index_dir") -> dict[str, Any]:
    """index.json of a complete index directory (one-line error otherwise)."""
    d = Path(directory)
    if d.is_file():
        raise HashindexError(f"{arg}={d}: a file; expected an index directory (one hashindex build wrote)")
    if not d.is_dir():
        aside = moved_aside(d)
        raise HashindexError(f"{arg}={d}: no such directory" + (
            f" (a write of it was killed while swapping it: its index waits at {aside.name}, and the next build, "
            "append or removal of it puts it back)" if aside else ""))
    if not (d / INDEX_JSON).exists():
        if (d / MANIFEST).exists():
            raise HashindexError(f"{arg}={d}: a shard directory, not an index; index it first: hashindex build {d} "
                                 "--out INDEX_DIR")
        raise HashindexError(f"{arg}={d}: not a complete hashindex index (no {INDEX_JSON}; run hashindex build)")
    try:
        meta = read_json(d / INDEX_JSON)
    except (OSError, ValueError) as e:
        raise HashindexError(f"{arg}={d / INDEX_JSON}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise HashindexError(f"{arg}={d}: not a {FORMAT} v{FORMAT_VERSION} index")
    problem = index_problem(meta)
    if problem:
        raise HashindexError(f"{arg}={d / INDEX_JSON}: {problem} (see docs/FORMAT.md; rebuild the index)")
    needed = binary_files(meta) + bucket_files(meta) + [TABLE_FILE] + rerank_files(meta)
    missing = [f for f in needed if not (d / f).exists()]
    if missing:
        raise HashindexError(f"{arg}={d}: incomplete index, missing {', '.join(missing)}")
    return meta


def record_checksums(folder: Path, reuse: dict[str, str] | None = None) -> dict[str, str]:
    """SHA-256 of every file of a finished index folder but index.json (files in ``reuse`` keep theirs:
    an append hard-links unchanged files instead of rewriting them)."""
    reuse = reuse or {}
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name != INDEX_JSON)
    sums = {**file_checksums(folder, [n for n in names if n not in reuse]),
            **{n: reuse[n] for n in names if n in reuse}}
    remember_verified(folder, sums)  # the first open need not hash what was just hashed
    return sums


def check_index(directory: Path, meta: dict[str, Any], arg: str = "index_dir", use_cache: bool = True) -> None:
    """A one-line error naming the first index file whose bytes are not those build wrote.

    Indexes built before checksums were recorded (no ``files`` in index.json) are not checked.
    """
    bad = verify_files(directory, meta.get("files") or {}, use_cache)
    if bad:
        (name, what), more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise HashindexError(f"{arg}={directory}: {name} is not the file build wrote ({what}){more}; "
                             "rebuild the index")


def coarse_line(binary: dict[str, Any]) -> str:
    """'ivf, nlist 256, nprobe 2: recall@10 0.977 (target 0.95, measured on 500 held-out items)'."""
    params = [f"{k} {binary[k]}" for k in ("nlist", "nprobe", "M", "efSearch", "nhash", "b", "nflip") if k in binary]
    line = ", ".join([binary["kind"] + (" over the distinct codes" if binary.get("buckets") else "")] + params)
    t = binary.get("tuning")
    if t:
        on = f"queries from {t['queries_from']}" if "queries_from" in t else "held-out items"
        line += f": recall@{t['at']} {t['recall']} (target {t['target']}, measured on {t['queries']} {on})"
    elif binary["kind"] == "flat":
        line += ": exact"
    return line


def describe_index(directory: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary for `hashindex info INDEX_DIR` (``meta``: its index.json, when the caller has read it already)."""
    meta = read_index_meta(directory) if meta is None else meta
    with open_table(Path(directory)) as t:  # items whose copies a query finds as them (0: extracted before digests)
        known = int(np.count_nonzero(t["input_digests"][()])) if "input_digests" in t else 0
    return {"kind": "index", "path": str(directory), "count": meta["count"], "model_id": meta["model_id"],
            "bits": meta["bits"], "coarse": coarse_line(meta["binary"]), "binary": meta["binary"],
            "rerank": meta["rerank"],
            "memory": meta["memory"], "built": meta["built"], "source": meta["source"]["dir"],
            "appended": [{k: e[k] for k in ("dir", "start", "stop", "appended")} for e in meta.get("appended", [])],
            "removed": sum(r["count"] for r in meta.get("removed", [])),
            "input_digests": f"{known} of {meta['count']} items (a copy of one of them under another name is "
                             "found as it)"}


@contextmanager
def new_table(path: Path, n: int, code_bytes: int, label_classes: int = 0) -> Iterator[h5py.File]:
    """An open, empty position table for n items (with a ``label_sets`` column of ``label_classes`` classes
    for a multi-label collection), closed on leaving the block. Refused (OSError) where the disk has not room
    for it, paths counted at TABLE_PATH_BYTES each; a disk filling up meanwhile is an OSError on closing.
    ``input_digests`` stay 0 ("not known") for rows from shards extracted before they were stored."""
    ensure_room(path, n * (8 + 4 + 8 + code_bytes + label_classes + TABLE_PATH_BYTES))
    with naming(path), create_h5(path) as table:
        table.create_dataset("ids", (n,), np.int64)
        table.create_dataset("labels", (n,), np.int32)
        table.create_dataset("codes", (n, code_bytes), np.uint8)
        table.create_dataset("paths", (n,), h5py.string_dtype("utf-8"))
        table.create_dataset("input_digests", (n,), np.uint64)
        if label_classes:
            table.create_dataset("label_sets", (n, label_classes), np.uint8)
        yield table


def table_columns(table: h5py.File) -> tuple[str, ...]:
    """The per-item columns an open table holds."""
    return tuple(name for name in ("ids", "labels", "codes", "paths", "label_sets", "input_digests") if name in table)


def label_set_classes(directory: Path) -> int:
    """How many classes the index's label sets have (0: one class per item), read from the column's shape."""
    with open_table(directory) as t:
        return int(t["label_sets"].shape[1]) if "label_sets" in t else 0


def memory_figures(folder: Path, n: int, binary: list[str], rerank: list[str] | None = None) -> dict[str, Any]:
    def size(name: str) -> int:
        return (folder / name).stat().st_size if (folder / name).exists() else 0

    rerank = [RERANK_FILE] if rerank is None else rerank
    sizes = {"binary_bytes": sum(size(f) for f in binary), "rerank_bytes": sum(size(f) for f in rerank),
             "table_bytes": size(TABLE_FILE)}
    sizes["bytes_per_item"] = sum(sizes.values()) / max(n, 1)
    return sizes


def read_head(directory: Path) -> Head | None:
    """The index's head file, or None (indexes built before signals)."""
    return Head.load(directory / HEAD_FILE) if (directory / HEAD_FILE).exists() else None


def open_table(directory: Path) -> h5py.File:
    """table.h5 of an index, open for reading (an open file keeps the version it opened, whatever replaces it);
    a table h5py cannot read (cut short) is one line naming it."""
    return open_h5(directory / TABLE_FILE, "index_dir", "rebuild the index")


def read_table(directory: Path, names: tuple[str, ...], positions: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """Columns of table.h5: whole, or the rows at ``positions`` (sorted, unique)."""
    with open_table(directory) as t:
        return {name: t[name][()] if positions is None else t[name][positions] for name in names}


def copy_table(directory: Path, table: h5py.File, n: int, step: int = 1 << 20) -> None:
    """Copy the first n rows of an index's table into an open new table (append); a column the old table has
    not (input digests, in a table built before them) stays 0 ("not known")."""
    with open_table(directory) as old:
        for name in table_columns(old):
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                table[name][lo:hi] = old[name][lo:hi]
