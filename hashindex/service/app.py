"""`hashindex serve`: an ASGI search service (FastAPI on uvicorn; the `serve` extra).

    GET  /                                what is served (the default index, and the names of all)
    GET  /health                          {"status": "ok"} once every index is loaded
    GET  /metrics                         Prometheus text: requests, errors, latency, batch sizes, index size
    GET  /docs, /openapi.json             API documentation
    POST /search?k=10                     body = an image file's bytes, or a multipart/form-data file (field "file"
                                          or any other name: a form's "image")
    POST /search?k=10  (application/json) {"model_id", "code", "features" or "mid_features"}: a query encoded
                                          where the photo is, by the model's ONNX file (`hashindex export`)
    GET  /search?id=42&k=10               search with an indexed item
    GET  /items/42/image                  the item's image file (for a front end to show results)
    GET  /ui                              a page over this API: search with a photo, see the results
    POST /batch?k=10                      {"ids": [..], "queries": [..]} (JSON: indexed items and queries encoded
                                          elsewhere, either or both) or several multipart "file" fields: a row each
    POST /batch?together=1                the same queries searched as one ("more like these"): one row
    /indexes/NAME/search, /indexes/NAME/batch   the same on a named index (several served by one process)
    options: k, candidates, radius, rerank=0|1, cut_ties=0|1, nprobe, exclude_self=0|1 (as on `hashindex query`)
    POST /items?label=cat                 `serve --writable` only: images added to the index (`writes`)
    DELETE /items?ids=3,17                `serve --writable` only: items taken out of the index
    (with a write token, POST and DELETE /items need the header "Authorization: Bearer TOKEN": 401 otherwise;
    with a read token, so does every request but /health, /ui and the docs: `access`; `serve --cors-origin`
    lets web pages of other origins call it from a browser)

SIGHUP reopens every served index (and its model) from disk and swaps it in without dropping a request:
what `build --append` grew or `hashindex remove` took out is served from then on; searches already handed to
the old engines finish there. A reload that fails (a broken index on disk) keeps serving what was open and
says why on stderr.

Answers are `hashindex query --json` rows. Every failure is JSON ``{"error": "one line"}`` with a status: 400
(bad request), 401 (a write without the write token, a request without the read token), 403 (a write to a
service started without --writable), 404 (no such id, index or endpoint), 408 (the client stopped sending),
409 (a write while another process writes the index: retry), 411 (no length), 413 (body over the cap), 503 (a
search outlasted the request timeout, or `engine.MAX_QUEUE` searches already wait: Retry-After), 507 (a write
the disk has no room for: nothing changed), 500 (a bug: that request fails, the process goes on). Why this stack:
uvicorn speaks HTTP/1.1 with keep-alive and an event loop that holds hundreds of idle connections for the cost
of one thread, FastAPI gives the OpenAPI docs and multipart parsing, and neither holds the GIL while the
batcher thread runs the net and Faiss.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BusyError, HashindexError
from .access import check_write
from .engine import Engine
from .metrics import Metrics
from .middleware import BodyLimit, ReadGate, Timing
from .params import MAX_BATCH, THUMBNAIL_SIDES, RequestError, check_names, no_such_index, read_only
from .requests import REQUEST_TIMEOUT_S, batch, item_image, request_uploads, search
from .served import disk_stamp, ui_page

log = logging.getLogger("hashindex.service")
RETIRE_AFTER_S = REQUEST_TIMEOUT_S + 5  # an engine replaced by a reload serves what it was handed this long
SEARCH_PARAMS = [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d} for n, t, d in (
    ("k", "integer", "results per query (1-1000, default 10)"),
    ("candidates", "integer", "re-ranked pool (default: the index's read budget)"),
    ("radius", "integer", "every item within this Hamming radius instead of the top k"),
    ("rerank", "boolean", "order the pool by the fine-stage signal (default 1)"),
    ("cut_ties", "boolean", "cut the last Hamming tie at k (default 0: complete it)"),
    ("nprobe", "integer", "IVF index: lists scanned (default: the value build tuned to its recall target)"),
    ("exclude_self", "boolean", "searches with an id: the item is not among its own results (default 0)"),
    ("only_class", "string", "results of these classes only (comma-separated)"),
    ("only_folder", "string", "results whose path is under one of these folders only (comma-separated)"),
    ("only_ids", "string", "results among these ids only (comma-separated)"),
    ("not_class", "string", "no results of these classes (comma-separated)"),
    ("not_folder", "string", "no results under these folders (comma-separated)"))]
BATCH_PARAMS = SEARCH_PARAMS + [{"name": "together", "in": "query", "required": False, "schema": {"type": "boolean"},
                                 "description": "search the batch's ids, queries or photos as one query, one row of "
                                                "results (\"more like these\", as `hashindex query --together`; "
                                                "default 0)"}]
IMAGE_PARAMS = [{"name": "size", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": THUMBNAIL_SIDES[0], "maximum": THUMBNAIL_SIDES[1]},
                 "description": "a JPEG of the image at most this many pixels a side, upright (default: the file as "
                                "its collection holds it)"}]
IMAGE_BODY = {"required": False, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object",
                                       "properties": {"file": {"type": "string", "format": "binary"}}}}}}
ENCODED_BODY = {"type": "object", "required": ["model_id", "code"], "description": "a query encoded where the photo "
                "is, by the model's ONNX file (`hashindex export`): its outputs for the image",
                "properties": {"model_id": {"type": "string"}, "code": {"type": "string", "description": "hex"},
                               "features": {"type": "array", "items": {"type": "number"}},
                               "mid_features": {"type": "array", "items": {"type": "number"}}}}
SEARCH_BODY = {**IMAGE_BODY, "content": {**IMAGE_BODY["content"], "application/json": {"schema": ENCODED_BODY}}}
BATCH_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": {"type": "object", "description": "indexed items and queries encoded elsewhere, "
                                    f"either or both (at most {MAX_BATCH} in all); rows: the ids', then the queries'",
                                    "properties": {"ids": {"type": "array", "items": {"type": "integer"}},
                                                   "queries": {"type": "array", "items": ENCODED_BODY}}}}}}


def create_app(engines: dict[str, Engine], default: str | None = None, writable: bool = False,
               write_token: str | None = None, read_token: str | None = None,
               cors_origins: tuple[str, ...] = (), watch: float | None = None) -> FastAPI:
    """The service over opened engines (name -> Engine); ``default`` answers /search and /batch; ``writable``
    adds POST /items (and /indexes/NAME/items): images appended to the index (`writes`), and DELETE /items;
    with ``write_token`` those need the header "Authorization: Bearer TOKEN" (checked before a body is read);
    with ``read_token`` every request but the open pages needs it or the write token (`access`);
    ``cors_origins``: web pages of these origins (or "*", any) may call the API from a browser (CORS);
    ``watch``: every so many seconds, reload when an index on disk is not the one served (`_watch`)."""
    from .. import __version__

    if not engines:
        raise HashindexError("engines={}: serve at least one index")
    if write_token is not None and (not writable or not write_token.strip()):
        raise HashindexError("write_token: needs writable=True and a token that is not blank")
    if read_token is not None and not read_token.strip():
        raise HashindexError("read_token: blank (expected a secret)")
    default = default or next(iter(engines))
    metrics = Metrics()
    reload, retire_now = _reloader(engines, metrics)

    reloading: set[asyncio.Task] = set()  # asyncio holds tasks weakly: keep each reload until it is done

    def on_sighup() -> None:
        task = asyncio.ensure_future(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    async def lifespan(app):
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        except (AttributeError, NotImplementedError, RuntimeError, ValueError):
            pass  # no SIGHUP here (Windows), or not the main thread (a server a test runs in a thread)
        watcher = asyncio.ensure_future(_watch(engines, reload, watch)) if watch else None
        yield
        if watcher is not None:
            watcher.cancel()
        if hasattr(signal, "SIGHUP"):
            loop.remove_signal_handler(signal.SIGHUP)
        for engine in [*engines.values(), *retire_now()]:  # graceful: queued searches finish, then the batchers stop
            await loop.run_in_executor(None, engine.close)

    app = FastAPI(title="hashindex", version=__version__, lifespan=lifespan,
                  description="Image search over learned binary hash codes (see `hashindex serve --help`).")
    _errors(app)

    def engine_named(name: str) -> Engine:
        if name not in engines:
            raise no_such_index(name, list(engines))
        return engines[name]

    @app.get("/", summary="What is served")
    async def info() -> dict[str, Any]:
        return {**engines[default].info(), "indexes": list(engines),
                "classes": {name: e.index.class_names for name, e in engines.items()}}  # the page's filter

    @app.get("/ui", summary="A page to search with a photo and see the results", response_class=HTMLResponse)
    async def ui() -> HTMLResponse:
        return HTMLResponse(ui_page())

    @app.get("/health", summary="Liveness and readiness")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "indexes": {name: e.index.count for name, e in engines.items()}}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(engines), media_type="text/plain; version=0.0.4")

    by_id = SEARCH_PARAMS + [{"name": "id", "in": "query", "required": True, "schema": {"type": "integer"},
                              "description": "the indexed item to search with"}]

    @app.get("/search", summary="Search the default index with an indexed item", operation_id="search_by_id",
             openapi_extra={"parameters": by_id})
    @app.post("/search", summary="Search the default index with an image", operation_id="search_by_image",
              openapi_extra={"parameters": SEARCH_PARAMS, "requestBody": SEARCH_BODY})
    async def search_default(request: Request) -> dict[str, Any]:
        return await search(engines[default], request)

    @app.get("/indexes/{name}/search", summary="Search a named index with an indexed item",
             operation_id="search_named_by_id", openapi_extra={"parameters": by_id})
    @app.post("/indexes/{name}/search", summary="Search a named index with an image",
              operation_id="search_named_by_image",
              openapi_extra={"parameters": SEARCH_PARAMS, "requestBody": SEARCH_BODY})
    async def search_named(name: str, request: Request) -> dict[str, Any]:
        return await search(engine_named(name), request)

    @app.get("/items/{item_id}", summary="An item of the default index: its id, path, class and code")
    async def item_default(item_id: int, request: Request) -> dict[str, Any]:
        check_names(request.query_params, ())
        return engines[default].item(item_id)

    @app.get("/indexes/{name}/items/{item_id}", summary="An item of a named index: its id, path, class and code")
    async def item_named(name: str, item_id: int, request: Request) -> dict[str, Any]:
        check_names(request.query_params, ())
        return engine_named(name).item(item_id)

    @app.get("/items/{item_id}/image", summary="The image file of an item of the default index",
             openapi_extra={"parameters": IMAGE_PARAMS})
    async def image_default(item_id: int, request: Request) -> Response:
        return await item_image(engines[default], item_id, request)

    @app.get("/indexes/{name}/items/{item_id}/image", summary="The image file of an item of a named index",
             openapi_extra={"parameters": IMAGE_PARAMS})
    async def image_named(name: str, item_id: int, request: Request) -> Response:
        return await item_image(engine_named(name), item_id, request)

    if writable:
        adding = asyncio.Lock()  # one add at a time: each is an append of INDEX_DIR, then a reload

        @app.post("/items", summary="Add images to the default index", openapi_extra={"requestBody": IMAGE_BODY})
        async def add_default(request: Request) -> dict[str, Any]:
            _authorize(request, write_token)
            return await _add(lambda: engines[default], request, adding, reload)

        @app.post("/indexes/{name}/items", summary="Add images to a named index",
                  openapi_extra={"requestBody": IMAGE_BODY})
        async def add_named(name: str, request: Request) -> dict[str, Any]:
            _authorize(request, write_token)
            engine_named(name)  # a 404 before the body is read
            return await _add(lambda: engines[name], request, adding, reload)

        @app.delete("/items", summary="Take items out of the default index (ids=3,17)")
        async def remove_default(request: Request) -> dict[str, Any]:
            _authorize(request, write_token)
            return await _remove(lambda: engines[default], request, adding, reload)

        @app.delete("/indexes/{name}/items", summary="Take items out of a named index (ids=3,17)")
        async def remove_named(name: str, request: Request) -> dict[str, Any]:
            _authorize(request, write_token)
            engine_named(name)
            return await _remove(lambda: engines[name], request, adding, reload)

    else:
        @app.api_route("/items", methods=["POST", "DELETE"], include_in_schema=False)
        @app.api_route("/indexes/{name}/items", methods=["POST", "DELETE"], include_in_schema=False)
        async def not_writable(request: Request) -> None:
            raise read_only(request.method, request.url.path)

    @app.post("/batch", summary="Several searches of the default index in one request",
              openapi_extra={"parameters": BATCH_PARAMS, "requestBody": BATCH_BODY})
    async def batch_default(request: Request) -> dict[str, Any]:
        return await batch(engines[default], request)

    @app.post("/indexes/{name}/batch", summary="Several searches of a named index in one request",
              openapi_extra={"parameters": BATCH_PARAMS, "requestBody": BATCH_BODY})
    async def batch_named(name: str, request: Request) -> dict[str, Any]:
        return await batch(engine_named(name), request)

    tokens = tuple(t for t in (read_token, write_token) if t is not None) if read_token is not None else ()
    gated = ReadGate(app, tokens)
    if cors_origins:  # outside the gate: a browser's preflight carries no token, and a 401 must be readable
        from starlette.middleware.cors import CORSMiddleware

        gated = CORSMiddleware(gated, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                               allow_headers=["Authorization", "Content-Type"], max_age=600)
        # (no credentials: another origin's page sends the token as a header; the /ui cookie stays same-site)
    return BodyLimit(Timing(gated, metrics))


def _authorize(request: Request, token: str | None) -> None:
    """A write goes on only with the service's write token (when it has one): `access.check_write`."""
    check_write(request.method, request.url.path, request.headers.get("authorization", ""), token)


