"""Perceptual hashes of grey thumbnails, of the whole image and of crop boxes in it (numpy only).

The classic pHash: the signs of the block x block lowest frequencies of the DCT of a 32x32 grey thumbnail,
against their median. It survives re-encoding, resizing and exposure changes, but not crops: cutting 5 % off
each side moves the 64-bit hash by 10 bits (median), 8 % by more than the search radius. So an image can also
be hashed as if cropped: a crop box resamples the thumbnail's region bilinearly before the DCT, and a copy cut
to about that box hashes like it (a 5 %-per-side crop against the box of the same cut: 0 bits, median).

A box covers cuts within about 3 % of its own per side (measured on the flowers photos, `tools/bench_duplicates.py`
and docs/RESULTS.md "Duplicates: crops"), so the presets are spaced so: ``centre`` (three centred cuts, 4, 8
and 12 % a side) finds centred crops of 2-15 % a side; ``sides`` adds one side cut by 8 or 16 %, for a strip
taken off one edge (a caption, a watermark, a border) of 3-20 %. Each box is one more hash to search against.
"""

from __future__ import annotations

import numpy as np

from .errors import HashindexError

THUMB = 32  # side of the grey thumbnail the hash is taken from
BLOCK = 8  # the BLOCK x BLOCK lowest DCT frequencies: 64 bits, searched
BITS = BLOCK * BLOCK
FINE_BLOCK = 16  # 256 bits, which check each pair found
FINE_BITS = FINE_BLOCK * FINE_BLOCK

Box = tuple[float, float, float, float]  # the share of the image cut from its left, top, right and bottom
_CENTRE: tuple[Box, ...] = ((0.04,) * 4, (0.08,) * 4, (0.12,) * 4)
_SIDES: tuple[Box, ...] = tuple(tuple(cut if k == side else 0.0 for k in range(4))  # type: ignore[misc]
                                for side in range(4) for cut in (0.08, 0.16))
CROP_BOXES: dict[str, tuple[Box, ...]] = {"none": (), "centre": _CENTRE, "sides": _CENTRE + _SIDES}


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
    """(n, K, block * block / 8) uint8: the hashes of the K boxes of preset ``crops`` (K = 0 for "none")."""
    boxes = crop_boxes(crops)
    if not boxes:
        return np.zeros((len(grey), 0, block * block // 8), np.uint8)
    return np.stack([perceptual_hashes(grey, block, b) for b in boxes], axis=1)


def crop_boxes(crops: str) -> tuple[Box, ...]:
    """The boxes of a preset, or a HashindexError naming the presets."""
    if crops not in CROP_BOXES:
        raise HashindexError(f"crops={crops!r}: expected one of {', '.join(CROP_BOXES)}")
    return CROP_BOXES[crops]


def box_name(box: Box) -> str:
    """A box as a CSV reader would like to see it: 'centre 8%', 'left 16%'."""
    cuts = [c for c in box if c]
    if len(cuts) == 4 and len(set(box)) == 1:
        return f"centre {round(box[0] * 100)}%"
    return " ".join(f"{side} {round(c * 100)}%" for side, c in zip(("left", "top", "right", "bottom"), box) if c)
