#!/usr/bin/env python
"""Reading a one-hot image list (HashNet / DeepHash-pytorch: ``path 0 0 1 0 ...``): `one_hot_rows`, which splits
each line from the right, against a regular-expression parse of the same lines, in one run.

A synthetic list the size of ImageNet-100's training list (130,000 lines, 100 columns) by default.

    python tools/bench_lists.py [--lines 130000] [--classes 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from hashindex.data.lists import one_hot_rows
from timing import best_of

_LINE = re.compile(r"(\S.*?)((?:\s+[01]){2,})\s*$")  # the baseline: path, then the 0/1 columns


def regex_rows(text: str) -> list[tuple[int, list[str]]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        m = _LINE.match(line)
        cols = m.group(2).split()
        rows.append((n, [m.group(1), str(cols.index("1")) if "1" in cols else ""]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=130_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lines = []
    for i, c in enumerate(rng.integers(args.classes, size=args.lines)):
        cols = ["0"] * args.classes
        cols[c] = "1"
        lines.append(f"n01440764/n01440764_{i}.JPEG " + " ".join(cols))
    text = "\n".join(lines)
    assert one_hot_rows(text)[0] == regex_rows(text)  # the same entries either way
    ours = best_of(lambda: one_hot_rows(text), args.repeat)
    base = best_of(lambda: regex_rows(text), args.repeat)
    print(f"{args.lines:,} lines x {args.classes} columns: split from the right {ours:.2f} s, "
          f"regex {base:.2f} s ({base / ours:.1f}x)")


if __name__ == "__main__":
    main()
