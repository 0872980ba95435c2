"""Shard directories made from arrays (codes of another program, synthetic collections) and the summary
`hashindex info` gives of one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HashindexError
from ..targets import first_labels, label_counts, set_counts
from .manifest import new_manifest, save_manifest, shard_attrs, shard_name
from .shards import ShardData, ShardSet, read_shard, shard_entry, write_shard


def write_arrays(directory: str | Path, codes: np.ndarray, features: np.ndarray | None = None, *,
                 ids: np.ndarray | None = None, labels: np.ndarray | None = None, paths: list[str] | None = None,
                 bits: int | None = None, class_names: list[str] | None = None, model_id: str = "arrays",
                 shard_rows: int = 100_000, description: str = "arrays",
                 label_sets: np.ndarray | None = None, mid_features: np.ndarray | None = None,
                 input_digests: np.ndarray | None = None) -> ShardSet:
    """A complete shard directory from arrays (codes packed as ``np.packbits(bits, bitorder="little")``):
    codes made by another program, synthetic collections for benchmarks and tests. ``label_sets`` (n, C)
    bool make it a multi-label collection (``labels`` default to each item's first class);
    ``mid_features`` (n, d), beside ``features``, are what the ``mid`` signal reads; ``input_digests`` (n,)
    uint64 say which items are the same pixels (`codes.input_digests`, given by `HashModel.encode_fields`)."""
    directory = Path(directory)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = len(codes)
    bits = bits or codes.shape[1] * 8
    if codes.ndim != 2 or codes.shape[1] != (bits + 7) // 8:
        raise HashindexError(f"codes: expected shape (n, {(bits + 7) // 8}) for {bits} bits, got {codes.shape}")
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if label_sets is not None:
        label_sets = np.asarray(label_sets, dtype=bool)
        if label_sets.ndim != 2 or (class_names and label_sets.shape[1] != len(class_names)):
            raise HashindexError(f"label_sets: expected shape (n, {len(class_names or []) or 'classes'}), "
                                 f"got {label_sets.shape}")
        class_names = class_names or [str(c) for c in range(label_sets.shape[1])]
        if labels is None:
            labels = first_labels(label_sets)
    labels = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, dtype=np.int32)
    paths = [""] * n if paths is None else list(paths)
    if mid_features is not None and features is None:
        raise HashindexError("mid_features: given without features (a shard holds them beside its features)")
    features, mid_features = (None if a is None else np.asarray(a, dtype=np.float16) for a in (features, mid_features))
    for name, arr in (("ids", ids), ("labels", labels), ("paths", paths), ("features", features),
                      ("label_sets", label_sets), ("mid_features", mid_features), ("input_digests", input_digests)):
        if arr is not None and len(arr) != n:
            raise HashindexError(f"{name}: expected {n} rows (one per code), got {len(arr)}")
    dim = 0 if features is None else features.shape[1]
    directory.mkdir(parents=True, exist_ok=False)
    attrs = shard_attrs(model_id, bits, dim, "arrays", description)
    manifest = new_manifest(model_id=model_id, bits=bits, code_bytes=codes.shape[1], feature_dim=dim,
                            feature_dtype="none" if features is None else "float16", feature_kind="arrays",
                            mid_feature_dim=0 if mid_features is None else mid_features.shape[1],
                            class_names=list(class_names or []),
                            source={"description": description, "items": n, "spec": None,
                                    "fingerprint": _content_fingerprint(codes, ids, labels, label_sets),
                                    "id_offset": int(ids[0]) if n else 0},
                            shard_size=shard_rows, shards_planned=-(-n // shard_rows),
                            multi_label=label_sets is not None)
    for j, start in enumerate(range(0, n, shard_rows)):
        stop = min(start + shard_rows, n)
        data = ShardData(codes=codes[start:stop], features=None if features is None else features[start:stop],
                         ids=ids[start:stop], labels=labels[start:stop], paths=paths[start:stop], skipped=[],
                         label_sets=None if label_sets is None else label_sets[start:stop],
                         mid_features=None if mid_features is None else mid_features[start:stop],
                         input_digests=None if input_digests is None else
                         np.asarray(input_digests, np.uint64)[start:stop])
        digest = write_shard(directory / shard_name(j), data, attrs)
        manifest["shards"].append(shard_entry(j, data, start, stop, digest))
    save_manifest(directory, manifest)
    return ShardSet(directory)


def _content_fingerprint(*arrays: np.ndarray | None) -> str:
    """Identity of an array collection: its codes, ids and labels hashed (two collections of one description and
    size are not the same items)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def describe_shards(directory: str | Path) -> dict[str, Any]:
    """Summary for `hashindex info SHARD_DIR`."""
    shards = ShardSet(directory, require_complete=False)
    m = shards.manifest
    if shards.multi_label:  # items per class, an item counted in each of its classes
        sets = shards.load(("label_sets",))["label_sets"]
        hist = set_counts(np.zeros((0, len(shards.class_names)), bool) if sets is None else sets, shards.class_names)
    else:
        labels = np.concatenate([read_shard(p, ("labels",))["labels"] for p in shards.shard_paths()]
                                or [np.zeros(0, np.int32)])
        hist = label_counts(labels, shards.class_names)
    return {
        "kind": "shards", "path": str(shards.dir), "complete": m["complete"],
        "shards": f"{len(m['shards'])}/{m['shards_planned']}", "rows": shards.rows,
        "model_id": m["model_id"], "bits": m["bits"],
        "features": f"{m['feature_dim']} x {m['feature_dtype']}" if m["feature_dtype"] != "none" else "none",
        "mid_features": f"{m['mid_feature_dim']} x {m['feature_dtype']}" if shards.has_mid else "none",
        "source": m["source"]["description"], "skipped": m["totals"]["skipped"],
        "skipped_by_reason": m["totals"]["skipped_by_reason"], "labels": hist,
        **({"multi_label": True} if shards.multi_label else {}),
    }
