"""Prepared images: a collection decoded and resized once, stored as the net's uint8 input in HDF5.

Training decodes its whole collection into memory at the start of every run; for photographs that is the
slow part (a 4000-px JPEG costs ~50-100 ms to decode even with DCT scaling, the NIN step ~3 ms per 32-px
image here). ``hashindex prepare`` pays it once: every later ``train`` / ``extract`` with ``--data PREP_DIR``
reads the arrays at disk speed. The arrays are exactly what `to_array` gives the net (whole image squashed
to SIZE x SIZE, RGB or greyscale, bilinear), so training from the store equals training from the source.

``PREP_DIR/``: ``images.h5`` (``images`` (n, C, S, S) uint8 contiguous, ``labels`` int32 (and ``label_sets`` (n,
classes) uint8 for a multi-label collection), ``ids`` int64, ``paths`` UTF-8, ``skipped/{ids,paths,reasons}``) and
``prepared.json`` (what, from which source, counts, SHA-256 of images.h5). While it runs, rows are appended to raw
files (``.images.partial``, ``.positions.partial``) and ``.progress.json`` is rewritten atomically after every
batch: a rerun after kill -9 cuts the raw files back to what the progress file vouches for and goes on. (An HDF5
file written in place is not resumable: a writer killed with it open leaves it flagged "already open for write",
measured.) images.h5 is written from the raw rows in one pass, atomically, and checksummed (verified on read). """

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
from PIL import Image

from ..errors import HashindexError
from ..files import (TMP_SUFFIX, atomic_path, atomic_write_json, decode_name, encode_name, exclusive, read_json,
                     remember_verified, sha256_file, verify_files)
from ..hdf5 import create_h5, ensure_room, open_h5
from ..runtime import check_workers
from ..schema import Map, SchemaError, hex_digest, nonneg, positive, validate
from .images import BadImage, skip_summary
from .sources import ImageSource

FORMAT, FORMAT_VERSION = "hashindex-prepared", 1
META, IMAGES = "prepared.json", "images.h5"
RAW, POSITIONS, PROGRESS = ".images.partial", ".positions.partial", ".progress.json"  # while unfinished
OURS = (META, IMAGES, RAW, POSITIONS, PROGRESS, ".verified.json")
SCHEMA = {"format": str, "format_version": int, "size": positive, "channels": positive, "resize": str,
          "count": nonneg, "class_names": [str], "sha256": hex_digest, "skipped_by_reason": Map(nonneg),
          "source": {"description": str, "items": nonneg, "fingerprint": str}}


def _our_temp(name: str) -> bool:
    """A temp file of one of OURS (`files.atomic_path` writes '.NAME.XXXXXXXX.tmp' beside NAME); another
    program's temp files in a folder are not ours to delete."""
    return name.endswith(TMP_SUFFIX) and any(name.startswith(f".{ours}.") for ours in OURS)


def is_prepared(path: Path) -> bool:
    return (Path(path) / META).is_file()