def _reloader(engines: dict[str, Engine], metrics: Metrics):
    """(``reload()``, ``retire_now()``). ``reload`` reopens every engine from disk, then swaps the new ones into
    ``engines`` (all or none) and returns whether it did; the old ones answer what they were handed and are
    closed RETIRE_AFTER_S later. ``retire_now`` (at shutdown) stops those waits and gives the engines to close."""
    lock = asyncio.Lock()
    retiring: dict[asyncio.Task, list[Engine]] = {}

    async def retire(old: list[Engine]) -> None:
        await asyncio.sleep(RETIRE_AFTER_S)  # a request may hold an old engine until its timeout
        for engine in old:
            await asyncio.get_running_loop().run_in_executor(None, engine.close)

    def retire_now() -> list[Engine]:
        for task in retiring:
            task.cancel()
        return [engine for old in retiring.values() for engine in old]

    async def reload() -> bool:
        loop = asyncio.get_running_loop()
        async with lock:
            fresh: dict[str, Engine] = {}
            try:
                for name, engine in engines.items():
                    fresh[name] = await loop.run_in_executor(None, engine.reopen)
            except Exception as e:  # a broken index on disk: go on serving what is open
                for engine in fresh.values():
                    await loop.run_in_executor(None, engine.close)
                metrics.reloads["failed"] += 1
                log.error("reload failed, still serving the indexes opened before: %s", str(e).splitlines()[0])
                return False
            old = list(engines.values())
            engines.update(fresh)
            metrics.reloads["ok"] += 1
            log.warning("reloaded: %s", ", ".join(f"{n} ({e.index.count:,} items)" for n, e in fresh.items()))
            task = asyncio.ensure_future(retire(old))
            retiring[task] = old
            task.add_done_callback(lambda t: retiring.pop(t, None))
            return True

    return reload, retire_now


