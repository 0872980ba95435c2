"""What only the ASGI service has: metrics, API docs, multipart uploads to /search, several indexes, batched
concurrent searches, a bug that fails one request only, graceful SIGTERM (real uvicorn, real sockets); and its
/batch in more detail than tests/test_serve.py's test of /batch on both servers."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from hashindex import ShardSet
from hashindex.index import build
from hashindex.query import query
from tests.conftest import CIFAR_TEST, fill_disk, jpeg_bytes, same_ranking
from tests.test_serve import start_asgi


@pytest.fixture(scope="module")
def cosine_index(cifar_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("cos") / "cos"
    build(cifar_shards, out, signal="cosine", progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def service(flat_index, cosine_index, tiny_model):
    from hashindex.service.engine import Engine

    engines = {"flat": Engine(flat_index, str(tiny_model), name="flat"),
               "cos": Engine(cosine_index, str(tiny_model), name="cos")}
    url, stop = start_asgi(engines)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client, engines
    stop()


def test_health_metrics_and_docs(service):
    client, _ = service
    assert client.get("/health").json() == {"status": "ok", "indexes": {"flat": 10000, "cos": 10000}}
    assert client.get("/search", params={"id": 5}).status_code == 200
    assert client.get("/search", params={"id": 5, "k": 0}).status_code == 400
    res = client.get("/search", params={"id": 5, "nprobe": 4})  # reaches the index, which has no lists
    assert res.status_code == 400 and "nprobe=4: the flat coarse index has no nprobe" in res.json()["error"]
    assert client.get("/search", params={"id": 5, "nprobe": 0}).json()["error"] == "nprobe=0: expected at least 1"
    for path in ("/items/5/image", "/items/6/image", "/indexes/cos/items/7/image", "/no/such/path-1234",
                 "/indexes/no-such-index/search"):
        client.get(path)
    text = client.get("/metrics").text
    # labelled by route template: one series per route, not one per item, made-up path or index name
    assert re.search(r'hashindex_requests_total\{method="GET",route="/items/\{item_id\}/image",status="200"\} '
                     r'[2-9]', text)
    assert 'route="/indexes/{name}/items/{item_id}/image",status="200"' in text
    assert 'route="/indexes/{name}/search",status="404"' in text and 'route="unmatched",status="404"' in text
    assert not re.search(r"/items/\d|path-1234|no-such-index", text)
    assert re.search(r'hashindex_requests_total\{method="GET",route="/search",status="200"\} [1-9]', text)
    assert re.search(r'hashindex_requests_total\{method="GET",route="/search",status="400"\} [1-9]', text)
    assert 'hashindex_index_items{index="flat"} 10000' in text
    assert re.search(r'hashindex_request_seconds_bucket\{route="/search",le="\+Inf"\} [1-9]', text)
    assert re.search(r"hashindex_errors_total [1-9]", text)
    spec = client.get("/openapi.json").json()
    assert {"/search", "/batch", "/indexes/{name}/search", "/health", "/metrics"} <= set(spec["paths"])
    documented = {p["name"] for p in spec["paths"]["/batch"]["post"]["parameters"]}
    from hashindex.service.params import OPTIONS

    assert documented == set(OPTIONS) | {"together"}  # every parameter /batch reads is in its docs, and no other
    for path in ("/items/{item_id}/image", "/indexes/{name}/items/{item_id}/image"):
        documented = {p["name"] for p in spec["paths"][path]["get"]["parameters"] if p["in"] == "query"}
        assert documented == {"size"}, path  # what `params.image_size` reads
    assert client.get("/docs").status_code == 200
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]  # an image, or a query encoded elsewhere
    assert {"image/*", "multipart/form-data", "application/json"} <= set(body)
    batch = spec["paths"]["/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    from hashindex.service.params import BATCH_FIELDS

    assert set(batch) == set(BATCH_FIELDS)  # what `params.batch_body` reads, and no other


def test_multipart_and_batch_equal_single_searches(service, flat_index, tiny_model, tmp_path):
    client, _ = service
    (name_a, a), (name_b, b) = jpeg_bytes(2)
    raw = client.post("/search", params={"k": 6}, content=a).json()
    form = client.post("/search", params={"k": 6}, files={"file": ("a.jpg", a, "image/jpeg")}).json()
    assert raw["results"] == form["results"]
    path = tmp_path / "a.jpg"
    path.write_bytes(a)
    assert raw["results"] == query(flat_index, [str(path)], [], model=str(tiny_model), k=6)[0]["results"]
    files = [("file", ("a.jpg", a, "image/jpeg")), ("file", ("b.jpg", b, "image/jpeg")),
             ("file", ("bad.jpg", b"not an image", "image/jpeg"))]
    rows = client.post("/batch", params={"k": 6}, files=files).json()["results"]
    assert rows[0]["query"] == "file:a.jpg" and same_ranking(rows[0]["results"], raw["results"])
    assert rows[2] == {"error": "body: not a decodable image (not-an-image)", "status": 400}
    ids = [3, 141, 99999999, 592]
    rows = client.post("/batch", params={"k": 4}, json={"ids": ids}).json()["results"]
    for i, row in zip(ids, rows):
        if i == 99999999:
            assert row == {"error": "id=99999999: no item with this id in the index", "status": 404}
        else:
            assert row["results"] == query(flat_index, [], [i], k=4)[0]["results"]
    assert client.post("/batch", json={"ids": list(range(65))}).json() == \
        {"error": "ids: 65 queries, at most 64 in one request"}
    assert client.post("/batch", content=b"{oops").status_code == 400
    assert client.post("/batch", params={"k": 4, "id": 3}, json={"ids": [1]}).json()["error"].startswith("id=3: ")
    assert client.post("/batch", params={"kk": 4}, json={"ids": [1]}).json() == \
        {"error": "kk: unknown parameter (expected k, candidates, radius, rerank, cut_ties, nprobe, exclude_self, "
                  "only_class, only_folder, only_ids, not_class, not_folder, together)"}
    left = client.post("/batch", params={"k": 4, "exclude_self": 1}, json={"ids": ids}).json()["results"]
    assert left[2]["status"] == 404 and [row["results"] for row in left[:2] + left[3:]] == [
        query(flat_index, [], [i], k=4, exclude_self=True)[0]["results"] for i in ids[:2] + ids[3:]]


def test_batch_together_is_query_together(service, flat_index, tiny_model, tmp_path):
    """POST /batch?together=1: the batch's queries as one, the row `hashindex query --together` gives."""
    client, _ = service
    got = client.post("/batch", params={"k": 5, "together": 1, "exclude_self": 1}, json={"ids": [3, 40]}).json()
    want = query(flat_index, [], [3, 40], k=5, together=True, exclude_self=True)
    assert len(got["results"]) == 1 and got["results"][0]["results"] == want[0]["results"]
    assert got["results"][0]["query"] == "id:3 + id:40" and len(want[0]["results"]) == 5
    wide = client.post("/batch", params={"radius": 8, "together": 1}, json={"ids": [3, 40, 77]}).json()
    assert wide["results"][0]["results"] == query(flat_index, [], [3, 40, 77], radius=8, together=True)[0][
        "results"] and len(wide["results"][0]["results"]) > 10  # a radius search is not cut at k
    (_, a), (_, b) = jpeg_bytes(2)
    for name, data in (("a.jpg", a), ("b.jpg", b)):
        (tmp_path / name).write_bytes(data)
    files = [("file", ("a.jpg", a, "image/jpeg")), ("file", ("b.jpg", b, "image/jpeg"))]
    row = client.post("/batch", params={"k": 6, "together": 1}, files=files).json()["results"][0]
    want = query(flat_index, [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")], [], model=str(tiny_model), k=6,
                 together=True)
    assert row["query"] == "file:a.jpg + file:b.jpg" and same_ranking(row["results"], want[0]["results"])
    res = client.post("/batch", params={"together": 1}, json={"ids": [3, 99999999]})
    assert res.status_code == 404 and res.json() == {"error": "id=99999999: no item with this id in the index"}
    res = client.post("/batch", params={"together": 1}, files=files + [("file", ("c.jpg", b"junk", "image/jpeg"))])
    assert res.status_code == 400 and res.json() == {"error": "body: not a decodable image (not-an-image)"}
    res = client.post("/batch", params={"together": 1}, json={"ids": []})
    assert res.status_code == 400 and res.json()["error"].startswith("ids: empty (together=1 searches")
    assert client.post("/batch", params={"together": 2}, json={"ids": [3]}).json() == \
        {"error": "together=2: expected 0 or 1"}
    res = client.get("/search", params={"id": 3, "together": 1})
    assert res.status_code == 400 and res.json()["error"].startswith("together: unknown parameter")


def test_several_indexes_by_name(service, cosine_index):
    client, _ = service
    got = client.get("/indexes/cos/search", params={"id": 7, "k": 5}).json()
    assert got["results"] == query(cosine_index, [], [7], k=5)[0]["results"]
    assert client.get("/").json()["indexes"] == ["flat", "cos"]
    res = client.get("/indexes/nope/search", params={"id": 7})
    assert res.status_code == 404 and res.json() == {"error": "index=nope: no such index (served: flat, cos)"}


def test_concurrent_searches_are_batched_and_each_gets_its_answer(service, flat_index):
    client, engines = service
    ids = list(range(0, 9600, 150))  # 64 different queries from 32 clients at once
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: client.get("/search", params={"id": i, "k": 5}).json(), ids))
    want = query(flat_index, [], ids, k=5)
    assert [a["results"] for a in answers] == [w["results"] for w in want]
    text = client.get("/metrics").text
    count = int(re.search(r'hashindex_search_batch_size_count\{index="flat"\} (\d+)', text).group(1))
    total = float(re.search(r'hashindex_search_batch_size_sum\{index="flat"\} ([\d.]+)', text).group(1))
    assert total >= len(ids) and count <= total  # every search went through the batcher


