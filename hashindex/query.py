"""Queries as a job (`hashindex query`): image files or indexed items in, result rows or a results file out.

Interactive queries encode image files with the index's model (or use the
stored vectors of indexed items) and rank through `Index.search`; the batch
job searches every query of a shard directory in parts saved atomically, so an
interrupted job resumes, and writes one results file (HDF5, JSON lines or CSV).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from .errors import HashindexError
from .files import exclusive
from .index import MISSING, Index, SearchResult
from .signals import query_from_database


def _encode_images(index: Index, images: list[str], model: str | None, device: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Decode and encode query image files with the index's model: (codes, fine-stage vectors)."""
    from .data import BadImage, FilesSource
    from .model import find_model_for, load_model

    hm = load_model(model if model else find_model_for(index.model_id), device)
    index.check_model(hm.model_id)
    src = FilesSource(images)
    arrays = []
    for i, path in enumerate(images):
        try:
            arrays.append(src.read_array(i, hm.input_size, hm.channels))
        except BadImage as e:
            what = "no such file" if e.reason == "missing" else f"cannot be decoded ({e.reason})"
            if Path(path).is_dir():
                what = ("is a folder: pass its image files (a shell glob such as DIR/*.jpg), or extract it and "
                        "pass queries=SHARD_DIR")
            raise HashindexError(f"IMAGE {path}: {what}") from None
    codes, feats = hm.encode(np.stack(arrays))
    return codes, index.query_vectors(feats)


def indexed_queries(index: Index, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(codes, fine-stage vectors) of indexed items used as queries (zeros without a float store)."""
    codes, stored = index.items(index.positions_of(np.array(ids)))
    if stored is None:
        return codes, np.zeros((len(codes), 1), np.float32)
    return codes, query_from_database(index.signal, stored)


def query(index: str | Path | Index, images: list[str], by_id: list[int], *, model: str | None = None,
          k: int = 10, candidates: int | None = None, radius: int | None = None, rerank: bool = True,
          complete_ties: bool = True, nprobe: int | None = None, device: str = "cpu",
          shard_actors: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Search with image files and/or indexed items; per-query result dicts.

    ``index``: an INDEX_DIR or a loaded Index; ``shard_actors``: Ray options to
    open a sharded INDEX_DIR with one actor per shard; ``nprobe``: lists an IVF
    coarse index scans for these queries (default: the value build tuned).
    """
    if not images and not by_id:
        raise HashindexError("nothing to query: give images or by_id")
    check_candidates(candidates, k)
    if not isinstance(index, Index):
        index = Index.load(index, shard_actors=shard_actors)
    codes, vecs, names = [], [], []
    if images:
        c, v = _encode_images(index, images, model, device)
        codes.append(c)
        vecs.append(v)
        names += images
    if by_id:
        c, v = indexed_queries(index, by_id)
        codes.append(c)
        vecs.append(v)
        names += [f"id:{i}" for i in by_id]
    width = max(v.shape[1] for v in vecs)
    vecs = [v if v.shape[1] == width else np.zeros((len(v), width), np.float32) for v in vecs]
    return search_vectors(index, np.concatenate(codes), np.concatenate(vecs).astype(np.float32), names,
                          k=k, candidates=candidates, radius=radius, rerank=rerank, complete_ties=complete_ties,
                          nprobe=nprobe)


def search_vectors(index: Index, codes_arr: np.ndarray, vecs: np.ndarray, names: list[str], *,
                   k: int = 10, candidates: int | None = None, radius: int | None = None,
                   rerank: bool = True, complete_ties: bool = True, max_results: int | None = None,
                   nprobe: int | None = None) -> list[dict[str, Any]]:
    """Result dicts for encoded queries (codes and fine-stage vectors): the top k, or every item within ``radius``.

    ``max_results`` refuses a radius search that finds more items for one query (a service's bound).
    """
    if radius is None:
        res = index.search(codes_arr, vecs, k, candidates, rerank, complete_ties, vectors=True, nprobe=nprobe)
        return result_rows(index, res, names)
    hits = index.range_search(codes_arr, radius, nprobe)
    most = max([len(p) for p, _ in hits] + [0])
    if max_results is not None and most > max_results:
        raise HashindexError(f"radius={radius}: {most} items within it for one query, more than "
                             f"max_results={max_results} (use a smaller radius, or k)")
    width = max([len(p) for p, _ in hits] + [1])
    pos = np.full((len(hits), width), MISSING, np.int64)
    ham = np.full((len(hits), width), MISSING, np.int32)
    for q, (p, d) in enumerate(hits):
        pos[q, :len(p)], ham[q, :len(p)] = p, d
    dist = (index.float_distances(vecs, pos, vectors=True) if rerank and index.rerank is not None
            else np.full(pos.shape, np.nan, np.float32))
    dist[pos < 0] = np.nan
    ids = np.where(pos < 0, MISSING, index.ids[np.maximum(pos, 0)])
    return result_rows(index, SearchResult(ids, pos, ham, dist), names)


def example_results(index: Index, queries_dir: str | Path, n_queries: int = 8, k: int = 10) -> dict[str, Any]:
    """A few labelled queries (one per class first) searched as a query would be: what a results grid shows."""
    from .store import ShardSet

    qshards = ShardSet(queries_dir, "queries")
    q = qshards.load(("codes", "features", "labels", "paths"))
    labels = q["labels"]
    pick = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels[labels >= 0])][:n_queries]
    pick += [i for i in range(len(labels)) if i not in pick][: max(0, n_queries - len(pick))]
    feats = q["features"][pick].astype(np.float32) if q["features"] is not None else None
    return {"source_spec": qshards.manifest["source"].get("spec"), "paths": [q["paths"][i] for i in pick],
            "labels": labels[pick], "result": index.search(q["codes"][pick], feats, k=min(k, index.count))}