async def _watch(engines: dict[str, Engine], reload, every: float) -> None:
    """Reload when an index on disk is not the version served (a build, append, removal or sync by another
    process replaced its index.json); a version whose reload failed is not tried again until it changes."""
    failed = None
    while True:
        await asyncio.sleep(every)
        now = {name: disk_stamp(e.opened_with[0]) for name, e in engines.items()}
        if None not in now.values() and now != failed and any(now[n] != e.stamp for n, e in engines.items()):
            failed = None if await reload() else now


def _errors(app: FastAPI) -> None:
    """Every failure answered as JSON {"error": one line} with its status."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        headers = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": "1"}}.get(e.status)  # 503: busy
        return JSONResponse({"error": str(e)}, e.status, headers=headers)

    @app.exception_handler(HashindexError)
    async def library_error(request: Request, e: HashindexError) -> JSONResponse:
        if isinstance(e, BusyError):  # a build, append or removal of the index by another process: retry later
            return JSONResponse({"error": str(e)}, 409, headers={"Retry-After": "5"})
        return JSONResponse({"error": str(e)}, 400)  # a request the index cannot answer

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = (f"{request.url.path}: no such endpoint (GET /, /health, /metrics, /docs; GET or POST /search; "
                   "POST /batch; GET /items/ID, /items/ID/image; POST and DELETE /items with serve --writable; "
                   "/indexes/NAME/...)") if e.status_code == 404 else f"{request.url.path}: {e.detail}"
        return JSONResponse({"error": message}, e.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {str(e)[:200]}"}, 500)


async def _add(current, request: Request, lock: asyncio.Lock, reload) -> dict[str, Any]:
    """POST /items: the uploads (a raw body, or multipart "file" fields named by their file names) appended
    to the index of the engine ``current()`` serves with ``label`` (and ``path`` for a raw body); all decoded
    before anything is written, so a bad file fails the request and adds nothing. Adds hold ``lock``, and
    each takes the engine as the previous add's reload left it (the ids it gives follow the last add's)."""
    from .writes import ADD_PARAMS, add_items

    params = dict(request.query_params)
    check_names(params, ADD_PARAMS)
    uploads = await request_uploads(request)
    if uploads is None:
        uploads = [(params.get("path") or "upload", await request.body())]
    elif "path" in params:
        raise RequestError(400, "path: names a raw body's image; multipart files are named by their file names")
    engine = current()
    arrays = [await asyncio.get_running_loop().run_in_executor(engine.decoder, engine.image_array, data)
              for _, data in uploads]
    return await _write(current, lock, reload, "add",
                        lambda engine: add_items(engine, arrays, [n for n, _ in uploads], params.get("label")))


async def _write(current, lock: asyncio.Lock, reload, what: str, work) -> dict[str, Any]:
    """``work(engine)``, an add or a removal (each rewrites INDEX_DIR), under ``lock`` on the engine as the last
    write's reload left it; then the index reopened, so the answer comes once the change is on disk and served."""
    async with lock:
        engine = current()
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, work, engine)
        except OSError as e:  # a write replaces INDEX_DIR whole or not at all: a full disk changed nothing
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise RequestError(507, f"{what}: no space left on the server's disk; nothing was changed (the index "
                                    "is as it was); retry once space is freed") from None
        if not await reload():
            done = f"added {result['added']} items to" if what == "add" else f"removed {result['removed']} items from"
            raise RequestError(500, f"{done} {engine.index.dir}, but reopening it failed: the service still serves "
                                    f"the index before the {what} (see its log)")
    return {**result, "index": engine.name}


async def _remove(current, request: Request, lock: asyncio.Lock, reload) -> dict[str, Any]:
    """DELETE /items?ids=3,17: the items taken out of the index of the engine ``current()`` serves, under the
    lock adds hold (a removal and an add each rewrite INDEX_DIR), then the index reopened."""
    from .writes import item_ids, remove_items

    params = dict(request.query_params)
    check_names(params, ("ids",))
    ids = item_ids(params.get("ids"))
    return await _write(current, lock, reload, "removal", lambda engine: remove_items(engine, ids))


