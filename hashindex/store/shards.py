"""Shard files (``shard-NNNNN.h5``: codes, features, mid features, ids, labels, label sets, input digests, paths,
skips) and the directory that lists them (`ShardSet`, read through its manifest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import HashindexError
from ..files import atomic_path, encode_name, read_json, sha256_file, verify_files
from ..hdf5 import create_h5, ensure_room, open_h5
from .manifest import FORMAT, FORMAT_VERSION, HEAD_FILE, MANIFEST, manifest_problem, shard_name

FIELDS = ("codes", "features", "ids", "labels", "paths", "label_sets", "mid_features", "input_digests")


@dataclass
class ShardData:
    """The rows of one shard, plus the items of its range that were skipped."""

    codes: np.ndarray  # (n, code_bytes) uint8
    features: np.ndarray | None  # (n, d) float16/float32
    ids: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) int32
    paths: list[str]
    skipped: list[tuple[int, str, str]]  # (id, path, reason)
    label_sets: np.ndarray | None = None  # (n, classes) bool: a multi-label collection's label sets
    mid_features: np.ndarray | None = None  # (n, 192) as features: block 2's output averaged (signal "mid")
    input_digests: np.ndarray | None = None  # (n,) uint64 `codes.input_digests`: which items are the same pixels

    def __len__(self) -> int:
        return len(self.ids)


def write_shard(path: Path, data: ShardData, attrs: dict[str, Any]) -> str:
    """Write one shard atomically; returns its SHA-256."""
    arrays = (data.codes, data.features, data.mid_features, data.ids, data.labels, data.label_sets,
              data.input_digests)
    ensure_room(path, sum(a.nbytes for a in arrays if a is not None) + sum(len(p) + 16 for p in data.paths))
    with atomic_path(path) as tmp:
        with create_h5(tmp, libver="latest") as f:
            f.create_dataset("codes", data=data.codes)
            if data.features is not None:
                f.create_dataset("features", data=data.features)
            if data.mid_features is not None:
                f.create_dataset("mid_features", data=data.mid_features)
            f.create_dataset("ids", data=data.ids.astype(np.int64))
            f.create_dataset("labels", data=data.labels.astype(np.int32))
            if data.label_sets is not None:
                f.create_dataset("label_sets", data=data.label_sets.astype(np.uint8))
            if data.input_digests is not None:
                f.create_dataset("input_digests", data=data.input_digests.astype(np.uint64))
            f.create_dataset("paths", data=[encode_name(p) for p in data.paths], dtype=h5py.string_dtype("utf-8"))
            sk = f.create_group("skipped")
            sk.create_dataset("ids", data=np.array([s[0] for s in data.skipped], np.int64))
            sk.create_dataset("paths", data=[encode_name(s[1]) for s in data.skipped],
                              dtype=h5py.string_dtype("utf-8"))
            sk.create_dataset("reasons", data=[s[2] for s in data.skipped], dtype=h5py.string_dtype("utf-8"))
            for key, value in attrs.items():
                f.attrs[key] = value
        digest = sha256_file(tmp)
    return digest


def open_shard(path: Path) -> h5py.File:
    """One shard, open for reading; a file h5py cannot read (cut short) is one line naming it."""
    return open_h5(path, "shard_dir", "rerun extract with overwrite=True to redo it")


def read_shard(path: Path, fields: tuple[str, ...] = FIELDS) -> dict[str, Any]:
    """Load the named fields of one shard into memory (paths as a list of str, as `files.encode_name` stored
    them: the file's name unless it was not valid UTF-8 or held a backslash)."""
    out: dict[str, Any] = {}
    with open_shard(path) as f:
        for name in fields:
            if name not in f:
                out[name] = None
            elif name == "paths":
                out[name] = [p.decode("utf-8") if isinstance(p, bytes) else p for p in f[name][()]]
            else:
                out[name] = f[name][()].astype(bool) if name == "label_sets" else f[name][()]
    return out


def targets(rows: dict[str, Any]) -> np.ndarray:
    """What relevance is judged on in rows read from shards or an index table: their label sets (N, C) bool
    when the collection is multi-label, else their labels."""
    sets = rows.get("label_sets")
    return sets.astype(bool) if sets is not None else rows["labels"]


def memmap_dataset(path: Path, name: str) -> np.ndarray:
    """A read-only numpy memmap of a contiguous, uncompressed dataset in a shard."""
    with open_shard(path) as f:
        ds = f[name]
        offset, shape, dtype = ds.id.get_offset(), ds.shape, ds.dtype
    if offset is None:  # empty or not contiguous: fall back to reading it
        return read_shard(path, (name,))[name]
    return np.memmap(path, mode="r", dtype=dtype, shape=shape, offset=offset)


class ShardSet:
    """A complete (or partly complete) shard directory, read through its manifest."""

    def __init__(self, directory: str | Path, arg: str = "shard_dir", require_complete: bool = True):
        self.dir = Path(directory)
        mpath = self.dir / MANIFEST
        if self.dir.is_file():
            raise HashindexError(f"{arg}={self.dir}: a file; expected a shard directory (hashindex extract writes one)")
        if not self.dir.is_dir():
            raise HashindexError(f"{arg}={self.dir}: no such directory")
        if not mpath.exists():
            raise HashindexError(f"{arg}={self.dir}: not a shard directory (no {MANIFEST}; run hashindex extract)")
        try:
            self.manifest = read_json(mpath)
        except (OSError, ValueError) as e:
            raise HashindexError(f"{arg}={mpath}: unreadable manifest ({e})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT \
                or self.manifest.get("format_version") != FORMAT_VERSION:
            raise HashindexError(f"{arg}={mpath}: not a {FORMAT} v{FORMAT_VERSION} manifest")
        problem = manifest_problem(self.manifest)
        if problem:
            raise HashindexError(f"{arg}={mpath}: {problem} (see docs/FORMAT.md; rerun extract with overwrite=True "
                                 "to redo it)")
        if require_complete and not self.manifest.get("complete"):
            done, total = len(self.manifest["shards"]), self.manifest["shards_planned"]
            raise HashindexError(f"{arg}={self.dir}: extraction unfinished ({done}/{total} shards); "
                                 "rerun the same hashindex extract command to finish it")
        if require_complete:  # verified on read: what a later stage reads is what extraction wrote
            self.check(arg)

    @classmethod
    def from_manifest(cls, directory: str | Path, manifest: dict[str, Any]) -> "ShardSet":
        """A ShardSet over an in-memory manifest (used while extraction writes it)."""
        shards = cls.__new__(cls)
        shards.dir, shards.manifest = Path(directory), manifest
        return shards

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def bits(self) -> int:
        return self.manifest["bits"]

    @property
    def class_names(self) -> list[str]:
        return self.manifest.get("class_names", [])

    @property
    def multi_label(self) -> bool:
        """Whether the shards hold label sets (a multi-label collection: NUS-WIDE, MS-COCO)."""
        return bool(self.manifest.get("multi_label", False))

    @property
    def has_mid(self) -> bool:
        """Whether every shard holds mid features (extracted with features, by a version that stores them)."""
        return self.manifest.get("mid_feature_dim", 0) > 0

    @property
    def label_fields(self) -> tuple[str, ...]:
        """The fields relevance is judged on (`targets`)."""
        return ("labels", "label_sets") if self.multi_label else ("labels",)

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def shard_paths(self) -> list[Path]:
        return [self.dir / s["file"] for s in self.manifest["shards"]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for path in self.shard_paths():
            yield read_shard(path)

    def load(self, fields: tuple[str, ...] = ("codes", "features", "ids", "labels")) -> dict[str, Any]:
        """All shards' fields concatenated in id order (paths as one list). Input digests of shards extracted
        before they were stored are 0 ("not known"), also beside shards that hold them (an extraction resumed
        by a later version); any other field held by some shards and not others is refused in one line, since
        concatenating what there is would shift its rows against the ids."""
        paths = self.shard_paths()
        parts = [read_shard(p, fields) for p in paths]
        out: dict[str, Any] = {}
        for name in fields:
            if name == "input_digests" and any(p[name] is not None for p in parts):
                for p, s in zip(parts, self.manifest["shards"]):
                    p[name] = np.zeros(s["rows"], np.uint64) if p[name] is None else p[name]
            held = [p[name] is not None for p in parts]
            if any(held) and not all(held):
                raise HashindexError(f"shard_dir={paths[held.index(False)]}: no {name!r}, which other shards "
                                     "of this directory hold; rerun extract with overwrite=True to redo it")
            values = [p[name] for p in parts if p[name] is not None]
            if name == "paths":
                out[name] = [x for v in values for x in v]
            elif values:
                out[name] = np.concatenate(values)
            else:
                out[name] = None
        return out

    def iter_rows(self, fields: tuple[str, ...] = FIELDS) -> Iterator[dict[str, Any]]:
        """Each shard's fields in turn (one shard in memory at a time), in position order."""
        for path in self.shard_paths():
            yield read_shard(path, fields)

    def sample_rows(self, fields: tuple[str, ...], n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The same up to n rows of several fields, drawn evenly from all shards, in position order."""
        take = rng.choice(self.rows, size=min(n, self.rows), replace=False)
        return self.rows_at(take, fields)

    def rows_at(self, positions: np.ndarray, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Fields of the rows at ``positions`` (any order, no repeats), returned in position order."""
        take = np.sort(np.asarray(positions, dtype=np.int64))
        bounds = np.cumsum([0] + [s["rows"] for s in self.manifest["shards"]])
        out: dict[str, list[np.ndarray]] = {name: [] for name in fields}
        for j, path in enumerate(self.shard_paths()):
            sel = take[(take >= bounds[j]) & (take < bounds[j + 1])] - bounds[j]
            if len(sel):
                with open_shard(path) as f:
                    for name in fields:
                        out[name].append(f[name][sel])
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def rows_between(self, lo: int, hi: int, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Fields of the rows at positions [lo, hi) (row order across shards), reading only the shards
        that hold them (a worker building one part of an index)."""
        out: dict[str, list[np.ndarray]] = {name: [] for name in fields}
        start = 0
        for s, path in zip(self.manifest["shards"], self.shard_paths()):
            a, b = max(lo, start), min(hi, start + s["rows"])
            if a < b:
                with open_shard(path) as f:
                    for name in fields:
                        out[name].append(f[name][a - start:b - start])
            start += s["rows"]
        return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in out.items()}

    def memmap(self, name: str) -> list[np.ndarray]:
        """Per-shard read-only memmaps of ``codes`` or ``features``."""
        return [memmap_dataset(p, name) for p in self.shard_paths()]

    def checksums(self) -> dict[str, str]:
        """The SHA-256 of every shard file, as the manifest records them."""
        return {s["file"]: s["sha256"] for s in self.manifest["shards"]}

    def check(self, arg: str = "shard_dir", use_cache: bool = True) -> None:
        """A one-line error naming the first shard whose bytes are not those extraction wrote."""
        bad = verify_files(self.dir, self.checksums(), use_cache)
        if bad:
            (name, what), more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise HashindexError(f"{arg}={self.dir}: {name} is not the shard extraction wrote ({what}){more}; "
                                 "rerun the same hashindex extract command to redo it")
        for s, path in zip(self.manifest["shards"], self.shard_paths()):  # a row count edited in the manifest
            with open_shard(path) as f:
                n = f["ids"].shape[0]
            if n != s["rows"]:
                raise HashindexError(f"{arg}={self.dir / MANIFEST}: says {s['file']} holds {s['rows']} rows, "
                                     f"it holds {n}; rerun extract with overwrite=True to redo it")

    def verify(self) -> list[str]:
        """Names of shards whose SHA-256 differs from the manifest (or that are missing)."""
        bad = []
        for s in self.manifest["shards"]:
            p = self.dir / s["file"]
            if not p.exists() or sha256_file(p) != s["sha256"]:
                bad.append(s["file"])
        return bad

    def head(self):
        """The model's head saved beside the shards (a signals.Head), or None for older shard directories."""
        from ..signals import Head

        return Head.load(self.dir / HEAD_FILE) if (self.dir / HEAD_FILE).exists() else None

    def skipped(self) -> list[tuple[int, str, str]]:
        out = []
        for path in self.shard_paths():
            with open_shard(path) as f:
                g = f["skipped"]
                for i, p, r in zip(g["ids"][()], g["paths"][()], g["reasons"][()]):
                    out.append((int(i), p.decode() if isinstance(p, bytes) else p,
                                r.decode() if isinstance(r, bytes) else r))
        return out


def write_head(directory: Path, head) -> None:
    """Save the model's head (a signals.Head) beside the shards, atomically."""
    with atomic_path(Path(directory) / HEAD_FILE) as tmp:
        head.save(tmp)


def shard_entry(j: int, data: ShardData, start: int, stop: int, sha256: str) -> dict[str, Any]:
    """Shard j's manifest entry: its rows, its range [start, stop) of the source, its ids, skips by reason."""
    reasons: dict[str, int] = {}
    for _, _, r in data.skipped:
        reasons[r] = reasons.get(r, 0) + 1
    return {"index": j, "file": shard_name(j), "rows": len(data), "start": start, "stop": stop,
            "id_min": int(data.ids.min()) if len(data) else None,
            "id_max": int(data.ids.max()) if len(data) else None,
            "skipped_by_reason": reasons, "sha256": sha256}
