"""`hashindex serve`: HTTP answers equal `hashindex query`'s, bad requests get a status and one line.

Every test of this module runs against both servers: the ASGI service (FastAPI on uvicorn, batched searches)
and the basic standard-library one; tests/test_service.py covers what only the ASGI service has."""

import json
import socket
import tarfile
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex.cli import cli
from hashindex.index import Index
from hashindex.query import query
from hashindex.service.basic import Searcher, make_server
from tests.conftest import CIFAR_TEST, jpeg_bytes, need, same_ranking


def start_asgi(engines, writable: bool = False, write_token=None, read_token=None, tls_cert=None, tls_key=None,
               cors_origins=(), watch=None):
    """A real uvicorn server over engines, on a free port, in a thread: (url, stop)."""
    import time

    from hashindex.service import asgi_server, bind

    sock = bind("127.0.0.1", 0)
    server = asgi_server(engines, writable=writable, write_token=write_token, read_token=read_token,
                         tls_cert=tls_cert, tls_key=tls_key, cors_origins=cors_origins, watch=watch)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.01)

    def stop():
        server.should_exit = True
        thread.join(timeout=30)
    return f"{'https' if tls_cert else 'http'}://127.0.0.1:{sock.getsockname()[1]}", stop


def start_server(kind: str, index, model, read_token=None, tls_cert=None, tls_key=None):
    """Either server over ``index`` (as the one index "flat"), on a free port, in a thread: (url, stop)."""
    if kind == "asgi":
        from hashindex.service.engine import Engine

        return start_asgi({"flat": Engine(index, str(model), name="flat")}, read_token=read_token,
                          tls_cert=tls_cert, tls_key=tls_key)
    from hashindex.service import tls_context

    srv = make_server(Searcher(index, model=str(model)), port=0, read_token=read_token,
                      tls=tls_context(tls_cert, tls_key))
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop():
        srv.shutdown()
        srv.server_close()
    return f"{'https' if tls_cert else 'http'}://127.0.0.1:{srv.server_address[1]}", stop


@pytest.fixture(scope="module", params=["asgi", "basic"])
def server(request, flat_index, tiny_model):
    url, stop = start_server(request.param, flat_index, tiny_model)
    yield url
    stop()


def kind(request) -> str:
    return request.node.callspec.params["server"]


