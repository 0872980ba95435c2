"""Draw the groups of copies that one `hashindex duplicates --json` run finds and another does not, to judge them
by eye: how the groups a setting adds (``--crops``, a wider ``--radius``) are judged in docs/RESULTS.md.

    hashindex -q duplicates train.tar test.tar --across --crops none --json > none.json
    hashindex -q duplicates train.tar test.tar --across --crops centre --json > centre.json
    python tools/new_groups_grid.py none.json centre.json train.tar test.tar --sample 48 --out new.png

Groups are compared as sets of (collection, path); ``--sample`` draws that many of the new ones at random
(``--seed``), in their order, onto PNG grids of 24 rows (new.png, new-2.png, ...); their distances and the view
each matched in (``match``) are printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hashindex.data import open_source
from hashindex.grids import duplicates_grid


def new_groups(base: dict, other: dict) -> list[list[dict]]:
    """The groups of ``other`` (a `find_duplicates` result) that ``base`` does not hold as they are."""
    key = lambda g: tuple(sorted((r["collection"], r["path"]) for r in g))  # noqa: E731
    old = {key(g) for g in base["groups"]}
    return [g for g in other["groups"] if key(g) not in old]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="JSON of the first run")
    ap.add_argument("other", help="JSON of the second run")
    ap.add_argument("data", nargs="+", help="the collections both runs read, as given to them")
    ap.add_argument("--sample", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="new-groups.png")
    args = ap.parse_args()
    groups = new_groups(json.loads(Path(args.base).read_text()), json.loads(Path(args.other).read_text()))
    crop = sum(any(r["match"] != "whole" for r in g) for g in groups)
    print(f"{len(groups)} groups new, {crop} of them with a row matched in a crop box")
    pick = np.sort(np.random.default_rng(args.seed).choice(len(groups), min(args.sample, len(groups)), replace=False))
    chosen = [groups[k] for k in pick]
    sources = {d: open_source(d) for d in args.data}
    out = Path(args.out)
    for part in range(0, len(chosen), 24):
        path = out if part == 0 else out.with_name(f"{out.stem}-{part // 24 + 1}{out.suffix}")
        duplicates_grid(chosen[part:part + 24], sources, path, most=24)
        print(f"rows {part + 1}-{min(part + 24, len(chosen))}: {path}")
    for n, g in enumerate(chosen, 1):
        print(n, [(Path(r["path"]).name, r["distance"], r["fine_distance"], r["match"]) for r in g])


if __name__ == "__main__":
    main()
