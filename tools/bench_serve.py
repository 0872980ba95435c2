#!/usr/bin/env python
"""The search service under load: the ASGI service against the basic (sequential) server, in one run.

Both servers run as `hashindex serve` processes on the same index and model; a load generator in this
process drives C concurrent clients (threads, keep-alive connections where the server allows them), each
sending R requests: searches by indexed id (GET) and image uploads (POST, CIFAR-10 JPEGs), alternately.
For C in 1, 8, 32, 64: requests/s, p50 and p99 latency, errors, and the ASGI / basic throughput ratio.
Then the ASGI server's RSS before and after --long requests (memory must stay flat). --servers loads one of
them; --server-env sets variables for the servers alone (e.g. glibc's malloc settings).

    python tools/bench_serve.py INDEX_DIR ../shared/data/cifar10-jpeg/test.tar [--requests 40] [--long 10000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np


def images_from_tar(tar: str, n: int) -> list[bytes]:
    out = []
    with tarfile.open(tar) as tf:
        for m in tf:
            if m.isfile():
                out.append(tf.extractfile(m).read())
                if len(out) == n:
                    break
    return out


def start(index: str, server: str, model: str | None, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "hashindex", "serve", index, "--port", "0", "--server", server]
    proc = subprocess.Popen(cmd + (["--model", model] if model else []), stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    for line in proc.stderr:
        m = re.search(r"http://[\d.]+:(\d+)/", line)
        if m:
            port = int(m.group(1))
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain
            for _ in range(100):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    c.request("GET", "/")
                    c.getresponse().read()
                    return proc, port
                except OSError:
                    time.sleep(0.05)
    raise SystemExit(f"{server} server did not start")


def env_item(text: str) -> tuple[str, str]:
    """NAME=VALUE, for --server-env (argparse turns the error into one line)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port: int, clients: int, per_client: int, images: list[bytes], n_items: int) -> dict:
    """C clients x R requests; returns throughput, latency percentiles and errors."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, bad = [], 0
        for r in range(per_client):
            t0 = time.perf_counter()
            try:
                if (c + r) % 2:
                    conn.request("POST", "/search?k=10", body=images[(c * per_client + r) % len(images)],
                                 headers={"Content-Type": "image/jpeg"})
                else:
                    conn.request("GET", f"/search?id={(c * 7919 + r * 104729) % n_items}&k=10")
                resp = conn.getresponse()
                resp.read()
                bad += resp.status != 200
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "req_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("images_tar")
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--requests", type=int, default=40, help="per client")
    ap.add_argument("--long", type=int, default=10000, help="requests per memory round (0: skip)")
    ap.add_argument("--rounds", type=int, default=3, help="memory rounds")
    ap.add_argument("--servers", nargs="+", choices=["basic", "asgi"], default=["basic", "asgi"],
                    help="servers to load (the ratio needs both)")
    ap.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE", type=env_item,
                    help="environment of the servers only (e.g. glibc's MALLOC_ARENA_MAX=1), not the load generator's")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    images = images_from_tar(args.images_tar, 200)
    n_items = json.loads((Path(args.index) / "index.json").read_text())["count"]
    res: dict = {"rows": []}
    env = dict(args.server_env)
    procs = {kind: start(args.index, kind, args.model, env) for kind in args.servers}
    try:
        for c in args.clients:
            row = {"clients": c}
            for kind, (_, port) in procs.items():
                load(port, min(c, 4), 2, images, n_items)  # warm up
                row[kind] = load(port, c, args.requests, images, n_items)
            if len(procs) == 2:
                row["throughput_ratio"] = round(row["asgi"]["req_s"] / row["basic"]["req_s"], 2)
            res["rows"].append(row)
            if not args.json and len(procs) == 1:
                (kind, r), = ((k, row[k]) for k in procs)
                print(f"{c:>3} clients  {kind} {r['req_s']:7.1f} req/s p50 {r['p50_ms']:7.1f} p99 {r['p99_ms']:7.1f} "
                      f"err {r['errors']:3d}", flush=True)
            elif not args.json:
                b, a = row["basic"], row["asgi"]
                print(f"{c:>3} clients  basic {b['req_s']:7.1f} req/s p50 {b['p50_ms']:7.1f} p99 {b['p99_ms']:7.1f} "
                      f"err {b['errors']:3d} | asgi {a['req_s']:7.1f} req/s p50 {a['p50_ms']:7.1f} p99 "
                      f"{a['p99_ms']:7.1f} err {a['errors']:3d} | x{row['throughput_ratio']}", flush=True)
        if "basic" in procs:
            procs["basic"][0].terminate()
        if args.long and "asgi" in procs:  # RSS after each of --rounds runs of --long requests: flat means no growth per request
            proc, port = procs["asgi"]
            rss, errors, done = [round(rss_mb(proc.pid), 1)], 0, 0
            for _ in range(args.rounds):
                run = load(port, 32, args.long // 32, images, n_items)
                rss.append(round(rss_mb(proc.pid), 1))
                errors, done = errors + run["errors"], done + run["requests"]
            res["memory"] = {"requests": done, "rss_mb": rss, "errors": errors}
            if not args.json:
                print(f"asgi memory: RSS {' -> '.join(f'{r} MB' for r in rss)} over {done} requests "
                      f"({args.long // 32 * 32} per step; {errors} errors)", flush=True)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
    if args.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
