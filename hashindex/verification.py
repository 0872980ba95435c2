"""`hashindex verify`: anything hashindex writes, checked against what its writer recorded.

Each format's owner does the checking (the shard store, the index, the prepared store, the checkpoint, the
batch results file); this module only tells which one ``path`` is. Commands that open these check them too
(the shard and index checks skip files unchanged since their last good check); verifying hashes every byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import HashindexError

KINDS = "a shard directory, an index, a prepared store, a checkpoint, an exported model or a batch results file"


def verify(path: str | Path) -> dict[str, Any]:
    """Hash every file of ``path`` against its recorded SHA-256 (a checkpoint: its weights against its model
    id) and check the parts agree; the summary, or a one-line HashindexError naming the first bad file."""
    from .batch import check_results, is_results_file
    from .checkpoint import read_checkpoint, saved_by_torch, shipped_path
    from .data.prepared import is_prepared, read_meta
    from .index import INDEX_JSON, moved_aside
    from .store import MANIFEST

    p = Path(path)
    extra: dict[str, Any] = {}
    if (p / MANIFEST).is_file():
        count, kind = _verify_shards(p), "shard directory"
    elif (p / INDEX_JSON).is_file() or moved_aside(p) is not None:  # (the latter: an error saying where it waits)
        count, kind = _verify_index(p), "index"
    elif is_prepared(p):
        meta = read_meta(p, "path", use_cache=False)
        count, kind, extra = 1, "prepared store", {"count": meta["count"], "size": meta["size"]}
    elif is_results_file(p):
        record = check_results(p, "path")
        count, kind, extra = 1, "batch results file", {"queries_count": record["queries_count"]}
    elif p.is_file() and p.suffix.lower() == ".onnx":
        from .export import read_onnx_meta

        count, kind, extra = 1, "onnx model", {"model_id": read_onnx_meta(p)["model_id"]}
    elif (p.is_file() and saved_by_torch(p)) or (not p.exists() and shipped_path(str(path))):
        ckpt = read_checkpoint(path, "path")
        count, kind, extra = 1, "checkpoint", {"model_id": ckpt["model_id"], "path": ckpt["path"]}
    elif not p.exists():
        raise HashindexError(f"path={p}: no such file or folder (expected {KINDS})")
    else:
        raise HashindexError(f"path={p}: not {KINDS} (none of manifest.json, index.json, prepared.json, "
                             "a job record, a torch file or a .onnx file)")
    return {"path": str(p), "kind": kind, "files_verified": count, "ok": True, **extra}


def _verify_shards(p: Path) -> int:
    """Every shard of a shard directory hashed; the number of files with a recorded checksum."""
    from .store import ShardSet

    shards = ShardSet(p, "path", require_complete=False)
    shards.check("path", use_cache=False)
    return len(shards.checksums())


def _verify_index(p: Path) -> int:
    """Every file of an index hashed, and its parts loaded to check they agree with index.json and each other
    (counts, widths); the number of files with a recorded checksum."""
    from .index import Index
    from .index.layout import check_index, read_index_meta

    meta = read_index_meta(p, "path")
    check_index(p, meta, "path", use_cache=False)
    Index.load(p)
    return len(meta.get("files") or {})
