#!/usr/bin/env python
"""Input size for photographs: zero-shot, fine-tuned (and from scratch) at 32 / 64 / 96 / 128 px, on flowers.

For each size S: both splits are prepared once at S (hashindex prepare), then
  zero-shot   the shipped model's weights applied at S (global average pooling takes any size);
  fine-tuned  train --init MODEL --input-size S for EPOCHS[S] epochs (lr 0.1, as tools/transfer_study.py found);
  scratch     the same epochs from random weights (sizes in --scratch);
and each is evaluated on the standard protocol: the test photos as queries against the training photos as
database, built with the default `--signal auto`: Hamming mAP@all, the default ranking's mAP@all, P@10.
Training wall time and images/s are the checkpoint's (2 cores). Rows go to OUT/rows.jsonl as they finish; a
rerun skips finished rows and resumes an interrupted training run.

    python tools/photo_sizes.py --out runs/photo-sizes [--sizes 32 64 96 128] [--scratch 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hashindex.checkpoint import atomic_torch_save, read_checkpoint
from hashindex.data import open_source
from hashindex.data.prepared import prepare
from hashindex.evaluation import evaluate
from hashindex.extraction import extract
from hashindex.index import build
from hashindex.training import TrainConfig, train

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flowers"
EPOCHS = {32: 20, 64: 12, 96: 6, 128: 3}  # 3-11 minutes of training each on 2 cores (the net is the bound)
QUIET = {"progress": False, "log": lambda s: None}


def prepared(out: Path, split: str, size: int) -> Path:
    d = out / f"prep-{split}-{size}"
    prepare(open_source(DATA / f"{split}.tar"), d, size, 3, **QUIET)
    return d


def protocol(model: Path, db: Path, queries: Path, work: Path) -> dict:
    """Extract both splits, build with the default signal, evaluate: the figures of one row."""
    extract(str(model), str(db), work / "db", workers=0, **QUIET)
    extract(str(model), str(queries), work / "q", workers=0, **QUIET)
    if not (work / "index" / "index.json").exists():
        build(work / "db", work / "index", **QUIET)
    m = evaluate(work / "index", work / "q", progress=False)
    meta = json.loads((work / "index" / "index.json").read_text())
    rr = m.get("reranked")
    return {"hamming_map": round(m["hamming"]["map"], 4), "default_map": round(rr["map"] if rr else m["hamming"]["map"], 4),
            "p_at_10": round((m["precision_at_k_reranked"] if rr else m["precision_at_k"])[9], 4),
            "signal": meta["rerank"].get("signal")}


def zero_shot_model(base: str, size: int, path: Path) -> Path:
    """The shipped weights with input_size S (the same net: its model_id does not change)."""
    if not path.exists():
        ckpt = read_checkpoint(base)
        ckpt["input_size"] = size
        atomic_torch_save(ckpt, path)
    return path


def row(out: Path, arm: str, size: int, epochs: int, init: str | None, base: str, trunk_lr: float = 1.0) -> dict:
    work = out / f"{arm}-{size}"
    work.mkdir(parents=True, exist_ok=True)
    db, q = prepared(out, "train", size), prepared(out, "test", size)
    if arm == "zero-shot":
        model, figures = zero_shot_model(base, size, work / "model.pt"), {"epochs": 0, "val_acc": None,
                                                                          "train_min": 0.0, "img_s": None}
    else:
        model = work / "model.pt"
        cfg = TrainConfig(data=str(db), val=str(q), out=str(model), input_size=size, epochs=epochs, init=init,
                          lr=0.1, workers=0, trunk_lr=trunk_lr if init else 1.0)
        if not model.exists() or "train_state" in read_checkpoint(model):
            train(cfg, resume=model.exists(), progress=False, log=lambda s: print(f"[{arm}-{size}] {s}", flush=True))
        ckpt = read_checkpoint(model)
        figures = {"epochs": ckpt["epochs"], "val_acc": round(ckpt["accuracy"], 4),
                   "train_min": round(sum(h["wall_s"] for h in ckpt["history"]) / 60, 2),
                   "img_s": round(sum(h["img_per_s"] for h in ckpt["history"]) / len(ckpt["history"]), 1)}
    t0 = time.time()
    res = {"arm": arm, "size": size, **figures, **protocol(model, db, q, work), "eval_s": round(time.time() - t0, 1)}
    print(json.dumps(res), flush=True)
    return res


def print_table(rows_file: Path) -> None:
    """The rows as docs/RESULTS.md shows them."""
    print("| size | arm | epochs | val acc | Hamming mAP@all | default mAP@all (signal) | P@10 | train minutes | img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(map(json.loads, rows_file.read_text().splitlines()), key=lambda r: (r["size"], r["arm"] != "zero-shot",
                                                                                         r["arm"])):
        acc = f"{r['val_acc']:.4f}" if r["val_acc"] is not None else "-"
        print(f"| {r['size']} | {r['arm']} | {r['epochs']} | {acc} | {r['hamming_map']:.4f} | "
              f"{r['default_map']:.4f} ({r['signal']}) | {r['p_at_10']:.4f} | {r['train_min']:.1f} | "
              f"{r['img_s'] if r['img_s'] is not None else '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128])
    ap.add_argument("--scratch", type=int, nargs="*", default=[64], help="sizes that also get a from-scratch row")
    ap.add_argument("--init", default="nin-cifar10-48")
    ap.add_argument("--arms", nargs="+", default=["zero-shot", "fine-tuned", "scratch"])
    ap.add_argument("--trunk-lr", type=float, default=1.0,
                    help="fine-tuned arm: the trunk's learning rate as a fraction of the head's (train --trunk-lr); "
                         "its rows are arm 'fine-tuned-tlF'")
    ap.add_argument("--table", action="store_true", help="print OUT/rows.jsonl as a markdown table and stop")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print_table(out / "rows.jsonl")
        return
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "rows.jsonl"
    done = {(r["arm"], r["size"]) for r in map(json.loads, done_file.read_text().splitlines())} \
        if done_file.exists() else set()
    for size in args.sizes:
        for arm in args.arms:
            init = args.init if arm == "fine-tuned" else None
            name = f"{arm}-tl{args.trunk_lr:g}" if init and args.trunk_lr != 1 else arm
            if (name, size) in done or (arm == "scratch" and size not in args.scratch):
                continue
            res = row(out, name, size, EPOCHS.get(size, 10), init, args.init, args.trunk_lr)
            with open(done_file, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
