"""Copies of the same photograph in one or more collections: re-encoded, resized or re-exposed copies.

Each image gets a 64-bit perceptual hash (the signs of the 8x8 lowest frequencies of the DCT of its
32x32 grey thumbnail, against their median: the classic pHash) and a 256-bit one (16x16 frequencies);
Faiss finds every pair of images within a Hamming radius of each other by the short hash, the long one
checks each pair (``fine_radius``), and each image not yet in a group gathers the ones paired with it.

This is not `query --exclude-self`, which finds an item's nearest items by the learned codes: images of
the same class that look alike. The learned features are made to ignore what makes a photo that photo,
and the 48-bit codes put many different photos of a class at distance 0. Measured on the flowers test
photos with four edited copies of every fourth (docs/RESULTS.md, "Duplicates"): at the defaults, every
re-encoded (JPEG quality 40), resized (60 %) and brightened (+15 %) copy is found, with 1 false pair among
1,472 images; the pooled net features make 3-6x the false pairs at the same recall. A crop of 5 % per
side moves the short hash by 10 bits (median), so crops are found only in part. Where every image is one
object on a plain background (Fashion-MNIST) the hashes cannot tell copies from look-alikes.

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
from .codes import code_words

THUMB = 32  # side of the grey thumbnail the hash is taken from
BLOCK = 8  # the BLOCK x BLOCK lowest DCT frequencies: 64 bits, searched
BITS = BLOCK * BLOCK
FINE_BLOCK = 16  # 256 bits, which check each pair found
FINE_BITS = FINE_BLOCK * FINE_BLOCK
# Radius 8 of 64 bits: every re-encoded, resized and brightened copy was within 6 bits of its original, and one
# pair of distinct photos was within 8 (two shots of the same sunflower); radius 12 finds 90 % of all edited
# pairs, crops included, but with 15 false pairs among 1,472 photos (docs/RESULTS.md, "Duplicates").
DEFAULT_RADIUS = 8
# 64 of 256 bits: those copies were within 22 of their originals; the pairs within 8 short bits that were
# different photos, judged by eye, were 72 or more apart on CIFAR-10 (13 of 13) and 84 or more on the flowers
# photos (3 of 3), while 25 of 27 right pairs on flowers and 21 of 35 on CIFAR-10 were within 64.
DEFAULT_FINE_RADIUS = 64
QUERY_BLOCK = 16_384  # hashes searched at once: bounds the memory of one range search


def _dct_matrix(n: int = THUMB) -> np.ndarray:
    """The orthonormal DCT-II matrix (rows: frequencies)."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix()


