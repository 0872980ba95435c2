"""Copies of the same photograph in one or more collections: re-encoded, resized, re-exposed or cropped copies.

Each image gets a 64-bit perceptual hash (the signs of the 8x8 lowest frequencies of the DCT of its
32x32 grey thumbnail, against their median: the classic pHash, `phash`) and a 256-bit one (16x16
frequencies), of the whole image and of the image cut to each crop box of ``crops``; Faiss
finds every pair of images within a Hamming radius of each other by the short hash, whole against whole or
whole against cut, the long one checks each pair in the same view (``fine_radius``), and each image not
yet in a group gathers the ones paired with it.

This is not `query --exclude-self`, which finds an item's nearest items by the learned codes: images of
the same class that look alike. The learned features are made to ignore what makes a photo that photo,
and the 48-bit codes put many different photos of a class at distance 0. Measured on the flowers test
photos with four edited copies of every fourth (docs/RESULTS.md, "Duplicates"): at the defaults, every
re-encoded (JPEG quality 40), resized (60 %) and brightened (+15 %) copy is found, with 1 false pair among
1,472 images; the pooled net features make 3-6x the false pairs at the same recall. A crop of 5 % per
side moves the whole hash by 10 bits (median): without crop boxes 16 % of random centred crops (2-15 % a
side) are found, with the default "centre" boxes 98 %, at the same false pairs and 4x the search
("Duplicates: crops"). Where every image is one object on a plain background (Fashion-MNIST) the hashes
cannot tell copies from look-alikes.

Decoding the images is most of a run; ``hashes_dir`` keeps their hashes (`dup_hashes`), so an interrupted run
resumes and a rerun with other settings decodes nothing.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .dup_hashes import PART, HashStore, Part
from .errors import HashindexError
from .files import atomic_path, atomic_write_bytes
from .hash_groups import pair_distances, star_groups
from .phash import BITS, FINE_BITS, FINE_BLOCK, THUMB, box_name, crop_boxes, crop_hashes, crop_spec, perceptual_hashes
from .runtime import check_workers

# Radius 8 of 64 bits: every re-encoded, resized and brightened copy was within 6 bits of its original, and one
# pair of distinct photos was within 8 (two shots of the same sunflower); radius 12 finds 90 % of all edited
# pairs, crops included, but with 15 false pairs among 1,472 photos (docs/RESULTS.md, "Duplicates").
DEFAULT_RADIUS = 8
# 64 of 256 bits: those copies were within 22 of their originals; the pairs within 8 short bits that were
# different photos, judged by eye, were 72 or more apart on CIFAR-10 (13 of 13) and 84 or more on the flowers
# photos (3 of 3), while 25 of 27 right pairs on flowers and 21 of 35 on CIFAR-10 were within 64.
DEFAULT_FINE_RADIUS = 64
# Crop boxes: "centre" finds centred crops of 2-15 % a side (98 % of them, against 16 % without) at no more
# false pairs, for a search about 4x as long (docs/RESULTS.md, "Duplicates: crops").
DEFAULT_CROPS = "centre"
# Which copy of a group is kept (`--redundant` lists the others): the widest view, then the most pixels, then
# bytes (`kept_member`), so a crop, a resized or a re-encoded copy is not kept over the original it came from.
KEEP = ("largest", "first")
DEFAULT_KEEP = "largest"
@dataclass
class Hashed:
    """The perceptual hashes of the readable images of some collections, with what identifies each image."""

    hashes: np.ndarray  # (n, 8) uint8: 64 bits, searched
    fine: np.ndarray  # (n, 32) uint8: 256 bits, checking
    crops: str  # the crop spec (`phash.crop_families`) whose boxes the crop hashes are of, canonical
    crop_hashes: np.ndarray  # (n, K, 8) uint8: the 64-bit hash of each image cut to each box
    crop_fine: np.ndarray  # (n, K, 32) uint8: the same in 256 bits
    collection: np.ndarray  # (n,) index into `names`
    positions: np.ndarray  # (n,) the item's position in its collection
    ids: np.ndarray  # (n,) the collection's item ids
    paths: list[str]
    names: list[str]  # each collection as the caller named it
    roots: list[Path | None]  # where each collection's paths start: a folder of image files, or a list's folder
    skipped: list[tuple[str, str, str]]  # (collection, path, reason)


def _thumbnails(source: Any, workers: int, start: int = 0, batch: int = 512
                ) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
    """(grey (n, 32, 32) uint8 thumbnails, their positions, [(position, reason)] of unreadable items), batch by
    batch from item ``start`` on. A prepared store holds the net's inputs at its own size: those are shrunk (a
    photo and its prepared copy then hash within a few bits); anything else is decoded by `iter_batches`'
    workers."""
    import torch

    from .data.loading import iter_batches
    from .data.prepared import PreparedSource

    if not isinstance(source, PreparedSource):
        for images, positions, bad in iter_batches(source, THUMB, 1, batch_size=batch, workers=workers, start=start):
            grey = images.numpy()[:, 0] if images is not None else np.zeros((0, THUMB, THUMB), np.uint8)
            yield grey, positions, bad
        return
    luma = torch.tensor([0.299, 0.587, 0.114] if source.channels == 3 else [1.0]).view(1, -1, 1, 1)
    for start in range(start, len(source), batch):
        positions = np.arange(start, min(start + batch, len(source)))
        arrays = torch.from_numpy(np.stack([source.read_array(int(i), source.size, source.channels)
                                            for i in positions]).astype(np.float32))
        grey = torch.nn.functional.interpolate((arrays * luma).sum(1, keepdim=True), size=(THUMB, THUMB),
                                               mode="bilinear", antialias=True, align_corners=False)
        yield grey[:, 0].round().clamp(0, 255).to(torch.uint8).numpy(), positions, []


def _source_parts(source: Any, name: str, workers: int, store: Any, progress: bool, crops: str) -> Iterator[Part]:
    """The hashes of every item of one source, part by part: those ``store`` (a `dup_hashes.HashStore`, or
    None) kept, then the rest decoded, each part kept as it is done."""
    from tqdm import tqdm

    kept = store.load() if store is not None else []
    yield from kept
    start = kept[-1].stop if kept else 0
    if start == len(source):
        return
    todo: list[tuple[np.ndarray, np.ndarray, list]] = []
    stop = start  # batches come in order, each item either decoded or unreadable
    with tqdm(total=len(source), initial=start, unit="img", desc=f"hash {Path(name).name or name}",
              disable=not progress) as bar:
        for grey, positions, bad in _thumbnails(source, workers, start):
            todo.append((grey, positions, bad))
            bar.update(len(positions) + len(bad))
            stop += len(positions) + len(bad)
            if stop - start >= PART or stop == len(source):
                part = _part(start, stop, todo, crops)
                if store is not None:
                    store.write(part)
                yield part
                start, todo = stop, []


def _part(start: int, stop: int, batches: list[tuple[np.ndarray, np.ndarray, list]], crops: str) -> Part:
    """Items [start, stop) hashed from their thumbnails, whole and cut to the boxes of ``crops``."""
    grey = np.concatenate([g for g, _, _ in batches]) if batches else np.zeros((0, THUMB, THUMB), np.uint8)
    positions = np.concatenate([p for _, p, _ in batches]).astype(np.int64) if batches else np.zeros(0, np.int64)
    return Part(start, stop, positions, perceptual_hashes(grey), perceptual_hashes(grey, FINE_BLOCK),
                [b for _, _, bad in batches for b in bad], crop_hashes(grey, crops),
                crop_hashes(grey, crops, FINE_BLOCK))


def hash_sources(sources: Sequence[Any], names: Sequence[str], workers: int = 2,
                 progress: bool = True, hashes_dir: str | Path | None = None, crops: str = "none") -> Hashed:
    """Decode every image of the sources (`ImageSource`s) into its grey thumbnail and hash it, whole and cut to
    the boxes of the crop spec ``crops`` (`phash.crop_families`: "none", or families as "centre,square").
    ``hashes_dir``: keep the hashes there and read back those kept by an earlier run (`dup_hashes`: a run
    resumes, a rerun with other radii decodes nothing)."""
    from .data import FolderSource, ListSource

    crops = crop_spec(crops)
    boxes = len(crop_boxes(crops))
    hashes, fine, crop_h, crop_f, coll, pos, ids, paths, skipped = [], [], [], [], [], [], [], [], []
    for c, (source, name) in enumerate(zip(sources, names)):
        source_ids = source.ids()
        store = HashStore(hashes_dir, source, crops) if hashes_dir is not None else None
        for part in _source_parts(source, name, workers, store, progress, crops):
            hashes.append(part.hashes)
            fine.append(part.fine)
            crop_h.append(part.crop_hashes)
            crop_f.append(part.crop_fine)
            coll.append(np.full(len(part.positions), c, np.int32))
            pos.append(part.positions)
            ids.append(source_ids[part.positions])
            paths += [source.paths[p] for p in part.positions]
            skipped += [(name, source.paths[p], reason) for p, reason in part.bad]
    join = (lambda parts, dtype, shape=(): np.concatenate(parts) if parts else np.zeros((0, *shape), dtype))
    roots = [s.root.resolve() if type(s) is FolderSource else s.base.resolve() if type(s) is ListSource else None
             for s in sources]
    return Hashed(join(hashes, np.uint8, (BITS // 8,)), join(fine, np.uint8, (FINE_BITS // 8,)), crops,
                  join(crop_h, np.uint8, (boxes, BITS // 8)), join(crop_f, np.uint8, (boxes, FINE_BITS // 8)),
                  join(coll, np.int32), join(pos, np.int64), join(ids, np.int64), paths, list(names), roots, skipped)


def view_distances(hashed: Hashed, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distances of pairs (i[k], j[k]) in every view, (m, V) each for the 64-bit and the 256-bit hashes,
    V = 1 + 2K for K crop boxes: whole against whole, then the whole of j against i cut to each box (j is a
    crop of i), then the whole of i against j cut to each box (`view_names`)."""
    coarse, fine = [pair_distances(hashed.hashes, i, j)], [pair_distances(hashed.fine, i, j)]
    for whole, cut in ((j, i), (i, j)):
        for k in range(hashed.crop_hashes.shape[1]):
            coarse.append(pair_distances(hashed.crop_hashes[:, k], cut, whole, hashed.hashes))
            fine.append(pair_distances(hashed.crop_fine[:, k], cut, whole, hashed.fine))
    return np.stack(coarse, axis=1), np.stack(fine, axis=1)


