"""`hashindex build`: Faiss indexes over a shard directory.

Two Faiss indexes, both addressed by *position* (row order of the shards):
  * a binary index for coarse Hamming search: IndexBinaryFlat, IndexBinaryIVF,
    IndexBinaryHNSW or IndexBinaryMultiHash;
  * a float re-rank store over the shards' features: IndexFlatL2, or
    IndexScalarQuantizer (fp16 / 8-bit) or IndexPQ to save memory.
A table (``table.h5``) maps positions to the stable ids, labels, paths and
unpadded codes, so results come back as the shards' ids.

Codes are zero-padded to the nearest code size Faiss has a fast Hamming
kernel for (4, 8, 16, 20, 32, 64 bytes): zero bits change no distance, and
a 6-byte (48-bit) flat search is several times slower than an 8-byte one.

INDEX_DIR is built in a temp folder beside it and renamed into place, so a
directory named INDEX_DIR is always complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import faiss
import h5py
import numpy as np
from tqdm import tqdm

from .errors import HashindexError
from .files import atomic_write_json, read_json, sha256_file
from .store import MANIFEST, ShardSet

FORMAT = "hashindex-index"
FORMAT_VERSION = 1
INDEX_JSON = "index.json"
BINARY_FILE = "binary.faiss"
RERANK_FILE = "rerank.faiss"
TABLE_FILE = "table.h5"
FAST_CODE_BYTES = (4, 8, 16, 20, 32, 64)
BINARY_KINDS = ("flat", "ivf", "hnsw", "multihash")
RERANK_KINDS = ("flat", "fp16", "sq8", "pq", "none")


def padded_bytes(code_bytes: int) -> int:
    """Smallest Faiss fast-path code size holding ``code_bytes`` (multiples of 8 past 64)."""
    for size in FAST_CODE_BYTES:
        if size >= code_bytes:
            return size
    return -(-code_bytes // 8) * 8


def pad_codes(codes: np.ndarray, nbytes: int) -> np.ndarray:
    """Append zero bytes to each code (no Hamming distance changes)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.shape[1] == nbytes:
        return codes
    out = np.zeros((len(codes), nbytes), np.uint8)
    out[:, : codes.shape[1]] = codes
    return out


