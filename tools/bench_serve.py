#!/usr/bin/env python
"""Latency of one image search: `hashindex serve` against a `hashindex query` process per search.

The baseline, measured in the same run, is what a script does without the service: start
`hashindex query INDEX IMAGE --json` for each image (interpreter start, index and model loading,
search). The service pays the loading once; each request is decode + encode + search + JSON.

    python tools/bench_serve.py runs/table/eval-cifar10-48/index ../shared/data/cifar10-jpeg/test.tar --n 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from hashindex.serve import Searcher, make_server


def images_from_tar(tar: str, n: int) -> list[bytes]:
    """The first n image files of a tar."""
    out = []
    with tarfile.open(tar) as tf:
        for m in tf:
            if m.isfile():
                out.append(tf.extractfile(m).read())
                if len(out) == n:
                    break
    return out


def served(index: str, model: str | None, images: list[bytes], k: int) -> tuple[list[float], float, list]:
    """Per-request seconds over HTTP, the start-up seconds, and the result ids."""
    t0 = time.perf_counter()
    srv = make_server(Searcher(index, model=model), port=0)
    startup = time.perf_counter() - t0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/search?k={k}"
    times, ids = [], []
    try:
        for data in images:
            t = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=120) as r:
                body = json.loads(r.read())
            times.append(time.perf_counter() - t)
            ids.append([h["id"] for h in body["results"]])
    finally:
        srv.shutdown()
        srv.server_close()
    return times, startup, ids


def per_process(index: str, model: str | None, images: list[bytes], k: int) -> tuple[list[float], list]:
    """Per-search seconds of one `hashindex query` process each, and the result ids."""
    times, ids = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(images):
            path = Path(tmp) / f"{i}.jpg"
            path.write_bytes(data)
            cmd = [sys.executable, "-m", "hashindex.cli", "-q", "query", index, str(path), "--k", str(k), "--json"]
            if model:
                cmd += ["--model", model]
            t = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            times.append(time.perf_counter() - t)
            ids.append([h["id"] for h in json.loads(out)[0]["results"]])
    return times, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("images", help="a tar of image files (the first --n are the queries)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=50, help="searches through the service")
    ap.add_argument("--n-process", type=int, default=5, help="searches as processes (each takes seconds)")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    images = images_from_tar(args.images, args.n)
    s_times, startup, s_ids = served(args.index, args.model, images, args.k)
    p_times, p_ids = per_process(args.index, args.model, images[:args.n_process], args.k)
    assert s_ids[:args.n_process] == p_ids, "the service and the CLI disagree"
    s_med, p_med = float(np.median(s_times)), float(np.median(p_times))
    print(f"index {args.index}; {args.n} served searches, {args.n_process} processes, k={args.k}")
    print(f"service start-up (index + model load): {startup:.2f} s")
    print(f"served request:  median {s_med * 1000:.1f} ms, p90 {np.percentile(s_times, 90) * 1000:.1f} ms")
    print(f"query process:   median {p_med * 1000:.0f} ms")
    print(f"speed-up per search: {p_med / s_med:.0f}x (same result ids)")


if __name__ == "__main__":
    main()
