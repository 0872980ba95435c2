"""Batch retrieval jobs (`hashindex query --queries SHARD_DIR --out FILE`): the results file's owner.

Every query of a shard directory (or of an image source, extracted on the fly)
is searched in batches; each batch's results are saved atomically in
``OUT.parts/``, so an interrupted job resumes from the last completed batch and
the final file equals an uninterrupted run's. The results go to one file (HDF5,
JSON lines or CSV) with the job that wrote it recorded beside it, so rerunning
a finished job is a no-op. Batches can run as Ray units (`distributed`), each
worker opening the index once.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .errors import NPZ_ERRORS, HashindexError
from .files import atomic_path, atomic_write_json, exclusive, read_json, read_npz, sha256_file
from .hdf5 import create_h5, ensure_room, open_h5
from .index import MISSING, Index, Only, restrict
from .provenance import own_positions
from .query import check_candidates, queries_as_shards, query_rows, search_known, with_copies
from .store import MANIFEST, ShardSet

OUTPUT_FORMATS = ("h5", "jsonl", "csv", "parquet")
PART_ARRAYS = ("ids", "hamming", "distance")  # what a saved batch holds, (rows of the batch, k) each
# How results are ranked, recorded with every job: a job recorded without it or with another ranks otherwise, so
# its parts are not mixed with this version's and its finished file is not passed off as this request's answer.
# 2: a query that is an indexed item finds itself first (`query.search_known`), 2026-12-04; before: the signal's.
# 3: so does a query whose pixels are an indexed item's (a copy under another name: `query.with_copies`), 2026-12-04.
RANKING = 3


def output_format(out: Path, fmt: str | None) -> str:
    """The results format: ``fmt``, else the one ``out``'s suffix names (none: h5; one that names no format is
    an error); checked before any search runs (Parquet needs pyarrow)."""
    if fmt and fmt not in OUTPUT_FORMATS:
        raise HashindexError(f"format={fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
    suffix = out.suffix.lower().lstrip(".")
    named = {"": "h5", "hdf5": "h5", "h5": "h5", "jsonl": "jsonl", "csv": "csv", "parquet": "parquet", "pq": "parquet"}
    if not fmt and suffix not in named:  # HDF5 under a .json or .txt name would pass for what it is not
        hint = " (JSON lines: .jsonl)" if suffix == "json" else ""
        raise HashindexError(f"out={out}: expected a name ending in .h5, .jsonl, .csv or .parquet{hint}, or set "
                             "fmt= to one of h5, jsonl, csv, parquet")
    fmt = fmt or named[suffix]
    if fmt == "parquet":
        _need_pyarrow(out, "out", "writing")
    return fmt


def _need_pyarrow(path: Path, arg: str, doing: str) -> None:
    """A one-line error where pyarrow, which Parquet results need, is not installed."""
    if importlib.util.find_spec("pyarrow") is None:
        raise HashindexError(f"{arg}={path}: {doing} Parquet needs pyarrow: pip install 'hashindex[parquet]'")


def _read_job(path: Path) -> dict[str, Any] | None:
    """A batch job's recorded settings (None when the file is damaged or edited into anything but the dict a
    job writes: the job is then not resumed, its results not trusted)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def batch_search(index: str | Path | Index, queries: str | Path, out: str | Path, *, k: int = 10,
                 candidates: int | None = None, rerank: bool = True, batch_size: int = 4096,
                 nprobe: int | None = None, fmt: str | None = None, model: str | None = None, device: str = "cpu",
                 overwrite: bool = False, progress: bool = True, backend: str = "local",
                 ray_options: dict[str, Any] | None = None, shard_actors: bool = False,
                 exclude_self: bool = False, only: Only | None = None, log=print) -> dict[str, Any]:
    """Search every query of a shard directory (or image source); write one results file.

    Work is saved per batch in ``OUT.parts/`` (atomic files); a rerun after an
    interruption continues from the last completed batch, and the final file
    equals an uninterrupted run's. Returns the job description.

    ``backend="ray"`` runs batches as tasks on Ray workers that each map the
    whole index; with ``shard_actors`` the batches run here instead and each
    fans out to one Ray actor per index shard (an index past one machine's RAM).
    ``exclude_self``: a query that is an indexed item (`provenance.own_positions`: the collection against itself, for
    each item's nearest others) is not among its own results. ``only``: results among these items alone
    (`hashindex.index.subset`), recorded with the job.
    """
    with exclusive(Path(out), f"out={out}: another batch job writing it is running"):  # one writer
        if backend not in ("local", "ray"):
            raise HashindexError(f"backend={backend!r}: expected 'local' or 'ray'")
        if shard_actors and backend != "ray":
            raise HashindexError("shard_actors=True: needs backend=ray")
        if not isinstance(index, Index):
            actor_options = {k: v for k, v in (ray_options or {}).items() if k in ("address", "num_workers")}
            index = Index.load(index, shard_actors=actor_options if shard_actors else None)
        check_candidates(candidates, k)
        index.check_nprobe(nprobe)
        restrict(index, only)  # a filter nothing passes fails before the queries are encoded
        settings = {"k": k, "candidates": candidates, "rerank": rerank, "batch_size": batch_size, "nprobe": nprobe,
                    **({"exclude_self": True} if exclude_self else {}),  # absent when off: older records match
                    **({"only": only.record()} if only else {})}
        out = Path(out)
        fmt = output_format(out, fmt)
        if out.exists() and not overwrite:
            recorded = _finished_job(out)
            if recorded and _same_job(recorded, index, queries, settings):
                recorded.pop("out_sha256")
                log(f"{out}: already complete ({recorded['queries_count']} queries); nothing to do")
                return recorded  # a rerun of a finished job (as after a kill just past its end) is a no-op
            raise HashindexError(f"out={out}: already exists (pass overwrite=True to replace it)")
        parts = out.with_name(out.name + ".parts")
        if overwrite and parts.exists():
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        shards = ShardSet(queries_as_shards(index, queries, parts, model, device, progress, log), "queries")
        index.check_model(shards.model_id, f"queries={queries}")
        job = _start_job(index, shards, parts, settings, out)
        data = query_rows(index, shards, ("codes", "ids", "paths", "input_digests"))
        own = own_positions(index, shards, data["ids"], data.pop("paths"))
        data["own"] = with_copies(index, own, data.pop("input_digests"))  # first, or left out
        if not rerank:
            data["features"] = None
        todo = _batches_to_do(parts, len(data["ids"]), settings, log)
        _run_batches(index, data, parts, settings, todo, progress,
                     dict(ray_options or {}) if backend == "ray" and not shard_actors else None)
        return _finish_job(out, fmt, parts, data["ids"], settings, job, log)