def test_a_bug_fails_one_request_and_the_service_goes_on(service, monkeypatch):
    client, engines = service
    index = engines["flat"].index

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(index, "search", broken)
    res = client.get("/search", params={"id": 5})
    assert res.status_code == 500 and res.json() == {"error": "internal error: RuntimeError: simulated bug"}
    monkeypatch.undo()
    assert client.get("/search", params={"id": 5}).status_code == 200


def test_a_search_past_its_timeout_leaves_the_service_answering(service, monkeypatch):
    """A search still running when its request times out is answered 503, and the batcher goes on: it once
    set the result of the future the timeout had cancelled, which raised in its thread and left every later
    search of that index unanswered. A search queued behind it past its own timeout is skipped, not run for a
    client that has gone; a full queue refuses a search at once, 503 with Retry-After."""
    import time

    import hashindex.service.engine as engine_module
    import hashindex.service.requests as service_requests

    client, engines = service
    real = engine_module.search_vectors

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)
    monkeypatch.setattr(engine_module, "search_vectors", slow)
    monkeypatch.setattr(service_requests, "REQUEST_TIMEOUT_S", 0.2)
    engine = engines["flat"]
    batches = sum(engine.batch_sizes.values())
    with ThreadPoolExecutor(2) as pool:  # the second waits in the queue behind the first, and times out there
        first = pool.submit(client.get, "/search", params={"id": 5})
        time.sleep(0.05)
        second = pool.submit(client.get, "/search", params={"id": 7})
        for res in (first.result(), second.result()):
            assert res.status_code == 503 and "did not finish within" in res.json()["error"]
    monkeypatch.undo()
    time.sleep(0.8)  # the slow search ends after its request has gone
    res = client.get("/search", params={"id": 6})
    assert res.status_code == 200 and res.json()["query"] == "id:6"
    assert sum(engine.batch_sizes.values()) == batches + 2  # the first search and this one: the second skipped
    monkeypatch.setattr(engine, "max_queue", 0)
    res = client.get("/search", params={"id": 6})
    assert res.status_code == 503 and res.headers["retry-after"] == "1"
    assert res.json()["error"] == "busy: 0 searches of flat are waiting; retry shortly"


