"""A shard directory's manifest.json (and skipped.txt): its schema and checks, how it is started, updated and
written (atomically), and the entry of each complete shard. docs/FORMAT.md documents it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..files import atomic_write_bytes, atomic_write_json, decode_name, read_json
from ..schema import Map, Nullable, SchemaError, hex_digest, nonneg, plain_name, positive, validate

FORMAT = "hashindex-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SKIPPED = "skipped.txt"
HEAD_FILE = "head.npz"  # the model's layers above the pooled feature (hashindex.signals.Head)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


# manifest.json as docs/FORMAT.md documents it (what every reader may rely on; other keys are allowed)
_SHARD_ENTRY = {"index": nonneg, "file": plain_name, "rows": nonneg, "start": nonneg, "stop": nonneg,
                "id_min?": Nullable(int), "id_max?": Nullable(int), "skipped_by_reason": Map(nonneg),
                "sha256": hex_digest}
MANIFEST_SCHEMA = {
    "format": str, "format_version": int, "complete": bool, "shards": [_SHARD_ENTRY],
    "model_id": str, "bits": positive, "code_bytes": positive, "feature_dim": nonneg, "feature_dtype": str,
    "feature_kind?": str, "mid_feature_dim?": nonneg, "class_names": [str], "shard_size": positive,
    "shards_planned": nonneg,
    "precision?": str, "totals?": {"read": nonneg, "written": nonneg, "skipped": nonneg}, "multi_label?": bool,
    "model?": str,
    "source": {"description": str, "items": nonneg, "fingerprint": str, "spec?": Nullable(str),
               "id_offset?": nonneg},
}


def manifest_problem(m: dict[str, Any]) -> str | None:
    """The first way a manifest departs from docs/FORMAT.md (schema, then consistency), or None."""
    try:
        validate(m, MANIFEST_SCHEMA)
    except SchemaError as e:
        return str(e)
    if m["code_bytes"] != (m["bits"] + 7) // 8:
        return f"code_bytes: {m['code_bytes']} does not hold bits={m['bits']}"
    if m["feature_dtype"] not in ("float16", "float32", "none"):
        return f"feature_dtype: expected float16, float32 or none, got {m['feature_dtype']!r}"
    size, items, seen = m["shard_size"], m["source"]["items"], set()
    for i, s in enumerate(m["shards"]):
        j = s["index"]
        start, stop = j * size, min((j + 1) * size, items)
        if s["file"] != shard_name(j) or j in seen:
            return f"shards[{i}]: file {s['file']!r} / index {j} (expected {shard_name(j)}, each index once)"
        if (s["start"], s["stop"]) != (start, stop) or s["rows"] > stop - start:
            return (f"shards[{i}]: start/stop/rows {s['start']}/{s['stop']}/{s['rows']} do not fit shard {j} of "
                    f"{items} items in shards of {size}")
        seen.add(j)
    if len(m["shards"]) > m["shards_planned"] or m["shards_planned"] != -(-items // size):
        return f"shards_planned: {m['shards_planned']} (expected {-(-items // size)} for {items} items)"
    if m["complete"] and len(m["shards"]) != m["shards_planned"]:
        return f"complete: true with {len(m['shards'])} of {m['shards_planned']} shards"
    return None


def source_spec(directory: str | Path) -> str | None:
    """The image source spec a shard directory was extracted from (to reopen its images), or None."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest_problem(manifest):
        return None
    return manifest["source"].get("spec")


def _escape(name: str) -> str:
    """A path on one skipped.txt field: backslash, tab, newline and carriage return escaped as \\\\, \\t, \\n, \\r."""
    return name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_skipped(directory: Path, skipped: list[tuple[int, str, str]]) -> None:
    """skipped.txt: ``id <TAB> path <TAB> reason`` per skipped item, the path as the file system's bytes
    (undecodable names stay the bytes they are) with backslash, tab, newline and CR escaped."""
    lines = (f"{i}\t{_escape(decode_name(p))}\t{r}\n" for i, p, r in skipped)
    atomic_write_bytes(Path(directory) / SKIPPED, "".join(lines).encode("utf-8", "surrogateescape"))


def shard_attrs(model_id: str, bits: int, feature_dim: int, feature_kind: str, source: str) -> dict[str, Any]:
    """The HDF5 attributes every shard file carries (docs/FORMAT.md), format name and version included."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": model_id, "bits": bits,
            "feature_dim": feature_dim, "feature_kind": feature_kind, "source": source}


def new_manifest(**fields: Any) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "created": now, "updated": now,
            "complete": False, "shards": [], **fields}


def save_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Recompute totals from the shard entries and write the manifest atomically."""
    shards = manifest["shards"]
    reasons: dict[str, int] = {}
    for s in shards:
        for r, n in s["skipped_by_reason"].items():
            reasons[r] = reasons.get(r, 0) + n
    manifest["totals"] = {
        "read": sum(s["stop"] - s["start"] for s in shards),
        "written": sum(s["rows"] for s in shards),
        "skipped": sum(reasons.values()),
        "skipped_by_reason": dict(sorted(reasons.items())),
    }
    manifest["complete"] = len(shards) == manifest["shards_planned"]
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(directory / MANIFEST, manifest)
