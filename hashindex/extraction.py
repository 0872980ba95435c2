"""`hashindex extract`: run a trained net over a collection into HDF5 shards.

Shard j always covers source positions [j * shard_size, (j + 1) * shard_size),
so the work splits into independent, deterministic units: a rerun after a
crash or kill -9 skips the shards the manifest lists (after checking their
SHA-256) and redoes only the unfinished one, and the result equals an
uninterrupted run row for row. Each shard is written to a temp name and
renamed when complete; the manifest is rewritten atomically after each one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .checkpoint import checkpoint_head, load_model
from .data import ImageSource, iter_batches, open_source, skip_summary, warn_shared_folder_names
from .errors import HashindexError
from .files import VERIFIED, exclusive, remove_stale_temps
from .model import FEATURE_DIM, MID_DIM, HashModel
from .runtime import check_workers
from .store import (HEAD_FILE, MANIFEST, SKIPPED, ShardData, ShardSet, new_manifest, save_manifest, shard_attrs,
                    shard_entry, shard_name, write_head, write_shard, write_skipped)

FEATURE_DTYPES = ("float16", "float32", "none")


def prepare_source(data: str | ImageSource, model: HashModel, limit: int | None = None,
                   arg: str = "data", id_offset: int = 0, follow_links: bool = False) -> ImageSource:
    """Open a source and express its labels in the model's classes where they fit.

    ``id_offset`` (for a source given by spec) numbers its items from that id, so
    a second collection can join an index without id clashes.
    """
    if isinstance(data, ImageSource):
        source = data
    else:
        source = open_source(data, arg, follow_links=follow_links)
        warn_shared_folder_names(source, arg)
        source.id_offset = id_offset
    source.check_size(model.input_size, model.channels)
    if limit:
        source = source.subset(limit)
    if source.class_names and model.class_names and set(source.class_names) <= set(model.class_names):
        source.remap_labels(model.class_names)
    return source


def encode_range(model: HashModel, source: ImageSource, start: int, stop: int, features: str,
                 batch_size: int, workers: int, on_batch: Callable[[int], None] = lambda n: None,
                 mid: bool = False) -> ShardData:
    """Encode source positions [start, stop) into one shard's rows (bad items skipped); ``mid``: with mid
    features, stored as ``features`` (their dtype) are."""
    ids_all = source.ids()
    fields: dict[str, list[np.ndarray]] = {"codes": [], "features": [], "mid_features": [], "input_digests": []}
    positions: list[np.ndarray] = []
    skipped: list[tuple[int, str, str]] = []
    for images, pos, bad in iter_batches(source, model.input_size, model.channels, batch_size,
                                         workers, start, stop):
        if images is not None:
            for name, arr in model.encode_fields(images, batch_size=len(images), mid=mid).items():
                fields[name].append(arr)
            positions.append(pos)
        skipped += [(int(ids_all[p]), source.paths[p], reason) for p, reason in bad]
        on_batch(len(pos) + len(bad))
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)

    def stored(name: str, dim: int) -> np.ndarray | None:
        if features == "none" or (name == "mid_features" and not mid):
            return None
        return (np.concatenate(fields[name]) if fields[name] else np.zeros((0, dim))).astype(features)

    return ShardData(
        codes=np.concatenate(fields["codes"]) if positions else np.zeros((0, model.code_bytes), np.uint8),
        features=stored("features", FEATURE_DIM), ids=ids_all[pos], labels=source.labels[pos],
        paths=[source.paths[p] for p in pos], skipped=sorted(skipped),
        label_sets=source.label_sets[pos] if source.label_sets is not None else None,
        mid_features=stored("mid_features", MID_DIM),
        input_digests=np.concatenate(fields["input_digests"]) if positions else np.zeros(0, np.uint64),
    )


def _open_or_start(out: Path, expected: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The manifest to continue, or a fresh one; refuses to mix models or sources."""
    mpath = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise HashindexError(f"out={out}: exists and is not a directory")
    if overwrite and out.exists():
        for p in list(out.glob("shard-*.h5")) + [mpath, out / SKIPPED, out / HEAD_FILE, out / VERIFIED]:
            p.unlink(missing_ok=True)
    if not mpath.exists():
        if out.exists() and any(out.iterdir()):
            raise HashindexError(f"out={out}: folder is not empty and has no {MANIFEST} "
                                 "(choose an empty folder, or overwrite=True)")
        out.mkdir(parents=True, exist_ok=True)
        return new_manifest(**expected)
    manifest = ShardSet(out, "out", require_complete=False).manifest
    for key in ("model_id", "bits", "source", "shard_size", "feature_dtype", "precision"):
        if key == "source":
            same = manifest["source"]["fingerprint"] == expected["source"]["fingerprint"]
        elif key == "precision":  # manifests older than this key: any
            same = manifest.get(key, expected[key]) == expected[key]
        else:
            same = manifest.get(key) == expected[key]
        if not same:
            what = {"model_id": "another model", "bits": "another code length",
                    "source": "another source", "shard_size": "another shard_size",
                    "feature_dtype": "another features",
                    "precision": f"another precision ({manifest.get(key)}, this run {expected[key]}; "
                                 "bf16 and device decide it)"}[key]
            if key == "source" and manifest["source"].get("id_offset", 0) != expected["source"]["id_offset"]:
                what = "another id_offset"
            elif key == "source" and expected["source"].get("spec") and \
                    manifest["source"].get("spec") == expected["source"]["spec"]:
                raise HashindexError(_changed_source(out, manifest["source"], expected["source"]))
            raise HashindexError(f"out={out}: holds shards made with {what} "
                                 f"({key} differs); use overwrite=True to start over")
    return manifest


