"""Groups of near copies among packed binary hashes: every pair within a Hamming radius, found exactly with
Faiss, and star groups over them (numpy in, numpy out; `duplicates` hands it the perceptual hashes).

The search runs over the distinct hashes, so a collection holding one picture 100,000 times costs one hash;
crop-box hashes (`phash.crop_hashes`) widen what "near" means without changing the grouping.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .codes import row_distances
from .hamming_range import QUERY_BLOCK, range_pairs


def pair_distances(hashes: np.ndarray, i: np.ndarray, j: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """Hamming distances between packed hashes i[k] and j[k] (j's in ``other``, where given), a 64-bit word at a
    time (as `codes.hamming_distances` counts, measured there 12-22x faster than byte by byte)."""
    a, b = np.ascontiguousarray(hashes[i]), np.ascontiguousarray((hashes if other is None else other)[j])
    return row_distances(a, b)  # O(pairs): no whole copy


def unique_neighbours(hashes: np.ndarray, radius: int, progress: bool = False, crops: np.ndarray | None = None,
                      method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """For distinct packed hashes, every other one within ``radius`` bits, itself included: (lims, labels), as
    Faiss gives them (row r's are labels[lims[r]:lims[r + 1]], in order). With ``crops`` ((n, K, bytes): each
    item's crop-box hashes, `phash.crop_hashes`), r and s are neighbours too when the whole hash of one is
    within the radius of a crop hash of the other (either way round: a copy cut to a box hashes like that box).

    Exact (`hamming_range.range_pairs`; ``method`` is its plan): a Faiss flat range search is O(n^2)
    popcounts, O(n^2 (K + 1)) with crops, measured on one core that a training run shared at 200,000 hashes in
    24 s (8e8 pairs a second; numpy's XOR and table popcount, timed in the same runs, 124-207x slower; a Faiss
    MultiHash index, 4 x 16 bits and 2 flips, 139 s). Past 2e8 pairs the pigeonhole's chunks compare
    about 1-7 % of them instead: 35x faster at a million hashes with 3 crop hashes each (docs/RESULTS.md,
    "Duplicates").
    """
    from tqdm import tqdm

    hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
    n, width = hashes.shape
    boxes = 0 if crops is None else crops.shape[1]
    items = hashes if not boxes else np.concatenate([hashes, np.ascontiguousarray(crops, np.uint8).reshape(-1, width)])
    with tqdm(desc="pairs", unit="step", disable=not progress or n * (boxes + 1) <= QUERY_BLOCK) as bar:
        def step(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        rows, found = range_pairs(hashes, items, radius, method, progress=step)
    labels = np.where(found < n, found, (found - n) // max(boxes, 1))  # a crop hash -> its item
    if boxes:
        pairs = np.unique(np.concatenate([rows * n + labels, labels * n + rows]))  # both ways round, once each
        rows, labels = pairs // n, pairs % n
    return np.searchsorted(rows, np.arange(n + 1)), labels


def star_groups(hashes: np.ndarray, radius: int, accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                progress: bool = False, crops: np.ndarray | None = None) -> list[np.ndarray]:
    """Groups of copies among packed hashes: each item in order that is in no group yet gathers every item in
    no group that is within ``radius`` bits of it (and that ``accept(firsts, others)`` passes, a boolean mask
    per pair); groups of one are left out.

    Not connected components: in a collection of look-alikes (clothes on black, products on white) the pairs
    chain, and the components of Fashion-MNIST at radius 4 put 516 images in one group, most far more than 4
    bits from its first. Here every image of a group is within the radius of the group's first, and the first
    images together with the images in no group are pairwise farther apart than the radius (for the pairs
    ``accept`` passes): keeping them and dropping the rest (`redundant_paths` with keep "first") leaves no two
    images within it (tested). The search runs over the distinct hashes, so a collection holding one picture
    100,000 times (a placeholder, blank frames) costs memory for its distinct hashes, not 5 x 10^9 pairs (tested).

    ``crops``: each item's crop-box hashes (n, K, bytes); "within the radius" is then by `unique_neighbours`'
    rule (the whole hash of one against the whole or a crop hash of the other).
    """
    n = len(hashes)
    if n == 0:
        return []
    rows = np.ascontiguousarray(hashes if crops is None else np.concatenate([hashes, crops.reshape(n, -1)], axis=1),
                                dtype=np.uint8)
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()  # items alike in every hash share a key
    _, first_of_key, key = np.unique(keys, return_index=True, return_inverse=True)
    key = key.ravel()
    lims, labels = unique_neighbours(hashes[first_of_key], radius, progress,
                                     None if crops is None else crops[first_of_key])
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
