#!/usr/bin/env python
"""What GET /items/ID/image?size=N costs and saves: per photo, the time to make its JPEG thumbnail
(`data.thumbnail_jpeg`) against the time to decode the file whole (the baseline, same run), and the bytes sent
against the file's own.

    python tools/bench_thumbnail.py [--data ../shared/data/flowers/test.tar] [--limit 200] [--size 300] [--json]

``--camera-side 4000``: each photo first enlarged to that longest side and saved as a JPEG (quality 92), to
stand for a camera's files (the flowers photos are a few hundred pixels; a phone's are 4000 x 3000).
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image

from hashindex.data import decode_image, open_source, thumbnail_jpeg


def camera_sized(data: bytes, side: int) -> bytes:
    """The photo enlarged to ``side`` pixels on its longest side, as a JPEG (quality 92, as cameras save)."""
    img = decode_image(data).convert("RGB")
    scale = side / max(img.size)
    out = io.BytesIO()
    img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC).save(out, "JPEG", quality=92)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/flowers/test.tar")
    ap.add_argument("--limit", type=int, default=200, help="photos, spread over the collection")
    ap.add_argument("--size", type=int, default=300, help="the thumbnail's longest side (the /ui page asks 300)")
    ap.add_argument("--camera-side", type=int, default=0, help="enlarge each photo to this longest side first")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    src = open_source(args.data)
    picks = np.linspace(0, len(src) - 1, min(args.limit, len(src))).astype(int)
    files = [src.read_bytes(int(i)) for i in picks]
    if args.camera_side:
        files = [camera_sized(d, args.camera_side) for d in files]
    decode_s, thumb_s, thumb_bytes = [], [], []
    for data in files:  # alternating, so a noisy machine disturbs both alike
        t0 = time.perf_counter()
        decode_image(data)
        t1 = time.perf_counter()
        small = thumbnail_jpeg(data, args.size)
        t2 = time.perf_counter()
        decode_s.append(t1 - t0)
        thumb_s.append(t2 - t1)
        thumb_bytes.append(len(small))
    file_bytes = [len(d) for d in files]
    result = {"data": args.data, "photos": len(files), "size": args.size, "camera_side": args.camera_side,
              "file_kb_median": float(np.median(file_bytes)) / 1024,
              "thumbnail_kb_median": float(np.median(thumb_bytes)) / 1024,
              "bytes_ratio": float(np.sum(thumb_bytes) / np.sum(file_bytes)),
              "decode_ms_median": 1000 * float(np.median(decode_s)),
              "thumbnail_ms_median": 1000 * float(np.median(thumb_s)),
              "time_ratio": float(np.sum(thumb_s) / np.sum(decode_s))}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    made = f", each enlarged to {args.camera_side} px a side first" if args.camera_side else ""
    print(f"{result['photos']} photos of {args.data}{made}, thumbnails at most {args.size} px a side")
    print(f"bytes: file median {result['file_kb_median']:.1f} kB, thumbnail {result['thumbnail_kb_median']:.1f} kB; "
          f"all thumbnails / all files = {result['bytes_ratio']:.3f}")
    print(f"time: full decode median {result['decode_ms_median']:.2f} ms, thumbnail (decode at reduced scale, "
          f"shrink, encode) {result['thumbnail_ms_median']:.2f} ms; thumbnail / full decode = "
          f"{result['time_ratio']:.2f}x")


if __name__ == "__main__":
    main()