def _changed_source(out: Path, then: dict[str, Any], now: dict[str, Any]) -> str:
    """The error for shards of the same source whose files changed since (photos added, removed or renamed): an
    index of them catches up with `sync`; the shards are only ever extracted whole again."""
    return (f"out={out}: holds shards of {then['spec']} as it was ({then['items']:,} items then, {now['items']:,} "
            "now: its files changed since); an index built from them catches up with hashindex sync INDEX_DIR, "
            "or use overwrite=True to extract it again")


def _drop_bad_shards(out: Path, manifest: dict[str, Any], log: Callable[[str], None]) -> None:
    """Forget listed shards that are missing or whose bytes changed; they are redone."""
    bad = set(ShardSet.from_manifest(out, manifest).verify())
    if bad:
        log(f"redoing {len(bad)} shard(s) that failed their checksum: {sorted(bad)[:5]}")
        manifest["shards"] = [s for s in manifest["shards"] if s["file"] not in bad]


@dataclass
class ShardJob:
    """Everything one worker needs to make shard j (sent once per worker, not per batch)."""

    model: HashModel
    source: ImageSource
    out: Path
    shard_size: int
    features: str
    batch_size: int
    workers: int
    attrs: dict[str, Any]
    mid: bool = False  # mid features too (unless the extraction being resumed began without them)


