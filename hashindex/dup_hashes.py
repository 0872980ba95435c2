"""The perceptual hashes `hashindex duplicates --hashes DIR` keeps on disk (the only code that reads or writes them).

Decoding is most of a duplicates run (about 1,200 photos/s on 2 cores here: 14 minutes per million; the search
over the hashes takes seconds to minutes). Kept, the hashes let an interrupted run go on where it stopped, and a
rerun with another radius, or with the collection beside others, skip the decode. DIR holds one folder per
collection, named by what identifies it (its items' paths, labels and ids, its spec and the kind of source:
a prepared store's thumbnails differ a little from the photos'), so collections never mix and one whose list
changed is hashed again beside the old. A folder holds parts, each the hashes of a run of consecutive items,
written whole or not at all; numpy files read without pickle, so nothing in DIR can run code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NPZ_ERRORS, HashindexError
from .files import atomic_path, atomic_write_json, read_npz
from .phash import crop_boxes, crop_spec

FORMAT = "hashindex-phash64+256 v1"  # the hashes of `phash.perceptual_hashes`; another version, another key
PART = 8192  # items per part: about 7 s of decoding here, the most an interruption loses
INFO = "collection.json"


@dataclass
class Part:
    """The hashes of items [start, stop) of a collection: those decoded, and the unreadable ones."""

    start: int
    stop: int
    positions: np.ndarray  # (n,) int64, the readable items
    hashes: np.ndarray  # (n, 8) uint8
    fine: np.ndarray  # (n, 32) uint8
    bad: list[tuple[int, str]]  # (position, reason) of the unreadable items
    crop_hashes: np.ndarray  # (n, K, 8) uint8: each item cut to the K boxes of the store's crop spec
    crop_fine: np.ndarray  # (n, K, 32) uint8


class HashStore:
    """The kept hashes of one collection (an `ImageSource`) under ``root``, with those of its images cut to the
    crop boxes of the crop spec ``crops`` (`phash.crop_families`): other boxes, another folder (a run with
    "none" reads what a run before crop boxes kept)."""

    def __init__(self, root: str | Path, source: Any, crops: str = "none") -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise HashindexError(f"hashes_dir={root}: not a directory (expected a folder to keep the hashes in)")
        self.source, self.fingerprint = source, source.fingerprint()  # hashes every path: once
        self.crops, self.boxes = crop_spec(crops), len(crop_boxes(crops))
        key = "\n".join([FORMAT, self.fingerprint, str(getattr(source, "spec", None)), type(source).__name__]
                        + ([f"crops {crop_boxes(crops)}"] if self.boxes else []))
        self.dir = self.root / hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    def load(self) -> list[Part]:
        """The parts kept, in order, as far as they run on from item 0 without a gap (a part after a gap is
        written again when the run reaches it)."""
        parts, at = [], 0
        while (path := self._path(at)).exists():
            part = self._read(path)
            if part.start != at or not at < part.stop <= len(self.source):
                raise HashindexError(f"hashes_dir={path}: holds items {part.start}-{part.stop}, expected from {at} "
                                     f"in a collection of {len(self.source)}; move {self.dir} away and rerun")
            parts.append(part)
            at = part.stop
        return parts

    def write(self, part: Part) -> None:
        """Keep one part (atomically: a crash leaves it whole or absent)."""
        if not (self.dir / INFO).exists():
            atomic_write_json(self.dir / INFO, {"format": FORMAT, "spec": getattr(self.source, "spec", None),
                                                "fingerprint": self.fingerprint,
                                                "items": len(self.source), "crops": self.crops})
        bad_pos = np.array([p for p, _ in part.bad], np.int64)
        reasons = np.array([r for _, r in part.bad], dtype=str) if part.bad else np.zeros(0, "<U1")
        with atomic_path(self._path(part.start)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, range=np.array([part.start, part.stop], np.int64), positions=part.positions,
                         hashes=part.hashes, fine=part.fine, bad_positions=bad_pos, bad_reasons=reasons,
                         crop_hashes=part.crop_hashes, crop_fine=part.crop_fine)

    def _path(self, start: int) -> Path:
        return self.dir / f"part-{start:012d}.npz"

    def _read(self, path: Path) -> Part:
        try:
            z = read_npz(path, ("range", "positions", "hashes", "fine", "bad_positions", "bad_reasons"),
                         optional=("crop_hashes", "crop_fine"))
            start, stop = (int(v) for v in z["range"])
            n, k = len(z["positions"]), self.boxes
            no_crops = (np.zeros((n, 0, 8), np.uint8), np.zeros((n, 0, 32), np.uint8))  # kept before crop boxes
            crop_h, crop_f = (z["crop_hashes"], z["crop_fine"]) if "crop_hashes" in z else no_crops
            part = Part(start, stop, z["positions"].astype(np.int64), z["hashes"], z["fine"],
                        list(zip(z["bad_positions"].tolist(), z["bad_reasons"].tolist())), crop_h, crop_f)
        except NPZ_ERRORS as e:
            raise HashindexError(f"hashes_dir={path}: not a readable part of kept hashes ({e}); "
                                 "move it away and rerun") from None
        shapes = (part.hashes.shape, part.fine.shape, part.crop_hashes.shape, part.crop_fine.shape)
        arrays = (part.hashes, part.fine, part.crop_hashes, part.crop_fine)
        if shapes != ((n, 8), (n, 32), (n, k, 8), (n, k, 32)) or any(a.dtype != np.uint8 for a in arrays):
            raise HashindexError(f"hashes_dir={path}: holds hashes of shapes {shapes}, expected {n} items of 8 and "
                                 f"32 bytes with {k} crop boxes each; move it away and rerun")
        return part
