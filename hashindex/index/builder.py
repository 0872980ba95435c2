"""`hashindex build`: Faiss indexes over a shard directory (`append`, in appending.py, grows one).

Two Faiss indexes, both addressed by *position* (row order of the shards):
  * a binary index for coarse Hamming search: IndexBinaryFlat, IndexBinaryIVF,
    IndexBinaryHNSW or IndexBinaryMultiHash (`kinds`);
  * a float store of the fine-stage vectors of the index's *signal*
    (hashindex.signals), chosen per collection (`tuning`) and recorded in
    index.json: IndexFlatL2, or IndexScalarQuantizer (fp16 / 8-bit) or
    IndexPQ to save memory.
A table (``table.h5``) maps positions to the stable ids, labels, paths and
unpadded codes, so results come back as the shards' ids (`layout`).

INDEX_DIR is built in a temp folder beside it and renamed into place, so a
directory named INDEX_DIR is always complete (`writing`).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import HashindexError
from ..files import atomic_write_json, read_json
from ..codes import pad_codes
from ..signals import Head, database_vectors, feature_field
from ..store import ShardSet
from .buckets import BucketedBinary
from .kinds import IVF_TRAIN_PER_LIST, BinaryParts, default_params, make_binary_parts, new_float_store, padded_bytes
from .faiss_files import read_binary, write_binary, write_float
from .layout import (FORMAT, FORMAT_VERSION, HEAD_FILE, INDEX_JSON, TABLE_FILE, binary_files, memory_figures, new_table,
                     part_file, record_checksums, rerank_files)
from .recall import check_queries, coarse_plan, tune
from .tuning import fine_stage, training_sample
from .writing import binary_names, check_shards, exclusive_index, fill, open_shards, replacing, source_entry


def build(shard_dir: str | Path, out: str | Path, *, binary: str = "auto", rerank: str = "flat",
          signal: str = "auto", model: str | None = None, nlist: int | None = None, nprobe: int | None = None,
          recall: float | None = None, tune_queries: str | Path | None = None, shards: int = 1, seed: int = 0,
          overwrite: bool = False, progress: bool = True, backend: str = "local",
          ray_options: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Build INDEX_DIR ``out`` from a complete shard directory; returns index.json.

    ``shards`` > 1 splits the binary index (and the float store) into that many
    parts over consecutive position ranges (searched with an exact merge).
    ``signal`` is the fine stage's ordering (hashindex.signals), or "auto" to
    measure which serves this collection best (`choose_signal`); ``model`` gives
    the net's head where the shard directory lacks it. ``backend="ray"`` builds
    each part as a Ray task from the shard files (hashindex/index/parts.py); the
    files equal the local build's.

    ``binary="auto"`` picks flat (exact) up to `recall.AUTO_FLAT_MAX` items, else (or when ``nlist`` or ``nprobe``
    is given) IVF with `auto_nlist` lists and ``recall`` (default 0.95); ``recall`` sets the coarse index's search parameter (IVF nprobe, HNSW
    efSearch, MultiHash nflip) to the smallest value whose recall@10 against exact Hamming search,
    measured on held-out items of the collection, reaches it (hashindex/index/recall.py);
    ``tune_queries``, a shard directory of queries like the ones the index will serve (same model), is
    measured instead of held-out items.
    """
    if backend not in ("local", "ray"):
        raise HashindexError(f"backend={backend!r}: expected 'local' or 'ray'")
    t0 = time.time()
    store = open_shards(shard_dir, "shard_dir")
    check_shards(store, rerank)
    queries = None if tune_queries is None else open_shards(tune_queries, "tune_queries")
    if queries is not None:
        check_queries(queries, store)
    out = Path(out)
    with exclusive_index(out):  # one writer: a build and an append of the same INDEX_DIR never interleave
        _check_replaceable(out, store, overwrite)
        return _build(store, out, t0, binary=binary, rerank=rerank, signal=signal, model=model, nlist=nlist,
                      nprobe=nprobe, recall=recall, queries=queries, shards=shards, seed=seed, progress=progress,
                      log=log, ray_options=dict(ray_options or {}) if backend == "ray" else None)


