"""Memory of one image in `hashindex train` and `hashindex extract`, per input pixel: the slope of the commands'
peak RSS between two batch sizes, at each input size, against the estimate `hashindex.model.activation_bytes`
(which `train` refuses a run by and encoding sizes its batches by) measured in the same run.

    python tools/memory_per_image.py --sizes 64,224

Each size trains a 1-epoch net on B1 and then B2 images in one batch (`--limit B --batch-size B`), then extracts
B1 and B2 images with the second one in one batch; the run needs about B2 x 5 KB x size^2 of memory (224 px,
B2 = 24: ~6.5 GB). Run it on a machine with nothing else that needs the memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hashindex.devices import cpu_bf16_is_fast
from hashindex.model import activation_bytes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg" / "test.tar"


def peak_rss(args: list[str]) -> int:
    """Bytes: the peak resident set of ``hashindex ARGS`` (os.wait4's rusage, that child alone)."""
    proc = subprocess.Popen([sys.executable, "-m", "hashindex", "-q", *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"hashindex {' '.join(args)}: exit {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss * 1024  # (kilobytes on Linux)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA), help="labelled images (CIFAR-10's test tar)")
    ap.add_argument("--sizes", default="64,224", help="input sizes, comma-separated [64,224]")
    ap.add_argument("--batches", default="8,24", help="the two batch sizes B1,B2 [8,24]")
    ap.add_argument("--float32", action="store_true", help="--no-bf16 (float32 on every CPU)")
    args = ap.parse_args()
    b1, b2 = (int(b) for b in args.batches.split(","))
    bf16 = cpu_bf16_is_fast() and not args.float32
    precision = ["--no-bf16"] if args.float32 else []
    print(f"precision: {'bfloat16' if bf16 else 'float32'}; batches {b1} and {b2}")
    print("| pass | input px | measured bytes a pixel an image | estimate | measured / estimate |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            model = f"{tmp}/m{size}.pt"
            rss = []
            for b in (b1, b2):
                rss.append(peak_rss(["train", "--data", args.data, "--limit", str(b), "--batch-size", str(b),
                                     "--input-size", str(size), "--epochs", "1", "--out", model, "--overwrite",
                                     *precision]))
            slopes = {"train": (rss[1] - rss[0]) / (b2 - b1) / size**2}
            rss = [peak_rss(["extract", "--model", model, "--data", args.data, "--limit", str(b), "--batch-size",
                             str(b), "--workers", "0", "--out", f"{tmp}/x{size}-{b}", *precision]) for b in (b1, b2)]
            slopes["extract"] = (rss[1] - rss[0]) / (b2 - b1) / size**2
            for name, slope in slopes.items():
                estimate = activation_bytes(size, training=name == "train", bf16=bf16) / size**2
                print(f"| `{name}` | {size} | {slope:,.0f} | {estimate:,.0f} | {slope / estimate:.2f} |")


if __name__ == "__main__":
    main()