def format_table(rows: list[dict[str, Any]]) -> str:
    """Human-readable result table, one block per query."""
    lines = []
    for row in rows:
        lines.append(f"query {row['query']}: {len(row['results'])} results")
        lines.append(f"{'rank':>5} {'id':>10} {'hamming':>7} {'distance':>10}  {'class':<12} path")
        for h in row["results"]:
            dist = "-" if h["distance"] is None else f"{h['distance']:.4f}"
            cls = h["class"] if h["class"] is not None else str(h["label"])
            lines.append(f"{h['rank']:>5} {h['id']:>10} {h['hamming']:>7} {dist:>10}  {cls:<12} {h['path']}")
    return "\n".join(lines)


def check_candidates(candidates: int | None, k: int) -> None:
    """An explicit pool must hold the k results (the default pool is fixed; past it, Hamming order continues)."""
    if candidates is not None and candidates < k:
        raise HashindexError(f"candidates={candidates}: must be at least k={k}")


def result_rows(index: Index, result: SearchResult, query_names: list[str]) -> list[dict[str, Any]]:
    """Per-query result dicts with ids, paths, labels and both distances (for printing)."""
    paths = index.paths(result.positions)
    names = index.class_names
    rows = []
    k = result.ids.shape[1]
    for q, qname in enumerate(query_names):
        hits = []
        for r in range(k):
            pos = int(result.positions[q, r])
            if pos < 0:
                continue
            label = int(index.labels[pos])
            hits.append({"rank": r + 1, "id": int(result.ids[q, r]), "path": paths[q * k + r],
                         "label": label, "class": names[label] if 0 <= label < len(names) else None,
                         "hamming": int(result.hamming[q, r]),
                         "distance": None if np.isnan(result.distance[q, r]) else float(result.distance[q, r])})
        rows.append({"query": qname, "results": hits})
    return rows


OUTPUT_FORMATS = ("h5", "jsonl", "csv")


