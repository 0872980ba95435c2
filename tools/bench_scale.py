#!/usr/bin/env python
"""Scale-out benchmark, in one run: extraction local vs Ray (1 and 2 workers), search 1 vs 4 shards
(in this process, and held by 4 Ray actors).

    python tools/bench_scale.py --model runs/m.pt [--data ../shared/data/cifar10-jpeg/test.tar] [--n 1000000]

Extraction: the same collection through `hashindex extract` locally (2 decode workers, torch on all
cores) and with --backend ray on a local Ray runtime with 1 and 2 single-core workers.
Search: synthetic codes (see bench_search.py), one flat binary index vs 4 position-range shards
searched with the exact merge, in this process and with one Ray actor per shard (`query --shard-actors`),
same queries.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex import extract
from hashindex.index import BinaryParts, make_binary_index, pad_codes

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg" / "test.tar"


def time_extract(model: str, data: str, limit: int, **kw) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        extract(model, data, Path(d) / "s", limit=limit, shard_size=max(limit // 8, 1), progress=False,
                log=lambda s: None, **kw)
        return limit / (time.perf_counter() - t0)


def search_shards(n: int, nq: int, k: int, shards: int) -> dict[str, float]:
    """Queries/s for one index, `shards` shards here and `shards` Ray actors, over the same n random codes."""
    from hashindex.index.remote import remote_parts

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (nq, 8), dtype=np.uint8)
    one = make_binary_index("flat", 64, {})
    one.add(codes)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    parts = []
    for j in range(shards):
        part = make_binary_index("flat", 64, {})
        part.add(pad_codes(codes[bounds[j]:bounds[j + 1]], 8))
        parts.append(part)
    sharded = BinaryParts(parts, bounds[:-1].tolist())
    tmp = tempfile.TemporaryDirectory()
    meta = []
    for j, part in enumerate(parts):
        faiss.write_index_binary(part, f"{tmp.name}/shard-{j}.bin")
        meta.append({"file": f"shard-{j}.bin", "start": int(bounds[j]), "stop": int(bounds[j + 1])})
    actors = remote_parts(Path(tmp.name), meta, {})
    actors.search(q[:1], k)  # actors started and their shards mapped before timing
    res = {}
    for name, index in (("one", one), ("sharded", sharded), ("actors", actors)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            d, _ = index.search(q, k)
            best = min(best, time.perf_counter() - t0)
        res[name] = (nq / best, d)
    assert np.array_equal(res["one"][1], res["sharded"][1])  # exact merge: same distances
    assert np.array_equal(res["one"][1], res["actors"][1])
    tmp.cleanup()
    return {name: qps for name, (qps, _) in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=4000)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {"images": args.limit}
    res["extract_local_img_s"] = time_extract(args.model, args.data, args.limit, workers=2)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for w in (1, 2):
        res[f"extract_ray_{w}w_img_s"] = time_extract(args.model, args.data, args.limit, backend="ray",
                                                      ray_options={"num_workers": w})
    search = search_shards(args.n, args.queries, 10, 4)
    ray.shutdown()
    res["ray_2w_vs_1w"] = res["extract_ray_2w_img_s"] / res["extract_ray_1w_img_s"]
    res["ray_2w_vs_local"] = res["extract_ray_2w_img_s"] / res["extract_local_img_s"]
    one, four, actors = search["one"], search["sharded"], search["actors"]
    res.update({"search_n": args.n, "search_1_shard_qps": one, "search_4_shards_qps": four,
                "search_4_actors_qps": actors, "search_4_vs_1": four / one, "search_actors_vs_1": actors / one})
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"extraction, {args.limit} images: local {res['extract_local_img_s']:.0f} img/s; "
          f"ray 1 worker {res['extract_ray_1w_img_s']:.0f}, 2 workers {res['extract_ray_2w_img_s']:.0f} img/s "
          f"(2 vs 1 worker {res['ray_2w_vs_1w']:.2f}x, ray 2 workers vs local {res['ray_2w_vs_local']:.2f}x)")
    print(f"search, {args.n:,} codes, {args.queries} queries, k=10: 1 shard {one:.0f} q/s, "
          f"4 shards {four:.0f} q/s ({four / one:.2f}x), 4 Ray shard actors {actors:.0f} q/s "
          f"({actors / one:.2f}x); same distances")


if __name__ == "__main__":
    main()
