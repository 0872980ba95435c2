#!/usr/bin/env python
"""Does a copy of an indexed image, under another name outside the indexed collection, find the item it copies?

Writes every n-th member of the tar an index was built from into a folder as new files (`photo-NNNN.jpg`),
queries the index with them as `hashindex query INDEX FILE...` does (the Python API, `hashindex.query.query`),
and counts how many get their item first and in the top k. Run it with another version of the code on the
PYTHONPATH to compare (docs/RESULTS.md, "An indexed item comes first").

    python tools/copy_queries.py runs/copy/index ../shared/data/cifar10-jpeg/test.tar --every 10 [--json]
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from hashindex.index import Index
from hashindex.query import query


def copies(tar: str, every: int, folder: Path) -> tuple[list[str], list[str]]:
    """(copied files, the member each copies) for every ``every``-th file member of ``tar``."""
    files, names = [], []
    with tarfile.open(tar) as tf:
        members = [m for m in tf if m.isfile()]
        for n, m in enumerate(members[::every]):
            f = folder / f"photo-{n:04d}.jpg"
            f.write_bytes(tf.extractfile(m).read())
            files.append(str(f))
            names.append(m.name)
    return files, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index")
    ap.add_argument("tar", help="the tar the index's collection was extracted from")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    index = Index.load(args.index)
    item = {p: int(i) for p, i in zip(index.paths(np.arange(index.count)), index.ids)}
    with tempfile.TemporaryDirectory() as tmp:
        files, names = copies(args.tar, args.every, Path(tmp))
        t = time.time()
        got = query(index, files, [], k=args.k)
        seconds = time.time() - t
    want = [item.get(n, -1) for n in names]
    out = {"copies": len(files), "first": sum(r["results"][0]["id"] == w for r, w in zip(got, want)),
           f"top{args.k}": sum(w in [x["id"] for x in r["results"]] for r, w in zip(got, want)),
           "signal": index.signal, "seconds": round(seconds, 1)}
    print(json.dumps(out) if args.json else
          f"{out['first']} of {out['copies']} copies first, {out[f'top{args.k}']} in the top {args.k} "
          f"(signal {out['signal']}, {out['seconds']} s)")


if __name__ == "__main__":
    main()