def output_format(out: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in OUTPUT_FORMATS:
            raise HashindexError(f"format={fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    suffix = out.suffix.lower().lstrip(".")
    return {"hdf5": "h5", "h5": "h5", "jsonl": "jsonl", "csv": "csv"}.get(suffix, "h5")


def _query_shards(index: Index, queries: str | Path, parts: Path, model: str | None, device: str,
                  progress: bool, log):
    """The query shards: given directly, or extracted on the fly from an image source."""
    from .store import MANIFEST, ShardSet

    if (Path(queries) / MANIFEST).exists():
        shards = ShardSet(queries, "queries")
        index.check_model(shards.model_id, f"queries={queries}")
        return shards
    if model is None:
        raise HashindexError(f"queries={queries}: an image source needs model=MODEL to encode it "
                             "(or pass a shard directory made by hashindex extract)")
    from .extraction import extract
    from .model import load_model

    hm = load_model(model, device)
    index.check_model(hm.model_id)
    extract(hm, str(queries), parts / "queries", progress=progress, log=log)
    return ShardSet(parts / "queries", "queries")


def _read_job(path: Path) -> dict[str, Any] | None:
    """A batch job's recorded settings (None when the file is damaged: the job is then not resumed)."""
    from .files import read_json

    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def batch_search(index: str | Path | Index, queries: str | Path, out: str | Path, *, k: int = 10,
                 candidates: int | None = None, rerank: bool = True, batch_size: int = 4096,
                 nprobe: int | None = None, fmt: str | None = None, model: str | None = None, device: str = "cpu",
                 overwrite: bool = False, progress: bool = True, backend: str = "local",
                 ray_options: dict[str, Any] | None = None, shard_actors: bool = False,
                 log=print) -> dict[str, Any]:
    """Search every query of a shard directory (or image source); write one results file.

    Work is saved per batch in ``OUT.parts/`` (atomic files); a rerun after an
    interruption continues from the last completed batch, and the final file
    equals an uninterrupted run's. Returns the job description.

    ``backend="ray"`` runs batches as tasks on Ray workers that each map the
    whole index; with ``shard_actors`` the batches run here instead and each
    fans out to one Ray actor per index shard (an index past one machine's RAM).
    """
    with exclusive(Path(out), f"out={out}: another batch job writing it is running"):  # one writer
        import shutil

        from tqdm import tqdm

        from .files import atomic_write_json, sha256_file
        from .store import MANIFEST

        if backend not in ("local", "ray"):
            raise HashindexError(f"backend={backend!r}: expected 'local' or 'ray'")
        if shard_actors and backend != "ray":
            raise HashindexError("shard_actors=True: needs backend=ray")
        if not isinstance(index, Index):
            actor_options = {k: v for k, v in (ray_options or {}).items() if k in ("address", "num_workers")}
            index = Index.load(index, shard_actors=actor_options if shard_actors else None)
        check_candidates(candidates, k)
        index.check_nprobe(nprobe)
        settings = {"k": k, "candidates": candidates, "rerank": rerank, "batch_size": batch_size, "nprobe": nprobe}
        out = Path(out)
        fmt = output_format(out, fmt)
        if out.exists() and not overwrite:
            recorded = _read_job(_job_record(out))
            if recorded and recorded.pop("out_sha256", None) == sha256_file(out) and \
                    _same_job(recorded, index, queries, settings):
                log(f"{out}: already complete ({recorded['queries_count']} queries); nothing to do")
                return recorded  # a rerun of a finished job (as after a kill just past its end) is a no-op
            raise HashindexError(f"out={out}: already exists (pass overwrite=True to replace it)")
        parts = out.with_name(out.name + ".parts")
        if overwrite and parts.exists():
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        shards = _query_shards(index, queries, parts, model, device, progress, log)
        job = {"index": str(index.dir.resolve()), "index_built": index.meta["built"], "model_id": index.model_id,
               "queries": str(shards.dir.resolve()), "queries_manifest_sha256": sha256_file(shards.dir / MANIFEST),
               **settings}
        if (parts / "job.json").exists() and _read_job(parts / "job.json") != job:
            raise HashindexError(f"out={out}: an unfinished job with other settings is in {parts} "
                                 "(rerun it with the same settings, or pass overwrite=True)")
        atomic_write_json(parts / "job.json", job)

        data = shards.load(("codes", "features", "ids"))
        if not rerank:
            data["features"] = None
        n = len(data["ids"])
        n_batches = -(-n // batch_size)
        todo = [b for b in range(n_batches) if not (parts / f"part-{b:06d}.npz").exists()]
        if backend == "ray" and todo and not shard_actors:
            from .distributed import run_units

            run_units(partial(_part_unit, str(index.dir.resolve()), str(parts.resolve()), settings), todo,
                      lambda b: None, shared=(data,), what="part", progress=progress, **(ray_options or {}))
        else:
            for b in tqdm(todo, desc="query", unit="batch", disable=not progress):
                search_part(index, data, b, parts / f"part-{b:06d}.npz", **settings)
        merged = {name: np.concatenate([np.load(parts / f"part-{b:06d}.npz")[name] for b in range(n_batches)])
                  for name in ("ids", "hamming", "distance")}
        _write_results(out, fmt, data["ids"], merged, job)
        summary = {**job, "out": str(out), "queries_count": n, "format": fmt}
        atomic_write_json(_job_record(out), {**summary, "out_sha256": sha256_file(out)})
        shutil.rmtree(parts)
        log(f"wrote {out}: {n} queries x top {k} ({fmt})")
        return summary


def _job_record(out: Path) -> Path:
    """Beside a finished results file: the job that wrote it and the file's SHA-256 (a rerun is a no-op)."""
    return out.with_name(f".{out.name}.job.json")


def _same_job(recorded: dict[str, Any], index: Index, queries: str | Path, settings: dict[str, Any]) -> bool:
    """Whether a finished job answered this request (same index build, same query shards, same settings)."""
    from .files import sha256_file
    from .store import MANIFEST

    q = Path(queries)
    return (q / MANIFEST).is_file() and recorded.get("index") == str(index.dir.resolve()) \
        and recorded.get("index_built") == index.meta["built"] and recorded.get("queries") == str(q.resolve()) \
        and recorded.get("queries_manifest_sha256") == sha256_file(q / MANIFEST) \
        and all(recorded.get(key) == value for key, value in settings.items())


def _part_unit(index_dir: str, part_dir: str, settings: dict[str, Any], data: dict[str, Any]
               ) -> Callable[[int], int]:
    """What a Ray actor runs per unit: it opens the index once, then searches query part b per call."""
    index = Index.load(index_dir)

    def run(b: int) -> int:
        search_part(index, data, b, Path(part_dir) / f"part-{b:06d}.npz", **settings)
        return b

    return run


def search_part(index: Index, data: dict[str, Any], b: int, path: str | Path, *, k: int,
                candidates: int | None, rerank: bool, batch_size: int, nprobe: int | None = None) -> None:
    """Search query rows [b * batch_size, (b+1) * batch_size) and save them atomically as one part."""
    from .files import atomic_path

    sl = slice(b * batch_size, min((b + 1) * batch_size, len(data["ids"])))
    feats = data["features"][sl] if data["features"] is not None else None
    res = index.search(data["codes"][sl], feats, k, candidates, rerank, nprobe=nprobe)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=res.ids, hamming=res.hamming, distance=res.distance)


def _write_results(out: Path, fmt: str, query_ids: np.ndarray, res: dict[str, np.ndarray],
                   job: dict[str, Any]) -> None:
    """Write the merged results atomically in the chosen format."""
    from .files import atomic_path

    with atomic_path(out) as tmp:
        if fmt == "h5":
            with h5py.File(tmp, "w") as f:
                f.create_dataset("query_ids", data=query_ids.astype(np.int64))
                for name, arr in res.items():
                    f.create_dataset(name, data=arr)
                for key, value in job.items():
                    f.attrs[key] = "none" if value is None else value
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
