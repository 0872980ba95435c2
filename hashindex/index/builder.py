"""`hashindex build`: Faiss indexes over a shard directory, and `append` for a collection that grows.

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
directory named INDEX_DIR is always complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
from tqdm import tqdm

from ..errors import HashindexError
from ..files import atomic_write_json, exclusive, read_json, sha256_file
from ..metrics import pad_codes
from ..signals import Head, database_vectors
from ..store import MANIFEST, ShardSet
from .buckets import BucketedBinary
from .kinds import (IVF_TRAIN_PER_LIST, BinaryParts, default_params, make_binary_index, make_binary_parts,
                    new_float_store, padded_bytes)
from .layout import (BINARY_FILE, FORMAT, FORMAT_VERSION, HEAD_FILE, INDEX_JSON, RERANK_FILE, TABLE_FILE,
                     binary_files, bucket_files, bucketed, buckets_file, check_index, copy_table, memory_figures,
                     new_table, part_file, read_binary, read_head, read_index_meta, read_table, record_checksums,
                     rerank_files, rerank_signal, write_binary)
from .recall import check_queries, coarse_plan, tune
from .tuning import fine_stage, training_sample


def _check_shards(shards: ShardSet, rerank: str) -> None:
    if shards.rows == 0:
        raise HashindexError(f"shard_dir={shards.dir}: holds no rows")
    if rerank != "none" and shards.manifest["feature_dtype"] == "none":
        raise HashindexError(f"rerank={rerank}: {shards.dir} was extracted with features=none; "
                             "use rerank=none or extract features")


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
    store = ShardSet(shard_dir, "shard_dir")
    _check_shards(store, rerank)
    queries = None if tune_queries is None else ShardSet(tune_queries, "tune_queries")
    if queries is not None:
        check_queries(queries, store)
    out = Path(out)
    with _exclusive(out):  # one writer: a build and an append of the same INDEX_DIR never interleave
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
    params = default_params(binary, n, bits)
    if binary == "ivf":
        params["nlist"] = nlist or params["nlist"]
        params["nprobe"] = nprobe or min(params["nprobe"], params["nlist"])
        if params["nlist"] > n:
            raise HashindexError(f"nlist={params['nlist']}: more lists than the {n} items to index")
    rng = np.random.default_rng(seed)
    sample = None
    if binary == "ivf":
        sample = pad_codes(training_sample(store, "codes", IVF_TRAIN_PER_LIST * params["nlist"], rng), pbytes)
    parts = make_binary_parts(binary, pbytes * 8, params, bounds, sample)
    head, signal, choice = fine_stage(store, rerank, signal, model, rng, log)
    fparts: list[faiss.Index] = []
    if signal not in ("none", "hamming"):
        rows = store.sample_rows(("codes", "features"), 100_000, rng)
        findex = new_float_store(rerank, database_vectors(signal, rows["features"], rows["codes"], head))
        # with parts, the float store is split the same way (one trained store, cloned empty per part): a
        # part's actor then re-ranks its own candidates (issue #18)
        fparts = [findex] + [faiss.clone_index(findex) for _ in range(shards - 1)]

    with _replacing(out) as tmp:
        remote, as_parts = ray_options is not None, ray_options is not None or shards > 1
        if remote:  # each part a Ray task reading its rows from the shard files (hashindex/index/parts.py)
            from .parts import build_parts_on_ray, part_job

            job = part_job(store.dir, tmp, bounds, pbytes, parts[0], fparts[0] if fparts else None, signal, head)
            build_parts_on_ray(job, shards, ray_options, progress)
        with new_table(tmp / TABLE_FILE, n, code_bytes) as table:
            _fill(store, [] if remote else parts, [] if remote else fparts, bounds, pbytes, table, 0, progress,
                  signal, head)
        tuning = None
        if recall is not None:
            tuning = _tune(store, tmp, parts, binary, params, bounds, pbytes, recall, remote, rng, log, queries)
            params[tuning["param"]] = tuning["value"]
        bucketed = isinstance(parts[0], BucketedBinary)
        binary_meta: dict[str, Any] = {"kind": binary,
                                       "faiss": type(parts[0].graph if bucketed else parts[0]).__name__,
                                       "padded_bytes": pbytes, **params}
        if bucketed:
            binary_meta["buckets"] = True
        if requested == "auto":
            binary_meta["requested"] = "auto"
        if tuning is not None:
            binary_meta["tuning"] = tuning
        rerank_meta: dict[str, Any] = {"kind": rerank if fparts else "none",
                                       "faiss": type(fparts[0]).__name__ if fparts else None,
                                       "dim": fparts[0].d if fparts else 0, "metric": "L2",
                                       "signal": signal, "signal_choice": choice}
        ranges = [{"start": bounds[j], "stop": bounds[j + 1]} for j in range(shards)]
        if as_parts:
            binary_meta["shards"] = [{"file": part_file("binary", j), **r} for j, r in enumerate(ranges)]
            if fparts:
                rerank_meta["shards"] = [{"file": part_file("rerank", j), **r} for j, r in enumerate(ranges)]
        if not remote:
            for part, name in zip(parts, binary_files({"binary": binary_meta})):
                write_binary(part, tmp / name)
            for fpart, name in zip(fparts, rerank_files({"rerank": rerank_meta})):
                faiss.write_index(fpart, str(tmp / name))
        if head is not None:
            head.save(tmp / HEAD_FILE)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_id": store.model_id, "bits": bits, "code_bytes": code_bytes, "count": n,
            "class_names": store.class_names,
            "binary": binary_meta,
            "rerank": rerank_meta,
            "source": _source_entry(store),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(time.time() - t0, 3),
            "memory": memory_figures(tmp, n, _binary_names(binary_meta), rerank_files({"rerank": rerank_meta})),
            "files": record_checksums(tmp),
        }
        atomic_write_json(tmp / INDEX_JSON, meta)
    log(f"built {out}: {n} items, {binary} binary index ({pbytes * 8} bits padded from {bits}"
        + (f", {shards} shards" if shards > 1 else "") + "), "
        f"{meta['rerank']['kind']} re-rank store ({signal}), {meta['memory']['bytes_per_item']:.1f} bytes/item, "
        f"{meta['build_s']:.1f} s")
    return meta


def _binary_names(binary_meta: dict[str, Any]) -> list[str]:
    """Every file of the binary index: its graph(s) or index file(s), and their bucket tables."""
    meta = {"binary": binary_meta}
    return binary_files(meta) + bucket_files(meta)


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


def _source_entry(store: ShardSet) -> dict[str, str]:
    """Where an index's rows came from: the shard directory and its manifest's checksum."""
    return {"dir": str(store.dir.resolve()), "manifest_sha256": sha256_file(store.dir / MANIFEST)}


def _check_appendable(meta: dict[str, Any], store: ShardSet, index_dir: Path) -> None:
    """One-line errors for shards that cannot join an existing index."""
    where = f"shard_dir={store.dir}"
    if store.model_id != meta["model_id"]:
        raise HashindexError(f"{where}: extracted with model {store.model_id}, but {index_dir} holds codes of "
                             f"model {meta['model_id']} (codes of different models cannot be compared)")
    if store.class_names and store.class_names != meta["class_names"]:
        raise HashindexError(f"{where}: classes {store.class_names[:5]} differ from the index's "
                             f"{meta['class_names'][:5]}")
    dim = meta["rerank"]["dim"]
    if dim and store.manifest["feature_dim"] == 0:
        raise HashindexError(f"{where}: extracted with features=none, but {index_dir} re-ranks with features")
    if dim and rerank_signal(meta) in ("l2", "cosine") and store.manifest["feature_dim"] != dim:
        raise HashindexError(f"{where}: {store.manifest['feature_dim']}-d features, the index re-ranks {dim}-d")
    sha = _source_entry(store)["manifest_sha256"]
    if sha in [s["manifest_sha256"] for s in [meta["source"], *meta.get("appended", [])]]:
        raise HashindexError(f"{where}: already in {index_dir}")


def _check_new_ids(old_ids: np.ndarray, store: ShardSet, index_dir: Path) -> None:
    """New ids must be unique and absent from the index (results are reported by id)."""
    new_ids = np.concatenate([np.asarray(part) for part in store.memmap("ids")])
    uniq = np.unique(new_ids)
    if len(uniq) < len(new_ids):
        raise HashindexError(f"shard_dir={store.dir}: holds duplicate ids")
    clash = uniq[np.isin(uniq, old_ids, assume_unique=True)]
    if len(clash):
        raise HashindexError(
            f"shard_dir={store.dir}: {len(clash)} of its ids are already in {index_dir} (e.g. id {clash[0]}); "
            f"extract the new images with id_offset={int(old_ids.max()) + 1} (or higher)")


def _exclusive(index_dir: Path):
    """The lock of INDEX_DIR: one build or append of it at a time, so none loses another's rows."""
    return exclusive(index_dir, f"out={index_dir}: another append to it is running, or a build")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link an unchanged file into the new index folder (a copy across file systems).

    Safe because index files are only ever replaced, never modified in place.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
    store = ShardSet(shard_dir, "shard_dir")
    read_index_meta(index_dir, "out")  # a clear error before any lock file is made
    with _exclusive(index_dir):
        meta = read_index_meta(index_dir, "out")  # as it is now that no other append runs
        check_index(index_dir, meta, "out")
        _check_appendable(meta, store, index_dir)
        _check_shards(store, meta["rerank"]["kind"])
        return _append(store, meta, index_dir, t0, progress, log)


