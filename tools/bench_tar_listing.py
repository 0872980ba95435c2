#!/usr/bin/env python
"""Listing a plain tar's members: `plain_tar_members` (the 512-byte headers read directly) against tarfile's
iteration, the baseline, in one run; then opening it as a collection (`open_source`: the listing, plus
sorting the members into items and labels) for the share the listing has of the whole.

    python tools/bench_tar_listing.py [TAR] [--repeat 3]      # default: CIFAR-10's train.tar (50,000 members)
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

from hashindex.data import open_source
from hashindex.data.tar_headers import plain_tar_members
from timing import best_of

DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg" / "train.tar"


def tarfile_members(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path, "r:") as tf:
        return [(m.name, m.offset_data, m.size) for m in tf]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tar", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    path = Path(args.tar)
    ours = plain_tar_members(path)
    if ours is None:
        raise SystemExit(f"{path}: has headers only tarfile reads (sparse, base-256 sizes, damaged, ...): "
                         "nothing to compare")
    assert [(m.name, m.offset_data, m.size) for m in ours] == tarfile_members(path)  # the same listing
    fast = best_of(lambda: plain_tar_members(path), args.repeat)
    base = best_of(lambda: tarfile_members(path), args.repeat)
    opened = best_of(lambda: open_source(path), args.repeat)
    print(f"{path.name}: {len(ours):,} members; headers read directly {fast:.3f} s, tarfile {base:.3f} s "
          f"({base / fast:.1f}x); open_source {opened:.3f} s in all")


if __name__ == "__main__":
    main()
