"""`hashindex serve --server basic`: the standard library's threading HTTP server, one search at a time.

The dependency-free server (no `serve` extra needed), and the baseline tools/bench_serve.py measures the
ASGI service against. Plain JSON:

    GET  /                              what is served (items, bits, model, classes)
    POST /search?k=10   body = image    search with an image file's bytes
    POST /search  JSON {"model_id", "code", "features"}   a query encoded by the model's ONNX file
    GET  /search?id=42&k=10             search with an indexed item
    GET  /items/42/image                an item's image file, from its collection
    POST /batch?k=10   body = {"ids": [3, 17], "queries": [encoded queries]} or multipart "file" fields: a row each
    POST /batch?together=1              the same, searched as one ("more like these")
    GET  /health, GET /ui               liveness; the search page the ASGI service serves
    options: k, candidates, radius, rerank=0|1, cut_ties=0|1, nprobe (as on `hashindex query`)

As on the ASGI service, ``/indexes/NAME/...`` names the one index served (the page's own paths).

Answers are `hashindex query --json` rows; an error is ``{"error": "one line"}``
with status 400 (bad request), 401 (without the read token, `serve --read-token`), 403 (POST or DELETE
/items: this server never writes), 404 (no such id or path), 411 (no usable
Content-Length), 413 (body too large) or 500 (a bug; the server goes on).
Resources are bounded: the body (MAX_BODY, whatever the headers claim), the
pixels an image decodes to (MAX_PIXELS, checked before decoding; a JPEG's at
the reduced scale it is decoded at), k, candidates and radius results (a 400 naming the cap), a
socket timeout and a listen backlog for 64+ clients.
Searches run one at a time (a lock): the net and Faiss already use every core.
"""

from __future__ import annotations

import functools
import json
import re
import ssl
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from ..errors import HashindexError
from ..query import indexed_queries, search_vectors
from .access import check_read
from .params import (BACKLOG, MAX_BODY, SOCKET_TIMEOUT_S, RequestError, batch_body, check_files, check_names,
                     check_upload_options, flag_param, image_size, int_param, is_json, json_value, no_such_index,
                     own_of, read_only, search_options)
from .served import Served, no_item, ui_page


