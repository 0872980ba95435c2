#!/usr/bin/env python
"""An exported model (`hashindex export`) against the torch model it came from, on real images, in one run.

Agreement: the images of a collection read as extraction reads them, encoded by ONNX Runtime and by the
torch model in float32 and in its default precision (bf16 on AVX-512): code bits differing per image, images
whose codes differ, and the largest feature difference. Speed: images/s of each on the decoded images, ONNX
Runtime's as a ratio of torch's default (the baseline, timed in the same run).

    python tools/bench_onnx.py --model nin-cifar10-48-v4 [--data ../shared/data/cifar10-jpeg/test.tar]
                               [--limit 2000] [--batch-size 256] [--json]

--index DIR (an index of --model's codes) also searches it with the first --searches images of --data twice,
as the service answers them: uploaded (encoded by the served model, in its default precision and in float32)
and encoded by the ONNX file (a JSON query, `POST /search`), and counts the top-10 lists that are the same.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from hashindex import load_model
from hashindex.data import open_source
from hashindex.export import OnnxEncoder, export_onnx
from timing import best_of  # tools/ is on sys.path when run as a script

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg" / "test.tar"


def batches(encode, images: np.ndarray, batch_size: int) -> tuple[dict[str, np.ndarray], float]:
    """(codes and features of every image, images/s: the best of two passes after a warm-up batch)."""
    encode(images[:batch_size])
    out: dict[str, np.ndarray] = {}

    def one_pass() -> None:
        parts = [encode(images[s:s + batch_size]) for s in range(0, len(images), batch_size)]
        out.update({k: np.concatenate([p[k] for p in parts]) for k in ("codes", "features")})
    return out, len(images) / best_of(one_pass, 2)


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray], bits: int) -> dict[str, float]:
    """Bits differing per image (mean, most), share of images whose codes differ, largest feature difference."""
    differ = np.unpackbits(a["codes"] ^ b["codes"], axis=1, count=bits, bitorder="little").sum(axis=1)
    return {"bits_per_image": float(differ.mean()), "most_bits": int(differ.max()),
            "images_differing": float((differ > 0).mean()),
            "max_feature_diff": float(np.abs(a["features"] - b["features"]).max())}


def same_rankings(index_dir: str, encoder: OnnxEncoder, src, n: int, precision: str) -> tuple[int, int, float]:
    """(top-10 lists the same, searches, mean ids in common) of the service's answers to a photo uploaded and to
    the ONNX file's outputs for it sent as JSON, the served model in its default precision or in float32."""
    from hashindex.data.images import net_array
    from hashindex.service.basic import Searcher
    from hashindex.service.params import search_options

    served = Searcher(index_dir)
    served.model.bf16 = None if precision == "default" else False
    options = search_options({"k": "10"})
    same = common = 0
    n = min(n, len(src))
    for i in range(n):
        data = src.read_bytes(i)
        out = encoder(net_array(data, served.model.input_size, served.model.channels)[None])
        field = served.index.feature_field
        body = {"model_id": served.index.model_id, "code": out["codes"][0].tobytes().hex(),
                field: out[field][0].tolist()}
        a = [r["id"] for r in served.by_encoded(json.dumps(body).encode(), options)["results"]]
        b = [r["id"] for r in served.by_image(data, options)["results"]]
        same += a == b
        common += len(set(a) & set(b))
    return same, n, common / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nin-cifar10-48-v4")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--index", default=None, help="an index of --model's codes: compare the service's rankings")
    ap.add_argument("--searches", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    default, float32 = load_model(args.model), load_model(args.model, bf16=False)
    src = open_source(args.data).subset(args.limit)
    images = np.stack([src.read_array(i, default.input_size, default.channels) for i in range(len(src))])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        export_onnx(default, path)
        encoder = OnnxEncoder(path)
        ort_out, ort_speed = batches(encoder, images, args.batch_size)
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
    if args.index:
        res["service_top10_same"] = {p: same_rankings(args.index, encoder, src, args.searches, p)
                                     for p in ("default", "float32")}
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
    for precision, (same, n, overlap) in res.get("service_top10_same", {}).items():
        print(f"service, photo encoded by its model ({precision}) vs by the ONNX file: {same}/{n} top-10 lists the "
              f"same, {overlap:.2f} of 10 in common")


if __name__ == "__main__":
    main()
