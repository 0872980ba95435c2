"""ASGI middleware of the search service: a cap on request bodies (and a clock on slow senders), and the
timing of every answer for the metrics. Kept apart from the routes (app.py) so either can grow alone."""

from __future__ import annotations

import asyncio
import json
import time

from .access import check_read
from .metrics import Metrics
from .params import MAX_BODY, SOCKET_TIMEOUT_S, RequestError


class BodyLimit:
    """ASGI middleware: no request body past MAX_BODY is ever read, whatever the headers claim (a declared
    length is checked before reading; a chunked one is counted as it arrives), and a client that stops
    sending for SOCKET_TIMEOUT_S gets a 408."""

    def __init__(self, app, max_body: int = MAX_BODY):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and int(length) > self.max_body:  # h11 has checked it is a number
            return await _send_json(send, 413, f"body of {int(length)} bytes: at most {self.max_body} in one request")
        if scope["method"] == "POST" and length is None and b"chunked" not in headers.get(b"transfer-encoding", b""):
            return await _send_json(send, 411, f"POST {scope['path']} needs a Content-Length (the body's size in bytes)")
        seen = 0

        async def limited():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), SOCKET_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise RequestError(408, f"body: nothing received for {SOCKET_TIMEOUT_S} s") from None
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise RequestError(413, f"body of more than {self.max_body} bytes: at most {self.max_body} in one request")
            return message

        await self.app(scope, limited, send)


class ReadGate:
    """ASGI middleware: with a read token, a request that does not present it (or the write token) is answered
    401 before anything of it is read (`access.check_read`)."""

    def __init__(self, app, tokens: tuple[str, ...]):
        self.app, self.tokens = app, tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.tokens:
            headers = dict(scope["headers"])
            try:
                check_read(scope["method"], scope["path"], headers.get(b"authorization", b"").decode("latin-1"),
                           headers.get(b"cookie", b"").decode("latin-1"), self.tokens)
            except RequestError as e:
                return await _send_json(send, e.status, str(e), [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class Timing:
    """ASGI middleware: every answer's route, status and latency go to the metrics."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            # the route's template (/items/{item_id}/image), never the path: a label per item fetched or per
            # path a client makes up would grow the metrics without bound; "unmatched" for what no route took
            # (an unknown path, a request the read-token gate turned away)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.record(scope["method"], route, status[0], time.perf_counter() - t0)


async def _send_json(send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (json.dumps({"error": message}) + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