class Searcher(Served):
    """A served index searched one request at a time (a lock)."""

    def __init__(self, index_dir: str | Path, model: str | None = None, device: str = "cpu"):
        super().__init__(index_dir, model, device)
        self.lock = threading.Lock()

    def by_image(self, data: bytes, options: dict[str, Any], name: str = "upload") -> dict[str, Any]:
        """Search with the bytes of an image file."""
        check_upload_options(options)
        array = self.image_array(data)[None]
        with self.lock:
            codes, vecs, digests = self.encode(array)
            return self._search(codes, vecs, name, options, digest=digests[0])

    def by_encoded(self, given: Any, options: dict[str, Any], name: str = "encoded",
                   where: str = "body") -> dict[str, Any]:
        """A query encoded where the photo is (parsed JSON: `Served.encoded`): a POST /search body, or one of a
        POST /batch body's "queries"."""
        check_upload_options(options)
        codes, vecs = self.encoded(given, options["rerank"], where)
        with self.lock:
            return self._search(codes, vecs, name, options)

    def by_id(self, item_id: int, options: dict[str, Any]) -> dict[str, Any]:
        """Search with an indexed item's stored code and feature."""
        with self.lock:
            try:
                codes, feats = indexed_queries(self.index, [item_id])
            except HashindexError:
                raise no_item(item_id) from None
            return self._search(codes, feats, f"id:{item_id}", options, item_id)

    def batch(self, body: bytes, uploads: list[tuple[str, bytes]] | None, options: dict[str, Any],
              together: bool = False) -> dict[str, Any]:
        """POST /batch, as the ASGI service answers it: the ids and encoded queries of a JSON body
        (`params.batch_body`) or the photos of a multipart one (``uploads``: (file name, bytes)), one row each (a
        query's own error in its row, as the ASGI service gives it); with ``together``, all of them searched as
        one (`Served.together`), one row."""
        if uploads is not None:
            check_upload_options(options)
        if together:
            ids, queries, images = [], [], []
            if uploads is None:
                ids, queries = batch_body(body, together=True)
            else:
                images = [(f"file:{name}", self.image_array(data)) for name, data in uploads]
            encoded = [(f"encoded:{j}", self.encoded(given, options["rerank"], f"queries[{j}]"))
                       for j, given in enumerate(queries)]
            with self.lock:
                return {"results": [self.together(images, ids, options, encoded)]}
        if uploads is not None:
            searches = [functools.partial(self.by_image, data, options, f"file:{name}") for name, data in uploads]
        else:
            ids, queries = batch_body(body)
            searches = [functools.partial(self.by_id, i, options) for i in ids]
            searches += [functools.partial(self.by_encoded, given, options, f"encoded:{j}", f"queries[{j}]")
                         for j, given in enumerate(queries)]
        rows = []
        for search in searches:
            try:
                rows.append(search())
            except RequestError as e:
                rows.append({"error": str(e), "status": e.status})
            except HashindexError as e:
                rows.append({"error": str(e), "status": 400})
        return {"results": rows}

    def _search(self, codes: np.ndarray, vecs: np.ndarray, name: str, options: dict[str, Any],
                item_id: int | None = None, digest: int | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        own = own_of(self.index, [item_id], [digest])
        row = search_vectors(self.index, codes, vecs.astype(np.float32), [name], own=own, **options)[0]
        row["took_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return row


def make_handler(searcher: Searcher, log=None, read_token: str | None = None) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one Searcher (with ``read_token``: every request but the open pages
    presents it, `access.check_read`)."""
    tokens = (read_token,) if read_token is not None else ()

    class Handler(BaseHTTPRequestHandler):
        server_version = "hashindex"
        timeout = SOCKET_TIMEOUT_S  # applied to each connection's socket

        def _reply(self, status: int, body: dict[str, Any], challenge: bool = False) -> None:
            self._send(status, (json.dumps(body) + "\n").encode(), "application/json", challenge)

        def _send(self, status: int, data: bytes, media: str, challenge: bool = False) -> None:
            self.send_response(status)
            if challenge:  # a 401: the scheme the token goes in
                self.send_header("WWW-Authenticate", "Bearer")
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                check_read(method, url.path, self.headers.get("Authorization", ""), self.headers.get("Cookie", ""),
                           tokens)
                path = _unnamed(url.path, searcher.name)
                if method == "GET" and path in ("/", "/health", "/ui"):
                    return self._get_page(path)
                image = ITEM_IMAGE.fullmatch(path)
                if method == "GET" and image:
                    return self._send(200, *searcher.item_image(int(image[1]), image_size(params)))
                item = ITEM.fullmatch(path)
                if method == "GET" and item:
                    check_names(params, ())
                    return self._reply(200, searcher.item(int(item[1])))
                if method in ("POST", "DELETE") and path == "/items":
                    raise read_only(method, url.path)
                if path == "/batch" and method != "POST":  # (as the ASGI service answers it)
                    raise RequestError(405, f"{url.path}: Method Not Allowed")
                if method == "POST" and path == "/batch":  # (the /ui page posts several photos there)
                    options = search_options(params, extra=("together",))
                    together = flag_param(params, "together", False)
                    body = self._body()
                    return self._reply(200, searcher.batch(body, multipart_files(self.headers, body), options,
                                                           together))
                if path != "/search" or method == "DELETE":
                    raise RequestError(404, f"{url.path}: no such endpoint (GET /, /health, /ui, /items/ID, "
                                            "/items/ID/image; GET or POST /search; POST /batch)")
                options = search_options(params, by_id=method == "GET")
                if method == "GET":
                    item = int_param(params, "id", None, 0)
                    if item is None:
                        raise RequestError(400, "GET /search needs id=ID (or POST an image)")
                    return self._reply(200, searcher.by_id(item, options))
                if is_json(self.headers.get("Content-Type", "")):  # a query encoded elsewhere (an ONNX file)
                    return self._reply(200, searcher.by_encoded(json_value(self._body()), options))
                return self._reply(200, searcher.by_image(self._body(), options))
            except RequestError as e:
                return self._reply(e.status, {"error": str(e)}, e.status == 401)
            except HashindexError as e:  # a request the index cannot answer (k beyond its size, ...)
                return self._reply(400, {"error": str(e)})
            except Exception as e:  # a bug: this request fails with a status, the server goes on
                return self._reply(500, {"error": f"internal error: {type(e).__name__}: {str(e)[:200]}"})

        def _get_page(self, path: str) -> None:
            if path == "/ui":
                return self._send(200, ui_page().encode(), "text/html; charset=utf-8")
            if path == "/health":
                return self._reply(200, {"status": "ok", "indexes": {searcher.name: searcher.index.count}})
            return self._reply(200, {**searcher.info(), "indexes": [searcher.name],
                                     "classes": {searcher.name: searcher.index.class_names}})

        def _body(self) -> bytes:
            """The request body, read only when its declared length is a number within MAX_BODY."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raise RequestError(411, "chunked bodies are not accepted: send Content-Length")
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise RequestError(411, f"POST {urlparse(self.path).path} needs a Content-Length (the body's size "
                                        "in bytes)")
            if not raw.strip().isdigit():
                raise RequestError(400, f"Content-Length: {raw[:40]}: expected a number of bytes")
            length = int(raw)
            if length > MAX_BODY:
                raise RequestError(413, f"body of {length} bytes: at most {MAX_BODY} in one request")
            return self.rfile.read(length)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_DELETE(self) -> None:  # noqa: N802 (only to say that this server does not write)
            self._handle("DELETE")

        def log_message(self, fmt: str, *args: Any) -> None:
            if log:
                log(f"{self.address_string()} {fmt % args}")

    return Handler


def multipart_files(headers, body: bytes) -> list[tuple[str, bytes]] | None:
    """(file name, bytes) of a multipart/form-data body's uploads (`check_files`), or None for another
    body; parsed by the standard library's MIME parser, as the ASGI service's form parser reads the same body."""
    kind = headers.get("Content-Type", "")
    if not kind.startswith("multipart/form-data"):
        return None
    if "boundary=" not in kind:
        raise RequestError(400, "Content-Type: multipart/form-data without a boundary")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + kind.encode("latin-1") + b"\r\n\r\n" + body)
    parts = message.iter_parts() if message.is_multipart() else ()
    fields = [(part.get_param("name", header="content-disposition"), part) for part in parts]
    return [(part.get_filename() or "upload", part.get_payload(decode=True) or b"")
            for part in check_files([(name, part) for name, part in fields
                                     if name == "file" or part.get_filename() is not None])]


ITEM_IMAGE = re.compile(r"/items/(\d{1,18})/image")
ITEM = re.compile(r"/items/(\d{1,18})")


def _unnamed(path: str, name: str) -> str:
    """A path under ``/indexes/NAME`` as the same path without it (the one index served); a 404 naming the
    served index for another name."""
    if not path.startswith("/indexes/"):
        return path
    asked, _, rest = path[len("/indexes/"):].partition("/")
    if unquote(asked) != name:
        raise no_such_index(unquote(asked), [name])
    return "/" + rest


def make_server(searcher: Searcher, host: str = "127.0.0.1", port: int = 8000, log=None,
                read_token: str | None = None, tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server; port 0 picks a free port; ``read_token``: every request needs it;
    ``tls`` (`service.tls_context`): HTTPS."""
    class Server(ThreadingHTTPServer):
        request_queue_size = BACKLOG
        daemon_threads = True

        def finish_request(self, request, client_address) -> None:
            if tls is None:
                return super().finish_request(request, client_address)
            request.settimeout(SOCKET_TIMEOUT_S)
            try:  # the handshake in this connection's own thread: a slow client holds up no other
                secured = tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):  # plain HTTP, a client that left, or one that trusts no one
                return
            try:
                super().finish_request(secured, client_address)
            finally:
                secured.close()

    try:
        return Server((host, port), make_handler(searcher, log, read_token))
    except OSError as e:
        raise HashindexError(f"port={port}: cannot listen on {host}:{port} ({e.strerror})") from None
