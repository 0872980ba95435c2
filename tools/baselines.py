#!/usr/bin/env python
"""Unsupervised hashing baselines (LSH, PCAH, ITQ) beside the learned codes, same protocol, same metric code.

Fits each baseline on the database vectors and scores it with `hashindex.metrics.evaluate_arrays`
(Hamming ranking, ties in database order, relevance = same label), on two inputs:

- ``--pixels QUERY_SRC DB_SRC``: raw pixels (the classic setting of the published baseline tables);
- ``--features QUERY_SHARDS DB_SHARDS``: the trained net's 192-d re-ranking features, so the learned
  hash layer is compared with ITQ on the very same feature.

Each row is saved as soon as it is measured: rerun with the same inputs and --out (after an interruption, or
with more --bits), it measures only the rows not there yet and rereads the learned rows.
``--learned RUNS`` adds the learned rows from RUNS/eval-PREFIX-K/metrics.json (tools/eval_protocol.sh).

    python tools/baselines.py --pixels ../shared/data/cifar10-jpeg/test.tar ../shared/data/cifar10-jpeg/train.tar \\
        --features runs/table/eval-cifar10-48/shards/queries runs/table/eval-cifar10-48/shards/database \\
        --learned runs/table --prefix cifar10 --out runs/baselines/cifar10 --plot docs/figures/baselines_cifar10.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hashindex.baselines import METHODS, fit, principal_directions
from hashindex.data import load_arrays, open_source
from hashindex.metrics import evaluate_arrays
from hashindex.files import atomic_path
from hashindex.store import ShardSet


COLORS = {"learned": "black", "lsh": "tab:orange", "pcah": "tab:green", "itq": "tab:blue"}
INPUT_LABELS = {"images": "hash layer, its own net per K", "pixels": "on pixels",
                "features": "on the 48-bit net's 192-d feature"}


def pixel_vectors(spec: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode an image source into (N, C*H*W) float32 pixels in [0, 1] and labels."""
    src = open_source(spec, "--pixels")
    if limit:
        src = src.subset(limit)
    images, labels, _ = load_arrays(src, 32, 1 if src.is_greyscale() else 3, progress=False)
    return images.reshape(len(images), -1).astype(np.float32) / 255, labels


