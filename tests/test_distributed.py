"""The Ray backend on a local Ray runtime: same files as the local path, failures retried or reported."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hashindex[ray]')")

from hashindex import HashindexError, ShardSet, extract  # noqa: E402
from hashindex.extraction import make_shard  # noqa: E402
from hashindex.batch import batch_search  # noqa: E402
from tests.conftest import CIFAR_TEST, assert_same_shards, need  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the failure-injecting shard functions below travel to the workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


class FailOnce:
    """Fails the first attempt at shard 1 (a marker file remembers across processes)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, job, j):
        if j == 1 and not Path(self.marker).exists():
            Path(self.marker).write_text("failed once")
            raise RuntimeError("injected failure")
        return make_shard(job, j)


def always_fail_shard_2(job, j):
    if j == 2:
        raise RuntimeError("injected permanent failure")
    return make_shard(job, j)


def test_ray_extraction_equals_local_with_failures_retried_or_reported(local_ray, tiny_model, tmp_path):
    """400 CIFAR-10 test images in 4 shards on Ray give the local path's shards, array for array, when a
    shard fails once (retried) and when one keeps failing (reported; a rerun completes the job)."""
    need(CIFAR_TEST)
    opts = dict(shard_size=100, limit=400, progress=False, log=lambda s: None)
    extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "local", workers=0, **opts)
    # a failure on the first try is retried and nothing is lost or doubled
    extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "retried", backend="ray",
            ray_options={"num_workers": 2, "shard_fn": FailOnce(str(tmp_path / "marker"))}, **opts)
    assert (tmp_path / "marker").exists()
    assert_same_shards(tmp_path / "local", tmp_path / "retried")
    assert (tmp_path / "retried" / "skipped.txt").exists()
    # a shard that keeps failing is reported; the others are kept; a rerun completes the job
    with pytest.raises(HashindexError, match="1 shard\\(s\\) failed after 1 retries"):
        extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "broken", backend="ray",
                ray_options={"num_workers": 2, "max_retries": 1, "shard_fn": always_fail_shard_2}, **opts)
    partial = ShardSet(tmp_path / "broken", require_complete=False).manifest
    assert not partial["complete"] and sorted(s["index"] for s in partial["shards"]) == [0, 1, 3]
    extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "broken", backend="ray",
            ray_options={"num_workers": 2}, **opts)
    assert_same_shards(tmp_path / "local", tmp_path / "broken")


def test_ray_batch_query_equals_local(local_ray, flat_index, cifar_queries, tmp_path):
    opts = dict(k=10, batch_size=250, progress=False, log=lambda s: None)
    batch_search(flat_index, cifar_queries, tmp_path / "local.h5", **opts)
    batch_search(flat_index, cifar_queries, tmp_path / "ray.h5", backend="ray",
                 ray_options={"num_workers": 2}, **opts)
    with h5py.File(tmp_path / "local.h5") as a, h5py.File(tmp_path / "ray.h5") as b:
        for name in ("query_ids", "ids", "hamming", "distance"):
            assert np.array_equal(a[name][()], b[name][()]), name


def test_shard_actors_equal_one_index(local_ray, flat_index, cifar_shards, cifar_queries, tmp_path):
    """S=4 shards held by 4 Ray actors: batch top-k and radius search equal the single local index."""
    from hashindex.index import Index, build
    from hashindex.query import indexed_queries, query

    build(cifar_shards, tmp_path / "s4", shards=4, signal="l2", progress=False, log=lambda s: None)
    opts = dict(k=10, batch_size=250, progress=False, log=lambda s: None)
    batch_search(flat_index, cifar_queries, tmp_path / "local.h5", **opts)
    batch_search(tmp_path / "s4", cifar_queries, tmp_path / "actors.h5", backend="ray",
                 shard_actors=True, **opts)
    with h5py.File(tmp_path / "local.h5") as a, h5py.File(tmp_path / "actors.h5") as b:
        for name in ("query_ids", "ids", "hamming", "distance"):
            assert np.array_equal(a[name][()], b[name][()]), name

    ids = [3, 4000, 9999]
    local = query(flat_index, [], ids, radius=2)
    remote = query(tmp_path / "s4", [], ids, radius=2, shard_actors={})
    assert [r["results"] for r in local] == [r["results"] for r in remote]
    assert sum(len(r["results"]) for r in local) > 0
    held = Index.load(tmp_path / "s4", shard_actors={})
    assert isinstance(held.binary.parts[0], ray.actor.ActorHandle)
    # shard-side re-ranking: the float store lives in the actors, in parts; this process holds none of it
    from hashindex.index.kinds import FloatParts

    assert isinstance(held.rerank, FloatParts) and held.rerank.parts == held.binary.parts
    assert [s["file"] for s in held.meta["rerank"]["shards"]] == [f"rerank-{j:03d}.faiss" for j in range(4)]
    codes, vecs = indexed_queries(held, ids)
    local_index = Index.load(flat_index)
    want = local_index.search(*indexed_queries(local_index, ids), k=30, vectors=True)
    got = held.search(codes, vecs, k=30, vectors=True)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distance, want.distance, equal_nan=True)

    with pytest.raises(HashindexError, match="not shards"):
        Index.load(flat_index, shard_actors={})


