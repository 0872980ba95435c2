"""Ray backend: extraction shards and batch-query parts as tasks on a Ray cluster.

Everything Ray-specific lives in this module; without ``--backend ray``
nothing here is imported and Ray need not be installed.

The units of work are the ones the local path already has: an extraction
shard (``extract.make_shard``) and a batch-query part (``search.search_part``).
For an index larger than one machine's memory, each binary index shard can
instead live in its own actor (``shard_actors``): searches fan out to every
shard and merge exactly, as ``index.BinaryShards`` does in one process.
Workers are Ray actors that receive the model (or open the index) once, in
their constructor, then run one unit per call and write its file atomically;
the driver alone writes the manifest. A unit whose worker fails is retried a
bounded number of times on a fresh actor, then reported; files already
written are kept, so rerunning the command resumes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .errors import HashindexError
from .index import BinaryShards


def _ray():
    try:
        import ray
    except ImportError:
        raise HashindexError("--backend ray: Ray is not installed (pip install 'hashindex[ray]')") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to a cluster (``address``) or start a local Ray runtime; returns the ray module."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # our own lines say what runs
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise HashindexError(f"--address {address}: cannot start or reach Ray ({e})") from None
    return ray


def _last_line(e: Exception) -> str:
    """The last line of a (Ray, multi-line) error, for a one-line report."""
    text = str(e).strip()
    return text.splitlines()[-1][:200] if text else type(e).__name__


class _ExtractWorker:
    """Holds one ShardJob (model weights and source, sent once) and makes shards."""

    def __init__(self, job, shard_fn: Callable | None = None):
        from .extract import make_shard

        self.job, self.shard_fn = job, shard_fn or make_shard

    def run(self, j: int) -> dict[str, Any]:
        return self.shard_fn(self.job, j)


class _QueryWorker:
    """Opens the index once (memory-mapped) and searches query parts."""

    def __init__(self, index_dir: str, data_ref, settings: dict[str, Any]):
        from .search import Index

        self.index, self.data, self.settings = Index.load(index_dir), data_ref, settings

    def run(self, b: int, path: str) -> int:
        from .search import search_part

        search_part(self.index, self.data, b, path, **self.settings)
        return b


def _run_pool(make_actor: Callable, todo: list, call: Callable, on_done: Callable, num_workers: int,
              max_retries: int, what: str, progress: bool) -> None:
    """Run units on a pool of actors with bounded retries; raise if any unit keeps failing."""
    ray = _ray()
    queue = deque(todo)
    attempts: Counter = Counter()
    failed: dict[Any, str] = {}
    pending: dict[Any, tuple[Any, Any]] = {}
    actors = [make_actor() for _ in range(max(1, min(num_workers, len(todo))))]
    bar = tqdm(total=len(todo), unit=what, desc=f"ray {what}s", disable=not progress)

    def submit(actor):
        unit = queue.popleft()
        pending[call(actor, unit)] = (unit, actor)

    for actor in actors:
        if queue:
            submit(actor)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        unit, actor = pending.pop(ready[0])
        try:
            on_done(ray.get(ready[0]))
            bar.update(1)
        except ray.exceptions.RayError as e:
            attempts[unit] += 1
            if attempts[unit] <= max_retries:
                queue.append(unit)
            else:
                failed[unit] = _last_line(e)
            if isinstance(e, ray.exceptions.RayActorError):
                ray.kill(actor, no_restart=True)
                actor = make_actor()
        if queue:
            submit(actor)
    bar.close()
    if failed:
        first = next(iter(failed.items()))
        raise HashindexError(f"--backend ray: {len(failed)} {what}(s) failed after {max_retries} retries "
                             f"(e.g. {what} {first[0]}: {first[1]}); the rest is saved, rerun to retry")


def run_shards(job, manifest: dict[str, Any], todo: list[int], *, address: str | None = None,
               num_workers: int = 2, gpus_per_worker: float = 0, max_retries: int = 2,
               shard_fn: Callable | None = None, progress: bool = True, log=print) -> None:
    """Make the shards ``todo`` of an extraction on Ray, recording each in the manifest."""
    from .extract import record_shard

    ray = init_ray(address, None if address else max(num_workers, 1))
    # One core per actor: decode in the actor itself, no nested worker processes. Absolute paths: a
    # worker on another node does not start in the driver's working directory.
    job_ref = ray.put(dataclasses.replace(job, workers=0, out=Path(job.out).resolve()))
    worker = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(_ExtractWorker)
    log(f"ray: {len(todo)} shard(s) on {min(num_workers, len(todo))} worker(s)")
    _run_pool(lambda: worker.remote(job_ref, shard_fn), todo, lambda actor, j: actor.run.remote(j),
              lambda entry: record_shard(job.out, manifest, entry), num_workers, max_retries,
              "shard", progress)


def run_parts(index_dir: str, data: dict[str, np.ndarray], todo: list[int], part_path: Callable[[int], str],
              settings: dict[str, Any], *, address: str | None = None, num_workers: int = 2,
              max_retries: int = 2, progress: bool = True) -> None:
    """Search the query parts ``todo`` on Ray; each worker maps the index once."""
    ray = init_ray(address, None if address else max(num_workers, 1))
    data_ref = ray.put(data)
    worker = ray.remote(num_cpus=1)(_QueryWorker)
    index_dir = str(Path(index_dir).resolve())  # workers elsewhere do not share our working directory
    _run_pool(lambda: worker.remote(index_dir, data_ref, settings), todo,
              lambda actor, b: actor.run.remote(b, str(Path(part_path(b)).resolve())), lambda b: None, num_workers,
              max_retries, "part", progress)


class _ShardSearcher:
    """Holds one binary index shard (memory-mapped) and answers for its rows."""

    def __init__(self, path: str):
        from .search import _read_binary

        self.index = _read_binary(Path(path), True)

    def search(self, x: np.ndarray, k: int):
        return self.index.search(x, k)

    def range_search(self, x: np.ndarray, radius: int):
        return self.index.range_search(x, radius)


class RayBinaryShards(BinaryShards):
    """BinaryShards whose shards are Ray actors: each call runs on all shards at once, then merges."""

    def _each(self, method: str, args: list[tuple]) -> list:
        ray = _ray()
        refs: dict[int, Any] = {}

        def put(v):  # one object-store copy of the queries, shared by every shard
            return refs.setdefault(id(v), ray.put(v)) if isinstance(v, np.ndarray) else v

        calls = [getattr(actor, method).remote(*(put(v) for v in a)) for actor, a in zip(self.parts, args)]
        try:
            return ray.get(calls)
        except ray.exceptions.RayError as e:
            raise HashindexError(f"--shard-actors: a shard actor failed after retries ({_last_line(e)})") from None


def shard_actors(directory, shards: list[dict[str, Any]], *, address: str | None = None,
                 num_workers: int | None = None, cpus_per_shard: float | None = None,
                 max_retries: int = 2) -> RayBinaryShards:
    """One actor per binary index shard of ``directory`` (a path every node can read).

    Each actor reserves the shard file's size as Ray ``memory``, so the
    scheduler spreads shards over nodes with room for them, and
    ``cpus_per_shard`` CPUs (default: one, or an equal share when the cluster
    has fewer CPUs than shards). A failed actor is restarted and its
    (read-only, idempotent) call retried ``max_retries`` times.
    """
    ray = init_ray(address, None if address else max(num_workers or len(shards), 1))
    if cpus_per_shard is None:
        cpus_per_shard = min(1.0, ray.cluster_resources().get("CPU", 1) / len(shards))
    actor = ray.remote(_ShardSearcher)
    parts = []
    for s in shards:
        path = Path(directory) / s["file"]
        parts.append(actor.options(num_cpus=cpus_per_shard, memory=max(path.stat().st_size, 1 << 20),
                                   max_restarts=max_retries, max_task_retries=max_retries)
                     .remote(str(path.resolve())))
    return RayBinaryShards(parts, [s["start"] for s in shards], [s["stop"] - s["start"] for s in shards])
