#!/usr/bin/env python
"""Reading a collection from Parquet (as a Hugging Face dataset holds it) against the same images in a plain tar,
the baseline, in one run: opening it (listing, labels), reading every image's bytes in order, and decoding them to
the net's 32-px input (no workers: the reading's own cost, not the machine's cores).

    python tools/bench_parquet.py [--limit 10000] [--row-group 1000] [--repeat 3] [--json]

The Parquet file is written from the tar's members into a temporary folder, with an Image and a ClassLabel
column and the ``huggingface`` metadata, as `datasets` writes them.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hashindex.data import iter_batches, open_source
from timing import best_of

DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg" / "test.tar"


def write_both(tar: Path, limit: int, row_group: int, out: Path) -> tuple[Path, Path]:
    """The first ``limit`` image members of ``tar`` as a plain tar and as a Hugging Face style Parquet file."""
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf if m.isfile()][:limit]
    classes = sorted({m.name.split("/")[-2] for m, _ in members})
    with tarfile.open(out / "same.tar", "w") as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data))
    features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": d, "path": m.name} for m, d in members], image_type),
                      "label": pa.array([classes.index(m.name.split("/")[-2]) for m, _ in members], pa.int64())})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, out / "same.parquet", row_group_size=row_group)
    return out / "same.tar", out / "same.parquet"


def read_all(path: Path) -> int:
    source = open_source(path)
    return sum(len(source.read_bytes(i)) for i in range(len(source)))


def decode_all(path: Path) -> int:
    return sum(len(p) for _, p, _ in iter_batches(open_source(path), 32, 3, workers=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--limit", type=int, default=10_000)
    ap.add_argument("--row-group", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tar, parquet = write_both(Path(args.data), args.limit, args.row_group, Path(tmp))
        assert read_all(tar) == read_all(parquet)  # the same bytes
        rows = {}
        for name, fn in (("open", open_source), ("read bytes", read_all), ("decode to 32 px", decode_all)):
            t_tar = best_of(lambda: fn(tar), args.repeat)
            t_pq = best_of(lambda: fn(parquet), args.repeat)
            rows[name] = {"tar_s": round(t_tar, 4), "parquet_s": round(t_pq, 4),
                          "parquet_vs_tar": round(t_pq / t_tar, 2)}
    if args.json:
        print(json.dumps({"images": args.limit, "row_group": args.row_group, "rows": rows}))
        return
    print(f"{args.limit:,} images, row groups of {args.row_group}")
    for name, r in rows.items():
        print(f"  {name:16s} tar {r['tar_s']:.3f} s  parquet {r['parquet_s']:.3f} s  "
              f"({r['parquet_vs_tar']:.2f}x the tar's time)")


if __name__ == "__main__":
    main()