@pytest.mark.parametrize("binary,rerank,recall", [("flat", "flat", None), ("ivf", "sq8", 0.9), ("hnsw", "none", 0.9),
                                                   ("multihash", "none", None)])
def test_distributed_build_equals_local(local_ray, cifar_shards, tmp_path, binary, rerank, recall):
    """build shards=3 with each part a Ray task from the shard files: the same part files, byte for byte, and
    the same table, as the one-process build (IVF, HNSW: with the search parameter chosen from a recall
    target, the parts read back, tuned and rewritten; HNSW's bucket tables travel with its graphs)."""
    from hashindex.index import build

    q = {"progress": False, "log": lambda s: None, "recall": recall}
    local = build(cifar_shards, tmp_path / "local", binary=binary, rerank=rerank, signal="l2", shards=3, **q)
    remote = build(cifar_shards, tmp_path / "ray", binary=binary, rerank=rerank, signal="l2", shards=3,
                   backend="ray", ray_options={"num_workers": 2}, **q)
    names = [f"binary-{j:03d}.faiss" for j in range(3)] + [f"rerank-{j:03d}.faiss" for j in range(3)] * (rerank != "none")
    names += [f"binary-{j:03d}.buckets.npy" for j in range(3)] * (binary == "hnsw")
    assert {n: local["files"][n] for n in names} == {n: remote["files"][n] for n in names}
    assert local["binary"] == remote["binary"] and local["rerank"] == remote["rerank"]
    assert ("tuning" in local["binary"]) == (recall is not None)
    with h5py.File(tmp_path / "local" / "table.h5") as a, h5py.File(tmp_path / "ray" / "table.h5") as b:
        for name in ("ids", "labels", "codes", "paths"):
            assert np.array_equal(a[name][()], b[name][()]), name
    if binary != "flat":  # held by actors (HNSW: graphs with their bucket tables), the parts answer as here, and
        from hashindex.index import Index  # IVF and MultiHash parts asked for more than they find fill as one

        here, held = Index.load(tmp_path / "local"), Index.load(tmp_path / "ray", shard_actors={})
        codes = here.table_codes()[::200]
        k = 9800 if binary == "multihash" else 2000  # MultiHash: about half the queries find fewer: filled
        got, want = (ix.search(codes, None, k=k, rerank=False) for ix in (held, here))
        assert np.array_equal(got.positions, want.positions) and (got.positions >= 0).all()
        if binary == "ivf":  # the same quantizer as one index: the parts fill as it does (same distances)
            build(cifar_shards, tmp_path / "one", binary=binary, rerank=rerank, signal="l2", **q)
            alone = Index.load(tmp_path / "one").search(codes, None, k=2000, rerank=False)
            assert np.array_equal(alone.hamming, want.hamming)


def test_a_temp_folder_too_deep_for_ray_sockets_is_one_line(tmp_path):
    """A local Ray runtime binds its sockets in the temp folder; under a deep TMPDIR their paths pass 107 bytes.
    The CLI says so in one line and names the way out (RAY_TMPDIR), with no traceback and no shard written."""
    import os
    import subprocess

    deep = tmp_path / ("t" * (100 - len(str(tmp_path))))
    deep.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"} | {"TMPDIR": str(deep)}
    cmd = [sys.executable, "-m", "hashindex", "extract", "--data", str(CIFAR_TEST), "--out", str(tmp_path / "shards"),
           "--limit", "20", "--backend", "ray"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "cannot start a local Ray runtime" in res.stderr and "set RAY_TMPDIR to a shorter folder" in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert not list((tmp_path / "shards").glob("*.h5"))
