#!/usr/bin/env python
"""What a results grid (`query --grid`, the demo's grid, `duplicates --grid`) costs to draw from photos: with each
JPEG decoded at reduced scale for its tile (`grids.TILE_SIDE`) against decoded whole (the baseline, same run).

    python tools/bench_grid.py [--data ../shared/data/flowers/test.tar] [--rows 4] [--columns 6] \
        [--camera-side 4000] [--repeats 3] [--json]

The photos are the first ROWS x (COLUMNS + 1) of DATA, each enlarged to CAMERA_SIDE pixels on its longest side
and saved as a JPEG (`bench_thumbnail.camera_sized`: a phone's files are 4000 x 3000); a grid is drawn from the
files as `query --grid` draws its query images (`grids._file_image`). After one untimed grid (matplotlib's
start), each mode is timed REPEATS times, alternating, and the best time of each is kept.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hashindex import grids
from hashindex.data import open_source

from bench_thumbnail import camera_sized


def draw(files: list[Path], rows: int, columns: int, out: Path) -> float:
    """Seconds to draw one grid of ``rows`` rows (a query image and ``columns`` results each) from ``files``."""
    it = iter(files)
    table = [(grids._file_image(str(next(it))), "query",
              [(grids._file_image(str(next(it))), "green", f"{c}") for c in range(columns)]) for _ in range(rows)]
    t0 = time.perf_counter()
    grids._draw_grid(table, out, "bench")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/flowers/test.tar")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--columns", type=int, default=6)
    ap.add_argument("--camera-side", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    src = open_source(args.data)
    n = args.rows * (args.columns + 1)
    step = max(1, len(src) // n)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for j in range(n):
            path = Path(tmp) / f"{j}.jpg"
            path.write_bytes(camera_sized(src.read_bytes(j * step), args.camera_side))
            files.append(path)
        tile = grids.TILE_SIDE
        draw(files, args.rows, args.columns, Path(tmp) / "warm-up.png")  # matplotlib's first figure: not timed
        times: dict[str, list[float]] = {"reduced": [], "whole": []}
        for _ in range(args.repeats):
            for mode, side in (("whole", None), ("reduced", tile)):
                grids.TILE_SIDE = side
                times[mode].append(draw(files, args.rows, args.columns, Path(tmp) / f"{mode}.png"))
        grids.TILE_SIDE = tile
    best = {mode: min(t) for mode, t in times.items()}
    result = {"images": n, "camera_side": args.camera_side, "tile_side": tile, "whole_s": round(best["whole"], 3),
              "reduced_s": round(best["reduced"], 3), "ratio": round(best["reduced"] / best["whole"], 3)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"grid of {n} photos at {args.camera_side} px: decoded whole {result['whole_s']} s, at reduced scale "
              f"for {tile}-px tiles {result['reduced_s']} s ({result['ratio']}x the time)")


if __name__ == "__main__":
    main()
