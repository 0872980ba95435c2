"""Building the parts of a sharded index as separate units of work (Ray tasks), from the shard files.

`build(shards=S, backend="ray")` trains what needs training once (the IVF quantizer, the float store's
quantizer) where it runs, then hands each part to a worker: the worker reads the rows of its position
range straight from the shard files, fills a copy of the trained binary index and float store, and writes
``binary-NNN.faiss`` and ``rerank-NNN.faiss`` into the build's temporary folder (a file system every node
sees). Nothing but the part's number travels per unit; the files equal the one-process build's, byte for
byte (tested). The driver writes the table and index.json as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..codes import pad_codes
from ..signals import Head, database_vectors, feature_field
from .buckets import BucketedBinary
from .kinds import from_template, template_bytes
from .faiss_files import write_binary, write_float
from .layout import part_file


@dataclass
class PartJob:
    """What every worker needs, sent once: where the rows are, the trained empty indexes, the bounds."""

    shard_dir: str
    out: str
    bounds: list[int]
    pbytes: int
    binary: np.ndarray  # kinds.template_bytes of a trained, empty part
    store: np.ndarray | None  # faiss.serialize_index of a trained, empty float store (None: no fine stage)
    signal: str
    head: Head | None


def part_job(shard_dir: Path, out: Path, bounds: list[int], pbytes: int, template: faiss.IndexBinary | BucketedBinary,
             store: faiss.Index | None, signal: str, head: Head | None) -> PartJob:
    return PartJob(str(Path(shard_dir).resolve()), str(Path(out).resolve()), list(bounds), pbytes,
                   template_bytes(template), faiss.serialize_index(store) if store is not None else None, signal,
                   head)


def build_part(job: PartJob, j: int) -> int:
    """Fill part j (positions [bounds[j], bounds[j+1])) from the shard files and write its file(s)."""
    from ..store import ShardSet

    lo, hi = job.bounds[j], job.bounds[j + 1]
    field = feature_field(job.signal)
    rows = ShardSet(job.shard_dir).rows_between(lo, hi, ("codes", field) if job.store is not None else ("codes",))
    binary = from_template(job.binary)
    binary.add(pad_codes(rows["codes"], job.pbytes))
    write_binary(binary, Path(job.out) / part_file("binary", j))
    if job.store is not None:
        store = faiss.deserialize_index(job.store)
        store.add(database_vectors(job.signal, rows[field], rows["codes"], job.head))
        write_float(store, Path(job.out) / part_file("rerank", j))
    return j


def _part_unit(job: PartJob):
    """What a Ray actor runs: part numbers in, part numbers out (the files are its result)."""
    return partial(build_part, job)


def build_parts_on_ray(job: PartJob, n_parts: int, options: dict[str, Any], progress: bool) -> None:
    """Every part of ``job`` as a Ray unit (retried, then reported, like extraction's shards)."""
    from ..distributed import run_units

    run_units(_part_unit, list(range(n_parts)), lambda j: None, shared=(job,), what="index part",
              progress=progress, **options)
