"""Adding photos through the service (`serve --writable`, POST /items): what an add costs, by batch size and
index size, against a search request measured in the same run.

For each index size N an index of synthetic rows (clustered 48-bit codes and 192-d features, as in
bench_search.py, under the shipped model's id so that its model encodes the uploads) is served by a real
uvicorn server in this process. The script times

  * baseline: GET /search?id=...&k=10 (a search with an indexed item), the median of 20;
  * POST /items with B real CIFAR-10 JPEGs in one multipart request (B = 1 and 64), the median of 3 adds:
    decode, encode, write a shard directory, append to INDEX_DIR on disk (the float store and the table are
    rewritten), reopen the index;

and prints each add's time, its ratio to the search, the time per photo, and how much less a photo costs in a
batch of B than alone (the ratio of the two, same index, same run).

    python tools/bench_add.py                        # N = 10,000 and 100,000
    python tools/bench_add.py --sizes 50000 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from hashindex import DEFAULT_MODEL
from hashindex.checkpoint import load_model
from hashindex.index import build
from hashindex.store import write_arrays

from bench_search import make_data  # tools/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_serve import start_asgi  # noqa: E402 (a real uvicorn server in a thread)

CIFAR_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "test.tar"


def photos(n: int) -> list[tuple[str, bytes]]:
    """The first n JPEGs of the CIFAR-10 test tar."""
    out = []
    with tarfile.open(CIFAR_TEST) as tf:
        for m in tf:
            if m.isfile():
                out.append((m.name.rsplit("/", 1)[-1], tf.extractfile(m).read()))
                if len(out) == n:
                    return out
    return out


def timed(call, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (each must answer 200)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = call()
        times.append(time.perf_counter() - t0)
        assert got.status_code == 200, got.text
    return statistics.median(times)


def run(n: int, batches: list[int], work: Path, model_id: str) -> list[dict]:
    from hashindex.service.engine import Engine

    codes, feats, _, _ = make_data(n, 192, 48, seed=n)
    shards = write_arrays(work / f"s{n}", codes, feats, model_id=model_id, description=f"synthetic {n}")
    build(shards.dir, work / f"ix{n}", binary="flat", rerank="flat", signal="l2", progress=False,
          log=lambda s: None)
    url, stop = start_asgi({"ix": Engine(work / f"ix{n}", DEFAULT_MODEL, name="ix")}, writable=True)
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            search = timed(lambda: client.get("/search", params={"id": 7, "k": 10}), 20)
            for b in batches:
                files = [("file", (name, data, "image/jpeg")) for name, data in photos(b)]
                add = timed(lambda: client.post("/items", files=files), 3)
                single = rows[-1]["s_per_photo"] if rows and rows[-1]["photos_per_add"] == 1 else None
                rows.append({"items": n, "photos_per_add": b, "add_s": round(add, 4), "search_s": round(search, 5),
                             "ratio_to_search": round(add / search, 1), "s_per_photo": round(add / b, 4),
                             "photo_cost_vs_alone": round(add / b / single, 3) if single else None})
                print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model_id = load_model(DEFAULT_MODEL).model_id
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for n in args.sizes for r in run(n, args.batches, Path(tmp), model_id)]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'items':>9} {'photos/add':>10} {'add s':>8} {'search ms':>10} {'add/search':>10} {'s/photo':>8} "
          f"{'vs alone':>8}")
    for r in rows:
        alone = f"{r['photo_cost_vs_alone']:.3f}x" if r["photo_cost_vs_alone"] else "-"
        print(f"{r['items']:>9,} {r['photos_per_add']:>10} {r['add_s']:>8.3f} {r['search_s'] * 1000:>10.2f} "
              f"{r['ratio_to_search']:>10.1f} {r['s_per_photo']:>8.4f} {alone:>8}")


if __name__ == "__main__":
    main()
