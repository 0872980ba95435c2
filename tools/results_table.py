#!/usr/bin/env python
"""The results table of docs/RESULTS.md, from the runs of tools/reproduce_table.sh.

Reads RUNS/NAME.pt (training figures) and RUNS/eval-NAME/metrics.json (the protocol) for every row that
has both, prints a markdown table, and with --plot FILE one figure of every row's PR curve and precision@k.

    python tools/results_table.py [--runs runs/table] [--plot docs/figures/table.png] [--json]
    python tools/results_table.py --plot docs/figures/results_table.png --update docs/RESULTS.md

--update rewrites the table between the results-table markers of that file (atomically): rows measured in
this run replace their old lines, rows whose runs are not here (another session's work tree) are kept as they
are, so a partial runs folder never deletes a figure. --plot draws only the rows measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hashindex.checkpoint import read_checkpoint
from hashindex.files import atomic_path
from hashindex.report import plot_comparison

COLUMNS = ["row", "queries vs database", "K", "epochs", "train wall (s)", "val acc", "mAP@all Hamming", "tie-aware", "re-ranked",
           "mAP@1000 Hamming / re-ranked", "mAP@5000", "P@1 (tie-aware)", "P@500", "P(r<=2)", "R(r<=2)", "model id"]


def row(ckpt_path: Path, metrics: dict) -> dict:
    """One row's figures, straight from the checkpoint and the protocol's metrics.json."""
    ckpt = read_checkpoint(ckpt_path)
    wall = sum(h["wall_s"] for h in ckpt["history"])
    h, rr = metrics["hamming"], metrics.get("reranked", {})
    return {"row": ckpt_path.stem, "K": ckpt["bits"], "epochs": ckpt["epochs"], "train_wall_s": round(wall),
            "val_acc": ckpt["accuracy"], "map": h["map"], "map_tie_aware": h["map_tie_aware"],
            "map_reranked": rr.get("map"), "map@1000": h["map@1000"], "map@1000_reranked": rr.get("map@1000"),
            "map@5000": h.get("map@5000"),
            "p@1": metrics["precision_at_k"][0],
            "p@1_tie_aware": metrics.get("precision_at_k_tie_aware", [None])[0],
            "p@500": metrics["precision_at_k"][499], "p_r2": metrics["radius2"]["precision"],
            "r_r2": metrics["radius2"]["recall"], "model_id": ckpt["model_id"], "queries": metrics["queries"],
            "database": metrics["database"], "finished": "train_state" not in ckpt}


def markdown(rows: list[dict]) -> str:
    f = "{:.4f}".format
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        cells = [r["row"], f"{r['queries']:,} vs {r['database']:,}", r["K"], r["epochs"], f"{r['train_wall_s']:,}", f(r["val_acc"]), f"**{f(r['map'])}**",
                 f(r["map_tie_aware"]), f(r["map_reranked"]) if r["map_reranked"] is not None else "",
                 f"{f(r['map@1000'])} / {f(r['map@1000_reranked'])}" if r["map@1000_reranked"] else f(r["map@1000"]),
                 f(r["map@5000"]) if r["map@5000"] is not None else "",
                 f(r["p@1"]) + (f" ({f(r['p@1_tie_aware'])})" if r["p@1_tie_aware"] is not None else ""),
                 f(r["p@500"]), f(r["p_r2"]), f(r["r_r2"]), r["model_id"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


BEGIN, END = "<!-- results-table", "<!-- /results-table -->"


def update(doc: Path, table: str) -> None:
    """Rewrite the table between the results-table markers of ``doc``: the rows of ``table`` replace the lines of
    the same row name, the other lines stay (in their place; new rows go last)."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"--update {doc}: no '{BEGIN} ... -->' / '{END}' markers in it")
    head = text[:text.index("\n", text.index(BEGIN)) + 1]
    tail = text[text.index(END):]
    old = [line for line in text[len(head):text.index(END)].splitlines()[2:] if line.startswith("| ")]
    header, new = table.splitlines()[:2], {_name(line): line for line in table.splitlines()[2:]}
    lines = [new.pop(_name(line), line) for line in old] + list(new.values())
    with atomic_path(doc) as tmp:
        Path(tmp).write_text(head + "\n".join(header + lines) + "\n" + tail)


def _name(line: str) -> str:
    """The row name of a markdown table line ('| cifar10-48 | ...' -> 'cifar10-48')."""
    return line.split("|")[1].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/table")
    ap.add_argument("--plot", default=None, help="PNG file for the PR / precision@k comparison")
    ap.add_argument("--update", default=None, help="markdown file whose results-table block to rewrite")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = Path(args.runs)
    rows, metrics = [], {}
    for ckpt in sorted(runs.glob("*.pt")):
        m = runs / f"eval-{ckpt.stem}" / "metrics.json"
        if m.exists():
            metrics[ckpt.stem] = json.loads(m.read_text())
            rows.append(row(ckpt, metrics[ckpt.stem]))
    if not rows:
        raise SystemExit(f"--runs {runs}: no NAME.pt with eval-NAME/metrics.json yet (run tools/reproduce_table.sh)")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_comparison(metrics, Path(args.plot), "hashindex results table: queries = test set, database = training set")
    if args.update:
        update(Path(args.update), markdown(rows))
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
