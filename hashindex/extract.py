"""`hashindex extract`: run a trained net over a collection into HDF5 shards.

Shard j always covers source positions [j * shard_size, (j + 1) * shard_size),
so the work splits into independent, deterministic units: a rerun after a
crash or kill -9 skips the shards the manifest lists (after checking their
SHA-256) and redoes only the unfinished one, and the result equals an
uninterrupted run row for row. Each shard is written to a temp name and
renamed when complete; the manifest is rewritten atomically after each one.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .data import ImageSource, iter_batches, open_source, skip_summary
from .errors import HashindexError
from .files import atomic_write_bytes, remove_stale_temps
from .model import FEATURE_DIM, HashModel, load_model
from .store import (MANIFEST, SKIPPED, ShardData, ShardSet, new_manifest, save_manifest,
                    shard_name, write_shard)

FEATURE_DTYPES = ("float16", "float32", "none")


def source_fingerprint(source: ImageSource) -> str:
    """Identity of a collection: its items' paths, labels and ids, in order."""
    h = hashlib.sha256()
    h.update("\n".join(source.paths).encode("utf-8", "surrogateescape"))
    h.update(np.ascontiguousarray(source.labels, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(source.ids(), dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def prepare_source(data: str | ImageSource, model: HashModel, limit: int | None = None,
                   flag: str = "--data") -> ImageSource:
    """Open a source and express its labels in the model's classes where they fit."""
    source = open_source(data, flag, split="test") if not isinstance(data, ImageSource) else data
    if limit:
        source = source.subset(limit)
    if source.class_names and model.class_names and set(source.class_names) <= set(model.class_names):
        source.remap_labels(model.class_names)
    return source


def encode_range(model: HashModel, source: ImageSource, start: int, stop: int, features: str,
                 batch_size: int, workers: int, on_batch: Callable[[int], None] = lambda n: None,
                 ) -> ShardData:
    """Encode source positions [start, stop) into one shard's rows (bad items skipped)."""
    ids_all = source.ids()
    codes, feats, positions = [], [], []
    skipped: list[tuple[int, str, str]] = []
    for images, pos, bad in iter_batches(source, model.input_size, model.channels, batch_size,
                                         workers, start, stop):
        if images is not None:
            c, f = model.encode(images, batch_size=len(images))
            codes.append(c)
            feats.append(f)
            positions.append(pos)
        skipped += [(int(ids_all[p]), source.paths[p], reason) for p, reason in bad]
        on_batch(len(pos) + len(bad))
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    feature_arr = None
    if features != "none":
        feature_arr = (np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM))).astype(features)
    return ShardData(
        codes=np.concatenate(codes) if codes else np.zeros((0, model.code_bytes), np.uint8),
        features=feature_arr, ids=ids_all[pos], labels=source.labels[pos],
        paths=[source.paths[p] for p in pos], skipped=sorted(skipped),
    )


def _open_or_start(out: Path, expected: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The manifest to continue, or a fresh one; refuses to mix models or sources."""
    mpath = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise HashindexError(f"--out {out}: exists and is not a directory")
    if overwrite and out.exists():
        for p in list(out.glob("shard-*.h5")) + [mpath, out / SKIPPED]:
            p.unlink(missing_ok=True)
    if not mpath.exists():
        if out.exists() and any(out.iterdir()):
            raise HashindexError(f"--out {out}: folder is not empty and has no {MANIFEST} "
                                 "(choose an empty folder, or --overwrite)")
        out.mkdir(parents=True, exist_ok=True)
        return new_manifest(**expected)
    manifest = ShardSet(out, "--out", require_complete=False).manifest
    for key in ("model_id", "bits", "source", "shard_size", "feature_dtype"):
        if key == "source":
            same = manifest["source"]["fingerprint"] == expected["source"]["fingerprint"]
        else:
            same = manifest.get(key) == expected[key]
        if not same:
            what = {"model_id": "another model", "bits": "another code length",
                    "source": "another source", "shard_size": "another --shard-size",
                    "feature_dtype": "another --features"}[key]
            raise HashindexError(f"--out {out}: holds shards made with {what} "
                                 f"({key} differs); use --overwrite to start over")
    return manifest


def _drop_bad_shards(out: Path, manifest: dict[str, Any], log: Callable[[str], None]) -> None:
    """Forget listed shards that are missing or whose bytes changed; they are redone."""
    bad = set(ShardSet.from_manifest(out, manifest).verify())
    if bad:
        log(f"redoing {len(bad)} shard(s) that failed their checksum: {sorted(bad)[:5]}")
        manifest["shards"] = [s for s in manifest["shards"] if s["file"] not in bad]


def extract(model: str | HashModel, data: str | ImageSource, out: str | Path, *,
            shard_size: int = 100_000, batch_size: int = 256, workers: int = 2,
            features: str = "float16", device: str = "cpu", bf16: bool = True,
            overwrite: bool = False, limit: int | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Extract codes and features of a collection into SHARD_DIR ``out``; returns the manifest."""
    if features not in FEATURE_DTYPES:
        raise HashindexError(f"--features {features}: expected one of {', '.join(FEATURE_DTYPES)}")
    if shard_size < 1:
        raise HashindexError(f"--shard-size {shard_size}: expected a positive number of rows")
    model = load_model(model, device, bf16) if not isinstance(model, HashModel) else model
    source = prepare_source(data, model, limit)
    out = Path(out)
    n_shards = -(-len(source) // shard_size)
    expected = {
        "model_id": model.model_id, "bits": model.bits, "code_bytes": model.code_bytes,
        "feature_dim": FEATURE_DIM if features != "none" else 0, "feature_dtype": features,
        "feature_kind": "nin-gap-192" if features != "none" else "none",
        "class_names": source.class_names,
        "source": {"description": source.description, "items": len(source),
                   "fingerprint": source_fingerprint(source), "spec": source.spec},
        "shard_size": shard_size, "shards_planned": n_shards,
    }
    manifest = _open_or_start(out, expected, overwrite)
    remove_stale_temps(out)
    _drop_bad_shards(out, manifest, log)
    done = {s["index"] for s in manifest["shards"]}
    if len(done) == n_shards and manifest.get("complete"):
        log(f"{out}: already complete ({n_shards} shards); nothing to do")
        return manifest

    bar = tqdm(total=len(source), unit="img", desc="extract", disable=not progress,
               initial=sum(min(shard_size, len(source) - j * shard_size) for j in done))
    t0 = time.time()
    attrs_common = {k: expected[k] for k in ("model_id", "bits", "feature_dim", "feature_kind")}
    for j in range(n_shards):
        if j in done:
            continue
        start, stop = j * shard_size, min((j + 1) * shard_size, len(source))
        rows = encode_range(model, source, start, stop, features, batch_size, workers, bar.update)
        attrs = {**attrs_common, "format": "hashindex-shards", "format_version": 1, "shard": j,
                 "source": source.description, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        sha = write_shard(out / shard_name(j), rows, attrs)
        reasons: dict[str, int] = {}
        for _, _, r in rows.skipped:
            reasons[r] = reasons.get(r, 0) + 1
        manifest["shards"].append({
            "index": j, "file": shard_name(j), "rows": len(rows), "start": start, "stop": stop,
            "id_min": int(rows.ids.min()) if len(rows) else None,
            "id_max": int(rows.ids.max()) if len(rows) else None,
            "skipped_by_reason": reasons, "sha256": sha,
        })
        manifest["shards"].sort(key=lambda s: s["index"])
        save_manifest(out, manifest)
    bar.close()
    skipped = ShardSet.from_manifest(out, manifest).skipped()
    atomic_write_bytes(out / SKIPPED, "".join(f"{i}\t{p}\t{r}\n" for i, p, r in skipped).encode())
    totals = manifest["totals"]
    wall = time.time() - t0
    log(f"extracted {totals['written']} images into {n_shards} shard(s) in {out} "
        f"({totals['read'] / max(wall, 1e-9):.0f} img/s); {skip_summary(totals['skipped_by_reason'])}")
    return manifest
