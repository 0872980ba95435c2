"""Accuracy of a model on a test set re-encoded as JPEG at several qualities: how much compression costs it.

Our CIFAR-10 is a JPEG re-encode (about quality 75, 4:2:0 chroma) of the official pixels, which we do not
have; the published NIN accuracy (0.9119) was measured on the official pixels. Compressing the test images
once more, at the same and at other qualities, shows how the model takes a JPEG generation: one like those it
was trained on, and one it never saw (docs/RESULTS.md, "A further JPEG generation"). What the re-encode we
train and test on costs against the official pixels cannot be measured without them. Each image is decoded
as the model reads it, re-encoded with Pillow, decoded again.

    python tools/jpeg_quality.py nin-cifar10-48-v3 --data ../shared/data/cifar10-jpeg/test.tar
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import torch
from PIL import Image

from hashindex.checkpoint import net_from_checkpoint, read_checkpoint
from hashindex.data import load_arrays, open_source
from hashindex.devices import autocast_for


def reencode(x: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    """uint8 (N, 3, H, W) images through one JPEG generation at ``quality`` (Pillow's subsampling code:
    0 = 4:4:4, 2 = 4:2:0)."""
    out = np.empty_like(x)
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img.transpose(1, 2, 0)).save(buf, "JPEG", quality=quality, subsampling=subsampling)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1)
    return out


@torch.inference_mode()
def accuracy(net: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy with the checkpoint's own test views, bf16 where the CPU has it (as extraction)."""
    t = torch.from_numpy(x)
    with autocast_for(torch.device("cpu"), True):
        logits = torch.cat([net(t[s:s + 1000].contiguous())[0].float() for s in range(0, len(t), 1000)])
    return float((logits.argmax(1).numpy() == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="labelled colour images (the test set)")
    ap.add_argument("--qualities", type=int, nargs="+", default=[95, 90, 75, 50, 30])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ckpt = read_checkpoint(args.model)
    if ckpt["channels"] != 3:
        raise SystemExit(f"{args.model}: a {ckpt['channels']}-channel model; this study re-encodes colour images")
    net = net_from_checkpoint(ckpt).eval()
    src = open_source(args.data, "data", split="test")
    src.remap_labels(ckpt["class_names"])
    x, y, _ = load_arrays(src, ckpt["input_size"], 3, progress=False)
    rows = [{"encoding": "as given", "accuracy": accuracy(net, x, y), "changed": 0.0}]
    base = rows[0]["accuracy"]
    for q in args.qualities:
        for name, sub in (("4:4:4", 0), ("4:2:0", 2)):
            xq = reencode(x, q, sub)
            acc = accuracy(net, xq, y)
            rows.append({"encoding": f"+ JPEG q{q} {name}", "accuracy": acc, "delta": acc - base,
                         "changed": float(np.abs(xq.astype(np.int16) - x).mean())})
    if args.json:
        print(json.dumps({"model": args.model, "images": len(y), "rows": rows}, indent=1))
        return
    print(f"{args.model} on {len(y)} images of {args.data}")
    print("| test images | accuracy | vs as given | mean abs pixel change |\n| --- | --- | --- | --- |")
    for r in rows:
        delta = f"{r['delta']:+.4f}" if "delta" in r else ""
        print(f"| {r['encoding']} | {r['accuracy']:.4f} | {delta} | {r['changed']:.2f} |")


if __name__ == "__main__":
    main()
