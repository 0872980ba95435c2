#!/usr/bin/env python
"""Encode photos with an exported model and search a running service, without hashindex or torch.

Needs only numpy, Pillow and onnxruntime: the reference for encoding in another language. It reads an image
as hashindex's extraction does (JPEGs decoded at reduced scale down to twice the net's side, the EXIF rotation
applied, transparency on white, the whole image squashed to the side, bilinear), runs the file (`hashindex
export`), and either prints each photo's code or sends the outputs to `POST /batch` as JSON queries, so the
photos themselves never leave this machine.

    python tools/onnx_client.py model.onnx photo.jpg [more.jpg ...]                       # codes (hex)
    python tools/onnx_client.py model.onnx photo.jpg --url http://localhost:8000 --k 10   # search results
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

MAX_BATCH = 64  # queries in one POST /batch request (the service's cap)
DRAFT_FACTOR = 2  # JPEGs are decoded at reduced scale down to this many times the net's side (as extraction)
try:  # HEIC / HEIF, the format phones store photos in, where pillow-heif is installed (as hashindex reads it)
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:
    pass


def net_input(path: str, side: int, channels: int) -> np.ndarray:
    """A photo as the net's (channels, side, side) uint8 input, read as hashindex reads it."""
    img = Image.open(path)
    if img.format == "JPEG":
        img.draft(None, (DRAFT_FACTOR * side, DRAFT_FACTOR * side))
    img.load()
    if img.getexif().get(0x0112, 1) in range(2, 9):  # the EXIF orientation tag
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit and float greyscale, rescaled to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (side, side):
        img = img.resize((side, side), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


class Encoder:
    """An exported model: photos -> its outputs by name, and the facts its metadata records."""

    def __init__(self, model_path: str):
        self.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.model_id = meta["hashindex.model_id"]
        self.side, self.channels = int(meta["hashindex.input_size"]), int(meta["hashindex.channels"])
        self.outputs = meta["hashindex.outputs"].split(",")

    def __call__(self, paths: list[str]) -> dict[str, np.ndarray]:
        images = np.stack([net_input(p, self.side, self.channels) for p in paths])
        return dict(zip(self.outputs, self.session.run(self.outputs, {"images": images})))


def search(url: str, encoder: Encoder, out: dict[str, np.ndarray], k: int, token: str | None = None) -> list[dict]:
    """The service's answers to the photos of ``out``, sent as JSON queries in POST /batch requests of up to
    MAX_BATCH, each with the feature the index's fine stage reads (GET / names its signal): a result row, or
    {"error", "status"}, a photo; ``token``: the service's read token, if it has one."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.rstrip("/")
    info = _json(urllib.request.Request(base + "/", headers=auth))
    if "error" in info:
        raise SystemExit(f"{base}/: {info['error']}")
    field = "mid_features" if info.get("signal") == "mid" else "features"
    queries = [{"model_id": encoder.model_id, "code": code.tobytes().hex(), field: row.tolist()}
               for code, row in zip(out["codes"], out[field])]
    rows: list[dict] = []
    for start in range(0, len(queries), MAX_BATCH):
        body = json.dumps({"queries": queries[start:start + MAX_BATCH]}).encode()
        answer = _json(urllib.request.Request(f"{base}/batch?k={k}", data=body,
                                              headers={"Content-Type": "application/json", **auth}))
        if "error" in answer:  # the request's own error (a query's is in its row)
            raise SystemExit(f"{base}/batch: {answer['error']}")
        rows += answer["results"]
    return rows


def _json(request: urllib.request.Request) -> dict:
    """A request's JSON answer, an error status's included (the service says what was wrong in it)."""
    try:
        return json.loads(urllib.request.urlopen(request, timeout=60).read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an ONNX file written by `hashindex export`")
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--url", default=None, help="a running `hashindex serve` to search")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--token", default=None, help="the service's read token (`serve --read-token`)")
    args = ap.parse_args()
    encoder = Encoder(args.model)
    out = encoder(args.photos)
    if args.url is None:
        for photo, code in zip(args.photos, out["codes"]):
            print(f"{photo}\t{code.tobytes().hex()}")
        return
    failed = 0
    for photo, answer in zip(args.photos, search(args.url, encoder, out, args.k, args.token)):
        if "error" in answer:
            print(f"{photo}: {answer['error']}", file=sys.stderr)
            failed += 1
            continue
        print(photo)
        for row in answer["results"]:
            print(f"  {row['id']:>8}  hamming {row['hamming']:>3}  {row.get('path', '')}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