def make_shard(job: ShardJob, j: int, on_batch: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Encode shard j, write it atomically, return its manifest entry.

    The one unit of work of both the local loop and the Ray backend, so both
    produce the same files.
    """
    start, stop = j * job.shard_size, min((j + 1) * job.shard_size, len(job.source))
    rows = encode_range(job.model, job.source, start, stop, job.features, job.batch_size, job.workers, on_batch,
                        job.mid)
    attrs = {**job.attrs, "shard": j, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return shard_entry(j, rows, start, stop, write_shard(job.out / shard_name(j), rows, attrs))


def record_shard(out: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    """Add a finished shard to the manifest and rewrite it atomically."""
    manifest["shards"] = sorted([s for s in manifest["shards"] if s["index"] != entry["index"]] + [entry],
                                key=lambda s: s["index"])
    save_manifest(out, manifest)


def plan(model: str | HashModel, data: str | ImageSource, out: str | Path, *, shard_size: int,
         batch_size: int, workers: int, features: str, device: str, bf16: bool | None, overwrite: bool,
         limit: int | None, log: Callable[[str], None], id_offset: int = 0, follow_links: bool = False,
         ) -> tuple[ShardJob, dict[str, Any], list[int]]:
    """Check the arguments, open or start SHARD_DIR; returns (job, manifest, shards still to do)."""
    if features not in FEATURE_DTYPES:
        raise HashindexError(f"features={features}: expected one of {', '.join(FEATURE_DTYPES)}")
    if shard_size < 1:
        raise HashindexError(f"shard_size={shard_size}: expected a positive number of rows")
    check_workers(workers)
    model = load_model(model, device, bf16) if not isinstance(model, HashModel) else model
    if id_offset < 0:
        raise HashindexError(f"id_offset={id_offset}: expected 0 or more")
    source = prepare_source(data, model, limit, id_offset=id_offset, follow_links=follow_links)
    out = Path(out)
    n_shards = -(-len(source) // shard_size)
    expected = {
        "model_id": model.model_id, "bits": model.bits, "code_bytes": model.code_bytes,
        "feature_dim": FEATURE_DIM if features != "none" else 0, "feature_dtype": features,
        "feature_kind": "nin-gap-192" if features != "none" else "none",
        "mid_feature_dim": MID_DIM if features != "none" else 0,
        "class_names": source.class_names,
        "source": {"description": source.description, "items": len(source),
                   "fingerprint": source.fingerprint(), "spec": source.spec,
                   "id_offset": id_offset},
        "shard_size": shard_size, "shards_planned": n_shards, "precision": model.precision,
        "multi_label": source.multi_label,
        **({"model": str(Path(model.meta["path"]).resolve())} if model.meta.get("path") else {}),
    }
    manifest = _open_or_start(out, expected, overwrite)
    remove_stale_temps(out)
    _drop_bad_shards(out, manifest, log)
    done = {s["index"] for s in manifest["shards"]}
    attrs = shard_attrs(model.model_id, model.bits, expected["feature_dim"], expected["feature_kind"],
                        source.description)
    # an extraction begun by a version without mid features goes on without them: its shards stay alike
    job = ShardJob(model, source, out, shard_size, features, batch_size, workers, attrs,
                   mid=manifest.get("mid_feature_dim", 0) > 0)
    return job, manifest, [j for j in range(n_shards) if j not in done]


def finish(job: ShardJob, manifest: dict[str, Any], seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Write skipped.txt and the summary line once every shard is done."""
    save_manifest(job.out, manifest)
    write_head(job.out, checkpoint_head({**job.model.meta, "state_dict": job.model.net.state_dict()}))
    write_skipped(job.out, ShardSet.from_manifest(job.out, manifest).skipped())
    totals = manifest["totals"]
    log(f"extracted {totals['written']} images into {manifest['shards_planned']} shard(s) in {job.out} "
        f"({totals['read'] / max(seconds, 1e-9):.0f} img/s); {skip_summary(totals['skipped_by_reason'])}")
    if not totals["written"]:  # a complete record of nothing: say so before build refuses it
        import logging

        logging.getLogger("hashindex").warning(
            f"nothing could be read from {job.source.description}: {job.out} holds no rows "
            f"(why each was skipped: {job.out / SKIPPED})")
    return manifest


def _shard_unit(shard_fn: Callable, job: ShardJob) -> Callable[[int], dict[str, Any]]:
    """What a Ray actor runs per unit: shard j of the job it received once."""
    return partial(shard_fn, job)


def _run_on_ray(job: ShardJob, manifest: dict[str, Any], todo: list[int], options: dict[str, Any],
                progress: bool, log: Callable[[str], None]) -> None:
    """Make the shards ``todo`` as Ray units, recording each in the manifest as it arrives."""
    from .distributed import run_units

    shard_fn = options.pop("shard_fn", None) or make_shard
    # One core per actor: decode in the actor itself, no nested worker processes. Absolute paths: a
    # worker on another node does not start in the driver's working directory.
    ray_job = dataclasses.replace(job, workers=0, out=Path(job.out).resolve())
    log(f"ray: {len(todo)} shard(s) on {min(options.get('num_workers', 2), len(todo))} worker(s)")
    run_units(partial(_shard_unit, shard_fn), todo, lambda entry: record_shard(job.out, manifest, entry),
              shared=(ray_job,), what="shard", progress=progress, **options)


def extract(model: str | HashModel, data: str | ImageSource, out: str | Path, *,
            shard_size: int = 100_000, batch_size: int = 256, workers: int = 2,
            features: str = "float16", device: str = "cpu", bf16: bool | None = None,
            overwrite: bool = False, limit: int | None = None, id_offset: int = 0, follow_links: bool = False,
            progress: bool = True, backend: str = "local", ray_options: dict[str, Any] | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Extract codes and features of a collection into SHARD_DIR ``out``; returns the manifest.

    ``backend="ray"`` runs the shards as tasks on a Ray cluster (see
    hashindex.distributed); the files are the same as the local path's.
    ``follow_links`` reads symbolic links that lead out of a folder ``data``
    (otherwise each is a counted ``outside-root`` skip).
    """
    with exclusive(Path(out), f"out={out}: another extract into it is running"):  # one writer
        if backend not in ("local", "ray"):
            raise HashindexError(f"backend={backend!r}: expected 'local' or 'ray'")
        job, manifest, todo = plan(model, data, out, shard_size=shard_size, batch_size=batch_size,
                                   workers=workers, features=features, device=device, bf16=bf16,
                                   overwrite=overwrite, limit=limit, id_offset=id_offset,
                                   follow_links=follow_links, log=log)
        if not todo and manifest.get("complete"):
            log(f"{job.out}: already complete ({manifest['shards_planned']} shards); nothing to do")
            return manifest
        t0 = time.time()
        if backend == "ray":
            _run_on_ray(job, manifest, todo, dict(ray_options or {}), progress, log)
            return finish(job, manifest, time.time() - t0, log)
        done_rows = sum(s["stop"] - s["start"] for s in manifest["shards"])
        bar = tqdm(total=len(job.source), unit="img", desc="extract", disable=not progress, initial=done_rows)
        for j in todo:
            record_shard(job.out, manifest, make_shard(job, j, bar.update))
        bar.close()
        return finish(job, manifest, time.time() - t0, log)


