"""The search service: `hashindex serve`.

``app`` (FastAPI on uvicorn, the `serve` extra) is the service, ``requests`` its search requests (GET and POST
/search, POST /batch, an item's image); ``engine`` holds one served index and
batches concurrent searches; ``params`` the request parameters and caps both servers share; ``metrics``
the Prometheus text; ``basic`` the dependency-free standard-library server (one search at a time), kept as
the fallback without the extra and as the baseline of tools/bench_serve.py.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Callable

from ..errors import HashindexError
from .params import BACKLOG


def parse_indexes(specs: list[str]) -> dict[str, str]:
    """``DIR`` or ``NAME=DIR`` arguments -> {name: dir} (a bare DIR is named by its folder)."""
    from pathlib import Path

    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name, spec
        if not name or name in out:
            raise HashindexError(f"index_dir={spec}: each index needs its own name (NAME=DIR)")
        out[name] = path
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_write_access(host: str, writable: bool, write_token: str | None, read_token: str | None = None) -> None:
    """A service that others can reach changes its index only for those holding its write token: `--writable`
    on an address other than loopback needs one (anyone who reached the port could otherwise add or delete).
    A read token (every request needs a token) must not be blank, nor the write token."""
    if read_token is not None and not read_token.strip():
        raise HashindexError("--read-token: blank (expected a secret, e.g. from: python -c "
                             "'import secrets; print(secrets.token_urlsafe())')")
    if write_token is not None and not writable:
        raise HashindexError("--write-token: only with --writable (a read-only service takes no writes)")
    if write_token is not None and not write_token.strip():
        raise HashindexError("--write-token: blank (expected a secret, e.g. from: python -c "
                             "'import secrets; print(secrets.token_urlsafe())')")
    if write_token is not None and write_token == read_token:
        raise HashindexError("--write-token: the same as --read-token (then every reader could write)")
    if writable and write_token is None and not is_loopback(host):
        raise HashindexError(f"--writable on --host {host}: others can reach it, so writes need a token: set "
                             "HASHINDEX_WRITE_TOKEN (then send 'Authorization: Bearer TOKEN'), or serve on 127.0.0.1")


def tls_context(cert: str | None, key: str | None = None) -> ssl.SSLContext | None:
    """The server's TLS context from PEM files (`serve --tls-cert/--tls-key`; the key may sit in the certificate
    file), None for plain HTTP; a one-line error for a file that is missing or not a matching pair."""
    if cert is None:
        if key is not None:
            raise HashindexError(f"tls_key={key}: needs tls_cert= too (the certificate chain, PEM)")
        return None
    for arg, path in (("tls_cert", cert), ("tls_key", key)):
        if path is not None and not os.path.isfile(path):
            raise HashindexError(f"{arg}={path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2 or later, the library's ciphers
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        what = f"tls_cert={cert}" + (f", tls_key={key}" if key else "")
        reason = getattr(e, "reason", None)  # KEY_VALUES_MISMATCH, ...; None where OpenSSL says only "PEM lib"
        raise HashindexError(f"{what}: not a PEM certificate and its private key"
                             + (f" ({reason.lower().replace('_', ' ')})" if reason else "")) from None
    return context


def check_origins(origins: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Web origins whose pages may call the service from a browser (CORS): "*" (any), or each as a browser
    sends it, scheme://host[:port] with no path (a trailing slash would never match)."""
    from urllib.parse import urlsplit

    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc
                              or origin != f"{parts.scheme}://{parts.netloc}"):
            raise HashindexError(f"cors_origins={origin}: expected scheme://host[:port] with no path "
                                 "(https://photos.example.com), or *")
    return tuple(origins)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), or a one-line error naming the port."""
    try:
        sock = socket.create_server((host, port), backlog=BACKLOG, reuse_port=False)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise HashindexError(f"port={port}: cannot listen on {host}:{port} ({reason})") from None
    return sock


def asgi_server(engines: dict, log_level: str = "warning", writable: bool = False, write_token: str | None = None,
                read_token: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                cors_origins: tuple[str, ...] = (), access_log: bool = False, watch: float | None = None):
    """A uvicorn server (not yet running) over opened engines: ``.run(sockets=[bind(...)])`` serves until
    SIGINT / SIGTERM (or ``should_exit``), then finishes the searches in flight (``writable``: POST and DELETE
    /items; ``write_token``: only with it as a bearer token; ``read_token``: every request needs a token;
    ``tls_cert`` / ``tls_key``: HTTPS, checked first by `tls_context`; ``cors_origins``: `check_origins`;
    ``access_log``: a line per request on stdout, uvicorn's format; ``watch``: seconds between looks at the
    indexes on disk, reloaded when another process changed them)."""
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from .app import create_app

    class JsonErrors(H11Protocol):
        """uvicorn answers a request it cannot parse (a bad Content-Length, broken headers) in plain text;
        ours answers in the service's JSON."""

        def connection_made(self, transport) -> None:
            # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and a socket handed over
            # (ours, or uvicorn's own) has proto 0: without this every answer (headers, then body) waited
            # ~40 ms for the client's delayed ACK (Nagle) - measured 48 ms minimum per search, 4 ms with it.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

        def send_400_response(self, msg: str) -> None:
            body = b'{"error": "malformed HTTP request (check Content-Length and the headers)"}\n'
            for event in (h11.Response(status_code=400, headers=[(b"content-type", b"application/json"),
                                                                 (b"content-length", str(len(body)).encode()),
                                                                 (b"connection", b"close")]),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    app = create_app(engines, writable=writable, write_token=write_token, read_token=read_token,
                     cors_origins=check_origins(cors_origins), watch=watch)
    tls_context(tls_cert, tls_key)  # a one-line error for bad files (uvicorn's would be a traceback)
    config = uvicorn.Config(app, http=JsonErrors, lifespan="on", log_level=log_level,
                            backlog=BACKLOG, timeout_keep_alive=5, timeout_graceful_shutdown=30,
                            ssl_certfile=tls_cert, ssl_keyfile=tls_key, access_log=access_log)
    if access_log:  # (its level follows log_level, which keeps uvicorn's own notices quiet)
        import logging

        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    return uvicorn.Server(config)


def open_engines(indexes: dict[str, str], model: str | None, device: str, log: Callable[[str], None]) -> dict:
    """Open every index (and its model) to serve: {name: Engine}; a one-line error for a bad one."""
    from .engine import Engine

    engines = {name: Engine(path, model, device, name=name) for name, path in indexes.items()}
    for name, e in engines.items():
        log(f"{name}: {e.index.dir} ({e.index.count:,} items, {e.index.bits} bits, re-rank {e.index.signal})")
    return engines