def _check_replaceable(out: Path, store: ShardSet, overwrite: bool) -> None:
    """``out`` may be written: absent, or (with overwrite) an existing hashindex index that is not the input."""
    if not out.exists():
        return
    if not overwrite:
        raise HashindexError(f"out={out}: already exists (pass overwrite=True to replace it, "
                             "or append=True to add SHARD_DIR to it)")
    src, dst = store.dir.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise HashindexError(f"out={out}: is or holds the shard directory being indexed; refusing to replace it")
    try:
        is_index = out.is_dir() and read_json(out / INDEX_JSON).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        is_index = False
    if not is_index:
        raise HashindexError(f"out={out}: exists and is not a hashindex index; refusing to replace it "
                             "(choose another out, or remove it yourself)")


def _build(store: ShardSet, out: Path, t0: float, *, binary: str, rerank: str, signal: str, model: str | None,
           nlist: int | None, nprobe: int | None, recall: float | None, queries: ShardSet | None, shards: int,
           seed: int, progress: bool, log, ray_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The work of `build`, under the index's lock."""
    n, bits = store.rows, store.bits
    if not 1 <= shards <= n:
        raise HashindexError(f"shards={shards}: expected 1 to {n} (the number of items)")
    requested = binary
    binary, recall = coarse_plan(binary, n, nlist, nprobe, recall, queries, log)
    code_bytes = store.manifest["code_bytes"]
    pbytes = padded_bytes(code_bytes)
    bounds = np.linspace(0, n, shards + 1).round().astype(int).tolist()
    rng = np.random.default_rng(seed)  # drawn from in this order: IVF training, signal choice, float store, tuning
    params, parts = _binary_parts(store, binary, nlist, nprobe, pbytes, bounds, rng)
    head, signal, choice = fine_stage(store, rerank, signal, model, rng, log)
    fparts = _float_parts(store, rerank, signal, head, shards, rng)

    with replacing(out) as tmp:
        remote = ray_options is not None
        if remote:  # each part a Ray task reading its rows from the shard files (hashindex/index/parts.py)
            from .parts import build_parts_on_ray, part_job

            job = part_job(store.dir, tmp, bounds, pbytes, parts[0], fparts[0] if fparts else None, signal, head)
            build_parts_on_ray(job, shards, ray_options, progress)
        with new_table(tmp / TABLE_FILE, n, code_bytes, len(store.class_names) if store.multi_label else 0) as table:
            fill(store, [] if remote else parts, [] if remote else fparts, bounds, pbytes, table, 0, progress,
                 signal, head)
        tuning = None
        if recall is not None:
            tuning = _tune(store, tmp, parts, binary, params, bounds, pbytes, recall, remote, rng, log, queries)
            params[tuning["param"]] = tuning["value"]
        binary_meta, rerank_meta = _part_entries(binary, requested, params, pbytes, tuning, parts, rerank, fparts,
                                                 signal, choice, bounds, as_parts=remote or shards > 1)
        if not remote:
            for part, name in zip(parts, binary_files({"binary": binary_meta})):
                write_binary(part, tmp / name)
            for fpart, name in zip(fparts, rerank_files({"rerank": rerank_meta})):
                write_float(fpart, tmp / name)
        if head is not None:
            head.save(tmp / HEAD_FILE)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_id": store.model_id, "bits": bits, "code_bytes": code_bytes, "count": n,
            "class_names": store.class_names,
            **({"model": store.manifest["model"]} if "model" in store.manifest else {}),
            "binary": binary_meta,
            "rerank": rerank_meta,
            "source": source_entry(store),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(time.time() - t0, 3),
            "memory": memory_figures(tmp, n, binary_names(binary_meta), rerank_files({"rerank": rerank_meta})),
            "files": record_checksums(tmp),
        }
        atomic_write_json(tmp / INDEX_JSON, meta)
    log(f"built {out}: {n} items, {binary} binary index ({pbytes * 8} bits padded from {bits}"
        + (f", {shards} shards" if shards > 1 else "") + "), "
        + (f"{meta['rerank']['kind']} re-rank store ({signal})" if meta['rerank']['kind'] != "none"
           else f"no re-rank store (signal {signal})")
        + f", {meta['memory']['bytes_per_item']:.1f} bytes/item, "
        f"{meta['build_s']:.1f} s")
    return meta