def view_names(crops: str) -> list[str]:
    """What each column of `view_distances` compares, as a group's rows say it (``match``)."""
    cuts = [box_name(b) for b in crop_boxes(crops)]
    return ["whole"] + [f"first cut {c}" for c in cuts] + [f"this cut {c}" for c in cuts]


def matching_view(coarse: np.ndarray, fine: np.ndarray, radius: int, fine_radius: int) -> np.ndarray:
    """Per pair, the view in which both hashes are within their radii, the nearest by the 256-bit hash (the
    whole image first among equals); -1 where there is none."""
    ok = (coarse <= radius) & (fine <= fine_radius)
    best = np.where(ok, fine, np.iinfo(np.int32).max).argmin(axis=1)
    return np.where(ok.any(axis=1), best, -1)


def group_rows(hashed: Hashed, groups: list[np.ndarray], radius: int = BITS, fine_radius: int = FINE_BITS,
               choose: Callable[[np.ndarray, np.ndarray], int] | None = None) -> list[list[dict[str, Any]]]:
    """Each group as rows: collection, id, path (as extraction records it), file (the image file, for a folder
    of image files; else ""), the Hamming distances of its 64-bit and 256-bit hashes to the group's first
    image's (``distance``, ``fine_distance``), the view they are of (``match``: "whole", or which of the
    two was cut to which crop box; the view within both radii nearest by the 256-bit hash), and ``keep``: the
    one image of the group to keep (``choose(group, views)``, a member index, e.g. `kept_member`; the first
    by default)."""
    names = view_names(hashed.crops)
    out = []
    for g in groups:
        coarse, fine = view_distances(hashed, np.full(len(g), g[0]), g)
        view = np.maximum(matching_view(coarse, fine, radius, fine_radius), 0)  # 0, whole, for the first itself
        rows = np.arange(len(g))
        keep = choose(g, view) if choose is not None else 0
        out.append([_row(hashed, p, d, f, names[v], k == keep) for k, (p, d, f, v) in
                    enumerate(zip(g.tolist(), coarse[rows, view].tolist(), fine[rows, view].tolist(), view.tolist()))])
    return out


