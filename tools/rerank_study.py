#!/usr/bin/env python
"""Which fine-stage signal serves a collection: every signal measured through `build` + `eval`.

For one database shard directory and one labelled query shard directory (same model), builds a real
index per signal (``hashindex.build(..., signal=S)``) and scores it with ``hashindex.evaluate`` --
the files and code paths of ``hashindex build`` / ``hashindex eval`` -- at the default pool (what a
query gets) and with the whole database re-ranked. One more build with ``signal="auto"`` records
what the default chooses. Rows are saved as soon as they are measured (rerun to resume).

    python tools/rerank_study.py --name cifar10 --database runs/rr/c10-db --queries runs/rr/c10-q \\
        --out runs/rr/study.jsonl
    python tools/rerank_study.py --table runs/rr/study.jsonl      # the markdown table of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hashindex.evaluation import evaluate
from hashindex.index import build
from hashindex.signals import SIGNALS

POOLS = ("default", "all")


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summary(m: dict, fine: bool) -> dict:
    """mAP@all, mAP@1000, precision@10 of the Hamming ranking or of the re-ranked one."""
    part = m["reranked"] if fine else m["hamming"]
    pk = m["precision_at_k_reranked"] if fine else m["precision_at_k"]
    return {"map": part["map"], "map@1000": part["map@1000"], "p@10": pk[9]}


def study(name: str, database: str, queries: str, out: Path, signals: list[str], model: str | None) -> None:
    done = {(r["name"], r["signal"], r["pool"]) for r in load_rows(out)}
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(row: dict) -> None:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))

    with tempfile.TemporaryDirectory() as tmp:
        for signal in ["auto"] + signals:
            todo = [p for p in POOLS if (name, signal, p) not in done]
            if signal == "auto" and (name, "auto", "default") in done:
                continue
            if not todo:
                continue
            t0 = time.time()
            meta = build(database, Path(tmp) / signal, signal=signal, model=model, overwrite=True,
                         progress=False, log=lambda line: None)
            build_s = time.time() - t0
            chosen = meta["rerank"]["signal"]
            for pool in (["default"] if signal == "auto" else todo):
                m = evaluate(Path(tmp) / signal, queries, at=(1000,), candidates="all" if pool == "all" else None,
                             progress=False)
                fine = "reranked" in m
                if (name, "hamming", "-") not in done:
                    save({"name": name, "signal": "hamming", "pool": "-", **summary(m, False),
                          "queries": m["queries"], "database": m["database"]})
                    done.add((name, "hamming", "-"))
                save({"name": name, "signal": signal, "pool": pool, "chosen": chosen if signal == "auto" else None,
                      "choice": meta["rerank"].get("signal_choice") if signal == "auto" else None,
                      **(summary(m, fine) if fine else summary(m, False)),
                      "mean_pool": m.get("reranked", {}).get("mean_pool"), "build_s": round(build_s, 2)})


def table(path: Path) -> str:
    """Markdown: one row per collection, mAP@all / mAP@1000 / P@10 per signal (default pool), auto's choice, and
    what the label-free test would choose without the labels (rows measured since index.json records it)."""
    rows = load_rows(path)
    names = list(dict.fromkeys(r["name"] for r in rows))
    cols = ["hamming"] + [s for s in SIGNALS if any(r["signal"] == s for r in rows)]
    head = "| collection | metric | " + " | ".join(cols) + (" | auto chooses | auto | without labels it would choose | "
                                                          "whole database re-ranked (best) |")
    lines = [head, "|" + " --- |" * (len(cols) + 6)]
    for name in names:
        mine = {(r["signal"], r["pool"]): r for r in rows if r["name"] == name}
        auto = mine.get(("auto", "default"))
        ham = mine[("hamming", "-")]
        for metric, label in (("map", "mAP@all"), ("map@1000", "mAP@1000"), ("p@10", "P@10")):
            cells = [f"{ham[metric]:.4f}"]
            for s in cols[1:]:
                r = mine.get((s, "default"))
                cells.append(f"{r[metric]:.4f}" if r else "-")
            alls = {s: mine[(s, "all")][metric] for s in cols[1:] if (s, "all") in mine}
            best = max(alls, key=alls.get) if alls else None
            chosen = f"{auto['chosen']} | {auto[metric]:.4f}" if auto else "- | -"
            free = ((auto or {}).get("choice") or {}).get("label_free", {}).get("signal", "-")  # older rows: none
            free_score = mine.get((free, "default"), {}).get(metric)
            chosen += f" | {free} ({free_score:.4f})" if free_score is not None else f" | {free}"
            whole = f"{alls[best]:.4f} ({best})" if best else "-"
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {chosen} | {whole} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name")
    ap.add_argument("--database")
    ap.add_argument("--queries")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--model", default=None, help="the shards' model, where the shard directory has no head.npz")
    ap.add_argument("--signals", default=",".join(SIGNALS))
    ap.add_argument("--table", type=Path, help="print the markdown table of a results file and stop")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    study(args.name, args.database, args.queries, args.out, args.signals.split(","), args.model)


if __name__ == "__main__":
    main()
