#!/usr/bin/env python
"""A collection's images in another look, written as a tar with the same member paths (so the same labels):
``grey`` (colour gone), ``low`` (scaled down to --size px and back up: detail gone), ``turned`` (a quarter turn
clockwise: a photo whose orientation was lost) or ``jpeg`` (compressed once more at --quality). Makes the "net's
own classes in another look" rows of docs/RESULTS.md, "Collections without labels".

    python tools/another_look.py ../shared/data/cifar10-jpeg/train.tar runs/ood/grey-train.tar --look grey --limit 10000
    python tools/another_look.py ../shared/data/cifar10-jpeg/test.tar runs/ood/low-test.tar --look low --limit 1000
"""

from __future__ import annotations

import argparse
import io
import tarfile

from PIL import Image

from hashindex.data import open_source
from hashindex.files import atomic_path


def changed(data: bytes, look: str, size: int, quality: int = 50) -> bytes:
    """One image in the look asked for, as JPEG (quality 95, or ``quality`` for the ``jpeg`` look)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if look == "grey":
        img = img.convert("L").convert("RGB")
    elif look == "low":
        img = img.resize((size, size), Image.BILINEAR).resize(img.size, Image.BILINEAR)
    elif look == "turned":
        img = img.transpose(Image.Transpose.ROTATE_270)  # counter-clockwise 270: a quarter turn clockwise
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality if look == "jpeg" else 95)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="any hashindex image source (a tar, a folder...)")
    ap.add_argument("out", help="the tar to write")
    ap.add_argument("--look", choices=["grey", "low", "turned", "jpeg"], required=True)
    ap.add_argument("--size", type=int, default=12, help="low: the side it is scaled down to (px)")
    ap.add_argument("--quality", type=int, default=50, help="jpeg: the quality it is compressed at")
    ap.add_argument("--limit", type=int, help="this many images, spread evenly (as hashindex's --limit)")
    args = ap.parse_args()
    src = open_source(args.data)
    if args.limit:
        src = src.subset(args.limit)
    with atomic_path(args.out) as tmp, tarfile.open(tmp, "w") as tf:
        for i, path in enumerate(src.paths):
            data = changed(src.read_bytes(i), args.look, args.size, args.quality)
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    print(f"{args.out}: {len(src)} images, {args.look}")


if __name__ == "__main__":
    main()