def _row(hashed: Hashed, p: int, distance: int, fine: int, match: str, keep: bool) -> dict[str, Any]:
    root = hashed.roots[hashed.collection[p]]
    return {"collection": hashed.names[hashed.collection[p]], "id": int(hashed.ids[p]), "path": hashed.paths[p],
            "file": str(root / hashed.paths[p]) if root is not None else "", "distance": int(distance),
            "fine_distance": int(fine), "match": match, "keep": keep}


def image_size(source: Any, position: int) -> tuple[int, int]:
    """(pixels, bytes) of an item's file, from its header (the image is not decoded); (0, 0) where it has no file
    or no readable header (a prepared store's arrays, an item gone since it was hashed)."""
    from .data.images import BadImage, image_header

    try:
        data = source.read_bytes(position)
    except (BadImage, OSError, ValueError, NotImplementedError):
        return 0, 0
    head = image_header(data)
    return (head[1] * head[2], len(data)) if head else (0, 0)


def check_keep(keep: str) -> None:
    """A HashindexError naming the choices, for a ``keep`` that is not one of KEEP."""
    if keep not in KEEP:
        raise HashindexError(f"keep={keep!r}: expected one of {', '.join(KEEP)}")


def kept_member(hashed: Hashed, g: np.ndarray, view: np.ndarray, sources: Sequence[Any], keep: str) -> int:
    """Which member of group ``g`` (items of ``hashed``; ``view``, the view each matched its first in, as
    `group_rows` finds it) to keep of the copies: "first", the group's first image;
    "largest", the widest view of the scene (an image the first is a crop of, over the first and its whole
    copies, over the first's crops: by the view each matched in), then the most pixels, then the most bytes
    (the least compressed), then the earliest: the original over its crops, resized and re-encoded copies,
    whatever their order. Pixels alone would not do: in a collection shrunk to one size (the flowers photos,
    320 px a side) a crop has as many pixels as its original or more. Reads the headers of group members only."""
    check_keep(keep)
    if keep == "first":
        return 0
    boxes = hashed.crop_hashes.shape[1]
    extent = np.where(view == 0, 1, np.where(view <= boxes, 0, 2))  # whole; a crop of the first; holds it
    sizes = [image_size(sources[hashed.collection[p]], int(hashed.positions[p])) for p in g.tolist()]
    return max(range(len(g)), key=lambda k: (int(extent[k]), sizes[k], -k))