def default_params(kind: str, n: int, bits: int) -> dict[str, Any]:
    """Default parameters per binary index kind, scaled with the database size."""
    if kind == "ivf":
        nlist = int(min(max(4 * math.sqrt(n), 1), max(n // 39, 1), 65536))
        return {"nlist": nlist, "nprobe": max(1, min(nlist, int(math.ceil(nlist / 16))))}
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 80, "efSearch": 128}
    if kind == "multihash":
        b = 16 if bits >= 32 else max(4, bits // 2)
        return {"nhash": max(1, bits // b), "b": b, "nflip": 1}
    return {}


def make_binary_index(kind: str, dim: int, params: dict[str, Any]) -> faiss.IndexBinary:
    """A new, empty binary index of ``dim`` (padded) bits."""
    if kind == "flat":
        return faiss.IndexBinaryFlat(dim)
    if kind == "ivf":
        quantizer = faiss.IndexBinaryFlat(dim)
        index = faiss.IndexBinaryIVF(quantizer, dim, params["nlist"])
        quantizer.this.disown()  # the IVF index owns and frees its quantizer
        index.own_fields = True
        index.nprobe = params["nprobe"]
        return index
    if kind == "hnsw":
        index = faiss.IndexBinaryHNSW(dim, params["M"])
        index.hnsw.efConstruction = params["efConstruction"]
        index.hnsw.efSearch = params["efSearch"]
        return index
    if kind == "multihash":
        index = faiss.IndexBinaryMultiHash(dim, params["nhash"], params["b"])
        index.nflip = params["nflip"]
        return index
    raise HashindexError(f"--binary {kind}: expected one of {', '.join(BINARY_KINDS)}")


class BinaryShards:
    """Binary indexes over consecutive position ranges, searched as one.

    Each shard answers for its own rows; results are shifted to global
    positions and merged exactly (top-k by (distance, position)), so S shards
    return what one index over all rows returns. The same fan-out works with
    one shard per process or machine.
    """

    def __init__(self, parts: list, starts: list[int], sizes: list[int] | None = None):
        self.parts, self.starts = parts, [int(s) for s in starts]
        self.sizes = [int(n) for n in sizes] if sizes is not None else [int(p.ntotal) for p in parts]

    @property
    def ntotal(self) -> int:
        return sum(self.sizes)

    def _each(self, method: str, args: list[tuple]) -> list:
        """``part.method(*args[s])`` for every shard s; a subclass may run them in parallel elsewhere."""
        return [getattr(part, method)(*a) for part, a in zip(self.parts, args)]

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dists, poss = [], []
        got = self._each("search", [(x, max(1, min(k, n))) for n in self.sizes])
        for (d, i), start in zip(got, self.starts):
            poss.append(np.where(i < 0, -1, i + start))
            dists.append(d)
        d, pos = np.concatenate(dists, 1).astype(np.int64), np.concatenate(poss, 1)
        key = np.where(pos < 0, np.iinfo(np.int64).max, d * (self.ntotal + 1) + pos)
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d, order, 1).astype(np.int32), np.take_along_axis(pos, order, 1)

    def range_search(self, x: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per_query: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(x))]
        got = self._each("range_search", [(x, radius)] * len(self.parts))
        for (lims, d, i), start in zip(got, self.starts):
            for q in range(len(x)):
                per_query[q].append((d[lims[q]:lims[q + 1]], i[lims[q]:lims[q + 1]] + start))
        lims = np.zeros(len(x) + 1, np.int64)
        ds, ps = [], []
        for q, pieces in enumerate(per_query):
            ds += [d for d, _ in pieces]
            ps += [p for _, p in pieces]
            lims[q + 1] = lims[q] + sum(len(d) for d, _ in pieces)
        empty_d, empty_p = np.zeros(0, np.int32), np.zeros(0, np.int64)
        return lims, np.concatenate(ds or [empty_d]), np.concatenate(ps or [empty_p])


def make_binary_shards(kind: str, dim: int, params: dict[str, Any], bounds: list[int],
                       train_codes: np.ndarray | None) -> list[faiss.IndexBinary]:
    """One empty index per shard; IVF shards share one trained quantizer."""
    template = make_binary_index(kind, dim, params)
    if not template.is_trained:
        template.train(train_codes)
    if kind == "ivf":
        return [faiss.clone_binary_index(template) for _ in range(len(bounds) - 1)]
    return [template] + [make_binary_index(kind, dim, params) for _ in range(len(bounds) - 2)]


def binary_files(meta: dict[str, Any]) -> list[str]:
    """The binary index file(s) an index directory holds."""
    shards = meta["binary"].get("shards")
    return [s["file"] for s in shards] if shards else [BINARY_FILE]


def make_rerank_index(kind: str, dim: int) -> faiss.Index | None:
    if kind == "none":
        return None
    if kind == "flat":
        return faiss.IndexFlatL2(dim)
    if kind == "fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)
    if kind == "sq8":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
    if kind == "pq":
        m = next(m for m in (48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0)
        return faiss.IndexPQ(dim, m, 8)
    raise HashindexError(f"--rerank {kind}: expected one of {', '.join(RERANK_KINDS)}")


def _training_sample(shards: ShardSet, name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n rows of a field, drawn evenly from all shards (memory-mapped reads)."""
    parts = shards.memmap(name)
    total = sum(len(p) for p in parts)
    take = np.sort(rng.choice(total, size=min(n, total), replace=False))
    bounds = np.cumsum([0] + [len(p) for p in parts])
    out = []
    for j, p in enumerate(parts):
        sel = take[(take >= bounds[j]) & (take < bounds[j + 1])] - bounds[j]
        out.append(np.asarray(p[sel]))
    return np.concatenate(out)


def _check_shards(shards: ShardSet, rerank: str) -> None:
    if shards.rows == 0:
        raise HashindexError(f"SHARD_DIR {shards.dir}: holds no rows")
    if rerank != "none" and shards.manifest["feature_dtype"] == "none":
        raise HashindexError(f"--rerank {rerank}: {shards.dir} was extracted with --features none; "
                             "use --rerank none or extract features")


def build(shard_dir: str | Path, out: str | Path, *, binary: str = "flat", rerank: str = "flat",
          nlist: int | None = None, nprobe: int | None = None, shards: int = 1, seed: int = 0,
          overwrite: bool = False, progress: bool = True, log=print) -> dict[str, Any]:
    """Build INDEX_DIR ``out`` from a complete shard directory; returns index.json.

    ``shards`` > 1 splits the binary index into that many indexes over
    consecutive position ranges (searched with an exact merge).
    """
    t0 = time.time()
    store = ShardSet(shard_dir, "SHARD_DIR")
    _check_shards(store, rerank)
    out = Path(out)
    if out.exists() and not overwrite:
        raise HashindexError(f"--out {out}: already exists (pass --overwrite to replace it, "
                             "or --append to add SHARD_DIR to it)")
    n, bits = store.rows, store.bits
    if not 1 <= shards <= n:
        raise HashindexError(f"--shards {shards}: expected 1 to {n} (the number of items)")
    code_bytes = store.manifest["code_bytes"]
    pbytes = padded_bytes(code_bytes)
    bounds = np.linspace(0, n, shards + 1).round().astype(int).tolist()
    params = default_params(binary, n, bits)
    if binary == "ivf":
        params["nlist"] = nlist or params["nlist"]
        params["nprobe"] = nprobe or min(params["nprobe"], params["nlist"])
        if params["nlist"] > n:
            raise HashindexError(f"--nlist {params['nlist']}: more lists than the {n} items to index")
    rng = np.random.default_rng(seed)
    sample = None
    if binary == "ivf":
        sample = pad_codes(_training_sample(store, "codes", max(256 * params["nlist"], 100_000), rng), pbytes)
    parts = make_binary_shards(binary, pbytes * 8, params, bounds, sample)
    dim = store.manifest["feature_dim"]
    findex = make_rerank_index(rerank, dim) if rerank != "none" else None
    if findex is not None and not findex.is_trained:
        findex.train(_training_sample(store, "features", 100_000, rng).astype(np.float32))

    with _replacing(out) as tmp:
        with _new_table(tmp / TABLE_FILE, n, code_bytes) as table:
            _fill(store, parts, bounds, findex, pbytes, table, 0, progress)
        binary_meta: dict[str, Any] = {"kind": binary, "faiss": type(parts[0]).__name__,
                                       "padded_bytes": pbytes, **params}
        if shards == 1:
            faiss.write_index_binary(parts[0], str(tmp / BINARY_FILE))
        else:
            binary_meta["shards"] = []
            for j, part in enumerate(parts):
                name = f"binary-{j:03d}.faiss"
                faiss.write_index_binary(part, str(tmp / name))
                binary_meta["shards"].append({"file": name, "start": bounds[j], "stop": bounds[j + 1]})
        if findex is not None:
            faiss.write_index(findex, str(tmp / RERANK_FILE))
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_id": store.model_id, "bits": bits, "code_bytes": code_bytes, "count": n,
            "class_names": store.class_names,
            "binary": binary_meta,
            "rerank": {"kind": rerank, "faiss": type(findex).__name__ if findex is not None else None,
                       "dim": dim if findex is not None else 0, "metric": "L2"},
            "source": _source_entry(store),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(time.time() - t0, 3),
            "memory": _memory_figures(tmp, n, binary_files({"binary": binary_meta})),
        }
        atomic_write_json(tmp / INDEX_JSON, meta)
    log(f"built {out}: {n} items, {binary} binary index ({pbytes * 8} bits padded from {bits}"
        + (f", {shards} shards" if shards > 1 else "") + "), "
        f"{rerank} re-rank store, {meta['memory']['bytes_per_item']:.1f} bytes/item, {meta['build_s']:.1f} s")
    return meta


def _source_entry(store: ShardSet) -> dict[str, str]:
    """Where an index's rows came from: the shard directory and its manifest's checksum."""
    return {"dir": str(store.dir.resolve()), "manifest_sha256": sha256_file(store.dir / MANIFEST)}


def _check_appendable(meta: dict[str, Any], store: ShardSet, index_dir: Path) -> None:
    """One-line errors for shards that cannot join an existing index."""
    where = f"SHARD_DIR {store.dir}"
    if store.model_id != meta["model_id"]:
        raise HashindexError(f"{where}: extracted with model {store.model_id}, but {index_dir} holds codes of "
                             f"model {meta['model_id']} (codes of different models cannot be compared)")
    if store.class_names and store.class_names != meta["class_names"]:
        raise HashindexError(f"{where}: classes {store.class_names[:5]} differ from the index's "
                             f"{meta['class_names'][:5]}")
    dim = meta["rerank"]["dim"]
    if dim and store.manifest["feature_dim"] == 0:
        raise HashindexError(f"{where}: extracted with --features none, but {index_dir} re-ranks with features")
    if dim and store.manifest["feature_dim"] != dim:
        raise HashindexError(f"{where}: {store.manifest['feature_dim']}-d features, the index re-ranks {dim}-d")
    sha = _source_entry(store)["manifest_sha256"]
    if sha in [s["manifest_sha256"] for s in [meta["source"], *meta.get("appended", [])]]:
        raise HashindexError(f"{where}: already in {index_dir}")


def _check_new_ids(old_ids: np.ndarray, store: ShardSet, index_dir: Path) -> None:
    """New ids must be unique and absent from the index (results are reported by id)."""
    new_ids = np.concatenate([np.asarray(part) for part in store.memmap("ids")])
    uniq = np.unique(new_ids)
    if len(uniq) < len(new_ids):
        raise HashindexError(f"SHARD_DIR {store.dir}: holds duplicate ids")
    clash = uniq[np.isin(uniq, old_ids, assume_unique=True)]
    if len(clash):
        raise HashindexError(
            f"SHARD_DIR {store.dir}: {len(clash)} of its ids are already in {index_dir} (e.g. id {clash[0]}); "
            f"extract the new images with --id-offset {int(old_ids.max()) + 1} (or higher)")


@contextlib.contextmanager
def _exclusive(index_dir: Path) -> Iterator[None]:
    """Hold a lock beside INDEX_DIR, so two appends cannot each add to the old index and lose the other's rows.

    (flock: reliable between processes of one machine, not across NFS clients.)
    """
    lock = index_dir.parent / f".{index_dir.name}.lock"
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HashindexError(f"--out {index_dir}: another append to it is running (lock {lock})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link an unchanged file into the new index folder (a copy across file systems).

    Safe because index files are only ever replaced, never modified in place.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def append(shard_dir: str | Path, index_dir: str | Path, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Add a complete shard directory's items to an existing INDEX_DIR; returns the new index.json.

    The appended rows take positions after the existing ones, so every result
    the index gave before keeps its position and id. Index kinds and parameters
    are the index's: a single binary index gets the codes added (IVF codes go
    to the lists of the existing quantizer), a ``--shards S`` index gets one
    more shard holding exactly the new rows; the float store and the table are
    rewritten with the new rows at the end. The new index is built beside the
    old one and swapped in, so INDEX_DIR is complete at every moment.
    """
    t0 = time.time()
    index_dir = Path(index_dir)
    store = ShardSet(shard_dir, "SHARD_DIR")
    read_index_meta(index_dir, "--out")  # a clear error before any lock file is made
    with _exclusive(index_dir):
        meta = read_index_meta(index_dir, "--out")  # as it is now that no other append runs
        _check_appendable(meta, store, index_dir)
        _check_shards(store, meta["rerank"]["kind"])
        return _append(store, meta, index_dir, t0, progress, log)


def _append(store: ShardSet, meta: dict[str, Any], index_dir: Path, t0: float, progress: bool, log
            ) -> dict[str, Any]:
    """The work of `append`, under the index's lock."""
    with h5py.File(index_dir / TABLE_FILE, "r") as old:
        _check_new_ids(old["ids"][()], store, index_dir)
    n_old, m = meta["count"], store.rows
    n = n_old + m
    pbytes = meta["binary"]["padded_bytes"]
    part, bounds, rewritten, binary_meta = _binary_to_grow(meta, index_dir, n)
    parts = [part]
    findex = faiss.read_index(str(index_dir / RERANK_FILE)) if meta["rerank"]["kind"] != "none" else None

    with _replacing(index_dir) as tmp:
        with _new_table(tmp / TABLE_FILE, n, meta["code_bytes"]) as table, \
                h5py.File(index_dir / TABLE_FILE, "r") as old:
            for name in ("ids", "labels", "codes", "paths"):
                for lo in range(0, n_old, 1 << 20):
                    hi = min(lo + (1 << 20), n_old)
                    table[name][lo:hi] = old[name][lo:hi]
            _fill(store, parts, bounds, findex, pbytes, table, n_old, progress)
        faiss.write_index_binary(parts[0], str(tmp / rewritten))
        for name in binary_files(meta):
            if name != rewritten:
                _link_or_copy(index_dir / name, tmp / name)
        if findex is not None:
            faiss.write_index(findex, str(tmp / RERANK_FILE))
        new_meta = {**meta, "count": n, "binary": binary_meta,
                    "appended": meta.get("appended", []) + [{
                        **_source_entry(store), "start": n_old, "stop": n,
                        "appended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "append_s": round(time.time() - t0, 3)}],
                    "memory": _memory_figures(tmp, n, binary_files({"binary": binary_meta}))}
        atomic_write_json(tmp / INDEX_JSON, new_meta)
    shards = binary_meta.get("shards")
    log(f"appended {m} items to {index_dir}: {n} items now"
        + (f", shard {len(shards) - 1} added" if shards else "") + f", {time.time() - t0:.1f} s")
    return new_meta


def _binary_to_grow(meta: dict[str, Any], index_dir: Path, n: int
                    ) -> tuple[faiss.IndexBinary, list[int], str, dict[str, Any]]:
    """(binary index the new rows go to, its position bounds, its file name, the new "binary" entry).

    A single index is loaded whole and grows; a sharded one gets a new, empty
    shard over [count, n) (IVF: a copy of the last shard, emptied, so it keeps
    the shared quantizer).
    """
    binary_meta = dict(meta["binary"])
    shards = [dict(s) for s in binary_meta.get("shards", [])]
    if not shards:
        return faiss.read_index_binary(str(index_dir / BINARY_FILE)), [0, n], BINARY_FILE, binary_meta
    if binary_meta["kind"] == "ivf":
        part = faiss.read_index_binary(str(index_dir / shards[-1]["file"]))
        part.reset()
    else:
        part = make_binary_index(binary_meta["kind"], binary_meta["padded_bytes"] * 8, binary_meta)
    name = f"binary-{len(shards):03d}.faiss"
    binary_meta["shards"] = shards + [{"file": name, "start": meta["count"], "stop": n}]
    return part, [meta["count"], n], name, binary_meta


def _new_table(path: Path, n: int, code_bytes: int) -> h5py.File:
    """An open, empty position table for n items."""
    table = h5py.File(path, "w")
    table.create_dataset("ids", (n,), np.int64)
    table.create_dataset("labels", (n,), np.int32)
    table.create_dataset("codes", (n, code_bytes), np.uint8)
    table.create_dataset("paths", (n,), h5py.string_dtype("utf-8"))
    return table


def _fill(store: ShardSet, parts: list, bounds: list[int], findex, pbytes: int, table: h5py.File,
          pos: int, progress: bool) -> None:
    """Add every shard's codes/features to the indexes and its rows to the table from position ``pos``.

    Rows go to binary index j when their position lies in [bounds[j], bounds[j+1]).
    """
    for path in tqdm(store.shard_paths(), desc="build", unit="shard", disable=not progress):
        with h5py.File(path, "r") as f:
            codes = f["codes"][()]
            m = len(codes)
            padded = pad_codes(codes, pbytes)
            for j, part in enumerate(parts):
                lo, hi = max(bounds[j], pos), min(bounds[j + 1], pos + m)
                if lo < hi:
                    part.add(padded[lo - pos:hi - pos])
            if findex is not None:
                findex.add(np.ascontiguousarray(f["features"][()], dtype=np.float32))
            for name in ("ids", "labels", "codes", "paths"):
                table[name][pos:pos + m] = f[name][()]
        pos += m


def _memory_figures(folder: Path, n: int, binary: list[str]) -> dict[str, Any]:
    def size(name: str) -> int:
        return (folder / name).stat().st_size if (folder / name).exists() else 0

    sizes = {"binary_bytes": sum(size(f) for f in binary), "rerank_bytes": size(RERANK_FILE),
             "table_bytes": size(TABLE_FILE)}
    sizes["bytes_per_item"] = sum(sizes.values()) / max(n, 1)
    return sizes


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out`` that replaces it when the block succeeds and is removed if it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder to ``out``, replacing an old index if present."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1000)}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_index_meta(directory: str | Path, flag: str = "INDEX_DIR") -> dict[str, Any]:
    """index.json of a complete index directory (one-line error otherwise)."""
    d = Path(directory)
    if not d.is_dir():
        raise HashindexError(f"{flag} {d}: no such directory")
    if not (d / INDEX_JSON).exists():
        raise HashindexError(f"{flag} {d}: not a complete hashindex index (no {INDEX_JSON}; run hashindex build)")
    try:
        meta = read_json(d / INDEX_JSON)
    except (OSError, ValueError) as e:
        raise HashindexError(f"{flag} {d / INDEX_JSON}: unreadable ({e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise HashindexError(f"{flag} {d}: not a {FORMAT} v{FORMAT_VERSION} index")
    needed = binary_files(meta) + [TABLE_FILE] + ([RERANK_FILE] if meta["rerank"]["kind"] != "none" else [])
    missing = [f for f in needed if not (d / f).exists()]
    if missing:
        raise HashindexError(f"{flag} {d}: incomplete index, missing {', '.join(missing)}")
    return meta


def describe_index(directory: str | Path) -> dict[str, Any]:
    """Summary for `hashindex info INDEX_DIR`."""
    meta = read_index_meta(directory)
    return {"kind": "index", "path": str(directory), "count": meta["count"], "model_id": meta["model_id"],
            "bits": meta["bits"], "binary": meta["binary"], "rerank": meta["rerank"],
            "memory": meta["memory"], "built": meta["built"], "source": meta["source"]["dir"],
            "appended": [{k: e[k] for k in ("dir", "start", "stop", "appended")} for e in meta.get("appended", [])]}
