"""The search requests of the ASGI service (`app`): GET and POST /search, POST /batch and GET /items/ID/image,
each read from the request, checked (`params`), queued on an `Engine` and answered as `hashindex query --json`
rows. ``together=1`` on /batch searches all of a batch's queries as one ("more like these",
`query.search_together`), as ``hashindex query --together`` does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from ..errors import HashindexError
from .engine import Engine, Query
from .params import (MAX_BATCH, RequestError, batch_body, check_files, check_upload_options, flag_param,
                     image_size, int_param, is_json, json_value, search_options)

log = logging.getLogger("hashindex.service")
REQUEST_TIMEOUT_S = 30.0  # a search still queued or running after this is answered 503


async def answer(engine: Engine, query: Query) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(asyncio.wrap_future(engine.submit(query)), REQUEST_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise RequestError(503, f"search did not finish within {REQUEST_TIMEOUT_S:.0f} s; retry later") from None
    except (RequestError, HashindexError):
        raise
    except Exception as e:  # a bug: this request gets a 500 (its traceback goes to the log), the service goes on
        log.exception("search %s failed", query.name)
        raise RequestError(500, f"internal error: {type(e).__name__}: {str(e)[:200]}") from None


async def decoded(engine: Engine, data: bytes) -> Any:
    """An upload's bytes as the net's input array, decoded in the engine's decode pool (a 400 if not an image)."""
    if not data:
        raise RequestError(400, "body: empty (send an image file's bytes)")
    return await asyncio.get_running_loop().run_in_executor(engine.decoder, engine.image_array, data)


async def image_search(engine: Engine, data: bytes, options: dict[str, Any], name: str) -> dict[str, Any]:
    return await answer(engine, Query(name, options, array=await decoded(engine, data)))


async def encoded_search(engine: Engine, given: Any, options: dict[str, Any], name: str,
                         where: str) -> dict[str, Any]:
    """A query encoded where the photo is (parsed JSON: `Served.encoded`), checked, then searched."""
    check_upload_options(options)
    return await answer(engine, Query(name, options, encoded=engine.encoded(given, options["rerank"], where)))


async def request_uploads(request: Request) -> list[tuple[str, bytes]] | None:
    """(file name, bytes) of a multipart request's uploads (`check_files`), or None for a raw body."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return None
    form = await request.form(max_files=MAX_BATCH, max_fields=MAX_BATCH)
    files = check_files([(key, f) for key, f in form.multi_items() if hasattr(f, "read")])  # files, not fields
    return [(f.filename or "upload", await f.read()) for f in files]


async def search(engine: Engine, request: Request) -> dict[str, Any]:
    params = dict(request.query_params)
    options = search_options(params, by_id=request.method == "GET")
    if request.method == "GET":
        item = int_param(params, "id", None, 0)
        if item is None:
            raise RequestError(400, f"GET {request.url.path} needs id=ID (or POST an image)")
        return await answer(engine, Query(f"id:{item}", options, item_id=item))
    check_upload_options(options)
    if is_json(request.headers.get("content-type", "")):  # a query encoded where the photo is (an ONNX file)
        return await encoded_search(engine, json_value(await request.body()), options, "encoded", "body")
    uploads = await request_uploads(request)
    if uploads is not None:
        if len(uploads) > 1:
            raise RequestError(400, f"{len(uploads)} files: /search takes one (POST several to /batch, or to "
                                    "/batch?together=1 to search them as one)")
        return await image_search(engine, uploads[0][1], options, "upload")
    return await image_search(engine, await request.body(), options, "upload")


async def batch(engine: Engine, request: Request) -> dict[str, Any]:
    """POST /batch: a JSON body of ids and/or queries encoded elsewhere (`params.batch_body`) or multipart "file"
    fields, one row each (a query's own error in its row); with ``together=1``, all of them one query and one
    row (a bad one fails the request)."""
    params = dict(request.query_params)
    options = search_options(params, extra=("together",))
    together = flag_param(params, "together", False)
    uploads = await request_uploads(request)
    if uploads is not None:
        check_upload_options(options)
    if together:
        members = await _members(engine, request, uploads, options["rerank"])
        return {"results": [await answer(engine, Query("together", options, members=members))]}
    if uploads is not None:
        jobs = [image_search(engine, data, options, f"file:{name}") for name, data in uploads]
    else:
        ids, queries = batch_body(await request.body())
        jobs = [answer(engine, Query(f"id:{i}", options, item_id=i)) for i in ids]
        jobs += [encoded_search(engine, given, options, f"encoded:{j}", f"queries[{j}]")
                 for j, given in enumerate(queries)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    rows = []
    for r in results:
        if isinstance(r, RequestError):
            rows.append({"error": str(r), "status": r.status})
        elif isinstance(r, HashindexError):
            rows.append({"error": str(r), "status": 400})
        elif isinstance(r, Exception):
            raise r
        else:
            rows.append(r)
    return {"results": rows}


async def _members(engine: Engine, request: Request, uploads: list[tuple[str, bytes]] | None,
                   rerank: bool) -> list[Query]:
    """The queries of a together batch: its photos, decoded side by side in the engine's pool (one that is not an
    image fails the request), or its ids and queries encoded elsewhere (at least one)."""
    if uploads is not None:
        arrays = await asyncio.gather(*(decoded(engine, data) for _, data in uploads))
        return [Query(f"file:{name}", {}, array=a) for (name, _), a in zip(uploads, arrays)]
    ids, queries = batch_body(await request.body(), together=True)
    return [Query(f"id:{i}", {}, item_id=i) for i in ids] + [
        Query(f"encoded:{j}", {}, encoded=engine.encoded(given, rerank, f"queries[{j}]"))
        for j, given in enumerate(queries)]


async def item_image(engine: Engine, item_id: int, request: Request) -> Response:
    """GET /items/ID/image: the item's image file from its collection (a folder, tar, zip or list), or with
    ``?size=N`` a JPEG thumbnail of it, for a front end to show results; read (and shrunk) in a thread."""
    size = image_size(request.query_params)
    data, media = await asyncio.get_running_loop().run_in_executor(None, engine.item_image, item_id, size)
    return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})