def _start_job(index: Index, shards: ShardSet, parts: Path, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """The job's record in ``parts``; an unfinished job there with other settings is refused, not mixed in."""
    job = {"index": str(index.dir.resolve()), "index_state": index_state(index), "model_id": index.model_id,
           "queries": str(shards.dir.resolve()), "queries_manifest_sha256": sha256_file(shards.dir / MANIFEST),
           "ranking": RANKING, **settings}
    recorded = _read_job(parts / "job.json") if (parts / "job.json").exists() else job
    if recorded is not None and recorded.get("ranking") != RANKING:
        raise HashindexError(f"out={out}: the unfinished job in {parts} was ranked by an older hashindex (an "
                             "indexed item not put first); pass overwrite=True to run it again")
    if recorded != job:
        raise HashindexError(f"out={out}: an unfinished job with other settings is in {parts} "
                             "(rerun it with the same settings, or pass overwrite=True)")
    atomic_write_json(parts / "job.json", job)
    return job


def _batches_to_do(parts: Path, n_queries: int, settings: dict[str, Any], log) -> list[int]:
    """The batches not saved whole in ``parts``: not there, or a part that does not read back as its batch's
    results (a damaged disk block, a flipped byte: searched again, said once each, never merged)."""
    todo = []
    for b in range(-(-n_queries // settings["batch_size"])):
        path = _part_path(parts, b)
        if path.exists() and _read_part(path, b, n_queries, settings) is None:
            log(f"warning: {path}: not a readable part of this job's results; searching its batch again")
            path.unlink()
        if not path.exists():
            todo.append(b)
    return todo


def _read_part(path: Path, b: int, n_queries: int, settings: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Batch b's saved results (ids, hamming, distance; one row per query of the batch, k columns), or None
    where the file is damaged or holds other shapes."""
    rows = min(settings["batch_size"], n_queries - b * settings["batch_size"])
    try:
        arrays = read_npz(path, PART_ARRAYS)
    except NPZ_ERRORS:
        return None
    return arrays if all(a.shape == (rows, settings["k"]) for a in arrays.values()) else None


def _run_batches(index: Index, data: dict[str, Any], parts: Path, settings: dict[str, Any], todo: list[int],
                 progress: bool, ray_options: dict[str, Any] | None) -> None:
    """Search the batches ``todo``: here, or as Ray units when ``ray_options`` is given."""
    if ray_options is not None and todo:
        from .distributed import run_units

        run_units(partial(_part_unit, str(index.dir.resolve()), str(parts.resolve()), settings), todo,
                  lambda b: None, shared=(data,), what="part", progress=progress, **ray_options)
        return
    for b in tqdm(todo, desc="query", unit="batch", disable=not progress):
        search_part(index, data, b, _part_path(parts, b), **settings)


def _finish_job(out: Path, fmt: str, parts: Path, query_ids: np.ndarray, settings: dict[str, Any],
                job: dict[str, Any], log) -> dict[str, Any]:
    """Merge the saved batches into the results file, record the job beside it and drop the parts."""
    saved = []
    for b in range(-(-len(query_ids) // settings["batch_size"])):
        part = _read_part(_part_path(parts, b), b, len(query_ids), settings)
        if part is None:  # damaged since it was written and checked: left for the rerun to search again
            raise HashindexError(f"out={out}: {_part_path(parts, b)} was damaged during the job; rerun it")
        saved.append(part)
    merged = {name: np.concatenate([part[name] for part in saved]) for name in PART_ARRAYS}
    _write_results(out, fmt, query_ids, merged, job)
    summary = {**job, "out": str(out), "queries_count": len(query_ids), "format": fmt}
    atomic_write_json(_job_record(out), {**summary, "out_sha256": sha256_file(out)})
    shutil.rmtree(parts)
    log(f"wrote {out}: {len(query_ids)} queries x top {job['k']} ({fmt})")
    return summary


def _part_path(parts: Path, b: int) -> Path:
    """The saved results of query batch b in the job's parts folder."""
    return parts / f"part-{b:06d}.npz"


def check_results(out: str | Path, arg: str = "out") -> dict[str, Any]:
    """The job record of a finished results file whose bytes are the ones the job wrote (its SHA-256 as
    recorded beside it); one-line HashindexError (naming ``arg``) otherwise."""
    out = Path(out)
    record = _read_job(_job_record(out))
    if not out.is_file() or record is None or not isinstance(record.get("out_sha256"), str):
        raise HashindexError(f"{arg}={out}: not a finished batch results file (no readable job record "
                             f"{_job_record(out).name} beside it)")
    digest = sha256_file(out)
    if digest != record["out_sha256"]:
        raise HashindexError(f"{arg}={out}: not the file the batch job wrote (SHA-256 {digest[:12]}… where "
                             f"{record['out_sha256'][:12]}… was recorded); rerun the job with overwrite")
    return record


def _finished_job(out: Path) -> dict[str, Any] | None:
    """`check_results`'s job record, or None where ``out`` is not a finished job's file as it wrote it."""
    try:
        return check_results(out)
    except HashindexError:
        return None


def read_results(out: str | Path, arg: str = "path") -> dict[str, np.ndarray]:
    """A finished results file read back, in any of its formats, once checked against its recorded SHA-256:
    ``query_ids`` (Q,) and ``ids``, ``hamming``, ``distance`` (Q, k) as the job searched them (-1, -1 and NaN
    past a query's results). A CSV file has no row for a query without results: such a query is absent."""
    record = check_results(out, arg)
    if record["format"] == "h5":
        with open_h5(out, arg, "rerun the job with overwrite") as f:
            return {name: f[name][()] for name in ("query_ids", "ids", "hamming", "distance")}
    rows: dict[int, tuple[list, list, list]] = {}
    if record["format"] == "parquet":
        _need_pyarrow(Path(out), arg, "reading")
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pydict()
        for qid, i, h, d in zip(table["query_id"], table["id"], table["hamming"], table["distance"]):
            for values, value in zip(rows.setdefault(qid, ([], [], [])), (i, h, np.nan if d is None else d)):
                values.append(value)
        return _padded(rows, record["k"])
    with open(out, encoding="utf-8", newline="") as f:
        if record["format"] == "jsonl":
            for line in f:
                row = json.loads(line)
                rows[row["query_id"]] = (row["ids"], row["hamming"], [np.nan if d is None else d
                                                                      for d in row["distance"]])
        else:
            reader = csv.reader(f)
            next(reader)  # the header
            for qid, _, i, h, d in reader:
                for values, value in zip(rows.setdefault(int(qid), ([], [], [])),
                                         (int(i), int(h), float(d) if d else np.nan)):
                    values.append(value)
    return _padded(rows, record["k"])


def _padded(rows: dict[int, tuple[list, list, list]], k: int) -> dict[str, np.ndarray]:
    """Results read row by row (query id -> ids, hamming, distances) as arrays padded to k with -1 and NaN."""
    res = {"query_ids": np.fromiter(rows, np.int64, len(rows)), "ids": np.full((len(rows), k), MISSING, np.int64),
           "hamming": np.full((len(rows), k), MISSING, np.int32),
           "distance": np.full((len(rows), k), np.nan, np.float32)}
    for q, (ids, ham, dist) in enumerate(rows.values()):
        res["ids"][q, :len(ids)], res["hamming"][q, :len(ids)], res["distance"][q, :len(ids)] = ids, ham, dist
    return res


def is_results_file(path: str | Path) -> bool:
    """Whether ``path`` is a file a batch job finished (its job record lies beside it)."""
    return Path(path).is_file() and _job_record(Path(path)).is_file()


def _job_record(out: Path) -> Path:
    """Beside a finished results file: the job that wrote it and the file's SHA-256 (a rerun is a no-op)."""
    return out.with_name(f".{out.name}.job.json")


def describe_results(out: str | Path) -> dict[str, Any]:
    """What a finished results file holds (`hashindex info`): its job's settings, the file checked against its
    recorded SHA-256, and whether the index it searched still holds what it held then (``index_now``: 'same',
    'changed' by a build, append or removal since, 'gone', or 'unknown' for a job recorded before that was)."""
    from .index.layout import read_index_meta

    record = check_results(out, "path")
    try:
        state = _meta_state(read_index_meta(record["index"], "index"))
        now = "unknown" if "index_state" not in record else "same" if state == record["index_state"] else "changed"
    except HashindexError:
        now = "gone"
    keep = ("format", "queries_count", "k", "candidates", "rerank", "nprobe", "exclude_self", "only", "index",
            "model_id", "queries")
    return {"kind": "batch results", "path": str(out), **{key: record[key] for key in keep if key in record},
            "index_now": now}


def index_state(index: Index) -> str:
    """What the index holds, as a digest of its index.json (file checksums, appended collections, count): a build,
    an append or a removal changes it, where the build time alone stays the same through appends (a rerun after an
    append was then taken for a finished job, and a resumed one mixed batches searched before and after it)."""
    return _meta_state(index.meta)


def _meta_state(meta: dict[str, Any]) -> str:
    """`index_state` of an index.json as read."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _same_job(recorded: dict[str, Any], index: Index, queries: str | Path, settings: dict[str, Any]) -> bool:
    """Whether a finished job answered this request (same index build, same query shards, same settings)."""
    q = Path(queries)
    return (q / MANIFEST).is_file() and recorded.get("index") == str(index.dir.resolve()) \
        and recorded.get("index_state") == index_state(index) and recorded.get("queries") == str(q.resolve()) \
        and recorded.get("queries_manifest_sha256") == sha256_file(q / MANIFEST) \
        and recorded.get("ranking") == RANKING and all(recorded.get(key) == value for key, value in settings.items())


def _part_unit(index_dir: str, part_dir: str, settings: dict[str, Any], data: dict[str, Any]
               ) -> Callable[[int], int]:
    """What a Ray actor runs per unit: it opens the index once, then searches query part b per call."""
    index = Index.load(index_dir)

    def run(b: int) -> int:
        search_part(index, data, b, _part_path(Path(part_dir), b), **settings)
        return b

    return run


def search_part(index: Index, data: dict[str, Any], b: int, path: str | Path, *, k: int,
                candidates: int | None, rerank: bool, batch_size: int, nprobe: int | None = None,
                exclude_self: bool = False, only: dict[str, list] | None = None) -> None:
    """Search query rows [b * batch_size, (b+1) * batch_size) and save them atomically as one part (a query that
    is an indexed item, ``data["own"]``: its position, finds itself first, or not at all with ``exclude_self``;
    ``only``: the job's recorded filter)."""
    sl = slice(b * batch_size, min((b + 1) * batch_size, len(data["ids"])))
    feats = data["features"][sl] if data["features"] is not None else None
    own = data["own"][sl] if data.get("own") is not None else None
    if only:
        index = restrict(index, Only.from_record(only))
        own = index.local(own) if own is not None else None
    res = search_known(index, own, exclude_self, data["codes"][sl], feats, k, candidates, rerank, nprobe=nprobe)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=res.ids, hamming=res.hamming, distance=res.distance)


def _write_results(out: Path, fmt: str, query_ids: np.ndarray, res: dict[str, np.ndarray],
                   job: dict[str, Any]) -> None:
    """Write the merged results atomically in the chosen format."""
    if fmt == "h5":
        ensure_room(out, query_ids.nbytes + sum(a.nbytes for a in res.values()))
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            _write_parquet(tmp, query_ids, res, job)
            return
        if fmt == "h5":
            with create_h5(tmp) as f:
                f.create_dataset("query_ids", data=query_ids.astype(np.int64))
                for name, arr in res.items():
                    f.create_dataset(name, data=arr)
                for key, value in job.items():  # a filter (a dict of lists) as its JSON text
                    f.attrs[key] = "none" if value is None else json.dumps(value) if isinstance(value, dict) else value
            return
        with open(tmp, "w", encoding="utf-8") as f:
            if fmt == "csv":
                f.write("query_id,rank,id,hamming,distance\n")
            for q, qid in enumerate(query_ids):
                ok = res["ids"][q] >= 0
                ids, ham, dist = res["ids"][q][ok], res["hamming"][q][ok], res["distance"][q][ok]
                if fmt == "jsonl":
                    f.write(json.dumps({"query_id": int(qid), "ids": ids.tolist(), "hamming": ham.tolist(),
                                        "distance": [None if np.isnan(d) else float(d) for d in dist]}) + "\n")
                else:
                    for r, (i, h, d) in enumerate(zip(ids, ham, dist), 1):
                        f.write(f"{qid},{r},{i},{h},{'' if np.isnan(d) else repr(float(d))}\n")


def _write_parquet(path: Path, query_ids: np.ndarray, res: dict[str, np.ndarray], job: dict[str, Any]) -> None:
    """One row per result, as the CSV has them (query_id, rank, id, hamming, distance: null past the re-ranked
    pool), the job's settings in the schema metadata (key ``hashindex``): what pandas, DuckDB or Spark read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ok = res["ids"] >= 0
    q, r = np.nonzero(ok)
    dist = res["distance"][ok]
    table = pa.table({"query_id": query_ids.astype(np.int64)[q], "rank": (r + 1).astype(np.int32),
                      "id": res["ids"][ok], "hamming": res["hamming"][ok].astype(np.int32),
                      "distance": pa.array(dist, pa.float32(), mask=np.isnan(dist))})
    pq.write_table(table.replace_schema_metadata({"hashindex": json.dumps(job)}), path)
