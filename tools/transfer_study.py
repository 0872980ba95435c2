"""Fine-tuning vs training from scratch on a few labelled images (`hashindex train --init`).

Trains the same small labelled set three ways, same epochs and seed: from
random weights (lr 0.1, the default), and from a trained model (``--init``) at
lr 0.01 and 0.1. Reports validation accuracy and mAP@all (validation queries
against the training images as database) of each, and fine-tuned / scratch
ratios. Each arm's checkpoint is kept in --out, so a rerun resumes or reuses it.

    python tools/transfer_study.py --init nin-cifar10-48 --data ../shared/data/fashion-mnist \
        --val ../shared/data/fashion-mnist:test --limit 1000 --val-limit 2000 --epochs 10 --out runs/transfer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hashindex.checkpoint import read_checkpoint
from hashindex.training import TrainConfig, train

ARMS = {"scratch": (None, 0.1), "init-lr0.01": ("init", 0.01), "init-lr0.1": ("init", 0.1)}


def run_arm(args: argparse.Namespace, name: str) -> dict:
    """Train one arm (resuming an interrupted one) and return its checkpoint's figures."""
    init, lr = ARMS[name]
    out = Path(args.out) / f"{name}.pt"
    cfg = TrainConfig(data=args.data, val=args.val, out=str(out), bits=args.bits, epochs=args.epochs,
                      lr=lr, limit=args.limit, val_limit=args.val_limit, input_size=args.input_size,
                      init=args.init if init else None, flip=not args.no_flip, seed=args.seed)
    if not out.exists() or "train_state" in read_checkpoint(out):
        train(cfg, resume=out.exists(), progress=False, log=lambda line: print(f"[{name}] {line}", flush=True))
    ckpt = read_checkpoint(out)
    return {"arm": name, "lr": lr, "init": cfg.init, "val_acc": ckpt["accuracy"], "map": ckpt["map"],
            "val_acc_per_epoch": [round(h["val_acc"], 4) for h in ckpt["history"]],
            "train_s": round(sum(h["wall_s"] for h in ckpt["history"]), 1), "checkpoint": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="checkpoint or shipped model to fine-tune from")
    ap.add_argument("--data", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--limit", type=int, default=1000, help="labelled training images")
    ap.add_argument("--val-limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {list(ARMS)}")
    ap.add_argument("--out", required=True, help="folder for the arms' checkpoints and results.json")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = [run_arm(args, name) for name in args.arms.split(",")]
    base = next((r for r in rows if r["arm"] == "scratch"), None)
    print(f"\n{args.limit} images of {args.data}, {args.epochs} epochs, {args.bits} bits, init {args.init}")
    print(f"{'arm':<12} {'lr':>5} {'val acc':>8} {'mAP@all':>8} {'vs scratch':>11} {'train s':>8}")
    for r in rows:
        ratio = f"{r['map'] / base['map']:.2f}x" if base and base["map"] else "-"
        print(f"{r['arm']:<12} {r['lr']:>5} {r['val_acc']:>8.4f} {r['map']:>8.4f} {ratio:>11} {r['train_s']:>8}")
    result = {"args": vars(args), "rows": rows}
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