def perceptual_hashes(grey: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """(n, 32, 32) grey thumbnails -> (n, block * block / 8) uint8 packed hashes (64 bits by default).

    Bit (u, v) is set where the DCT coefficient of frequency (u, v) is above the median of the block x block
    lowest; the constant (u = v = 0) is one of them, as in the common pHash, so a flat image's bits are all
    but one clear.
    """
    if grey.ndim != 3 or grey.shape[1:] != (THUMB, THUMB):
        raise HashindexError(f"grey: expected (n, {THUMB}, {THUMB}) thumbnails, got shape {grey.shape}")
    low = _DCT[:block] @ grey.astype(np.float64) @ _DCT[:block].T  # (n, block, block)
    flat = low.reshape(len(grey), block * block)
    return np.packbits(flat > np.median(flat, axis=1, keepdims=True), axis=1)


def pair_distances(hashes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Hamming distances between packed hashes i[k] and j[k], a 64-bit word at a time (as
    `codes.hamming_distances` counts, measured there 12-22x faster than byte by byte)."""
    words = code_words(hashes)
    return np.bitwise_count(words[i] ^ words[j]).sum(axis=1, dtype=np.int32)


def unique_neighbours(hashes: np.ndarray, radius: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For distinct packed hashes, every other one within ``radius`` bits, itself included: (lims, labels), as
    Faiss gives them (row r's are labels[lims[r]:lims[r + 1]]).

    Exact (a Faiss flat range search, block by block of queries): O(n^2) popcounts. Measured on one core
    that a training run shared: 200,000 hashes in 24 s (8e8 pairs a second; numpy's XOR and table popcount,
    timed in the same runs, 124-207x slower); a Faiss MultiHash index (4 x 16 bits, 2 flips: exact at radius
    8) took 139 s for the same pairs, enumerating its flips (docs/RESULTS.md, "Duplicates").
    """
    import faiss
    from tqdm import tqdm

    if radius < 0:
        raise HashindexError(f"radius={radius}: expected a distance of 0 bits or more")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
    index = faiss.IndexBinaryFlat(hashes.shape[1] * 8)
    index.add(hashes)
    counts, labels = [np.zeros(1, np.int64)], []
    for start in tqdm(range(0, len(hashes), QUERY_BLOCK), desc="pairs", unit="block",
                      disable=not progress or len(hashes) <= QUERY_BLOCK):
        lims, _, found = index.range_search(hashes[start:start + QUERY_BLOCK], radius + 1)  # Faiss: below radius
        counts.append(np.diff(lims).astype(np.int64))
        labels.append(found.astype(np.int64))
    return np.cumsum(np.concatenate(counts)), (np.concatenate(labels) if labels else np.zeros(0, np.int64))


def star_groups(hashes: np.ndarray, radius: int, accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                progress: bool = False) -> list[np.ndarray]:
    """Groups of copies among packed hashes: each item in order that is in no group yet gathers every item in
    no group that is within ``radius`` bits of it (and that ``accept(firsts, others)`` passes, a boolean mask
    per pair); groups of one are left out.

    Not connected components: in a collection of look-alikes (clothes on black, products on white) the pairs
    chain, and the components of Fashion-MNIST at radius 4 put 516 images in one group, most far more than 4
    bits from its first. Here every image of a group is within the radius of the group's first, and the first
    images together with the images in no group are pairwise farther apart than the radius (for the pairs
    ``accept`` passes): keeping them and dropping the rest (`redundant_paths`) leaves no two images within it
    (tested). The search runs over the distinct hashes, so a collection holding one picture 100,000 times
    (a placeholder, blank frames) costs memory for its distinct hashes, not 5 x 10^9 pairs (tested).
    """
    n = len(hashes)
    if n == 0:
        return []
    keys = np.ascontiguousarray(hashes, dtype=np.uint8).view(np.dtype((np.void, hashes.shape[1]))).ravel()
    _, first_of_key, key = np.unique(keys, return_index=True, return_inverse=True)
    key = key.ravel()
    lims, labels = unique_neighbours(hashes[first_of_key], radius, progress)
    by_key = np.argsort(key, kind="stable")  # items of key k: by_key[starts[k]:starts[k + 1]], in order
    starts = np.searchsorted(key[by_key], np.arange(len(first_of_key) + 1))
    alone = (np.diff(lims) == 1) & (np.diff(starts) == 1)  # a hash no other item is near
    taken = np.zeros(n, bool)
    groups = []
    for first in np.flatnonzero(~alone[key]).tolist():
        if taken[first]:
            continue
        near = labels[lims[key[first]]:lims[key[first] + 1]]
        others = np.concatenate([by_key[starts[k]:starts[k + 1]] for k in near.tolist()])
        others = others[~taken[others] & (others != first)]
        if len(others) and accept is not None:
            others = others[accept(np.full(len(others), first), others)]
        if len(others):
            taken[first] = True
            taken[others] = True
            groups.append(np.concatenate([[first], np.sort(others)]))
    return groups


@dataclass
class Hashed:
    """The perceptual hashes of the readable images of some collections, with what identifies each image."""

    hashes: np.ndarray  # (n, 8) uint8: 64 bits, searched
    fine: np.ndarray  # (n, 32) uint8: 256 bits, checking
    collection: np.ndarray  # (n,) index into `names`
    ids: np.ndarray  # (n,) the collection's item ids
    paths: list[str]
    names: list[str]  # each collection as the caller named it
    roots: list[Path | None]  # each collection's folder, where it is a plain folder of image files
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


def _source_parts(source: Any, name: str, workers: int, store: Any, progress: bool) -> Iterator[Part]:
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
                part = _part(start, stop, todo)
                if store is not None:
                    store.write(part)
                yield part
                start, todo = stop, []


def _part(start: int, stop: int, batches: list[tuple[np.ndarray, np.ndarray, list]]) -> Part:
    """Items [start, stop) hashed from their thumbnails, batch by batch."""
    grey = np.concatenate([g for g, _, _ in batches]) if batches else np.zeros((0, THUMB, THUMB), np.uint8)
    positions = np.concatenate([p for _, p, _ in batches]).astype(np.int64) if batches else np.zeros(0, np.int64)
    return Part(start, stop, positions, perceptual_hashes(grey), perceptual_hashes(grey, FINE_BLOCK),
                [b for _, _, bad in batches for b in bad])


def hash_sources(sources: Sequence[Any], names: Sequence[str], workers: int = 2,
                 progress: bool = True, hashes_dir: str | Path | None = None) -> Hashed:
    """Decode every image of the sources (`ImageSource`s) into its grey thumbnail and hash it. ``hashes_dir``:
    keep the hashes there and read back those kept by an earlier run (`dup_hashes`: a run resumes, a rerun
    with other settings decodes nothing)."""
    from .data import FolderSource

    hashes, fine, coll, ids, paths, skipped = [], [], [], [], [], []
    for c, (source, name) in enumerate(zip(sources, names)):
        source_ids = source.ids()
        store = HashStore(hashes_dir, source) if hashes_dir is not None else None
        for part in _source_parts(source, name, workers, store, progress):
            hashes.append(part.hashes)
            fine.append(part.fine)
            coll.append(np.full(len(part.positions), c, np.int32))
            ids.append(source_ids[part.positions])
            paths += [source.paths[p] for p in part.positions]
            skipped += [(name, source.paths[p], reason) for p, reason in part.bad]
    join = (lambda parts, dtype, width=None: np.concatenate(parts) if parts else
            np.zeros((0, width) if width else 0, dtype))
    roots = [s.root.resolve() if type(s) is FolderSource else None for s in sources]
    return Hashed(join(hashes, np.uint8, BITS // 8), join(fine, np.uint8, FINE_BITS // 8), join(coll, np.int32),
                  join(ids, np.int64), paths, list(names), roots, skipped)


def group_rows(hashed: Hashed, groups: list[np.ndarray]) -> list[list[dict[str, Any]]]:
    """Each group as rows: collection, id, path (as extraction records it), file (the image file, for a folder
    of image files; else ""), and the Hamming distances of its 64-bit and 256-bit hashes to the group's first
    image's (``distance``, ``fine_distance``)."""
    out = []
    for g in groups:
        first = np.full(len(g), g[0])
        dist, fine = pair_distances(hashed.hashes, first, g), pair_distances(hashed.fine, first, g)
        out.append([_row(hashed, p, d, f) for p, d, f in zip(g.tolist(), dist.tolist(), fine.tolist())])
    return out


def _row(hashed: Hashed, p: int, distance: int, fine: int) -> dict[str, Any]:
    root = hashed.roots[hashed.collection[p]]
    return {"collection": hashed.names[hashed.collection[p]], "id": int(hashed.ids[p]), "path": hashed.paths[p],
            "file": str(root / hashed.paths[p]) if root is not None else "", "distance": int(distance),
            "fine_distance": int(fine)}


def find_duplicates(sources: Sequence[Any], names: Sequence[str] | None = None, *, radius: int = DEFAULT_RADIUS,
                    fine_radius: int = DEFAULT_FINE_RADIUS, across: bool = False, workers: int = 2,
                    hashes_dir: str | Path | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Groups of copies of the same photo among the images of ``sources`` (image sources, or specs as
    `hashindex.data.open_source` reads them): pairs within ``radius`` bits of a 64-bit perceptual hash and
    within ``fine_radius`` of a 256-bit one (256: no second check).

    ``across``: only groups with images from more than one source (a test set's photos that are also in the
    training set). ``hashes_dir``: keep the images' hashes there, and read those an earlier run kept (a
    folder; `hash_sources`). Returns {"groups": [[{collection, id, path, file, distance, fine_distance}, ...]],
    "images", "copies" (images beyond the first of each group), "skipped", "radius", "fine_radius", "seconds"}; each
    group starts with its first image in the order given, and every other image of it is paired with that one.
    """
    from .data import open_source

    if radius < 0 or radius >= BITS:
        raise HashindexError(f"radius={radius}: expected a distance from 0 to {BITS - 1} bits")
    if fine_radius < 0 or fine_radius > FINE_BITS:
        raise HashindexError(f"fine_radius={fine_radius}: expected a distance from 0 to {FINE_BITS} bits")
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
    hashed = hash_sources(opened, names, workers, progress, hashes_dir)

    def accept(firsts: np.ndarray, others: np.ndarray) -> np.ndarray:
        """The 256-bit check, for the pairs across collections when ``across`` (the cheap test first)."""
        ok = hashed.collection[firsts] != hashed.collection[others] if across else np.ones(len(others), bool)
        ok[ok] = pair_distances(hashed.fine, firsts[ok], others[ok]) <= fine_radius
        return ok

    groups = group_rows(hashed, star_groups(hashed.hashes, radius, accept, progress))
    seconds = time.perf_counter() - t0
    copies = sum(len(g) - 1 for g in groups)
    log(f"{len(groups)} group(s) of copies among {len(hashed.hashes)} images ({copies} beyond the first of each "
        f"group; within {radius} bits of 64 and {fine_radius} of 256{' across collections' if across else ''}; "
        f"{len(hashed.skipped)} unreadable) in {seconds:.1f} s")
    return {"groups": groups, "images": int(len(hashed.hashes)), "copies": copies,
            "skipped": [list(s) for s in hashed.skipped], "radius": radius, "fine_radius": fine_radius,
            "seconds": round(seconds, 2)}


CSV_FIELDS = ("group", "collection", "id", "path", "file", "distance", "fine_distance")


def write_groups_csv(path: str | Path, groups: list[list[dict[str, Any]]]) -> None:
    """The groups as CSV rows (group number from 1, then each image's fields), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for g, rows in enumerate(groups, 1):
                for r in rows:
                    w.writerow([g] + [r[k] for k in CSV_FIELDS[1:]])


def redundant_paths(groups: list[list[dict[str, Any]]]) -> list[str]:
    """Every image of every group but its first: the copies one could delete, or take out of an index with
    `hashindex remove --paths-file` (its file where it has one, else its recorded path)."""
    return [r["file"] or r["path"] for rows in groups for r in rows[1:]]


def write_redundant(path: str | Path, groups: list[list[dict[str, Any]]]) -> None:
    """`redundant_paths` one per line, written atomically (the list `hashindex remove --paths-file` reads)."""
    atomic_write_bytes(path, "".join(p + "\n" for p in redundant_paths(groups)).encode("utf-8"))