def _serve(index, model, *more: str, stdout=None) -> tuple[subprocess.Popen, str]:
    """`hashindex serve INDEX` in its own process, on a free port: (process, base URL) once it answers."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "hashindex", "serve", str(index), "--model", str(model),
                             "--port", "0", *more], stderr=subprocess.PIPE, stdout=stdout, text=True)
    for line in proc.stderr:
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if m:
            url = f"http://127.0.0.1:{m.group(1)}"
            break
    else:
        proc.kill()
        raise AssertionError("the service did not say where it listens")
    for _ in range(50):  # uvicorn listens a moment after the line
        try:
            httpx.get(url + "/health", timeout=5)
            break
        except httpx.ConnectError:
            time.sleep(0.1)
    return proc, url


def test_sigterm_is_a_graceful_stop(flat_index, tiny_model):
    proc, url = _serve(flat_index, tiny_model)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/health").status_code == 200
            assert client.get("/search", params={"id": 3}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_sighup_serves_what_build_append_grew(flat_index, tiny_model, tmp_path):
    """SIGHUP reopens the index from disk: items appended while serving are found afterwards, searches go on
    throughout; a reload that fails (a broken index on disk) keeps serving what was open and counts it."""
    import shutil
    import time

    from hashindex.extraction import extract
    from hashindex.index import append

    index = tmp_path / "index"
    shutil.copytree(flat_index, index)
    quiet = {"progress": False, "log": lambda m: None}
    extract(str(tiny_model), str(CIFAR_TEST), tmp_path / "new", limit=40, id_offset=10000, **quiet)
    new_id = int(ShardSet(tmp_path / "new").load(("ids",))["ids"][5])
    proc, url = _serve(index, tiny_model)

    def items(client) -> int:
        return client.get("/health").json()["indexes"]["index"]

    def after_sighup(client, until) -> None:
        proc.send_signal(signal.SIGHUP)
        for _ in range(300):
            if until():
                return
            assert client.get("/search", params={"id": 3}).status_code == 200  # served during the reload
            time.sleep(0.1)
        raise AssertionError("no reload within 30 s")

    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert items(client) == 10000 and client.get("/search", params={"id": new_id}).status_code == 404
            append(tmp_path / "new", index, **quiet)
            assert items(client) == 10000  # still the index it opened
            after_sighup(client, lambda: items(client) == 10040)
            found = client.get("/search", params={"id": new_id, "k": 3}).json()
            assert new_id in [r["id"] for r in found["results"]]  # (beside the indexed image it copies)
            assert 'hashindex_reloads_total{result="ok"} 1' in client.get("/metrics").text
            (index / "index.json").write_text("{")  # a broken index on disk
            after_sighup(client, lambda: 'hashindex_reloads_total{result="failed"} 1' in client.get("/metrics").text)
            assert items(client) == 10040 and client.get("/search", params={"id": new_id}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "reloaded: index (10,040 items)" in err and "reload failed, still serving" in err
        assert "Traceback" not in err and "destroyed" not in err, err
    finally:
        proc.kill()
        proc.wait()


def test_watch_reloads_what_another_process_changed(flat_index, tiny_model, tmp_path):
    """serve --watch: an index changed on disk by another process (here a removal) is served without SIGHUP; a
    broken one on disk is tried once (counted), not every look, and the open one served on."""
    import shutil
    import time

    from hashindex.index import remove
    from hashindex.service.engine import Engine

    index = tmp_path / "index"
    shutil.copytree(flat_index, index)
    url, stop = start_asgi({"index": Engine(index, str(tiny_model), name="index")}, watch=0.2)

    def until(client, done) -> None:
        for _ in range(300):
            if done():
                return
            time.sleep(0.1)
        raise AssertionError(f"not within 30 s: {client.get('/metrics').text[-300:]}")

    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            time.sleep(0.5)
            assert client.get("/health").json()["indexes"]["index"] == 10000  # nothing changed: no reload
            assert 'hashindex_reloads_total{result="ok"} 0' in client.get("/metrics").text
            remove(index, ids=[1, 2, 3], progress=False, log=lambda m: None)
            until(client, lambda: client.get("/health").json()["indexes"]["index"] == 9997)
            assert client.get("/search", params={"id": 2}).status_code == 404
            (index / "index.json").write_text("{")  # a broken index on disk
            until(client, lambda: 'hashindex_reloads_total{result="failed"} 1' in client.get("/metrics").text)
            time.sleep(1.0)  # five more looks: the same broken version is not tried again
            metrics = client.get("/metrics").text
            assert 'result="failed"} 1' in metrics and 'result="ok"} 1' in metrics
            assert client.get("/search", params={"id": 5}).status_code == 200
    finally:
        stop()


@pytest.mark.parametrize("server", ["asgi", "basic"])
def test_an_access_log_has_a_line_per_request(server, flat_index, tiny_model):
    """serve --access-log: each request's line (its path and status), on stdout (asgi, uvicorn's format) or
    stderr (basic); without the flag, none."""
    for flag in ([], ["--access-log"]):
        proc, url = _serve(flat_index, tiny_model, "--server", server, *flag, stdout=subprocess.PIPE)
        try:
            assert httpx.get(url + "/search", params={"id": 3, "k": 2}, timeout=60).status_code == 200
            assert httpx.get(url + "/search", params={"id": 3, "k": 0}, timeout=60).status_code == 400
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        said = out if server == "asgi" else err
        lines = [line for line in said.splitlines() if "GET /search?id=3" in line]
        if not flag:
            assert lines == [], said
        else:
            assert len(lines) == 2 and " 200" in lines[0] and " 400" in lines[1], said


def test_sighup_does_not_kill_the_basic_server(flat_index, tiny_model):
    """The basic server has no reload; SIGHUP (whose default action is to end a process) says so, and it goes on."""
    proc, url = _serve(flat_index, tiny_model, "--server", "basic")
    try:
        proc.send_signal(signal.SIGHUP)
        assert any("the basic server does not reload" in proc.stderr.readline() for _ in range(5))
        assert httpx.get(url + "/search", params={"id": 3}, timeout=60).status_code == 200
        proc.send_signal(signal.SIGINT)
        # it exits in about 3 s here; twice, with a training run and a 10-view extraction on the same 2 cores
        # beside the suite, it took over 30 s (never reproduced alone): the bound is for a hang, not a timing
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_writable_service_adds_images_to_the_index(flat_index, tiny_model, tmp_path):
    """serve --writable: POST /items appends uploads to INDEX_DIR (on disk before the answer) and serves them at
    once: new ids after the largest, the labels given, each upload found by its own image at Hamming 0;
    concurrent adds get distinct ids; a bad file, label or parameter adds nothing; read-only by default."""
    import shutil

    from hashindex.index import Index
    from hashindex.service.engine import Engine

    index_dir = tmp_path / "index"
    shutil.copytree(flat_index, index_dir)
    (a_name, a), (b_name, b), (c_name, c) = jpeg_bytes(3)
    url, stop = start_asgi({"photos": Engine(index_dir, str(tiny_model), name="photos")}, writable=True)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            files = [("file", ("a.jpg", a, "image/jpeg")), ("file", ("b.jpg", b, "image/jpeg"))]
            got = client.post("/items", params={"label": "cat"}, files=files)
            assert got.status_code == 200 and got.json() == {"added": 2, "ids": [10000, 10001], "items": 10002,
                                                             "index": "photos"}, got.text
            found = client.post("/search", params={"k": 20}, content=a).json()["results"]
            mine = next(r for r in found if r["id"] == 10000)
            assert mine == {**mine, "path": "a.jpg", "class": "cat", "hamming": 0}
            with ThreadPoolExecutor(2) as pool:  # two adds at once: one after the other, distinct ids
                answers = list(pool.map(lambda n: client.post("/indexes/photos/items", content=c,
                                                              params={"path": n, "label": "3"}).json(), ["x", "y"]))
            assert sorted(i for r in answers for i in r["ids"]) == [10002, 10003]
            assert client.get("/health").json()["indexes"]["photos"] == 10004
            for params, files, message in [
                    ({"label": "unicorn"}, None, "label=unicorn: not a class of this index (airplane, "),
                    ({"labels": "cat"}, None, "labels: unknown parameter (expected label, path)"),
                    ({}, [("file", ("ok.jpg", a, "image/jpeg")), ("file", ("bad.jpg", b"oops", "image/jpeg"))],
                     "body: not a decodable image (not-an-image)")]:
                bad = client.post("/items", params=params, **({"files": files} if files else {"content": a}))
                assert bad.status_code == 400 and bad.json()["error"].startswith(message), bad.text
            assert client.get("/health").json()["indexes"]["photos"] == 10004  # nothing added by them
    finally:
        stop()
    on_disk = Index.load(index_dir)
    assert on_disk.count == 10004 and on_disk.ids[-4:].tolist() == [10000, 10001, 10002, 10003]
    assert on_disk.paths(np.arange(10000, 10004)) in (["a.jpg", "b.jpg", "x", "y"], ["a.jpg", "b.jpg", "y", "x"])
    assert [on_disk.class_names[i] for i in on_disk.labels[-4:]] == ["cat", "cat", "cat", "cat"]


def test_an_add_the_disk_has_no_room_for_is_a_507_that_changes_nothing(flat_index, tiny_model, tmp_path,
                                                                        monkeypatch):
    """POST /items onto a full disk (its filesystem reporting 64 KB free): 507 in one line, the index on disk
    and the one served as they were; once there is room the same add goes through."""
    import os
    import shutil

    from hashindex.index import Index
    from hashindex.service.engine import Engine

    index_dir = tmp_path / "index"
    shutil.copytree(flat_index, index_dir)
    real_statvfs = os.statvfs
    fill_disk(monkeypatch, tmp_path)
    (_, a), = jpeg_bytes(1)
    url, stop = start_asgi({"photos": Engine(index_dir, str(tiny_model), name="photos")}, writable=True)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            got = client.post("/items", params={"label": "cat"}, content=a)
            assert got.status_code == 507 and got.json()["error"].startswith(
                "add: no space left on the server's disk; nothing was changed"), got.text
            assert client.get("/health").json()["indexes"]["photos"] == 10000
            assert Index.load(index_dir).count == 10000 and not list(tmp_path.glob(".index.*"))
            monkeypatch.setattr(os, "statvfs", real_statvfs)
            assert client.post("/items", params={"label": "cat"}, content=a).json()["ids"] == [10000]
    finally:
        stop()


def test_a_writable_service_takes_items_out(flat_index, tiny_model, tmp_path):
    """DELETE /items?ids=...: the items leave INDEX_DIR and the served index at once; a removed id is not
    given to a later upload; unknown ids, bad values and parameters are 400s that change nothing."""
    import shutil

    from hashindex.index import Index
    from hashindex.service.engine import Engine

    index_dir = tmp_path / "index"
    shutil.copytree(flat_index, index_dir)
    [(_, a)] = jpeg_bytes(1)
    url, stop = start_asgi({"photos": Engine(index_dir, str(tiny_model), name="photos")}, writable=True)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            assert client.post("/items", content=a).json()["ids"] == [10000]
            got = client.delete("/indexes/photos/items", params={"ids": "10000,5"})
            assert got.status_code == 200 and got.json() == {"removed": 2, "items": 9999, "index": "photos"}, got.text
            assert client.get("/search", params={"id": 5}).status_code == 404
            found = client.post("/search", params={"k": 50}, content=a).json()["results"]
            assert 10000 not in [r["id"] for r in found]
            assert client.post("/items", content=a).json()["ids"] == [10001]  # 10000 is not given again
            kept = client.get("/items/10001/image")  # an upload's bytes are not kept
            assert kept.status_code == 404 and "images were not kept" in kept.json()["error"]
            for params, message in [({"ids": "5"}, "ids: 1 not in"), ({"ids": "x"}, "ids=x: expected integers"),
                                    ({}, "ids: name the items"), ({"id": "7"}, "id: unknown parameter")]:
                bad = client.delete("/items", params=params)
                assert bad.status_code == 400 and bad.json()["error"].startswith(message), bad.text
            assert client.get("/health").json()["indexes"]["photos"] == 10000
    finally:
        stop()
    assert Index.load(index_dir).count == 10000 and 5 not in Index.load(index_dir).ids


def test_writes_need_the_write_token_when_there_is_one(flat_index, tiny_model, tmp_path):
    """serve --writable with a write token: POST and DELETE /items without it, or with another, are 401s that
    change nothing (searches need none); with it they go on, or are 409s while another process writes the
    index. --writable on an address others reach needs a token: one line, exit 2, before any index is opened."""
    import shutil

    from click.testing import CliRunner

    from hashindex import HashindexError
    from hashindex.cli import cli
    from hashindex.index.writing import exclusive_index
    from hashindex.service.app import create_app
    from hashindex.service.engine import Engine

    index_dir = tmp_path / "index"
    shutil.copytree(flat_index, index_dir)
    [(_, a)] = jpeg_bytes(1)
    url, stop = start_asgi({"photos": Engine(index_dir, str(tiny_model), name="photos")}, writable=True,
                           write_token="s3cret-token")
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": "Basic s3cret-token"}):
                for method, path, kw in [("POST", "/items", {"content": a}), ("POST", "/indexes/photos/items",
                                         {"content": a}), ("DELETE", "/items", {"params": {"ids": "5"}})]:
                    got = client.request(method, path, headers=headers, **kw)
                    assert got.status_code == 401 and got.headers["www-authenticate"] == "Bearer", got.text
                    assert got.json()["error"] == f"{method} {path}: needs the write token (header " \
                                                  "'Authorization: Bearer TOKEN')"
            assert client.get("/health").json()["indexes"]["photos"] == 10000  # nothing written
            assert client.get("/search", params={"id": 5}).status_code == 200  # reads need no token
            token = {"Authorization": "Bearer s3cret-token"}
            with exclusive_index(index_dir):  # another process building, appending or removing: 409, retry
                for busy in (client.post("/items", content=a, headers=token),
                             client.delete("/items", params={"ids": "5"}, headers=token)):
                    assert busy.status_code == 409 and busy.headers["retry-after"] == "5", busy.text
                    assert "another append to it is running" in busy.json()["error"]
            assert client.post("/items", content=a, headers=token).json()["ids"] == [10000]
            assert client.delete("/items", params={"ids": "5"}, headers=token).json()["removed"] == 1
    finally:
        stop()
    with pytest.raises(HashindexError, match="write_token: needs writable=True"):
        create_app({"photos": Engine(index_dir, str(tiny_model), name="photos")}, write_token="x")
    for args, message in [(["--writable", "--host", "0.0.0.0"], "--writable on --host 0.0.0.0: others can reach it"),
                          (["--write-token", "x"], "--write-token: only with --writable"),
                          (["--writable", "--write-token", " "], "--write-token: blank")]:
        res = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-such-index"), *args])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output


def test_an_items_image_file_is_served(service):
    """GET /items/ID/image: the bytes of the item's file in its collection (a member of the CIFAR-10 tar here),
    with its media type; 404s for an unknown id."""
    from hashindex.data import open_source

    client, _ = service
    src = open_source(CIFAR_TEST)
    for url in ("/items/5/image", "/indexes/cos/items/5/image"):
        got = client.get(url)
        assert got.status_code == 200 and got.content == src.read_bytes(5), url
        assert got.headers["content-type"] == "image/jpeg"
    got = client.get("/items/123456/image")
    assert got.status_code == 404 and got.json()["error"] == "id=123456: no such item in flat"
    small = client.get("/indexes/cos/items/5/image?size=16")  # a thumbnail: JPEG, at most 16 px a side
    assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(small.content)).size == (16, 16)  # (the CIFAR image is 32 x 32)
    bigger = client.get("/items/5/image?size=64")  # a thumbnail never enlarges: the 32 x 32 image, re-encoded
    assert Image.open(io.BytesIO(bigger.content)).size == (32, 32) and bigger.headers["content-type"] == "image/jpeg"
    for params, error in (("size=8", "size=8: expected at least 16"), ("size=x", "size=x: expected an integer"),
                          ("sise=64", "sise: unknown parameter (expected size)")):
        got = client.get(f"/items/5/image?{params}")
        assert got.status_code == 400 and got.json()["error"] == error, params


def test_the_page_uses_the_api_it_is_served_with(service):
    """GET /ui: a page over the service's own endpoints; each one it calls answers (an image search, an id
    search, an item's image, GET /)."""
    import re

    client, _ = service
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    calls = set(re.findall(r"\$\{(?:base\(.*?\)|url)\}(/[^`]+)`", page.text))
    assert calls == {"/items/${id}/image?size=${2 * side}", "/search?id=${id}&${options()}",
                     "/search?${options()}", "/batch?together=1&${options()}",
                     "/batch?together=1&exclude_self=1&${options()}"}, calls
    assert re.findall(r"itemPicture\(.*?, (\d+)\)", page.text) == ["150", "160", "160"]  # results, queries
    assert client.get("/indexes/flat/items/5/image?size=300").headers["content-type"] == "image/jpeg"
    [(_, jpeg), (_, other)] = jpeg_bytes(2)
    files = [("file", ("a.jpg", jpeg, "image/jpeg")), ("file", ("b.jpg", other, "image/jpeg"))]
    rows = client.post("/indexes/flat/batch?together=1&k=3&rerank=1", files=files).json()["results"]
    assert len(rows) == 1 and rows[0]["query"] == "file:a.jpg + file:b.jpg" and len(rows[0]["results"]) >= 3
    chosen = [hit["id"] for hit in rows[0]["results"][:2]]  # "more like the chosen": without them
    more = client.post("/indexes/flat/batch?together=1&exclude_self=1&k=3", json={"ids": chosen}).json()
    found = {h["id"] for h in more["results"][0]["results"]}
    assert len(found) >= 3 and not set(chosen) & found
    found = client.post("/indexes/flat/search?k=3&rerank=1", content=jpeg).json()["results"]
    assert client.get(f"/indexes/flat/search?id={found[0]['id']}&k=3&rerank=0").status_code == 200
    assert client.get(f"/indexes/flat/items/{found[0]['id']}/image").status_code == 200
    info = client.get("/").json()
    assert set(info) >= {"indexes", "items", "name", "classes"} and set(info["classes"]) == set(info["indexes"])
    assert "only_class=${encodeURIComponent(" in page.text  # the page's "results of" filter: only_class
    cat = client.get(f"/indexes/flat/search?id={found[0]['id']}&k=3&only_class=cat").json()["results"]
    assert info["classes"]["flat"] == client.get("/").json()["class_names"] and {h["class"] for h in cat} == {"cat"}