def _append(store: ShardSet, meta: dict[str, Any], index_dir: Path, t0: float, progress: bool, log
            ) -> dict[str, Any]:
    """The work of `append`, under the index's lock."""
    _check_new_ids(read_table(index_dir, ("ids",))["ids"], store, index_dir)
    n_old, m = meta["count"], store.rows
    n = n_old + m
    pbytes = meta["binary"]["padded_bytes"]
    part, bounds, rewritten, binary_meta = _binary_to_grow(meta, index_dir, n)
    fpart, frewritten, rerank_meta = _float_to_grow(meta, index_dir, n)
    head = read_head(index_dir)

    with _replacing(index_dir) as tmp:
        with new_table(tmp / TABLE_FILE, n, meta["code_bytes"]) as table:
            copy_table(index_dir, table, n_old)
            _fill(store, [part], [fpart] if fpart is not None else [], bounds, pbytes, table, n_old, progress,
                  rerank_signal(meta), head)
        write_binary(part, tmp / rewritten)
        if fpart is not None:
            faiss.write_index(fpart, str(tmp / frewritten))
        kept = [name for name in _binary_names(meta["binary"]) + rerank_files(meta)
                if name not in (rewritten, buckets_file(rewritten), frewritten)]
        for name in kept:
            _link_or_copy(index_dir / name, tmp / name)
        if head is not None:
            _link_or_copy(index_dir / HEAD_FILE, tmp / HEAD_FILE)
        new_meta = {**meta, "count": n, "binary": binary_meta, "rerank": rerank_meta,
                    "appended": meta.get("appended", []) + [{
                        **_source_entry(store), "start": n_old, "stop": n,
                        "appended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "append_s": round(time.time() - t0, 3)}],
                    "memory": memory_figures(tmp, n, _binary_names(binary_meta),
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
    if binary_meta["kind"] == "ivf":
        part = faiss.read_index_binary(str(index_dir / shards[-1]["file"]))
        part.reset()
    else:
        part = make_binary_index(binary_meta["kind"], binary_meta["padded_bytes"] * 8, binary_meta)
        if isinstance(part, BucketedBinary) and not bucketed(meta):
            part = part.graph  # an index built before graphs over distinct codes keeps its kind of part
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
        return faiss.read_index(str(index_dir / RERANK_FILE)), RERANK_FILE, rerank_meta
    part = faiss.read_index(str(index_dir / shards[-1]["file"]))
    part.reset()  # keeps what was trained (scalar ranges, PQ codebooks)
    name = part_file("rerank", len(shards))
    rerank_meta["shards"] = shards + [{"file": name, "start": meta["count"], "stop": n}]
    return part, name, rerank_meta


def _fill(store: ShardSet, parts: list, fparts: list, bounds: list[int], pbytes: int, table,
          pos: int, progress: bool, signal: str = "l2", head: Head | None = None) -> None:
    """Add every shard's codes and signal vectors to the indexes and its rows to the table from position ``pos``.

    Rows go to binary index j (and float store j, when there are float parts) when their position lies in
    [bounds[j], bounds[j+1]).
    """
    fields = ("codes", "ids", "labels", "paths") + (("features",) if fparts else ())
    for rows in tqdm(store.iter_rows(fields), total=len(store.shard_paths()), desc="build", unit="shard",
                     disable=not progress):
        codes = rows["codes"]
        m = len(codes)
        padded = pad_codes(codes, pbytes)
        vecs = database_vectors(signal, rows["features"], codes, head) if fparts else None
        for j, part in enumerate(parts):
            lo, hi = max(bounds[j], pos), min(bounds[j + 1], pos + m)
            if lo < hi:
                part.add(padded[lo - pos:hi - pos])
                if fparts:
                    fparts[j].add(vecs[lo - pos:hi - pos])
        for name in ("ids", "labels", "codes", "paths"):
            table[name][pos:pos + m] = rows[name]
        pos += m


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out`` that replaces it when the block succeeds and is removed if it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_leftovers(out: Path) -> int:
    """Remove the temp and old folders of killed builds or appends of ``out`` (called under its lock)."""
    mine = re.compile(rf"\.{re.escape(out.name)}\.(build-[a-z0-9_]+\.tmp|old-\d+)")
    stale = [p for p in out.parent.iterdir() if p.is_dir() and mine.fullmatch(p.name)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder to ``out``, replacing an old index if present."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1000)}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
