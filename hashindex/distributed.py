"""Ray backend: runs the units of work it is handed on a Ray cluster; it imports no pipeline stage.

Everything Ray-specific lives in this module; without ``--backend ray``
nothing here is imported and Ray need not be installed.

Two shapes of work, as clip-retrieval's distributor runs whatever its workers
are given: `run_units` (a pool of actors, each making its unit function once,
e.g. loading the model or opening the index, then running one unit per call:
an extraction shard, a batch-query part) and `holders` + `call_all` (one
long-lived actor per object, e.g. one binary index part each for an index
larger than one machine's memory, every call fanned out to all of them).
A unit whose actor fails is retried a bounded number of times on a fresh
actor, then reported; what the units wrote is kept, so rerunning resumes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter, deque
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .errors import HashindexError


def _ray():
    try:
        import ray
    except ImportError:
        raise HashindexError("backend='ray': Ray is not installed (pip install 'hashindex[ray]')") from None
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
        except (ConnectionError, RuntimeError, ValueError, OSError) as e:
            where = f"address={address}: cannot reach Ray" if address else "cannot start a local Ray runtime"
            if "AF_UNIX path" in str(e):  # a local runtime binds its sockets in the temp folder: a deep TMPDIR
                tmp = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
                raise HashindexError(f"{where}: its socket paths under {tmp} would pass the 107 bytes a socket "
                                     "path may have; set RAY_TMPDIR to a shorter folder") from None
            raise HashindexError(f"{where}: {_last_line(e)}") from None
    return ray


def _last_line(e: Exception) -> str:
    """The last line of a (Ray, multi-line) error, for a one-line report."""
    text = str(e).strip()
    return text.splitlines()[-1][:200] if text else type(e).__name__


class _Holder:
    """A Ray actor holding one object made once in its constructor (a model, an opened index, an index part).

    ``make(*shared)`` builds it; ``run`` calls it with a unit of work, ``call``
    runs one of its methods. Which objects and which work: the caller's business.
    """

    def __init__(self, make: Callable, *shared):
        self.obj = make(*shared)

    def run(self, *args):
        return self.obj(*args)

    def call(self, method: str, *args):
        return getattr(self.obj, method)(*args)


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
        raise HashindexError(f"backend='ray': {len(failed)} {what}(s) failed after {max_retries} retries "
                             f"(e.g. {what} {first[0]}: {first[1]}); the rest is saved, rerun to retry")


def run_units(make: Callable, todo: list, on_done: Callable[[Any], None], *, shared: tuple = (),
              address: str | None = None, num_workers: int = 2, gpus_per_worker: float = 0,
              max_retries: int = 2, what: str = "unit", progress: bool = True) -> None:
    """Run the units ``todo`` on a pool of actors; ``on_done(result)`` runs here as each finishes.

    Each actor calls ``make(*shared)`` once (``shared`` objects go to Ray's object
    store once, not once per actor) to get the function that does one unit:
    ``fn(unit) -> result``. One core per actor. A unit whose actor fails is
    retried ``max_retries`` times on a fresh actor, then reported.
    """
    ray = init_ray(address, None if address else max(num_workers, 1))
    refs = [ray.put(obj) for obj in shared]
    actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(_Holder)
    _run_pool(lambda: actor.remote(make, *refs), todo, lambda a, unit: a.run.remote(unit), on_done,
              num_workers, max_retries, what, progress)


def call_all(actors: list, method: str, args: list[tuple]) -> list:
    """``actor.method(*args[i])`` on every actor at once; the results in order.

    A numpy argument shared by several calls goes to the object store once.
    """
    ray = _ray()
    refs: dict[int, Any] = {}

    def put(v):
        return refs.setdefault(id(v), ray.put(v)) if isinstance(v, np.ndarray) else v

    calls = [actor.call.remote(method, *(put(v) for v in a)) for actor, a in zip(actors, args)]
    try:
        return ray.get(calls)
    except ray.exceptions.RayError as e:
        raise HashindexError(f"shard_actors: an actor failed after retries ({_last_line(e)})") from None


def holders(makes: list[Callable], memory: list[int], *, address: str | None = None,
            num_workers: int | None = None, cpus_each: float | None = None, max_retries: int = 2) -> list:
    """One long-lived actor per ``make`` (e.g. one per binary index part), each holding what it makes.

    Each reserves ``memory[i]`` bytes as Ray ``memory``, so the scheduler
    spreads them over nodes with room, and ``cpus_each`` CPUs (default: one,
    or an equal share when the cluster has fewer CPUs than actors). A failed
    actor is restarted and its (read-only, idempotent) call retried
    ``max_retries`` times.
    """
    ray = init_ray(address, None if address else max(num_workers or len(makes), 1))
    if cpus_each is None:
        cpus_each = min(1.0, ray.cluster_resources().get("CPU", 1) / len(makes))
    actor = ray.remote(_Holder)
    return [actor.options(num_cpus=cpus_each, memory=max(mem, 1 << 20), max_restarts=max_retries,
                          max_task_retries=max_retries).remote(make)
            for make, mem in zip(makes, memory)]