def test_an_items_media_type_comes_from_its_bytes():
    from hashindex.service.served import media_type
    from tests.conftest import image_bytes

    for fmt, kind in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif")):
        assert media_type(image_bytes(fmt), "t10k-images-idx3-ubyte.gz#5") == kind
    assert media_type(b"????", "photo.heic") == "image/heic" and media_type(b"", "x#1") == "application/octet-stream"


def test_added_items_labels():
    """POST /items' label: a class name or number of the index; a|b sets of a multi-label index; none."""
    from hashindex.service.params import RequestError
    from hashindex.service.writes import item_labels

    names = ["beach", "sunset", "city"]
    assert item_labels("sunset", names, False) == (1, None) and item_labels("2", names, False) == (2, None)
    assert item_labels(None, names, False) == (-1, None)
    assert item_labels("e\u0301lan", ["\u00e9lan"], False) == (0, None)  # NFD from a Mac: the same class
    label, row = item_labels("city|beach", names, True)
    assert label == 2 and row.tolist() == [True, False, True]
    assert item_labels("", names, True)[1].tolist() == [False, False, False]
    for raw, multi, message in [("forest", False, "label=forest: not a class of this index (beach, sunset, city)"),
                                ("beach|city", False, "label=beach|city: one class per item in this index"),
                                ("beach|9", True, "label=9: not a class of this index")]:
        with pytest.raises(RequestError, match=re.escape(message)):
            item_labels(raw, names, multi)


