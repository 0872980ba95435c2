"""Perceptual hashes of grey thumbnails, of the whole image and of crop boxes in it (numpy only).

The classic pHash: the signs of the block x block lowest frequencies of the DCT of a 32x32 grey thumbnail,
against their median. It survives re-encoding, resizing and exposure changes, but not crops: cutting 5 % off
each side moves the 64-bit hash by 10 bits (median), 8 % by more than the search radius. So an image can also
be hashed as if cropped: a crop box resamples the thumbnail's region bilinearly before the DCT, and a copy cut
to about that box hashes like it (a 5 %-per-side crop against the box of the same cut: 0 bits, median).

A box covers cuts within about 3 % of its own per side (measured on the flowers photos, `tools/bench_duplicates.py`
and docs/RESULTS.md "Duplicates: crops"), so the families of boxes are spaced so: ``centre`` (three centred
cuts, 4, 8 and 12 % a side) finds centred crops of 2-15 % a side; ``sides`` (one side cut by 8 or 16 %) a
strip taken off one edge (a caption, a watermark, a border) of 3-20 %; ``square`` (left and right, or top and
bottom, cut by 1/8, 1/6 or 1/5 each) the centre square of a 4:3, 3:2 or 5:3 photo, landscape or portrait (the
thumbnail is squashed, so the photo's own aspect is not known: all six are hashed); ``uneven`` (each side cut by
2.5 or 7.5 %, the 16 combinations) a crop of 0-10 % off each side, by a different amount on each; ``corners``
(two adjacent sides cut by 7.5 or 15 % each, 16 boxes) a crop that keeps one corner of the photo, 3-20 % off
each of two sides. The last two were chosen after a greedy cover of random crops of the flowers photos over a
grid of 5,222 boxes (2.5 % steps; `tools/crop_box_cover.py`), then spaced evenly: 16 such boxes found more
than 12 greedy picks. A crop spec names families, ``"centre,square"``, or
``"none"``. Each box is one more hash to search against.
"""

from __future__ import annotations

import itertools

import numpy as np

from .errors import HashindexError

THUMB = 32  # side of the grey thumbnail the hash is taken from
BLOCK = 8  # the BLOCK x BLOCK lowest DCT frequencies: 64 bits, searched
BITS = BLOCK * BLOCK
FINE_BLOCK = 16  # 256 bits, which check each pair found
FINE_BITS = FINE_BLOCK * FINE_BLOCK

Box = tuple[float, float, float, float]  # the share of the image cut from its left, top, right and bottom


def _one_side(side: int, cut: float) -> Box:
    """The box that cuts ``cut`` off one side (0 left, 1 top, 2 right, 3 bottom)."""
    return tuple(cut if k == side else 0.0 for k in range(4))  # type: ignore[return-value]


def _two_sides(side: int, cut: float, next_cut: float) -> Box:
    """The box that cuts ``cut`` off one side and ``next_cut`` off the next one clockwise (a corner kept)."""
    return tuple(cut if k == side else next_cut if k == (side + 1) % 4 else 0.0 for k in range(4))  # type: ignore


CROP_FAMILIES: dict[str, tuple[Box, ...]] = {  # in the order their boxes are hashed, whatever a spec's order
    "centre": ((0.04,) * 4, (0.08,) * 4, (0.12,) * 4),
    "sides": tuple(_one_side(side, cut) for side in range(4) for cut in (0.08, 0.16)),
    "square": tuple((cut, 0.0, cut, 0.0) for cut in (1 / 8, 1 / 6, 1 / 5))
    + tuple((0.0, cut, 0.0, cut) for cut in (1 / 8, 1 / 6, 1 / 5)),
    "uneven": tuple(itertools.product((0.025, 0.075), repeat=4)),
    "corners": tuple(_two_sides(side, a, b) for side in range(4) for a in (0.075, 0.15) for b in (0.075, 0.15)),
}


