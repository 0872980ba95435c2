"""`hashindex build`: Faiss indexes over a shard directory.

Two Faiss indexes, both addressed by *position* (row order of the shards):
  * a binary index for coarse Hamming search: IndexBinaryFlat, IndexBinaryIVF,
    IndexBinaryHNSW or IndexBinaryMultiHash;
  * a float re-rank store of the fine-stage vectors of the index's *signal*
    (hashindex.signals: pooled features for l2 / cosine, code bits for latent,
    class posteriors for posterior): IndexFlatL2, or IndexScalarQuantizer
    (fp16 / 8-bit) or IndexPQ to save memory. The signal is chosen per
    collection (``signal="auto"``, see `choose_signal`) and recorded in
    index.json; ``head.npz`` holds the net's layers above the pooled feature,
    which turn a query's feature into its vector.
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
from .metrics import evaluate_arrays
from .signals import HEAD_SIGNALS, SIGNALS, Head, check_signal, choose, database_vectors, query_vectors
from .store import MANIFEST, ShardSet

FORMAT = "hashindex-index"
FORMAT_VERSION = 1
INDEX_JSON = "index.json"
BINARY_FILE = "binary.faiss"
RERANK_FILE = "rerank.faiss"
TABLE_FILE = "table.h5"
HEAD_FILE = "head.npz"
DEFAULT_CANDIDATES = 1000  # the re-ranked pool of a query; a fixed size, so rankings do not change with k
TIE_CAP = 20_000  # at most this many items in a pool widened to a whole tie group
SIGNAL_QUERIES = 1000  # labelled items held out of the collection to choose its signal
SIGNAL_SAMPLE = 100_000  # items of a large collection the choice is measured on
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


def rerank_signal(meta: dict[str, Any]) -> str:
    """The fine-stage signal an index was built with (indexes older than signals re-rank by l2)."""
    return meta["rerank"].get("signal") or "l2"


def new_float_store(kind: str, sample: np.ndarray) -> faiss.Index:
    """An empty float store of ``kind`` for vectors like ``sample``, trained on it where the kind needs it."""
    n, dim = sample.shape
    index = make_rerank_index(kind, dim)
    if not index.is_trained:
        if kind == "pq" and n < 256:
            raise HashindexError(f"--rerank pq: needs at least 256 items to train its codebooks, not {n} "
                                 "(use --rerank flat, fp16 or sq8)")
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


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


def _sample_rows(shards: ShardSet, names: tuple[str, ...], n: int, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """The same up to n rows of several fields, drawn evenly from all shards, in position order."""
    sizes = [s["rows"] for s in shards.manifest["shards"]]
    total = sum(sizes)
    take = np.sort(rng.choice(total, size=min(n, total), replace=False))
    bounds = np.cumsum([0] + sizes)
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for j, path in enumerate(shards.shard_paths()):
        sel = take[(take >= bounds[j]) & (take < bounds[j + 1])] - bounds[j]
        if not len(sel):
            continue
        with h5py.File(path, "r") as f:
            for name in names:
                out[name].append(f[name][sel])
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _training_sample(shards: ShardSet, name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n rows of one field, drawn evenly from all shards."""
    return _sample_rows(shards, (name,), n, rng)[name]


def head_for(shards: ShardSet, model: str | None = None) -> Head | None:
    """The net's layers above the pooled feature, for the model that made ``shards``.

    From ``model`` (a checkpoint or shipped name) when given, else from the
    shard directory (written by extract), else from the shipped model with
    the shards' model id; None when none of them has it.
    """
    from .model import checkpoint_head, find_model_for, read_checkpoint

    if model is not None:
        ckpt = read_checkpoint(model)
        if ckpt["model_id"] != shards.model_id:
            raise HashindexError(f"model {model}: its id {ckpt['model_id']} is not the model of "
                                 f"{shards.dir} ({shards.model_id})")
        return checkpoint_head(ckpt)
    head = shards.head()
    if head is not None:
        return head
    try:
        return checkpoint_head(read_checkpoint(find_model_for(shards.model_id)))
    except HashindexError:
        return None