def test_pages_of_the_origins_given_may_call_it_from_a_browser(service, flat_index, tiny_model, tmp_path):
    """serve --cors-origin: a browser's preflight from that origin is allowed (the Authorization header too, with
    no token: a preflight carries none), answers (a 401 included, so the page can read why) carry the origin;
    another origin gets no grant, and a service without --cors-origin grants none. A bad origin is one line."""
    from click.testing import CliRunner

    from hashindex.cli import cli
    from hashindex.service.engine import Engine

    site, other = "https://photos.example.com", "https://elsewhere.example.com"
    client, _ = service
    plain = client.get("/search", params={"id": 5}, headers={"Origin": site})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    url, stop = start_asgi({"flat": Engine(flat_index, str(tiny_model), name="flat")}, read_token="r34d",
                           cors_origins=(site,))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    try:
        with httpx.Client(base_url=url, timeout=60) as web:
            got = web.options("/search", headers={"Origin": site, **preflight})
            assert got.status_code == 200 and got.headers["access-control-allow-origin"] == site
            assert "authorization" in got.headers["access-control-allow-headers"].lower()
            ok = web.get("/search", params={"id": 5}, headers={"Origin": site, "Authorization": "Bearer r34d"})
            assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == site
            denied = web.get("/search", params={"id": 5}, headers={"Origin": site})
            assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == site
            assert web.options("/search", headers={"Origin": other, **preflight}).status_code == 400
            assert "access-control-allow-origin" not in web.get(
                "/search", params={"id": 5}, headers={"Origin": other, "Authorization": "Bearer r34d"}).headers
    finally:
        stop()
    for args, message in [(["--cors-origin", site + "/"], "--cors-origin https://photos.example.com/: expected"),
                          (["--cors-origin", "photos.example.com"], "expected scheme://host[:port]"),
                          (["--server", "basic", "--cors-origin", "*"], "--cors-origin: the asgi server's"),
                          (["--server", "basic", "--watch", "5"], "--watch: the asgi server's")]:
        res = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-such-index"), *args])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output


