"""How well `hashindex duplicates` finds copies of a photo, and how fast it pairs hashes.

Quality: every photo of a collection (default: the flowers test photos) is written to a temporary folder,
and every fourth also as four edited copies: JPEG quality 40, resized to 60 %, brightened by 15 %, cropped
by 5 % per side. For each radius (without, then with the 256-bit check) it prints the share of (original,
copy) pairs found per kind of edit and the precision of all pairs found (a pair of distinct photos is a
false one). With ``--model`` the same table for the net's pooled features (cosine thresholds set to reach
the same recall), the alternative a user has in `query --exclude-self`.

Crops (``--crops``): every fourth photo also as five crops, four at random (seeded by the photo): centred, 2-15 % a
side; one edge, 3-20 % off one side; each side, 0-10 % off each side independently; a corner, 3-20 % off each
of two adjacent sides; and its centre square. For each crop spec of `hashindex duplicates` in CROP_SPECS (or
those ``--crop-specs`` names, separated by spaces) a real `find_duplicates` run at the defaults: the
share of crops grouped with their original per kind, the images grouped with another photo, and the seconds
of the search (a second run, its hashes read back from ``--hashes``: no decoding); and the search alone on
random hashes with each spec's number of crop hashes, as a ratio to none in the same run.

Speed: `unique_neighbours` (its `auto` plan: the pigeonhole's chunks past 2e8 pairs, else a Faiss flat range
search, tools/bench_hamming_range.py; `star_groups` is it plus the grouping) against a
numpy baseline measured in the same run (XOR and a byte popcount table over the same pairs; past 20,000
hashes timed on the first 20,000 rows and scaled to n), on random 64-bit hashes with near copies; with
``--multihash``, a Faiss MultiHash index too.

    python tools/bench_duplicates.py                                  # flowers test photos, speed at n=20,000
    python tools/bench_duplicates.py --model nin-cifar10-48-v2 --json
    python tools/bench_duplicates.py --data ../shared/data/flowers/train.tar --speed-n 100000 --multihash
    python tools/bench_duplicates.py --crops --speed-n 50000
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from hashindex.data import open_source
from hashindex.duplicates import DEFAULT_FINE_RADIUS, find_duplicates, hash_sources
from hashindex.hash_groups import star_groups, unique_neighbours
from hashindex.phash import crop_boxes

EDITS = ("q40", "small", "bright", "crop")
RADII = (0, 2, 4, 6, 8, 10, 12, 14, 16)


def edited(img: Image.Image, kind: str) -> tuple[Image.Image, int]:
    """One edited copy of ``img`` and the JPEG quality to save it at."""
    w, h = img.size
    if kind == "q40":
        return img, 40
    if kind == "small":
        return img.resize((max(1, w * 3 // 5), max(1, h * 3 // 5)), Image.BILINEAR), 88
    if kind == "bright":
        return ImageEnhance.Brightness(img).enhance(1.15), 88
    return img.crop((w // 20, h // 20, w - w // 20, h - h // 20)), 88


def write_edited_set(data: str, out: Path, every: int = 4) -> None:
    """The photos of ``data`` into ``out/<class>/``, and edited copies (``NAME__KIND.jpg``) of every ``every``-th."""
    source = open_source(data)
    for i in range(len(source)):
        img = Image.open(io.BytesIO(source.read_bytes(i))).convert("RGB")
        folder = out / (source.class_names[source.labels[i]] if source.class_names else "all")
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{i:06d}"
        img.save(folder / f"{stem}.jpg", quality=88)
        if i % every == 0:
            for kind in EDITS:
                copy, quality = edited(img, kind)
                copy.save(folder / f"{stem}__{kind}.jpg", quality=quality)


CROP_KINDS = ("centred", "one edge", "each side", "square", "corner")
CROP_SPECS = ("none", "centre", "centre,sides", "centre,square", "centre,uneven", "centre,corners",
              "centre,sides,square")


def random_crops(img: Image.Image, seed: int) -> dict[str, Image.Image]:
    """The random crops of ``img`` (module docstring), the same for the same seed (the corner is drawn
    last, so the other kinds are the crops earlier runs measured)."""
    rng = np.random.default_rng(seed)
    w, h = img.size
    centred = rng.uniform(0.02, 0.15)
    edge = [0.0] * 4
    edge[rng.integers(4)] = rng.uniform(0.03, 0.20)
    side = min(w, h)
    cuts = {"centred": [centred] * 4, "one edge": edge, "each side": list(rng.uniform(0, 0.10, 4)),
            "square": [(w - side) / 2 / w, (h - side) / 2 / h] * 2}
    first = rng.integers(4)
    cuts["corner"] = [0.0] * 4
    cuts["corner"][first], cuts["corner"][(first + 1) % 4] = rng.uniform(0.03, 0.20, 2)
    return {k: img.crop((round(w * c[0]), round(h * c[1]), w - round(w * c[2]), h - round(h * c[3])))
            for k, c in cuts.items()}


def write_cropped_set(data: str, out: Path, every: int = 4) -> None:
    """The photos of ``data`` into ``out``, and the crops (``NAME__k.jpg``, k indexing CROP_KINDS) of every
    ``every``-th (a square photo's square crop is the photo: written all the same)."""
    source = open_source(data)
    out.mkdir(parents=True)
    for i in range(len(source)):
        img = Image.open(io.BytesIO(source.read_bytes(i))).convert("RGB")
        img.save(out / f"{i:06d}.jpg", quality=88)
        if i % every == 0:
            for k, copy in enumerate(random_crops(img, i).values()):
                copy.save(out / f"{i:06d}__{k}.jpg", quality=88)


def crop_study(data: str, tmp: Path, specs: tuple[str, ...] = CROP_SPECS) -> list[dict]:
    """Per crop spec: the share of each kind of crop grouped with its original, the images grouped with
    another photo, the groups, and the seconds of the search alone (module docstring)."""
    folder = tmp / "crops"
    write_cropped_set(data, folder)
    rows = []
    for crops in specs:
        quiet = {"crops": crops, "hashes_dir": tmp / "kept", "progress": False, "log": lambda line: None}
        find_duplicates([str(folder)], **quiet)  # hashes the photos once
        result = find_duplicates([str(folder)], **quiet)  # the search alone (and group rows)
        group_of = {r["path"]: g for g, rows_ in enumerate(result["groups"]) for r in rows_}
        row: dict = {"crops": crops, "boxes": len(crop_boxes(crops)), "groups": len(result["groups"]),
                     "search_s": result["seconds"]}
        for k, kind in enumerate(CROP_KINDS):
            copies = [p for p in group_of if p.endswith(f"__{k}.jpg")]
            total = sum(1 for p in folder.iterdir() if p.name.endswith(f"__{k}.jpg"))
            row[kind] = sum(group_of.get(p.split("__")[0] + ".jpg") == group_of[p] for p in copies) / total
        row["wrongly_grouped"] = sum(len(g) - int(np.unique([r["path"][:6] for r in g], return_counts=True)[1].max())
                                     for g in result["groups"])
        rows.append(row)
    return rows


def crop_speed(n: int, radius: int, specs: tuple[str, ...] = CROP_SPECS) -> list[dict]:
    """The search alone (`unique_neighbours`) on n random hashes with each spec's number of crop hashes
    (random too), as a ratio to the whole hashes alone, in the same run."""
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    out = []
    for crops in specs:
        boxes = crop_boxes(crops)
        cut = rng.integers(0, 256, (n, len(boxes), 8), dtype=np.uint8) if boxes else None
        t0 = time.perf_counter()
        unique_neighbours(hashes, radius, crops=cut)
        out.append({"crops": crops, "boxes": len(boxes), "seconds": round(time.perf_counter() - t0, 3)})
    for row in out:
        row["ratio"] = round(row["seconds"] / out[0]["seconds"], 2)
    return out


def pair_truth(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(same photo matrix, edit kind of each path, photo number of each path)."""
    photo = np.array([Path(p).stem.split("__")[0] for p in paths])
    kind = np.array([Path(p).stem.split("__")[1] if "__" in p else "orig" for p in paths])
    same = photo[:, None] == photo[None, :]
    np.fill_diagonal(same, False)
    return same, kind, photo


def quality_rows(score: np.ndarray, same: np.ndarray, kind: np.ndarray, cuts, larger_is_nearer: bool
                 ) -> list[dict]:
    """Per cut: recall per edit kind (against its original), recall over all same-photo pairs, precision."""
    upper = np.triu(np.ones_like(same), 1)
    rows = []
    for cut in cuts:
        found = (score >= cut) if larger_is_nearer else (score <= cut)
        found &= upper
        row = {"cut": float(cut)}
        for k in EDITS:
            pairs = same & ((kind[:, None] == k) & (kind[None, :] == "orig") |
                            (kind[:, None] == "orig") & (kind[None, :] == k)) & upper
            row[k] = float((found & pairs).sum() / max(1, pairs.sum()))
        tp, fp = int((found & same).sum()), int((found & ~same).sum())
        row.update(recall=tp / max(1, int((same & upper).sum())), precision=tp / max(1, tp + fp), false_pairs=fp)
        rows.append(row)
    return rows


def hamming_matrix(hashes: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(hashes, axis=1).astype(np.int16)
    return bits.shape[1] - ((2 * bits - 1) @ (2 * bits - 1).T + bits.shape[1]) // 2


def pooled_cosine(folder: Path, model: str, paths: list[str], work: Path) -> np.ndarray:
    """Cosine similarity of the model's pooled features of the images (extracted into ``work``)."""
    from hashindex.extraction import extract
    from hashindex.store import ShardSet

    extract(model, str(folder), work, progress=False, log=lambda line: None)
    rows = ShardSet(work).load(fields=("features", "paths"))
    x = rows["features"].astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = {p: k for k, p in enumerate(rows["paths"])}
    x = x[[order[p] for p in paths]]
    return x @ x.T


def popcount_baseline(hashes: np.ndarray, radius: int, rows: int, block: int = 512) -> int:
    """Pairs (i < j, i < ``rows``) within ``radius`` by numpy (XOR and a byte popcount table): the speed
    baseline, over the first ``rows`` hashes against all (its time grows with ``rows``, as the search's with n)."""
    table = np.array([bin(b).count("1") for b in range(256)], np.uint8)
    found = 0
    for s in range(0, rows, block):
        d = table[hashes[s:min(s + block, rows), None, :] ^ hashes[None, :, :]].sum(axis=2, dtype=np.int32)
        found += int(np.triu(d <= radius, s + 1).sum())
    return found


def multihash_pairs(hashes: np.ndarray, radius: int) -> int:
    """Pairs within ``radius`` by a Faiss MultiHash index: 4 tables of 16 bits, each probed with up to
    radius // 4 flipped bits (exact by the pigeonhole principle)."""
    import faiss

    index = faiss.IndexBinaryMultiHash(64, 4, 16)
    index.nflip = radius // 4
    index.add(hashes)
    lims, _, _ = index.range_search(hashes, radius + 1)
    return int((lims[-1] - len(hashes)) // 2)


def speed(n: int, radius: int, multihash: bool = False) -> dict:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    hashes[1::50] = hashes[::50][:len(hashes[1::50])]
    hashes[1::50, 0] ^= rng.integers(1, 8, len(hashes[1::50]), dtype=np.uint8)  # 1 to 3 bits flipped
    assert len(np.unique(hashes, axis=0)) == n  # near copies (1 to 3 bits), so every hash is distinct
    t0 = time.perf_counter()
    lims, _ = unique_neighbours(hashes, radius)
    faiss_s = time.perf_counter() - t0
    pairs = int(lims[-1] - n) // 2
    t0 = time.perf_counter()
    groups = star_groups(hashes, radius)
    group_s = time.perf_counter() - t0
    rows = min(n, 20_000)  # numpy over all n would take hours at 200,000: timed on these rows, scaled to n
    t0 = time.perf_counter()
    base = popcount_baseline(hashes, radius, rows)
    base_s = (time.perf_counter() - t0) * n / rows
    assert rows < n or base == pairs, (base, pairs)
    out = {"n": n, "radius": radius, "pairs": pairs, "groups": len(groups), "faiss_s": round(faiss_s, 3),
           "star_groups_s": round(group_s, 3), "numpy_s": round(base_s, 3), "speedup": round(base_s / faiss_s, 1),
           "pairs_per_s": round(n * (n - 1) / 2 / faiss_s)}
    if multihash:
        t0 = time.perf_counter()
        assert multihash_pairs(hashes, radius) == pairs
        out["multihash_s"] = round(time.perf_counter() - t0, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/flowers/test.tar", help="photos to copy and edit")
    ap.add_argument("--model", default=None, help="also measure this model's pooled features (cosine)")
    ap.add_argument("--speed-n", type=int, default=20_000, help="random hashes for the speed comparison")
    ap.add_argument("--multihash", action="store_true", help="also time a Faiss MultiHash index (exact, slower)")
    ap.add_argument("--crops", action="store_true", help="also measure the crop specs (module docstring)")
    ap.add_argument("--crop-specs", nargs="+", default=CROP_SPECS, metavar="SPEC",
                    help="with --crops: these specs only ('none' is always measured first, the baseline)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_duplicates.") as tmp:
        folder = Path(tmp) / "photos"
        write_edited_set(args.data, folder)
        hashed = hash_sources([open_source(str(folder))], [str(folder)], progress=False)
        same, kind, _ = pair_truth(hashed.paths)
        out["images"] = len(hashed.paths)
        short = hamming_matrix(hashed.hashes)
        out["phash"] = quality_rows(short, same, kind, RADII, larger_is_nearer=False)
        checked = np.where(hamming_matrix(hashed.fine) <= DEFAULT_FINE_RADIUS, short, 999)  # as find_duplicates
        out["phash_checked"] = quality_rows(checked, same, kind, RADII, larger_is_nearer=False)
        if args.model:
            cos = pooled_cosine(folder, args.model, hashed.paths, Path(tmp) / "shards")
            upper = np.triu(same, 1)
            cuts = [float(np.quantile(cos[upper], 1 - r["recall"])) for r in out["phash"] if 0 < r["recall"] < 1]
            out["pooled"] = quality_rows(cos, same, kind, cuts, larger_is_nearer=True)
        if args.crops:
            specs = ("none", *(c for c in args.crop_specs if c != "none"))
            out["crops"] = crop_study(args.data, Path(tmp), specs)
            out["crop_speed"] = crop_speed(args.speed_n, 8, specs)
    out["speed"] = speed(args.speed_n, 8, args.multihash)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['images']} images; recall per edit (against its original), recall over all copy pairs, precision")
    for name, unit in (("phash", "radius"), ("phash_checked", f"radius, 256-bit <= {DEFAULT_FINE_RADIUS}"),
                       ("pooled", "cosine >=")):
        if name not in out:
            continue
        print(f"\n{name} ({unit})\t" + "\t".join(EDITS) + "\trecall\tprecision\tfalse pairs")
        for r in out[name]:
            print(f"{r['cut']:.4g}\t" + "\t".join(f"{r[k]:.3f}" for k in EDITS) +
                  f"\t{r['recall']:.3f}\t{r['precision']:.3f}\t{r['false_pairs']}")
    if "crops" in out:
        print("\ncrops\tboxes\t" + "\t".join(CROP_KINDS) + "\twrongly grouped\tgroups\tsearch s")
        for r in out["crops"]:
            print(f"{r['crops']}\t{r['boxes']}\t" + "\t".join(f"{r[k]:.3f}" for k in CROP_KINDS) +
                  f"\t{r['wrongly_grouped']}\t{r['groups']}\t{r['search_s']}")
        print(f"search alone, {args.speed_n:,} random hashes: " + ", ".join(
            f"{r['crops']} {r['seconds']} s ({r['ratio']}x)" for r in out["crop_speed"]))
    s = out["speed"]
    print(f"\npairs within {s['radius']} bits among {s['n']:,} hashes: Faiss {s['faiss_s']} s "
          f"(star_groups, grouping included: {s['star_groups_s']} s), numpy {s['numpy_s']} s "
          f"({s['speedup']}x; {s['pairs_per_s']:,} pairs/s)" +
          (f"; a MultiHash index {s['multihash_s']} s" if "multihash_s" in s else ""))


if __name__ == "__main__":
    main()