def _dct_matrix(n: int = THUMB) -> np.ndarray:
    """The orthonormal DCT-II matrix (rows: frequencies)."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix()


def resample_matrix(cut_low: float, cut_high: float, n: int = THUMB) -> np.ndarray:
    """(n, n) matrix R with R @ row = the region [cut_low, 1 - cut_high] of a row of n pixels resampled to n,
    bilinearly, pixel centres to pixel centres (as torch's grid_sample with align_corners=False), edges clamped."""
    centres = (np.arange(n) + 0.5) / n
    x = (cut_low + centres * (1.0 - cut_low - cut_high)) * n - 0.5  # source coordinate of each output pixel
    x = np.clip(x, 0, n - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = x - lo
    r = np.zeros((n, n))
    np.add.at(r, (np.arange(n), lo), 1 - w)
    np.add.at(r, (np.arange(n), hi), w)
    return r


def perceptual_hashes(grey: np.ndarray, block: int = BLOCK, box: Box | None = None) -> np.ndarray:
    """(n, 32, 32) grey thumbnails -> (n, block * block / 8) uint8 packed hashes (64 bits by default), of the
    whole thumbnail or, given ``box``, of that crop of it (resampled to 32x32 first: the crop is folded into
    the DCT's matrices, so it costs the same).

    Bit (u, v) is set where the DCT coefficient of frequency (u, v) is above the median of the block x block
    lowest; the constant (u = v = 0) is one of them, as in the common pHash, so a flat image's bits are all
    but one clear.
    """
    if grey.ndim != 3 or grey.shape[1:] != (THUMB, THUMB):
        raise HashindexError(f"grey: expected (n, {THUMB}, {THUMB}) thumbnails, got shape {grey.shape}")
    left, right = _DCT[:block], _DCT[:block].T
    if box is not None:
        cut_left, cut_top, cut_right, cut_bottom = box
        left = left @ resample_matrix(cut_top, cut_bottom)
        right = resample_matrix(cut_left, cut_right).T @ right
    low = left @ grey.astype(np.float64) @ right  # (n, block, block)
    flat = low.reshape(len(grey), block * block)
    return np.packbits(flat > np.median(flat, axis=1, keepdims=True), axis=1)


def crop_hashes(grey: np.ndarray, crops: str, block: int = BLOCK) -> np.ndarray:
    """(n, K, block * block / 8) uint8: the hashes of the K boxes of crop spec ``crops`` (K = 0 for "none")."""
    boxes = crop_boxes(crops)
    if not boxes:
        return np.zeros((len(grey), 0, block * block // 8), np.uint8)
    return np.stack([perceptual_hashes(grey, block, b) for b in boxes], axis=1)


def crop_families(crops: str) -> list[str]:
    """The families a crop spec names ("centre,square" -> ["centre", "square"], "none" -> []), in their
    canonical order; a HashindexError naming the families for anything else."""
    names = [n.strip() for n in str(crops).split(",")]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in CROP_FAMILIES]
    if unknown or not names:
        raise HashindexError(f"crops={crops!r}: expected 'none' or families of crop boxes joined by commas, of "
                             f"{', '.join(CROP_FAMILIES)} (e.g. 'centre,square')")
    return [n for n in CROP_FAMILIES if n in names]


def crop_boxes(crops: str) -> tuple[Box, ...]:
    """The boxes of a crop spec, in their canonical order (`crop_families`)."""
    return tuple(box for name in crop_families(crops) for box in CROP_FAMILIES[name])


def crop_spec(crops: str) -> str:
    """A crop spec in its canonical form ("square,centre" -> "centre,square"; "none")."""
    return ",".join(crop_families(crops)) or "none"


def box_name(box: Box) -> str:
    """A box as a CSV reader would like to see it: 'centre 8%', 'left 16%', 'left and right 12.5%'."""
    pct = lambda c: f"{round(c * 100, 1):g}%"  # noqa: E731
    left, top, right, bottom = box
    if left == top == right == bottom:
        return f"centre {pct(left)}"
    if left == right and not top and not bottom:
        return f"left and right {pct(left)}"
    if top == bottom and not left and not right:
        return f"top and bottom {pct(top)}"
    return " ".join(f"{side} {pct(c)}" for side, c in zip(("left", "top", "right", "bottom"), box) if c)