def call(url, data=None):
    """(status, parsed JSON body) of a GET, or of a POST when data is given."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_info(server):
    status, body = call(server + "/")
    assert status == 200 and body["items"] == 10000 and body["bits"] == 48 and len(body["class_names"]) == 10


def test_image_and_id_searches_equal_the_cli_api(server, flat_index, tiny_model, tmp_path):
    need(CIFAR_TEST)
    with tarfile.open(CIFAR_TEST) as tf:
        member = next(m for m in tf if m.isfile())
        data = tf.extractfile(member).read()
    path = tmp_path / "q.jpg"
    path.write_bytes(data)
    status, got = call(server + "/search?k=7", data)
    want = query(flat_index, [str(path)], [], model=str(tiny_model), k=7)[0]
    assert status == 200 and got["results"] == want["results"] and len(got["results"]) >= 7
    assert got["query"] == "upload" and got["took_ms"] >= 0
    for qs, opts in [("id=5&k=5", dict(k=5)), ("id=5&radius=1", dict(radius=1)),
                     ("id=77&k=3&rerank=0&cut_ties=1", dict(k=3, rerank=False, complete_ties=False)),
                     ("id=5&k=4&exclude_self=1", dict(k=4, exclude_self=True)),
                     ("id=5&radius=2&exclude_self=1", dict(radius=2, exclude_self=True))]:
        status, got = call(f"{server}/search?{qs}")
        want = query(flat_index, [], [int(qs.split("&")[0][3:])], **opts)[0]
        assert status == 200 and got["results"] == want["results"], qs


def test_pages_health_and_item_images(server, flat_index):
    """Both servers: GET /health, the search page and the /indexes/NAME paths it calls, an item's image file (a
    member of the CIFAR-10 tar, byte for byte, with its media type); 404s naming an unknown id or index."""
    from hashindex.data import open_source

    src = open_source(need(CIFAR_TEST))
    status, info = call(server + "/")
    assert status == 200 and info["indexes"] == [info["name"]] == ["flat"]
    assert call(server + "/health") == (200, {"status": "ok", "indexes": {"flat": 10000}})
    with urllib.request.urlopen(server + "/ui", timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/html") and b"/items/${id}/image?size=" in r.read()
    for path in ("/items/5/image", "/indexes/flat/items/5/image"):
        with urllib.request.urlopen(server + path, timeout=60) as r:
            assert r.read() == src.read_bytes(5) and r.headers["Content-Type"] == "image/jpeg", path
    with urllib.request.urlopen(server + "/items/5/image?size=16", timeout=60) as r:  # a thumbnail (the page's)
        assert r.headers["Content-Type"] == "image/jpeg" and r.read() != src.read_bytes(5)
    too_big = (400, {"error": "size=9999: expected at most 2048 (pixels a side)"})
    assert call(server + "/items/5/image?size=9999") == too_big
    index = Index.load(flat_index)  # GET /items/ID: the item as a result names it, and its code
    position = int(index.positions_of(np.array([5]))[0])
    status, item = call(server + "/indexes/flat/items/5")
    assert status == 200 and item == call(server + "/items/5")[1]
    assert item == {"id": 5, "path": index.paths(np.array([position]))[0], "label": int(index.labels[position]),
                    "class": index.class_names[int(index.labels[position])], "bits": index.bits,
                    "code": index.items(np.array([position]))[0][0].tobytes().hex()}
    hit = call(server + "/search?id=5&k=1")[1]["results"][0]
    fields = ("id", "path", "label", "class")
    assert {k: hit[k] for k in fields} == {k: item[k] for k in fields}
    assert call(server + "/items/123456") == (404, {"error": "id=123456: no such item in flat"})
    assert call(server + "/items/5?k=3") == (400, {"error": "k: unknown parameter (this endpoint takes none)"})
    named, plain = call(server + "/indexes/flat/search?id=5&k=3"), call(server + "/search?id=5&k=3")
    assert named[0] == 200 and named[1]["results"] == plain[1]["results"]
    assert call(server + "/items/123456/image") == (404, {"error": "id=123456: no such item in flat"})
    assert call(server + "/indexes/other/search?id=5") == (404, {"error": "index=other: no such index (served: flat)"})


def test_concurrent_requests_get_their_own_answers(server, flat_index):
    ids = [3, 141, 592, 6535, 8979, 3238] * 2
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: call(f"{server}/search?id={i}&k=5"), ids))
    for i, (status, got) in zip(ids, answers):
        assert status == 200 and got["query"] == f"id:{i}"
        assert got["results"] == query(flat_index, [], [i], k=5)[0]["results"]


@pytest.mark.parametrize("path,data,status,message", [
    ("/search?k=5", b"not an image at all", 400, "body: not a decodable image (not-an-image)"),
    ("/search?id=99999999", None, 404, "id=99999999: no item with this id in the index"),
    ("/search?id=5&k=0", None, 400, "k=0: expected at least 1"),
    ("/search?id=5&k=ten", None, 400, "k=ten: expected an integer"),
    ("/search?id=5&k=10&candidates=3", None, 400, "candidates=3: must be at least k=10"),
    ("/search?id=5&rerank=maybe", None, 400, "rerank=maybe: expected 0 or 1"),
    ("/search", None, 400, "GET /search needs id=ID (or POST an image)"),
    ("/nope", None, 404, "/nope: no such endpoint ("),
    ("/search?id=5&k=100000", None, 400, "k=100000: at most 1000 in one request"),
    ("/search?id=5&candidates=10000000", None, 400, "candidates=10000000: at most 100000 in one request"),
    # a misspelt option is refused, not ignored; an id beside an uploaded image is ambiguous
    ("/search?id=5&kk=3", None, 400, "kk: unknown parameter (expected k, candidates, radius, rerank, cut_ties, "
                                     "nprobe, exclude_self, only_class, only_folder, only_ids, not_class, "
                                     "not_folder, id)"),
    ("/search?k=3&id=5", b"not an image at all", 400, "id=5: this request searches with its uploaded image; "
                                                      "search with an indexed item by GET /search?id=ID"),
    ("/search?k=3&exclude_self=1", b"not an image at all", 400,
     "exclude_self=1: an uploaded image is not an indexed item (exclude_self is for searches with an id)"),
    ("/search?k=3&topk=4", b"not an image at all", 400,
     "topk: unknown parameter (expected k, candidates, radius, rerank, cut_ties, nprobe, exclude_self, only_class, "
     "only_folder, only_ids, not_class, not_folder)"),
])
def test_bad_requests(server, path, data, status, message):
    got_status, body = call(server + path, data)
    assert got_status == status and list(body) == ["error"]
    assert body["error"] == message or message.endswith("(") and body["error"].startswith(message)


def test_a_query_encoded_elsewhere_ranks_as_its_photo(server, flat_index, tiny_model, tmp_path):
    """POST /search with JSON {"model_id", "code", "features"} (what the model's ONNX file gives where the photo
    is): the photo's ranking, as `hashindex query` gives it; without the feature, with rerank=0, Hamming's. A
    code of another model, of the wrong width, a missing or malformed feature: a 400 naming the field."""
    from hashindex import load_model

    flowers = need(CIFAR_TEST.parent.parent / "flowers" / "test.tar")  # a photo the index does not hold
    with tarfile.open(flowers) as tf:
        data = tf.extractfile(next(m for m in tf if m.isfile())).read()
    path = tmp_path / "q.jpg"
    path.write_bytes(data)
    model = load_model(tiny_model)
    fields = model.encode_fields([str(path)])
    body = {"model_id": model.model_id, "code": fields["codes"][0].tobytes().hex(),
            "features": fields["features"][0].tolist()}
    status, got = post(server + "/search?k=7", json.dumps(body).encode())
    want = query(flat_index, [str(path)], [], model=str(tiny_model), k=7)[0]
    assert status == 200 and got["query"] == "encoded" and got["results"] == want["results"]
    hamming = {k: v for k, v in body.items() if k != "features"}
    status, got = post(server + "/search?k=5&rerank=0", json.dumps(hamming).encode())
    want = query(flat_index, [str(path)], [], model=str(tiny_model), k=5, rerank=False)[0]
    assert status == 200 and got["results"] == want["results"]
    for change, message in [({"model_id": "ffffffffffffffff"}, "model_id=ffffffffffffffff: the index holds codes "
                                                               f"of model {model.model_id}"),
                            ({"code": "00ff"}, "code: expected 12 hex digits, the 48-bit code packed"),
                            ({"code": "zz" * 6}, "code: expected 12 hex digits"),
                            ({"features": None}, "features: needed by this index's fine stage"),
                            ({"features": [0.5] * 191}, "features: expected a list of 192 finite numbers"),
                            ({"features": ["a"] * 192}, "features: expected a list of 192 finite numbers"),
                            ({"labels": [1]}, "body: unknown field 'labels'")]:
        status, got = post(server + "/search?k=3", json.dumps({**body, **change}).encode())
        assert status == 400 and got["error"].startswith(message), (change, got)
    for raw in (b"[1, 2]", b"{oops", b'"text"'):
        status, got = post(server + "/search", raw)
        assert status == 400 and got["error"].startswith("body: expected a JSON object"), raw
    status, got = post(server + "/search?exclude_self=1", json.dumps(body).encode())
    assert status == 400 and got["error"].startswith("exclude_self=1: ")


def multipart(files: list[tuple[str, bytes]], boundary: str = "hashindex-test-boundary",
              field: str = "file") -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data request with these files in ``field`` fields, as a browser
    sends it."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, data: bytes, media: str = "application/json") -> tuple[int, dict]:
    try:
        req = urllib.request.Request(url, data=data, headers={"Content-Type": media})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_batch_on_both_servers(server, flat_index, tiny_model, tmp_path):
    """POST /batch (the /ui page posts several photos there, ?together=1 to search them as one): JSON ids or
    multipart photos, one row each with a query's own error in its row, or one row searched as one; the same
    rows from both servers and from `hashindex query`."""
    ids = [3, 141, 99999999, 592]
    status, body = post(server + "/batch?k=4", json.dumps({"ids": ids}).encode())
    assert status == 200 and len(body["results"]) == 4
    for i, row in zip(ids, body["results"]):
        if i == 99999999:
            assert row == {"error": "id=99999999: no item with this id in the index", "status": 404}
        else:
            assert row["query"] == f"id:{i}" and row["results"] == query(flat_index, [], [i], k=4)[0]["results"]
    status, body = post(server + "/batch?k=5&together=1&exclude_self=1", b'{"ids": [3, 40]}')
    want = query(flat_index, [], [3, 40], k=5, together=True, exclude_self=True)[0]["results"]
    assert status == 200 and [row["query"] for row in body["results"]] == ["id:3 + id:40"]
    assert body["results"][0]["results"] == want and len(want) == 5

    (_, a), (_, b) = jpeg_bytes(2)
    for name, data in (("a.jpg", a), ("b.jpg", b)):
        (tmp_path / name).write_bytes(data)
    status, body = post(server + "/batch?k=6", *multipart([("a.jpg", a), ("b.jpg", b), ("bad.jpg", b"junk")]))
    alone = query(flat_index, [str(tmp_path / "a.jpg")], [], model=str(tiny_model), k=6)[0]["results"]
    assert status == 200 and [row.get("query") for row in body["results"]] == ["file:a.jpg", "file:b.jpg", None]
    assert same_ranking(body["results"][0]["results"], alone)
    assert body["results"][2] == {"error": "body: not a decodable image (not-an-image)", "status": 400}
    status, body = post(server + "/batch?k=6", *multipart([("a.jpg", a)], field="image"))  # any name of field
    assert status == 200 and body["results"][0]["query"] == "file:a.jpg"
    assert same_ranking(body["results"][0]["results"], alone)
    status, body = post(server + "/batch?k=6&together=1", *multipart([("a.jpg", a), ("b.jpg", b)]))
    want = query(flat_index, [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")], [], model=str(tiny_model), k=6,
                 together=True)[0]["results"]
    assert status == 200 and body["results"][0]["query"] == "file:a.jpg + file:b.jpg"
    assert same_ranking(body["results"][0]["results"], want)

    for url, data, status, error in [
            ("/batch?together=1", b'{"ids": [3, 99999999]}', 404, "id=99999999: no item with this id in the index"),
            ("/batch?together=1", b'{"ids": []}', 400, "ids: empty (together=1 searches the queries given as one: "
                                                       "give at least one)"),
            ("/batch", json.dumps({"ids": list(range(65))}).encode(), 400, "ids: 65 queries, at most 64 in one "
                                                                            "request"),
            ("/batch", b"{oops", 400, 'body: expected JSON {"ids": [integers]} and/or {"queries": [encoded '
                                      'queries]}, or multipart "file" fields'),
            ("/batch?together=2", b'{"ids": [3]}', 400, "together=2: expected 0 or 1"),
            ("/batch", (b'--B\r\nContent-Disposition: form-data; name="k"\r\n\r\n6\r\n--B--\r\n',
                        "multipart/form-data; boundary=B"), 400, 'multipart body: no file in it (send the image as '
                                                                  'a "file" field: curl -F file=@photo.jpg)'),
            ("/batch?exclude_self=1", multipart([("a.jpg", a)]), 400, "exclude_self=1: an uploaded image is not "
                                                                     "an indexed item (exclude_self is for searches "
                                                                     "with an id)")]:
        got = post(server + url, *data) if isinstance(data, tuple) else post(server + url, data)
        assert got == (status, {"error": error}), url
    assert call(server + "/batch") == (405, {"error": "/batch: Method Not Allowed"})  # GET: POST it


def test_a_batch_of_queries_encoded_elsewhere(server, flat_index, tiny_model, tmp_path):
    """POST /batch with JSON {"ids": [...], "queries": [encoded queries]} (what the model's ONNX file gives
    where the photos are): a row each, the ids' first, each query's ranking its photo's as `hashindex query`
    gives it; a bad query's own 400 in its row, naming its place and field; with together=1 the photos'
    ranking searched as one. Both servers."""
    from hashindex import load_model

    (_, a), (_, b) = jpeg_bytes(2)
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path, data in zip(paths, (a, b)):
        path.write_bytes(data)
    model = load_model(tiny_model)
    fields = model.encode_fields([str(p) for p in paths])
    queries = [{"model_id": model.model_id, "code": fields["codes"][i].tobytes().hex(),
                "features": fields["features"][i].tolist()} for i in range(2)]
    bad = {**queries[1], "code": "00ff"}
    status, body = post(server + "/batch?k=5", json.dumps({"ids": [7], "queries": [queries[0], bad, queries[1]]})
                        .encode())
    assert status == 200 and [r.get("query") for r in body["results"]] == ["id:7", "encoded:0", None, "encoded:2"]
    assert body["results"][0]["results"] == query(flat_index, [], [7], k=5)[0]["results"]
    for row, path in zip(body["results"][1::2], paths):
        want = query(flat_index, [str(path)], [], model=str(tiny_model), k=5)[0]["results"]
        assert same_ranking(row["results"], want)
    assert body["results"][2] == {"error": "queries[1].code: expected 12 hex digits, the 48-bit code packed as "
                                           "GET /items/ID shows it (the ONNX file's codes output)", "status": 400}
    status, body = post(server + "/batch?k=6&together=1", json.dumps({"queries": queries}).encode())
    want = query(flat_index, [str(p) for p in paths], [], model=str(tiny_model), k=6, together=True)[0]["results"]
    assert status == 200 and body["results"][0]["query"] == "encoded:0 + encoded:1"
    assert same_ranking(body["results"][0]["results"], want)
    hamming = [{k: v for k, v in q.items() if k != "features"} for q in queries]  # rerank=0 needs no feature
    status, body = post(server + "/batch?k=4&rerank=0", json.dumps({"queries": hamming}).encode())
    assert status == 200 and all(r["query"].startswith("encoded:") for r in body["results"])
    for url, data, error in [
            ("/batch?together=1", {"queries": [queries[0], bad]}, "queries[1].code: expected 12 hex digits"),
            ("/batch?together=1", {"queries": [queries[0], [1]]}, 'queries[1]: expected a JSON object {"model_id"'),
            ("/batch", {"queries": [{**queries[0], "features": [1.0] * 3}]}, None),
            ("/batch", {"queries": queries * 33}, "queries: 66 queries, at most 64 in one request"),
            ("/batch", {"ids": [1] * 40, "queries": queries * 12}, "ids + queries: 64 queries"),
            ("/batch", {"queries": {"model_id": "x"}}, "queries: expected a list of JSON objects"),
            ("/batch", {"ids": [1], "photos": []}, "body: unknown field 'photos' (expected ids and/or queries)")]:
        status, body = post(server + url, json.dumps(data).encode())
        if error is None:  # a malformed feature: the row's error, not the request's
            assert status == 200 and body["results"][0]["error"].startswith("queries[0].features: expected a list "
                                                                            "of 192 finite numbers"), body
        elif error.startswith("ids + queries: 64"):  # 64 in all is allowed
            assert status == 200 and len(body["results"]) == 64, url
        else:
            assert status == 400 and body["error"].startswith(error), (url, body)


def test_a_server_that_does_not_write_says_so(server):
    """POST or DELETE /items on a service started without --writable, and on the basic server (which never
    writes): a 403 naming the flag, not a 404 that reads as a wrong address; nothing is added or removed."""
    for method, data in (("POST", b"not read"), ("DELETE", None)):
        for path in ("/items?ids=5", "/indexes/flat/items?ids=5"):
            req = urllib.request.Request(server + path, data=data, method=method)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=60)
            assert e.value.code == 403, (method, path)
            assert json.loads(e.value.read()) == {"error": f"{method} {path.split('?')[0]}: this service is "
                                                  "read-only (start it with `hashindex serve --writable` to add and "
                                                  "remove items; the basic server never writes)"}
    assert call(server + "/")[1]["items"] == 10000
    with pytest.raises(urllib.error.HTTPError) as e:  # and DELETE is no way to search
        urllib.request.urlopen(urllib.request.Request(server + "/search?k=3", data=b"x", method="DELETE"), timeout=60)
    assert e.value.code in (404, 405) and list(json.loads(e.value.read())) == ["error"]


def test_cli_serve_errors(flat_index, tiny_model, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["serve", str(tmp_path / "none")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "none" in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = runner.invoke(cli, ["serve", str(flat_index), "--model", str(tiny_model), "--port", str(port)])
    last = res.output.splitlines()[-1]
    assert res.exit_code == 2 and last == f"hashindex: error: --port {port}: cannot listen on 127.0.0.1:{port} " \
                                         "(Address already in use)"
    res = runner.invoke(cli, ["serve", str(flat_index), "--server", "basic", "--writable"])
    assert res.exit_code == 2 and res.output == ("hashindex: error: --writable: the basic server only searches (the "
                                                 "asgi server adds items)\n")


def raw_request(server: str, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send raw bytes (headers we choose, however wrong) and parse the status and JSON answer."""
    host, port = server.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        try:
            s.sendall(head + b"\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before reading all of it: the answer is what counts
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


MALFORMED = "malformed HTTP request (check Content-Length and the headers)"  # uvicorn's parser refuses these


@pytest.mark.parametrize("headers,status,message", [
    (b"Content-Length: -1\r\n", 400, {"basic": "Content-Length: -1: expected a number of bytes", "asgi": MALFORMED}),
    (b"Content-Length: abc\r\n", 400, {"basic": "Content-Length: abc: expected a number of bytes", "asgi": MALFORMED}),
    (b"", 411, "POST /search needs a Content-Length (the body's size in bytes)"),
    (b"Content-Length: 300000000\r\n", 413, "body of 300000000 bytes: at most 33554432 in one request"),
])
def test_body_cap_cannot_be_bypassed(request, server, headers, status, message):
    """Every way of declaring a body gets a status and one line, and nothing past the cap is read."""
    head = b"POST /search?k=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers
    message = message[kind(request)] if isinstance(message, dict) else message
    assert raw_request(server, head) == (status, {"error": message})


def test_chunked_bodies(request, server):
    """The basic server refuses chunked bodies (411); the ASGI one reads them, counting against the cap."""
    head = b"POST /search?k=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
    if kind(request) == "basic":
        assert raw_request(server, head) == (411, {"error": "chunked bodies are not accepted: send Content-Length"})
        return
    small = b"5\r\nhello\r\n0\r\n\r\n"
    assert raw_request(server, head, small) == (400, {"error": "body: not a decodable image (not-an-image)"})
    chunk = b"x" * (1 << 20)
    big = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"  # 40 MiB > 32 MiB
    status, body = raw_request(server, head, big)
    assert status == 413 and body["error"].startswith("body of more than 33554432 bytes")


def test_pixel_cap_is_checked_before_decoding(server):
    """A small PNG declaring 12000 x 12000 pixels is refused from its header, and the server goes on."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 1_000_000
    status, body = call(server + "/search?k=5", buf.getvalue())
    assert status == 400 and body == {"error": "body: not a decodable image (too-large)"}
    assert call(server + "/search?id=5&k=3")[0] == 200


def test_radius_results_are_capped(server, monkeypatch):
    """A radius search that would answer with the whole index (10,000 items here) is refused past the cap."""
    import hashindex.service.params

    monkeypatch.setattr(hashindex.service.params, "MAX_RESULTS", 5000)
    assert call(server + "/search?id=5&radius=48") == (400, {"error": "radius=48: 10000 items within it for one "
                                                               "query, more than max_results=5000 (use a smaller "
                                                               "radius, or k)"})
    status, body = call(server + "/search?id=5&radius=0")
    assert status == 200 and 0 < len(body["results"]) <= 5000


@pytest.mark.parametrize("kind_", ["asgi", "basic"])
def test_a_read_token_guards_every_request_but_the_open_pages(kind_, flat_index, tiny_model):
    """serve --read-token: a request without it (or with another token, or another scheme) is a 401 saying what
    is missing, and nothing is searched; /health and /ui (and the asgi docs) stay open; the token goes in the
    Authorization header or in the cookie the /ui page sets (an <img> request carries no header)."""
    import httpx

    need(CIFAR_TEST)
    with tarfile.open(CIFAR_TEST) as tf:
        jpeg = tf.extractfile(next(m for m in tf if m.isfile())).read()
    url, stop = start_server(kind_, flat_index, tiny_model, read_token="r34d-token")
    guarded = [("GET", "/", {}), ("GET", "/search", {"params": {"id": 5}}), ("GET", "/items/5/image", {}),
               ("GET", "/indexes/flat/search", {"params": {"id": 5}}), ("POST", "/search", {"content": jpeg})]
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for auth in ({}, {"Authorization": "Bearer guess"}, {"Authorization": "Basic r34d-token"},
                         {"Cookie": "hashindex_token=guess"}):
                for method, path, kw in guarded:
                    got = client.request(method, path, headers=auth, **kw)
                    assert got.status_code == 401 and got.headers["www-authenticate"] == "Bearer", (path, got.text)
                    assert got.json()["error"] == f"{method} {path}: needs the read token (header " \
                                                  "'Authorization: Bearer TOKEN')"
            for path in ["/health", "/ui"] + (["/docs", "/openapi.json"] if kind_ == "asgi" else ["/indexes/flat/ui"]):
                assert client.get(path).status_code == 200, path
            for auth in ({"Authorization": "Bearer r34d-token"}, {"Cookie": "hashindex_token=r34d-token"}):
                for method, path, kw in guarded:
                    assert client.request(method, path, headers=auth, **kw).status_code == 200, (auth, path)
    finally:
        stop()


def test_read_and_write_tokens_together(flat_index, tiny_model, tmp_path):
    """With both tokens the write token reads too; the read token never writes, nor does a cookie (a browser
    sends it whatever page asks); blank or equal tokens are refused in one line before any index is opened."""
    import shutil

    import httpx

    from hashindex.service.engine import Engine

    index_dir = tmp_path / "index"
    shutil.copytree(flat_index, index_dir)
    url, stop = start_asgi({"photos": Engine(index_dir, str(tiny_model), name="photos")}, writable=True,
                           write_token="wr1te", read_token="r34d")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/search", params={"id": 5}, headers={"Authorization": "Bearer wr1te"}).status_code == 200
            for auth in ({"Authorization": "Bearer r34d"}, {"Cookie": "hashindex_token=wr1te"}):
                got = client.delete("/items", params={"ids": "5"}, headers=auth)
                assert got.status_code == 401 and "needs the write token" in got.json()["error"], (auth, got.text)
            assert client.get("/health").json()["indexes"]["photos"] == 10000  # nothing taken out
    finally:
        stop()
    for args, message in [(["--read-token", " "], "--read-token: blank"),
                          (["--writable", "--write-token", "same", "--read-token", "same"],
                           "--write-token: the same as --read-token")]:
        res = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-such-index"), *args])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (openssl), as PEM files."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("kind_", ["asgi", "basic"])
def test_https_with_a_certificate(kind_, flat_index, tiny_model, tmp_path):
    """serve --tls-cert/--tls-key: answers over HTTPS to a client that trusts the certificate, the same search
    as over HTTP; a plain-HTTP client gets no answer; bad files are one line before anything is opened."""
    import ssl

    import httpx

    from hashindex import HashindexError
    from hashindex.service import tls_context

    cert, key = self_signed(tmp_path)
    url, stop = start_server(kind_, flat_index, tiny_model, tls_cert=cert, tls_key=key)
    try:
        assert url.startswith("https://")
        with httpx.Client(base_url=url, timeout=60, verify=ssl.create_default_context(cafile=cert)) as client:
            assert client.get("/health").json()["status"] == "ok"
            row = client.get("/search", params={"id": 5, "k": 5}).json()
        want = query(flat_index, [], [5], k=5)[0]
        assert [r["id"] for r in row["results"]] == [r["id"] for r in want["results"]]
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/health", timeout=10)
    finally:
        stop()
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    for args, message in [((cert, other_key), "not a PEM certificate and its private key"),
                          ((str(tmp_path / "none.pem"), None), f"tls_cert={tmp_path / 'none.pem'}: no such file"),
                          ((None, key), "needs tls_cert= too")]:
        with pytest.raises(HashindexError, match=message):
            tls_context(*args)
    res = CliRunner().invoke(cli, ["serve", str(flat_index), "--tls-cert", key, "--tls-key", other_key])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "--tls-cert" in res.output, res.output