def find_duplicates(sources: Sequence[Any], names: Sequence[str] | None = None, *, radius: int = DEFAULT_RADIUS,
                    fine_radius: int = DEFAULT_FINE_RADIUS, crops: str = DEFAULT_CROPS, keep: str | None = None,
                    across: bool = False, workers: int = 2, hashes_dir: str | Path | None = None,
                    progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Groups of copies of the same photo among the images of ``sources`` (image sources, or specs as
    `hashindex.data.open_source` reads them): pairs within ``radius`` bits of a 64-bit perceptual hash and
    within ``fine_radius`` of a 256-bit one (256: no second check), both in one view of the pair: the whole
    images, or one whole and the other cut to a crop box of ``crops``: "none", or families of boxes joined by
    commas (`phash`): "centre" (the default: crops of 2-15 % a side, centred), "sides" (a strip off one edge),
    "square" (the centre square of a 4:3, 3:2 or 5:3 photo), "uneven" (0-10 % off each side, by a different
    amount on each), "corners" (3-20 % off two adjacent sides), e.g. "centre,square". ``keep``: which image of a
    group to keep, "largest" (the widest view, then the most pixels, then bytes: the original over its crops
    and smaller copies) or "first" (`kept_member`); the others are `redundant_paths`. By default "largest",
    and "first" with ``across``: the copies then listed are those of the later collections (a test set's).

    ``across``: only groups with images from more than one source (a test set's photos that are also in the
    training set). ``hashes_dir``: keep the images' hashes there, and read those an earlier run kept (a
    folder; `hash_sources`). Returns {"groups": [[{collection, id, path, file, distance, fine_distance, match,
    keep}, ...]], "images", "copies" (images beyond the first of each group), "skipped", "radius", "fine_radius",
    "crops", "keep", "seconds"}; each group starts with its first image in the order given, and every other image
    of it is paired with that one.
    """
    from .data import open_source

    if radius < 0 or radius >= BITS:
        raise HashindexError(f"radius={radius}: expected a distance from 0 to {BITS - 1} bits")
    if fine_radius < 0 or fine_radius > FINE_BITS:
        raise HashindexError(f"fine_radius={fine_radius}: expected a distance from 0 to {FINE_BITS} bits")
    crops = crop_spec(crops)  # a HashindexError naming the families, before any image is decoded
    keep = keep or ("first" if across else DEFAULT_KEEP)
    check_keep(keep)
    check_workers(workers)
    if not sources:
        raise HashindexError("sources: expected at least one collection of images")
    opened = [open_source(s, "data") if isinstance(s, (str, Path)) else s for s in sources]
    names = list(names) if names is not None else [str(s) if isinstance(s, (str, Path)) else
                                                    (getattr(s, "spec", None) or f"source {k}")
                                                    for k, s in enumerate(sources)]
    specs = [getattr(src, "spec", None) for src in opened]
    twice = next((names[k] for k, sp in enumerate(specs) if sp is not None and sp in specs[:k]), None)
    if twice is not None:  # every image would be its own copy
        raise HashindexError(f"data={twice}: the same collection as one before it; give each once")
    if across and len(opened) < 2:
        raise HashindexError("across=True: expected two collections or more (duplicates between them)")
    t0 = time.perf_counter()
    hashed = hash_sources(opened, names, workers, progress, hashes_dir, crops)

    def accept(firsts: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Both hashes within their radii in one view (the 256-bit check), for the pairs across collections when
        ``across`` (the cheap test first)."""
        ok = hashed.collection[firsts] != hashed.collection[others] if across else np.ones(len(others), bool)
        ok[ok] = matching_view(*view_distances(hashed, firsts[ok], others[ok]), radius, fine_radius) >= 0
        return ok

    crop_search = hashed.crop_hashes if hashed.crop_hashes.shape[1] else None
    members = star_groups(hashed.hashes, radius, accept, progress, crop_search)
    groups = group_rows(hashed, members, radius, fine_radius,
                        lambda g, view: kept_member(hashed, g, view, opened, keep))
    seconds = time.perf_counter() - t0
    copies = sum(len(g) - 1 for g in groups)
    log(f"{len(groups)} group(s) of copies among {len(hashed.hashes)} images ({copies} beyond the first of each "
        f"group; within {radius} bits of 64 and {fine_radius} of 256, crops {crops}"
        f"{', across collections' if across else ''}; "
        f"{len(hashed.skipped)} unreadable) in {seconds:.1f} s")
    return {"groups": groups, "images": int(len(hashed.hashes)), "copies": copies,
            "skipped": [list(s) for s in hashed.skipped], "radius": radius, "fine_radius": fine_radius,
            "crops": crops, "keep": keep, "seconds": round(seconds, 2)}


CSV_FIELDS = ("group", "collection", "id", "path", "file", "distance", "fine_distance", "match", "keep")


def write_groups_csv(path: str | Path, groups: list[list[dict[str, Any]]]) -> None:
    """The groups as CSV rows (group number from 1, then each image's fields), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for g, rows in enumerate(groups, 1):
                for r in rows:
                    w.writerow([g] + [int(r[k]) if k == "keep" else r[k] for k in CSV_FIELDS[1:]])


def redundant_paths(groups: list[list[dict[str, Any]]]) -> list[str]:
    """Every image of every group but the one it keeps (``keep``; the first, for rows without it): the copies
    one could delete, or take out of an index with `hashindex remove --paths-file` (its file where it has one,
    else its recorded path)."""
    return [r["file"] or r["path"] for rows in groups for k, r in enumerate(rows) if not r.get("keep", k == 0)]


def write_redundant(path: str | Path, groups: list[list[dict[str, Any]]]) -> None:
    """`redundant_paths` one per line, written atomically (the list `hashindex remove --paths-file` reads)."""
    atomic_write_bytes(path, "".join(p + "\n" for p in redundant_paths(groups)).encode("utf-8"))
