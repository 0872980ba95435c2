"""Learning curves of several training runs in one PNG (validation and training accuracy, loss and learning rate
by epoch), to set recipes side by side; `hashindex info model.pt --plot curves.png` draws one run.

    python tools/training_curves.py checkpoints/cifar10-48-e100-kd-scratch.pt runs/table/cifar10-48-e100-kd2.pt \
        nin-cifar10-48-v2 --out docs/figures/cifar10-48-curves.png
"""

from __future__ import annotations

import argparse
import sys

from hashindex.errors import HashindexError
from hashindex.report import training_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint files or shipped model names")
    ap.add_argument("--out", required=True, help="PNG file to write")
    args = ap.parse_args()
    try:
        print(training_curves(args.checkpoints, args.out))
    except HashindexError as e:
        sys.exit(f"training_curves: error: {e}")


if __name__ == "__main__":
    main()