def prepare(data: ImageSource, out: str | Path, size: int, channels: int | None = None, *,
            workers: int = 2, batch_size: int = 256, overwrite: bool = False, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Decode ``data`` once into PREP_DIR ``out`` at ``size`` px; resumes an interrupted run. Returns the meta."""
    out = Path(out)
    if size < 8 or size > 1024:
        raise HashindexError(f"size={size}: expected 8 to 1024 pixels")
    channels = channels or (1 if data.is_greyscale() else 3)
    if channels not in (1, 3):
        raise HashindexError(f"channels={channels}: expected 1 or 3")
    check_workers(workers)
    want = {"size": size, "channels": channels, "fingerprint": data.fingerprint()}
    with exclusive(out, f"out={out}: another prepare into it is running"):
        if out.exists() and not out.is_dir():
            raise HashindexError(f"out={out}: exists and is not a directory")
        if is_prepared(out) and not overwrite:
            meta = read_meta(out, "out")
            if {"size": meta["size"], "channels": meta["channels"], "fingerprint": meta["source"]["fingerprint"]} \
                    != want:
                if (meta["source"]["description"], meta["size"], meta["channels"]) == (data.description, size,
                                                                                      channels):
                    raise HashindexError(f"out={out}: holds {data.description} as it was ({meta['source']['items']:,} "
                                         f"items then, {len(data):,} now: its files changed since); overwrite=True "
                                         "prepares it again")
                raise HashindexError(f"out={out}: holds another preparation ({meta['source']['description']} at "
                                     f"{meta['size']} px); choose another out, or overwrite=True")
            log(f"{out}: already prepared ({meta['count']} images at {size} px); nothing to do")
            return meta
        if out.exists():
            for p in out.iterdir():  # what a kill -9 in the middle of an atomic write of ours left
                if _our_temp(p.name):
                    p.unlink(missing_ok=True)
        if out.exists() and any(p.name not in OURS for p in out.iterdir()):
            raise HashindexError(f"out={out}: folder holds other files; choose an empty or new folder")
        if overwrite:
            for name in OURS:
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        state = _resume(out, want)
        _decode_into(out, data, state, batch_size, workers, progress)
        return _finish(out, data, state, time.time() - t0, log)


def _resume(out: Path, want: dict[str, Any]) -> dict[str, Any]:
    """The progress of an interrupted run of the same preparation (its raw files cut back to what the
    progress file vouches for), or a fresh start."""
    item = want["channels"] * want["size"] ** 2
    try:
        state = read_json(out / PROGRESS)
        counts = [state["rows"], state["done"]] if isinstance(state, dict) else [None]
        ok = all(type(c) is int and c >= 0 for c in counts) and {k: state.get(k) for k in want} == want \
            and (out / RAW).stat().st_size >= state["rows"] * item \
            and (out / POSITIONS).stat().st_size >= state["rows"] * 8
    except (OSError, ValueError, KeyError, TypeError):  # unreadable or edited: a fresh start
        ok = False
    if not ok:
        state = {**want, "done": 0, "rows": 0, "skipped": []}
    for name, width in ((RAW, item), (POSITIONS, 8)):
        with open(out / name, "ab") as f:
            f.truncate(state["rows"] * width)
    return state


def _decode_into(out: Path, data: ImageSource, state: dict[str, Any], batch_size: int, workers: int,
                 progress: bool) -> None:
    """Decode the items not done yet, appending rows to the raw files; progress saved after every batch."""
    from tqdm import tqdm

    from .loading import iter_batches

    bar = tqdm(total=len(data), initial=state["done"], unit="img", desc=f"prepare {state['size']}px",
               disable=not progress)
    with open(out / RAW, "ab") as raw, open(out / POSITIONS, "ab") as pos_file:
        for images, positions, bad in iter_batches(data, state["size"], state["channels"], batch_size, workers,
                                                   start=state["done"]):
            if images is not None:
                raw.write(images.numpy().tobytes())
                pos_file.write(positions.astype(np.int64).tobytes())
            raw.flush()
            pos_file.flush()  # in the page cache before the progress file vouches for it (survives kill -9)
            state["skipped"] += [[int(p), r] for p, r in bad]
            state["rows"] += len(positions)
            state["done"] = max(int(positions.max(initial=-1)), max((p for p, _ in bad), default=-1)) + 1
            atomic_write_json(out / PROGRESS, state)
            bar.update(len(positions) + len(bad))
    bar.close()


def _finish(out: Path, data: ImageSource, state: dict[str, Any], seconds: float,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Write images.h5 from the raw rows (atomically), then prepared.json; remove the partial files."""
    size, channels, rows = state["size"], state["channels"], state["rows"]
    raw = np.memmap(out / RAW, np.uint8, "r", shape=(rows, channels, size, size)) if rows else \
        np.zeros((0, channels, size, size), np.uint8)
    positions = np.fromfile(out / POSITIONS, np.int64, count=rows)
    ensure_room(out / IMAGES, raw.nbytes + rows * (4 + 8 + 16) + sum(len(data.paths[p]) for p in positions))
    with atomic_path(out / IMAGES) as tmp:
        with create_h5(tmp, libver="latest") as f:
            f.create_dataset("images", data=raw)  # contiguous: memory-mappable, fast reads
            f.create_dataset("labels", data=data.labels[positions].astype(np.int32))
            if data.label_sets is not None:  # a multi-label collection's label sets (n, classes)
                f.create_dataset("label_sets", data=data.label_sets[positions].astype(np.uint8))
            f.create_dataset("ids", data=data.ids()[positions].astype(np.int64))
            f.create_dataset("paths", data=[encode_name(data.paths[p]) for p in positions],
                             dtype=h5py.string_dtype("utf-8"))
            g = f.create_group("skipped")
            skipped = state["skipped"]
            g.create_dataset("ids", data=np.array([data.ids()[p] for p, _ in skipped], np.int64))
            g.create_dataset("paths", data=[encode_name(data.paths[p]) for p, _ in skipped],
                             dtype=h5py.string_dtype("utf-8"))
            g.create_dataset("reasons", data=[r for _, r in skipped], dtype=h5py.string_dtype("utf-8"))
        digest = sha256_file(tmp)
    del raw
    reasons: dict[str, int] = {}
    for _, r in state["skipped"]:
        reasons[r] = reasons.get(r, 0) + 1
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "size": size, "channels": channels,
            "resize": "squash", "count": rows, "class_names": list(data.class_names), "sha256": digest,
            "skipped_by_reason": dict(sorted(reasons.items())),
            "source": {"description": data.description, "items": len(data), "fingerprint": data.fingerprint(),
                       "spec": data.spec}, "prepared": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prepare_s": round(seconds, 1), "greyscale": data.is_greyscale()}
    remember_verified(out, {IMAGES: digest})
    atomic_write_json(out / META, meta)
    for name in (RAW, POSITIONS, PROGRESS):
        (out / name).unlink(missing_ok=True)
    log(f"prepared {rows} images at {size} px into {out} ({len(data) / max(seconds, 1e-9):.0f} img/s); "
        + skip_summary(reasons))
    return meta


def read_meta(directory: Path, arg: str | None = "data", use_cache: bool = True) -> dict[str, Any]:
    """prepared.json, validated; then images.h5 checked against its SHA-256 (cached when unchanged, unless
    not ``use_cache``: `hashindex verify`). Errors name ``arg=directory`` (just the directory when ``arg`` is
    None: open_source adds its own)."""
    where = f"{arg}={directory}" if arg else str(directory)
    try:
        meta = read_json(directory / META)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise HashindexError(f"{where}: {META} is not a {FORMAT} v{FORMAT_VERSION} file")
        validate(meta, SCHEMA)
    except SchemaError as e:  # (a ValueError: first)
        raise HashindexError(f"{where}: {META}: {e} (see hashindex/data/prepared.py)") from None
    except (OSError, ValueError) as e:
        raise HashindexError(f"{where}: {META} unreadable ({e})") from None
    bad = verify_files(directory, {IMAGES: meta["sha256"]}, use_cache)
    if bad:
        raise HashindexError(f"{where}: {IMAGES} is not the file prepare wrote ({bad[0][1]}); "
                             "rerun hashindex prepare with --overwrite")
    return meta


class PreparedSource(ImageSource):
    """A prepared directory as a source: items are the stored arrays (skipped items are gone: counted once,
    at prepare). Ids, labels and paths are the original collection's."""

    def __init__(self, directory: str | Path, arg: str | None = None):
        self.dir = Path(directory)
        self.meta = read_meta(self.dir, arg)
        with open_h5(self.dir / IMAGES, arg, "rerun prepare with overwrite=True") as f:
            labels, self._ids = f["labels"][()], f["ids"][()]
            sets = f["label_sets"][()].astype(bool) if "label_sets" in f else None
            paths = [decode_name(p.decode() if isinstance(p, bytes) else p) for p in f["paths"][()]]
        self.size, self.channels = self.meta["size"], self.meta["channels"]
        self._images: np.ndarray | None = None
        super().__init__(f"prepared {self.dir} ({self.meta['source']['description']} at {self.size} px)", paths,
                         labels.astype(np.int32), list(self.meta["class_names"]),
                         greyscale=bool(self.meta.get("greyscale", self.channels == 1)), label_sets=sets)

    def ids(self) -> np.ndarray:
        return self._ids + self.id_offset

    def preloaded(self, size: int, channels: int) -> np.ndarray:
        """All images as one (n, C, S, S) uint8 array, read at disk speed (no decoding)."""
        self.check_size(size, channels)
        return np.array(self._mapped())

    def check_size(self, size: int, channels: int) -> None:
        if (size, channels) != (self.size, self.channels):
            raise HashindexError(f"data={self.dir}: prepared at {self.size} px x {self.channels} channel(s), "
                                 f"not {size} px x {channels}; prepare it again at that size")

    def read_array(self, i: int, size: int, channels: int) -> np.ndarray:
        self.check_size(size, channels)
        return np.array(self._mapped()[i])

    def _mapped(self) -> np.ndarray:
        """The images dataset memory-mapped (contiguous, uncompressed: numpy reads it at its file offset),
        opened once per process: item reads by extraction workers cost a page-cache copy, not an HDF5 open."""
        if self._images is None:
            with h5py.File(self.dir / IMAGES, "r") as f:
                ds = f["images"]
                offset, shape = ds.id.get_offset(), ds.shape
            self._images = np.zeros(shape, np.uint8) if offset is None else \
                np.memmap(self.dir / IMAGES, np.uint8, "r", offset=offset, shape=shape)
        return self._images

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = None  # worker processes map the file themselves
        return state

    def read(self, i: int, max_side: int | None = None) -> Image.Image:
        arr = self.read_array(i, self.size, self.channels)
        return Image.fromarray(arr[0] if self.channels == 1 else arr.transpose(1, 2, 0))

    def read_bytes(self, i: int) -> bytes:
        raise BadImage("unreadable", "a prepared image has no file bytes")
