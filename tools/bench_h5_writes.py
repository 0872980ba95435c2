#!/usr/bin/env python
"""HDF5 writes through `hashindex.hdf5.create_h5` (a guarded Python file object) against h5py given a path.

Every HDF5 writer opens its file with create_h5, so that a disk filling up mid-write is an OSError and not
HDF5 2.0's crash. This times the three shapes our writers have, both ways, alternating, in one run, and
prints the ratio (best of --repeats each): a shard (arrays written whole, 192-d features, paths), a
position table (filled a block of rows at a time, as build does), and one large contiguous dataset (a
prepared images.h5). The folder should be on the disk the files would live on (default: the temp folder).

    python tools/bench_h5_writes.py [--rows 100000] [--mb 400] [--dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from hashindex.hdf5 import create_h5


def shard(f, rows: int) -> None:
    rng = np.random.default_rng(0)
    f.create_dataset("codes", data=rng.integers(0, 256, (rows, 6), np.uint8))
    f.create_dataset("features", data=rng.random((rows, 192), np.float32))
    f.create_dataset("paths", data=[f"train/cat/{i:07d}.jpg" for i in range(rows)], dtype=h5py.string_dtype("utf-8"))


def table(f, rows: int, block: int = 10_000) -> None:
    f.create_dataset("ids", (rows,), np.int64)
    f.create_dataset("codes", (rows, 6), np.uint8)
    f.create_dataset("paths", (rows,), h5py.string_dtype("utf-8"))
    for lo in range(0, rows, block):
        hi = min(rows, lo + block)
        f["ids"][lo:hi] = np.arange(lo, hi)
        f["codes"][lo:hi] = np.full((hi - lo, 6), 7, np.uint8)
        f["paths"][lo:hi] = [f"train/cat/{i:07d}.jpg" for i in range(lo, hi)]


def large(f, array: np.ndarray) -> None:
    f.create_dataset("images", data=array)


def timed(path: Path, write: Callable, guarded: bool) -> float:
    """Seconds to write ``path`` with ``write`` (through create_h5 or h5py given the path) and close it."""
    t0 = time.perf_counter()
    with (create_h5(path, libver="latest") if guarded else h5py.File(path, "w", libver="latest")) as f:
        write(f)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--mb", type=int, default=400)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    array = np.ones(a.mb << 20, np.uint8)
    cases = {"shard": lambda f: shard(f, a.rows), "table": lambda f: table(f, a.rows), "large": lambda f: large(f, array)}
    out = {"rows": a.rows, "mb": a.mb, "dir": a.dir}
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        for name, write in cases.items():
            path = Path(d) / f"{name}.h5"
            plain = guarded = float("inf")
            for _ in range(a.repeats):  # alternate, so both see the same moments of a noisy machine
                plain = min(plain, timed(path, write, False))
                guarded = min(guarded, timed(path, write, True))
            out[name] = {"path_s": plain, "create_h5_s": guarded, "ratio": guarded / plain}
    if a.json:
        print(json.dumps(out))
        return
    for name in cases:
        r = out[name]
        print(f"{name:6s} path {r['path_s']:.3f} s, create_h5 {r['create_h5_s']:.3f} s, ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