def choose_signal(shards: ShardSet, head: Head | None, rng: np.random.Generator,
                  pool: int = DEFAULT_CANDIDATES, queries: int = SIGNAL_QUERIES,
                  sample: int = SIGNAL_SAMPLE) -> tuple[str, dict[str, Any]]:
    """The fine-stage signal for a collection, measured on the collection itself.

    With labels: ``queries`` labelled items are held out and searched against
    the rest (at most ``sample`` items) with the ranking a query gets (pool of
    ``pool``, whole tie groups); the signal with the highest mAP wins, and
    "hamming" (no fine stage) is a candidate too, so the choice never ranks
    these held-out items worse than Hamming alone. Without labels: the
    unlabelled default. In-domain collections measured here choose the
    posterior, collections of classes the net never saw choose cosine.
    """
    rows = _sample_rows(shards, ("codes", "features", "labels"), sample, rng)
    labelled = np.flatnonzero(rows["labels"] >= 0)
    if len(labelled) < 20 or len(np.unique(rows["labels"][labelled])) < 2:
        signal, _ = choose({}, labelled=False)
        return signal, {"by": "default for an unlabelled collection"}
    held = rng.choice(labelled, size=min(queries, len(labelled) // 5), replace=False)
    rest = np.setdiff1d(np.arange(len(rows["labels"])), held)
    q = {name: a[held] for name, a in rows.items()}
    db = {name: a[rest] for name, a in rows.items()}
    q["features"], db["features"] = q["features"].astype(np.float32), db["features"].astype(np.float32)
    pool = min(pool, len(rest))

    def score(signal: str) -> float:
        if signal == "hamming":
            return evaluate_arrays(q["codes"], q["labels"], db["codes"], db["labels"], shards.bits,
                                   at=(), pk_max=1)["hamming"]["map"]
        qv = query_vectors(signal, q["features"], head)
        dv = database_vectors(signal, db["features"], db["codes"], head)
        dn = (dv * dv).sum(axis=1)

        def distances(sl, pos):
            full = dn[None, :] - 2 * qv[sl] @ dv.T
            return np.take_along_axis(full, pos, 1)

        return evaluate_arrays(q["codes"], q["labels"], db["codes"], db["labels"], shards.bits, at=(),
                               pk_max=1, rerank=distances, candidates=pool,
                               tie_cap=max(TIE_CAP, pool))["reranked"]["map"]

    names = ["hamming", "l2", "cosine"] + (list(HEAD_SIGNALS) if head is not None else [])
    signal, scores = choose({name: (lambda n=name: score(n)) for name in names}, labelled=True)
    return signal, {"by": f"mAP@all of {len(held)} labelled items held out against {len(rest)} others "
                          f"(pool {pool})", "scores": {k: round(v, 4) for k, v in scores.items()}}


def _check_shards(shards: ShardSet, rerank: str) -> None:
    if shards.rows == 0:
        raise HashindexError(f"SHARD_DIR {shards.dir}: holds no rows")
    if rerank != "none" and shards.manifest["feature_dtype"] == "none":
        raise HashindexError(f"--rerank {rerank}: {shards.dir} was extracted with --features none; "
                             "use --rerank none or extract features")


def build(shard_dir: str | Path, out: str | Path, *, binary: str = "flat", rerank: str = "flat",
          signal: str = "auto", model: str | None = None, nlist: int | None = None, nprobe: int | None = None,
          shards: int = 1, seed: int = 0, overwrite: bool = False, progress: bool = True,
          log=print) -> dict[str, Any]:
    """Build INDEX_DIR ``out`` from a complete shard directory; returns index.json.

    ``shards`` > 1 splits the binary index into that many indexes over
    consecutive position ranges (searched with an exact merge). ``signal`` is
    the fine stage's ordering (hashindex.signals), or "auto" to measure which
    serves this collection best (`choose_signal`); ``model`` gives the net's
    head where the shard directory lacks it.
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
    head, signal, choice = _fine_stage(store, rerank, signal, model, rng, log)
    findex = None
    if signal not in ("none", "hamming"):
        rows = _sample_rows(store, ("codes", "features"), 100_000, rng)
        findex = new_float_store(rerank, database_vectors(signal, rows["features"], rows["codes"], head))

    with _replacing(out) as tmp:
        with _new_table(tmp / TABLE_FILE, n, code_bytes) as table:
            _fill(store, parts, bounds, findex, pbytes, table, 0, progress, signal, head)
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
        if head is not None:
            head.save(tmp / HEAD_FILE)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_id": store.model_id, "bits": bits, "code_bytes": code_bytes, "count": n,
            "class_names": store.class_names,
            "binary": binary_meta,
            "rerank": {"kind": rerank if findex is not None else "none",
                       "faiss": type(findex).__name__ if findex is not None else None,
                       "dim": findex.d if findex is not None else 0, "metric": "L2",
                       "signal": signal, "signal_choice": choice},
            "source": _source_entry(store),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(time.time() - t0, 3),
            "memory": _memory_figures(tmp, n, binary_files({"binary": binary_meta})),
        }
        atomic_write_json(tmp / INDEX_JSON, meta)
    log(f"built {out}: {n} items, {binary} binary index ({pbytes * 8} bits padded from {bits}"
        + (f", {shards} shards" if shards > 1 else "") + "), "
        f"{meta['rerank']['kind']} re-rank store ({signal}), {meta['memory']['bytes_per_item']:.1f} bytes/item, "
        f"{meta['build_s']:.1f} s")
    return meta


def _fine_stage(store: ShardSet, rerank: str, signal: str, model: str | None, rng: np.random.Generator,
                log) -> tuple[Head | None, str, dict[str, Any]]:
    """(head, signal, how it was chosen) of a new index; signal "none" without a float store."""
    if rerank == "none":
        return None, "none", {"by": "no float store (rerank none)"}
    head = head_for(store, model)
    if signal != "auto":
        check_signal(signal, head)
        return head, signal, {"by": "given"}
    signal, choice = choose_signal(store, head, rng)
    if "scores" in choice:
        log(f"signal: {signal} ({', '.join(f'{k} {v:.4f}' for k, v in choice['scores'].items())}; {choice['by']})")
    return head, signal, choice


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
    if dim and rerank_signal(meta) in ("l2", "cosine") and store.manifest["feature_dim"] != dim:
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
    head = Head.load(index_dir / HEAD_FILE) if (index_dir / HEAD_FILE).exists() else None

    with _replacing(index_dir) as tmp:
        with _new_table(tmp / TABLE_FILE, n, meta["code_bytes"]) as table, \
                h5py.File(index_dir / TABLE_FILE, "r") as old:
            for name in ("ids", "labels", "codes", "paths"):
                for lo in range(0, n_old, 1 << 20):
                    hi = min(lo + (1 << 20), n_old)
                    table[name][lo:hi] = old[name][lo:hi]
            _fill(store, parts, bounds, findex, pbytes, table, n_old, progress, rerank_signal(meta), head)
        faiss.write_index_binary(parts[0], str(tmp / rewritten))
        for name in binary_files(meta):
            if name != rewritten:
                _link_or_copy(index_dir / name, tmp / name)
        if findex is not None:
            faiss.write_index(findex, str(tmp / RERANK_FILE))
        if head is not None:
            _link_or_copy(index_dir / HEAD_FILE, tmp / HEAD_FILE)
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
          pos: int, progress: bool, signal: str = "l2", head: Head | None = None) -> None:
    """Add every shard's codes and signal vectors to the indexes and its rows to the table from position ``pos``.

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
                findex.add(database_vectors(signal, f["features"][()], codes, head))
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