def test_the_page_searches_dropped_and_pasted_photos_and_again_when_k_changes(tmp_path):
    """The /ui page's script run by node on a minimal DOM (tests/data/ui_harness.js): a photo dropped on the page
    is searched, a new k searches it again, a dropped text file is refused in the status line, two pasted photos
    are searched as one, and after another index is chosen nothing is searched again."""
    import json
    import shutil
    import subprocess
    from importlib.resources import files

    from tests.conftest import ROOT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the page's script runs in it)")
    page = files("hashindex.service").joinpath("ui.html").read_text()
    script = tmp_path / "ui.js"
    script.write_text(page.split("<script>", 1)[1].split("</script>", 1)[0])
    out = subprocess.run([node, str(ROOT / "tests" / "data" / "ui_harness.js"), str(script)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    steps = {s["step"]: s for s in map(json.loads, out.splitlines())}
    urls = {name: [(c["method"], c["url"]) for c in s["calls"]] for name, s in steps.items()}
    assert urls["load"] == [("GET", "/")]
    assert urls["drop"] == [("POST", "/indexes/flat/search?k=20&rerank=1")]
    assert urls["k"] == [("POST", "/indexes/flat/search?k=5&rerank=1")]
    assert urls["drop-text"] == [] and steps["drop-text"]["status"].startswith("not an image")
    assert urls["paste-two"] == [("POST", "/indexes/flat/batch?together=1&k=5&rerank=1")]
    assert urls["paste-text"] == [] and urls["index-then-rerank"] == []