def _binary_parts(store: ShardSet, binary: str, nlist: int | None, nprobe: int | None, pbytes: int,
                  bounds: list[int], rng: np.random.Generator) -> tuple[dict[str, Any], list]:
    """(search parameters, empty binary index parts, trained where the kind needs it: IVF's quantizer on a
    sample of the codes, shared by every part)."""
    n = store.rows
    params = default_params(binary, n, store.bits)
    sample = None
    if binary == "ivf":
        params["nlist"] = nlist or params["nlist"]
        params["nprobe"] = nprobe or min(params["nprobe"], params["nlist"])
        if params["nlist"] > n:
            raise HashindexError(f"nlist={params['nlist']}: more lists than the {n} items to index")
        sample = pad_codes(training_sample(store, "codes", IVF_TRAIN_PER_LIST * params["nlist"], rng), pbytes)
    return params, make_binary_parts(binary, pbytes * 8, params, bounds, sample)


def _float_parts(store: ShardSet, rerank: str, signal: str, head: Head | None, shards: int,
                 rng: np.random.Generator) -> list[faiss.Index]:
    """Empty float stores of the signal's vectors, one per part (none without a fine stage), trained once on
    a sample: a part's actor then re-ranks its own candidates, and quantized parts decode as one store."""
    if signal in ("none", "hamming"):
        return []
    field = feature_field(signal)
    rows = store.sample_rows(("codes", field), 100_000, rng)
    findex = new_float_store(rerank, database_vectors(signal, rows[field], rows["codes"], head))
    return [findex] + [faiss.clone_index(findex) for _ in range(shards - 1)]


def _part_entries(binary: str, requested: str, params: dict[str, Any], pbytes: int, tuning: dict[str, Any] | None,
                  parts: list, rerank: str, fparts: list, signal: str, choice: dict[str, Any] | None,
                  bounds: list[int], as_parts: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """index.json's "binary" and "rerank" entries: kinds, Faiss classes, parameters, how they were chosen,
    and the file and position range of each part when the index is kept in parts."""
    graphs = isinstance(parts[0], BucketedBinary)
    binary_meta: dict[str, Any] = {"kind": binary, "faiss": type(parts[0].graph if graphs else parts[0]).__name__,
                                   "padded_bytes": pbytes, **params}
    if graphs:
        binary_meta["buckets"] = True
    if requested == "auto":
        binary_meta["requested"] = "auto"
    if tuning is not None:
        binary_meta["tuning"] = tuning
    rerank_meta: dict[str, Any] = {"kind": rerank if fparts else "none",
                                   "faiss": type(fparts[0]).__name__ if fparts else None,
                                   "dim": fparts[0].d if fparts else 0, "metric": "L2",
                                   "signal": signal, "signal_choice": choice}
    if as_parts:
        ranges = [{"start": bounds[j], "stop": bounds[j + 1]} for j in range(len(bounds) - 1)]
        binary_meta["shards"] = [{"file": part_file("binary", j), **r} for j, r in enumerate(ranges)]
        if fparts:
            rerank_meta["shards"] = [{"file": part_file("rerank", j), **r} for j, r in enumerate(ranges)]
    return binary_meta, rerank_meta


def _tune(store: ShardSet, tmp: Path, parts: list, kind: str, params: dict[str, Any], bounds: list[int],
          pbytes: int, target: float, remote: bool, rng: np.random.Generator, log,
          queries: ShardSet | None = None) -> dict[str, Any]:
    """Set the parts' search parameter from the recall target (`recall.tune`); parts built on Ray are read
    back from their files, tuned and written again."""
    names = [part_file("binary", j) for j in range(len(bounds) - 1)]
    if remote:
        parts = [read_binary(tmp / name, False, isinstance(parts[0], BucketedBinary)) for name in names]
    merged = BinaryParts(parts, bounds[:-1])
    # the index's own recall: a short result's fill (more IVF lists, MultiHash's exact scan) would count the
    # fallback as recall. Tuned with it, MultiHash on test_recall.py's clustered codes chose an nflip whose own
    # recall@10 on fresh queries is 0.55, every short query paying a scan of the whole collection
    tuning = tune(partial(merged.search, fill=False), parts, kind, params, store, pbytes, target, rng, log, queries)
    if remote:
        for part, name in zip(parts, names):
            write_binary(part, tmp / name)
    log(f"recall@{tuning['at']} {tuning['recall']} (target {target}) at {tuning['param']}={tuning['value']}")
    return tuning


