#!/usr/bin/env python
"""An exported model (`hashindex export`) against the torch model it came from, on real images, in one run.

Agreement: the images of a collection read as extraction reads them, encoded by ONNX Runtime and by the
torch model in float32 and in its default precision (bf16 on AVX-512): code bits differing per image, images
whose codes differ, and the largest feature difference. Speed: images/s of each on the decoded images, ONNX
Runtime's as a ratio of torch's default (the baseline, timed in the same run).

    python tools/bench_onnx.py --model nin-cifar10-48-v4 [--data ../shared/data/cifar10-jpeg/test.tar]
                               [--limit 2000] [--batch-size 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hashindex import load_model
from hashindex.data import open_source
from hashindex.export import OnnxEncoder, export_onnx

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg" / "test.tar"


def batches(encode, images: np.ndarray, batch_size: int) -> tuple[dict[str, np.ndarray], float]:
    """(codes and features of every image, images/s: the best of two passes after a warm-up batch)."""
    encode(images[:batch_size])
    best, out = 0.0, {}
    for _ in range(2):
        t0 = time.perf_counter()
        parts = [encode(images[s:s + batch_size]) for s in range(0, len(images), batch_size)]
        best = max(best, len(images) / (time.perf_counter() - t0))
        out = {k: np.concatenate([p[k] for p in parts]) for k in ("codes", "features")}
    return out, best


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray], bits: int) -> dict[str, float]:
    """Bits differing per image (mean, most), share of images whose codes differ, largest feature difference."""
    differ = np.unpackbits(a["codes"] ^ b["codes"], axis=1, count=bits, bitorder="little").sum(axis=1)
    return {"bits_per_image": float(differ.mean()), "most_bits": int(differ.max()),
            "images_differing": float((differ > 0).mean()),
            "max_feature_diff": float(np.abs(a["features"] - b["features"]).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nin-cifar10-48-v4")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    default, float32 = load_model(args.model), load_model(args.model, bf16=False)
    src = open_source(args.data).subset(args.limit)
    images = np.stack([src.read_array(i, default.input_size, default.channels) for i in range(len(src))])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        export_onnx(default, path)
        ort_out, ort_speed = batches(OnnxEncoder(path), images, args.batch_size)
    torch_out, torch_speed = batches(lambda x: dict(zip(("codes", "features"), default.encode(x))), images,
                                     args.batch_size)
    f32_out, f32_speed = batches(lambda x: dict(zip(("codes", "features"), float32.encode(x))), images,
                                 args.batch_size)
    res = {"model": args.model, "model_id": default.model_id, "images": len(images), "batch_size": args.batch_size,
           "default_precision": default.precision,
           "onnx_vs_float32": agreement(ort_out, f32_out, default.bits),
           "onnx_vs_default": agreement(ort_out, torch_out, default.bits),
           "img_s": {"torch_default": torch_speed, "torch_float32": f32_speed, "onnxruntime": ort_speed},
           "ratio_onnxruntime_to_torch_default": ort_speed / torch_speed}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{len(images)} images of {args.data}, model {default.model_id}, batch {args.batch_size}")
    for name in ("onnx_vs_float32", "onnx_vs_default"):
        a = res[name]
        print(f"{name:16}: {a['bits_per_image']:.4f} bits differ per image (most {a['most_bits']}), "
              f"{a['images_differing']:.2%} of images; features within {a['max_feature_diff']:.1e}")
    s = res["img_s"]
    print(f"img/s: torch {default.precision} {s['torch_default']:.0f}, torch float32 {s['torch_float32']:.0f}, "
          f"ONNX Runtime {s['onnxruntime']:.0f} ({res['ratio_onnxruntime_to_torch_default']:.2f}x torch's default)")


if __name__ == "__main__":
    main()
