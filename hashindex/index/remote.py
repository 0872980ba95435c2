"""A sharded index's parts held by Ray actors (`Index.load(shard_actors=...)`): past one machine's RAM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .faiss_files import buckets_file
from .kinds import BinaryParts, FloatParts
from .layout import bucketed, read_part


def _held_bytes(binary: Path, bucketed: bool) -> int:
    """Bytes of a binary part's files (its graph and bucket table), what its actor will hold."""
    return binary.stat().st_size + (binary.with_name(buckets_file(binary.name)).stat().st_size if bucketed else 0)


def remote_parts(directory: Path, meta: dict[str, Any], options: dict[str, Any]
                 ) -> tuple[BinaryParts, FloatParts | None]:
    """The parts of a sharded index held by one Ray actor each (an index past one machine's RAM): each actor
    holds its binary part and, when the float store is kept in parts, its slice of it too, so candidates
    are re-ranked where they live and the float store never comes to this process."""
    from functools import partial

    from ..distributed import call_all, holders

    parts = meta["binary"]["shards"]
    floats = meta["rerank"].get("shards") or [None] * len(parts)
    paths = [((directory / p["file"]).resolve(), (directory / f["file"]).resolve() if f else None)  # workers
             for p, f in zip(parts, floats)]  # elsewhere: absolute paths
    graphs_of_codes = bucketed(meta)
    actors = holders([partial(read_part, str(b), str(f) if f else None, graphs_of_codes) for b, f in paths],
                     [_held_bytes(b, graphs_of_codes) + (f.stat().st_size if f else 0) for b, f in paths], **options)
    starts, sizes = [p["start"] for p in parts], [p["stop"] - p["start"] for p in parts]
    binary = BinaryParts(actors, starts, sizes, each=partial(call_all, actors), nlist=meta["binary"].get("nlist"),
                          multihash=meta["binary"]["kind"] == "multihash")
    if not meta["rerank"].get("shards"):
        return binary, None
    return binary, FloatParts(actors, starts, sizes, meta["rerank"]["dim"], each=partial(call_all, actors))
