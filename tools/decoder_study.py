#!/usr/bin/env python
"""How far a photo's code moves when its pixels are prepared by another reader than extraction's.

A client that encodes with the exported model (`hashindex export`; a phone, a browser) decodes and resizes the
photo itself. Each reader below makes the net's input of every photo of --data; the model (float32, so only the
pixels differ) encodes them; against extraction's reading: code bits differing per image, images whose code
differs, and with --index the top 10 a search of the index returns (ids in common, lists the same).

    extraction   hashindex's own (JPEG decoded at reduced scale, EXIF rotation, Pillow's bilinear squash)
    full         the whole JPEG decoded, then the same bilinear squash (a decoder without DCT scaling)
    lanczos      the whole JPEG decoded, then a Lanczos squash (another resampling filter)
    box          the whole JPEG decoded, then box (area-average) filtering (as OpenCV's INTER_AREA)

    python tools/decoder_study.py --data ../shared/data/flowers/test.tar [--index INDEX_DIR] [--json]

--database DATA also reads a labelled database every way and scores --data's photos against it, both read by
the same reader (an index and its queries read alike): Hamming mAP@all, and with the mid signal's re-ranking
(cosine of the mid features, a pool of 1,000) mAP@all and precision@10. Whether one reader makes better codes.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
from PIL import Image, ImageOps

from hashindex import load_model
from hashindex.data import net_array, open_source

READERS = {"full": Image.BILINEAR, "lanczos": Image.LANCZOS, "box": Image.BOX}


def other_reader(data: bytes, side: int, channels: int, resample: int) -> np.ndarray:
    """The net's input as a client without JPEG draft decoding would make it, squashed with ``resample``."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    img = img.convert("L" if channels == 1 else "RGB").resize((side, side), resample)
    arr = np.asarray(img, np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def reader_arrays(raw: list[bytes], side: int, channels: int, name: str) -> np.ndarray:
    """Every photo read by reader ``name`` ("extraction" or one of `READERS`)."""
    if name == "extraction":
        return np.stack([net_array(d, side, channels) for d in raw])
    return np.stack([other_reader(d, side, channels, READERS[name]) for d in raw])


def scores(model, q: dict[str, np.ndarray], q_labels, database: np.ndarray, db_labels) -> dict[str, float]:
    """Hamming mAP@all, and mAP@all and P@10 re-ranked by the mid feature's cosine (a pool of 1,000), of queries
    already encoded (``q``: `encode_fields`) against the database's images."""
    from hashindex.metrics import evaluate_arrays

    d = model.encode_fields(database)
    mid_q, mid_d = (f["mid_features"] / np.linalg.norm(f["mid_features"], axis=1, keepdims=True) for f in (q, d))
    m = evaluate_arrays(q["codes"], q_labels, d["codes"], db_labels, model.bits, candidates=1000,
                        rerank=lambda sl, pos: ((mid_q[sl][:, None, :] - mid_d[pos]) ** 2).sum(-1))
    return {"hamming_map": m["hamming"]["map"], "mid_map": m["reranked"]["map"],
            "mid_p@10": m["precision_at_k_reranked"][9]}


def top10(index, fields: dict[str, np.ndarray]) -> list[list[int]]:
    """The ids of each encoded image's top 10 in the index, as the service ranks an upload (own item aside)."""
    from hashindex.query import search_vectors

    codes, feats = index.search_inputs(fields)
    rows = search_vectors(index, codes, index.query_vectors(feats).astype(np.float32),
                          [str(i) for i in range(len(codes))], k=10)
    return [[r["id"] for r in row["results"]] for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="nin-cifar10-48-v4")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--index", default=None, help="an index of --model's codes: compare top-10 lists too")
    ap.add_argument("--database", default=None, help="labelled photos: score --data against them, per reader")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    model = load_model(args.model, bf16=False)
    side, channels = model.input_size, model.channels
    src = open_source(args.data).subset(args.limit)
    raw = [src.read_bytes(i) for i in range(len(src))]
    arrays = {name: reader_arrays(raw, side, channels, name) for name in ("extraction", *READERS)}
    fields = {name: model.encode_fields(a) for name, a in arrays.items()}  # each reader's images encoded once
    codes = {name: f["codes"] for name, f in fields.items()}
    index = None
    if args.index:
        from hashindex import Index

        index = Index.load(args.index)
        if index.model_id != model.model_id:
            raise SystemExit(f"--index {args.index}: holds codes of model {index.model_id}, not {model.model_id}")
        ref_top = top10(index, fields["extraction"])
    res = {"data": args.data, "images": len(raw), "model_id": model.model_id, "readers": {}}
    for name in READERS:
        bits = np.unpackbits(codes[name] ^ codes["extraction"], axis=1, count=model.bits, bitorder="little").sum(1)
        pixels = np.abs(arrays[name].astype(np.int16) - arrays["extraction"]).mean()
        entry = {"mean_pixel_diff": float(pixels), "bits_per_image": float(bits.mean()), "most_bits": int(bits.max()),
                 "images_differing": float((bits > 0).mean())}
        if index is not None:
            other = top10(index, fields[name])
            entry["top10_in_common"] = float(np.mean([len(set(a) & set(b)) for a, b in zip(other, ref_top)]))
            entry["top10_same"] = float(np.mean([a == b for a, b in zip(other, ref_top)]))
        res["readers"][name] = entry
    if args.database:
        db = open_source(args.database)
        db_raw = [db.read_bytes(i) for i in range(len(db))]
        res["retrieval"] = {name: scores(model, fields[name], src.labels, reader_arrays(db_raw, side, channels, name),
                                         db.labels) for name in ("extraction", *READERS)}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{len(raw)} images of {args.data}, model {model.model_id} (float32), against extraction's reading")
    for name, e in res["readers"].items():
        top = (f"; top 10: {e['top10_in_common']:.2f} ids in common, {e['top10_same']:.1%} the same"
               if "top10_in_common" in e else "")
        print(f"{name:10}: pixels {e['mean_pixel_diff']:.2f} apart (of 255), {e['bits_per_image']:.2f} bits differ "
              f"per image (most {e['most_bits']}), {e['images_differing']:.1%} of images{top}")
    for name, r in res.get("retrieval", {}).items():
        print(f"{name:10}: queries and database read alike: Hamming mAP@all {r['hamming_map']:.4f}, re-ranked by "
              f"mid {r['mid_map']:.4f}, P@10 {r['mid_p@10']:.4f}")


if __name__ == "__main__":
    main()