def feature_vectors(directory: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A shard directory's re-ranking features (float32), labels and class names."""
    shards = ShardSet(directory, "--features")
    data = shards.load(("features", "labels"))
    if data["features"] is None:
        raise SystemExit(f"--features {directory}: shards hold no features (extracted with --features none)")
    feats, labels = data["features"].astype(np.float32), data["labels"]
    if limit:
        pick = np.linspace(0, len(feats) - 1, limit).round().astype(np.int64)
        feats, labels = feats[pick], labels[pick]
    return feats, labels, shards.class_names


def summary(metrics: dict) -> dict:
    """The figures of the results table, from evaluate_arrays' output."""
    h = metrics["hamming"]
    return {"map": h["map"], "map_tie_aware": h["map_tie_aware"], "map@1000": h["map@1000"],
            "map@5000": h.get("map@5000"), "p@500": metrics["precision_at_k"][499],
            "p_r2": metrics["radius2"]["precision"], "r_r2": metrics["radius2"]["recall"]}


def run_input(name: str, load, bits: list[int], methods: list[str], seed: int,
              done: dict[tuple, dict], save) -> list[dict]:
    """Every (method, K) on one input; each row timed (fit + encode, and evaluation).

    ``load() -> (queries, database)`` is called only when a row is missing from ``done``
    (rows of an earlier run of the same command), so a rerun only measures what is new;
    ``save(row)`` records each new row as soon as it is measured.
    """
    todo = [(m, k) for m in methods for k in bits if (name, m, k) not in done]
    if not todo:
        return [done[(name, m, k)] for m in methods for k in bits if (name, m, k) in done]
    (qx, ql), (dx, dl) = load()
    fits = [k for k in bits if k <= dx.shape[1]]
    directions = (principal_directions(dx - dx.mean(axis=0), max(fits))
                  if fits and {"pcah", "itq"} & set(methods) else None)
    rows = []
    for method in methods:
        for k in bits:
            if method != "lsh" and k > dx.shape[1]:
                continue
            if (name, method, k) in done:
                rows.append(done[(name, method, k)])
                continue
            t0 = time.time()
            model = fit(method, dx, k, seed=seed, directions=directions)
            qc, dc = model.encode(qx), model.encode(dx)
            t1 = time.time()
            m = evaluate_arrays(qc, ql, dc, dl, k, at=(1000, 5000), pk_max=1000)
            row = {"input": name, "method": method, "K": k, "queries": len(qx), "database": len(dx),
                   **summary(m), "fit_encode_s": round(t1 - t0, 2), "eval_s": round(time.time() - t1, 1)}
            print(f"{name:>8} {method:>5} K={k:<3} mAP {row['map']:.4f}  mAP@1000 {row['map@1000']:.4f}  "
                  f"P@500 {row['p@500']:.4f}  P(r<=2) {row['p_r2']:.4f}  ({row['fit_encode_s']} s fit, "
                  f"{row['eval_s']} s eval)", flush=True)
            rows.append(row)
            save(row)
    return rows


def write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n")


def previous_rows(path: Path, args: argparse.Namespace) -> dict[tuple, dict]:
    """Baseline rows of an earlier run with the same inputs, limits and seed, by (input, method, K)."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = ("pixels", "features", "query_limit", "db_limit", "seed")
    if any(old["args"].get(k) != getattr(args, k) for k in same):
        return {}
    return {(r["input"], r["method"], r["K"]): r for r in old["rows"] if r["input"] != "images"}


def learned_rows(runs: Path, prefix: str, bits: list[int]) -> list[dict]:
    """The learned codes' rows from the protocol runs that exist."""
    rows = []
    for k in bits:
        path = runs / f"eval-{prefix}-{k}" / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            rows.append({"input": "images", "method": "learned", "K": k, "queries": m["queries"],
                         "database": m["database"], **summary(m)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| input | method | K | mAP@all | mAP@1000 | mAP@5000 | P@500 | P(r<=2) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['method']} | {r['K']} | {r['map']:.4f} | {r['map@1000']:.4f} | "
                     f"{r['map@5000']:.4f} | {r['p@500']:.4f} | {r['p_r2']:.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    """mAP@all against code length, one line per (input, method)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault(f"{r['method']} {INPUT_LABELS[r['input']]}", []).append((r["K"], r["map"]))
    for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                lw=2.5 if label.startswith("learned") else 1.2, color=COLORS[label.split()[0]],
                ls="-" if "pixels" not in label else ":", label=label)
    ax.set_xlabel("code length K (bits)")
    ax.set_ylabel("mAP@all (Hamming ranking)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pixels", nargs=2, metavar=("QUERY_SRC", "DB_SRC"))
    ap.add_argument("--features", nargs=2, metavar=("QUERY_SHARDS", "DB_SHARDS"))
    ap.add_argument("--bits", type=int, nargs="+", default=[12, 24, 32, 48])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--query-limit", type=int, default=None, help="only this many queries (spread evenly)")
    ap.add_argument("--db-limit", type=int, default=None)
    ap.add_argument("--learned", default=None, help="runs folder with eval-PREFIX-K/metrics.json")
    ap.add_argument("--prefix", default="cifar10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="folder for results.json and table.md")
    ap.add_argument("--plot", default=None, help="PNG of mAP against K")
    args = ap.parse_args()
    if not (args.pixels or args.features):
        ap.error("give --pixels and/or --features")
    methods = args.methods.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = previous_rows(out / "results.json", args)

    def save(row: dict) -> None:
        done[(row["input"], row["method"], row["K"])] = row
        write_json(out / "results.json", {"args": vars(args), "rows": list(done.values()), "partial": True})

    rows: list[dict] = []
    if args.pixels:
        rows += run_input("pixels", lambda: (pixel_vectors(args.pixels[0], args.query_limit),
                                             pixel_vectors(args.pixels[1], args.db_limit)),
                          args.bits, methods, args.seed, done, save)
    if args.features:
        def load_features():
            qf, ql, _ = feature_vectors(args.features[0], args.query_limit)
            df, dl, _ = feature_vectors(args.features[1], args.db_limit)
            return (qf, ql), (df, dl)

        rows += run_input("features", load_features, args.bits, methods, args.seed, done, save)
    if args.learned:
        rows = learned_rows(Path(args.learned), args.prefix, args.bits) + rows
    write_json(out / "results.json", {"args": vars(args), "rows": rows})
    table = markdown(rows)
    (out / "table.md").write_text(table + "\n")
    print(table)
    if args.plot:
        n = rows[-1]
        plot(rows, args.plot, f"{args.prefix}: {n['queries']:,} queries vs {n['database']:,}, relevance = same label")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
