"""Who may search and who may write: the service's bearer tokens, checked alike by both servers.

A read token (`serve --read-token`) makes every request but the open pages (/health for load balancers and
probes, the /ui page and the API docs, which hold no data) present it, or the write token, as
"Authorization: Bearer TOKEN", or as the ``hashindex_token`` cookie the /ui page sets when it asks for the
token (an <img> request cannot carry a header, a cookie goes with it). Writes take the write token in the
header only: a cookie is sent by the browser whatever page asks, so it never authorises a change.
Tokens are compared in constant time, so an answer's timing does not tell how much of a guess was right.
"""

from __future__ import annotations

import hmac
from http.cookies import CookieError, SimpleCookie
from urllib.parse import unquote

from .params import RequestError

TOKEN_COOKIE = "hashindex_token"
OPEN_PAGES = ("health", "ui")  # last path segment: /health, /ui, /indexes/NAME/ui
OPEN_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})


def bearer(authorization: str) -> str | None:
    """The token of an "Authorization: Bearer TOKEN" header (None for none or another scheme)."""
    scheme, _, given = authorization.partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def cookie_token(cookie: str) -> str | None:
    """The ``hashindex_token`` cookie of a Cookie header, if any (a malformed header holds none)."""
    try:
        morsel = SimpleCookie(cookie).get(TOKEN_COOKIE)
    except CookieError:
        return None
    return unquote(morsel.value) if morsel is not None and morsel.value else None  # (the page URI-encodes it)


def holds(given: str | None, tokens: tuple[str, ...]) -> bool:
    """Whether ``given`` is one of ``tokens``, every one compared (in constant time) whatever matched first."""
    if given is None:
        return False
    return sum(hmac.compare_digest(given.encode(), t.encode()) for t in tokens) > 0


def is_open(path: str) -> bool:
    """Pages anyone may fetch with a read token set: they hold no data."""
    return path in OPEN_PATHS or path.rstrip("/").rsplit("/", 1)[-1] in OPEN_PAGES


def check_read(method: str, path: str, authorization: str, cookie: str, tokens: tuple[str, ...]) -> None:
    """A 401 unless the request presents one of ``tokens`` (the read and the write token) or asks an open page;
    nothing to check when ``tokens`` is empty (no read token set)."""
    if not tokens or is_open(path):
        return
    if not (holds(bearer(authorization), tokens) or holds(cookie_token(cookie), tokens)):
        raise RequestError(401, f"{method} {path}: needs the read token (header 'Authorization: Bearer TOKEN')")


def check_write(method: str, path: str, authorization: str, token: str | None) -> None:
    """A write goes on only with the service's write token (when it has one) as a bearer token: 401 otherwise."""
    if token is not None and not holds(bearer(authorization), (token,)):
        raise RequestError(401, f"{method} {path}: needs the write token (header 'Authorization: Bearer TOKEN')")
