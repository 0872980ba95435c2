"""What a search request may ask, and the caps that bound it: shared by both servers.

Parameters arrive as text (a query string); they are checked as the CLI checks its flags, and every
failure is a `RequestError` with an HTTP status and one line naming the parameter.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..errors import HashindexError

MAX_BODY = 32 << 20  # bytes of one request body (an image, or a batch of them)
MAX_PIXELS = 40_000_000  # pixels an upload may decode to (checked before decoding; a JPEG's at its reduced scale)
MAX_K = 1000  # results of one search
MAX_CANDIDATES = 100_000  # re-ranked pool of one search
MAX_RESULTS = 10_000  # items one radius search may return
MAX_BATCH = 64  # queries in one batch request
SOCKET_TIMEOUT_S = 30  # a client that stops sending or reading is dropped after this
BACKLOG = 128  # connections waiting to be accepted (64+ concurrent clients)


class RequestError(Exception):
    """A bad request: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_only(method: str, path: str) -> RequestError:
    """A write (POST or DELETE /items) to a service that does not write: a 403 that says how to get one (a 404
    would read as a wrong address)."""
    return RequestError(403, f"{method} {path}: this service is read-only (start it with `hashindex serve "
                             "--writable` to add and remove items; the basic server never writes)")


def no_such_index(name: str, served: list[str]) -> RequestError:
    """The 404 of a path under /indexes/NAME for an index not served (both servers answer it alike)."""
    return RequestError(404, f"index={name}: no such index (served: {', '.join(served)})")


def int_param(params: Mapping[str, str], name: str, default: int | None, low: int,
              high: int | None = None) -> int | None:
    if name not in params:
        return default
    raw = params[name]
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(400, f"{name}={raw}: expected an integer") from None
    if value < low:
        raise RequestError(400, f"{name}={value}: expected at least {low}")
    if high is not None and value > high:
        raise RequestError(400, f"{name}={value}: at most {high} in one request")
    return value


def flag_param(params: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in params:
        return default
    raw = params[name].lower()
    if raw not in ("0", "1", "true", "false"):
        raise RequestError(400, f"{name}={raw}: expected 0 or 1")
    return raw in ("1", "true")


OPTIONS = ("k", "candidates", "radius", "rerank", "cut_ties", "nprobe", "exclude_self",  # what a search may set
           "only_class", "only_folder", "only_ids", "not_class", "not_folder")
MAX_ONLY_IDS = 100_000  # ids one filter may list (a longer list belongs in a batch job's --only-ids file)


def list_param(params: Mapping[str, str], name: str) -> list[str]:
    """A comma-separated list (``only_class=roses,tulips``), empty items dropped."""
    return [v for v in (x.strip() for x in params.get(name, "").split(",")) if v]


def only_param(params: Mapping[str, str]) -> Any:
    """The search's filter (`hashindex.index.subset.Only`) from only_class, only_folder, only_ids, not_class and
    not_folder; None without one. Whether the index has such classes, folders and ids is checked when the search
    runs (a 400)."""
    from ..index.subset import only

    ids = list_param(params, "only_ids")
    if len(ids) > MAX_ONLY_IDS:
        raise RequestError(400, f"only_ids: {len(ids)} ids, at most {MAX_ONLY_IDS} in one request")
    bad = next((i for i in ids if not i.lstrip("-").isdigit()), None)
    if bad is not None:
        raise RequestError(400, f"only_ids={bad}: expected integer ids separated by commas")
    return only(list_param(params, "only_class"), list_param(params, "only_folder"), [int(i) for i in ids],
                list_param(params, "not_class"), list_param(params, "not_folder"))


def check_names(params: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    """A parameter the endpoint does not take is a 400 naming it, not ignored."""
    for name in params:
        if name not in allowed:
            expected = f"expected {', '.join(allowed)}" if allowed else "this endpoint takes none"
            raise RequestError(400, f"{name}: unknown parameter ({expected})")


THUMBNAIL_SIDES = (16, 2048)  # ?size= of GET /items/ID/image: at least, at most


def image_size(params: Mapping[str, str]) -> int | None:
    """GET /items/ID/image's one parameter: ``size``, the longest side of a JPEG thumbnail (None: the file)."""
    check_names(params, ("size",))
    size = int_param(params, "size", None, THUMBNAIL_SIDES[0])
    if size is not None and size > THUMBNAIL_SIDES[1]:
        raise RequestError(400, f"size={size}: expected at most {THUMBNAIL_SIDES[1]} (pixels a side)")
    return size


def search_options(params: Mapping[str, str], max_results: int | None = None, by_id: bool = False,
                   extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """k, candidates, radius, rerank, cut_ties, nprobe, exclude_self and the filter (only_* and not_*:
    `only_param`) from a query string, checked as the CLI
    checks them (nprobe against the index when the search runs). Any other parameter is refused, not ignored:
    a misspelt ``kk=5`` would otherwise answer with the default k. ``by_id``: ``id`` names the query (GET);
    ``extra``: other parameters the endpoint reads itself (``together`` on /batch)."""
    from ..query import check_candidates

    if "id" in params and not by_id:
        raise RequestError(400, f"id={params['id']}: this request searches with its uploaded image; "
                                "search with an indexed item by GET /search?id=ID")
    check_names(params, OPTIONS + extra + (("id",) if by_id else ()))
    k = int_param(params, "k", 10, 1, MAX_K)
    candidates = int_param(params, "candidates", None, 1, MAX_CANDIDATES)
    try:
        check_candidates(candidates, k)
    except HashindexError as e:  # the library speaks in argument names, as a query string does
        raise RequestError(400, str(e)) from None
    return {"k": k, "candidates": candidates, "radius": int_param(params, "radius", None, 0),
            "max_results": MAX_RESULTS if max_results is None else max_results,
            "rerank": flag_param(params, "rerank", True),
            "complete_ties": not flag_param(params, "cut_ties", False),
            "nprobe": int_param(params, "nprobe", None, 1),
            "exclude_self": flag_param(params, "exclude_self", False), "only": only_param(params)}


BATCH_FIELDS = ("ids", "queries")  # a POST /batch JSON body: indexed items, and queries encoded elsewhere


def batch_body(body: bytes, together: bool = False) -> tuple[list[int], list[Any]]:
    """(ids, encoded queries) of a POST /batch JSON body {"ids": [integers], "queries": [{"model_id", "code",
    "features"}, ...]}, either or both: at most MAX_BATCH in all (``together``: at least one). Each query is
    checked when it is searched (`encoded_query`), so that in a batch its own error is its row's."""
    expected = 'body: expected JSON {"ids": [integers]} and/or {"queries": [encoded queries]}, or multipart ' \
               '"file" fields'
    given = json_value(body)
    if not isinstance(given, dict) or not set(given) & set(BATCH_FIELDS):
        raise RequestError(400, expected)
    unknown = sorted(set(given) - set(BATCH_FIELDS))
    if unknown:
        raise RequestError(400, f"body: unknown field {unknown[0]!r} (expected {' and/or '.join(BATCH_FIELDS)})")
    ids, queries = given.get("ids", []), given.get("queries", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise RequestError(400, "ids: expected a list of integers")
    if not isinstance(queries, list):
        raise RequestError(400, 'queries: expected a list of JSON objects {"model_id", "code", "features"}')
    if len(ids) + len(queries) > MAX_BATCH:
        raise RequestError(400, f"{'ids' if not queries else 'queries' if not ids else 'ids + queries'}: "
                                f"{len(ids) + len(queries)} queries, at most {MAX_BATCH} in one request")
    if together and not ids and not queries:
        raise RequestError(400, "ids: empty (together=1 searches the queries given as one: give at least one)")
    return ids, queries


def check_files(fields: list[tuple[str, Any]]) -> list:
    """A multipart body's uploads (either server's parse of them, as (field name, file) pairs): the "file" fields,
    else every uploaded file whatever its field is called (a form's "image", curl -F photo=@x.jpg); at least one,
    at most MAX_BATCH."""
    files = [f for name, f in fields if name == "file"] or [f for _, f in fields]
    if not files:
        raise RequestError(400, 'multipart body: no file in it (send the image as a "file" field: '
                                'curl -F file=@photo.jpg)')
    if len(files) > MAX_BATCH:
        raise RequestError(400, f"{len(files)} files: at most {MAX_BATCH} in one request")
    return files


def check_upload_options(options: dict[str, Any]) -> None:
    """Options that an uploaded image cannot take: it is not an indexed item, so it has no self to leave out."""
    if options.get("exclude_self"):
        raise RequestError(400, "exclude_self=1: an uploaded image is not an indexed item (exclude_self is for "
                                "searches with an id)")


def own_of(index, item_ids: list[int | None], digests: list[int | None] | None = None) -> Any:
    """``search_vectors``' ``own`` for queries by id (None: an upload) or by upload (``digests``: its
    `codes.input_digests`, None for a query by id): each item's position, or that of the indexed item with
    the upload's pixels (`Index.positions_of_inputs`), first in its results (or left out with ``exclude_self``)."""
    import numpy as np

    ids = np.array([-1 if i is None else i for i in item_ids], np.int64)  # ids are never negative
    own = np.where(ids >= 0, index.positions_of(ids, missing=-1), -1)
    if digests is not None:
        same = index.positions_of_inputs(np.array([0 if d is None else d for d in digests], np.uint64))
        own = np.where(ids >= 0, own, same)
    return own


ENCODED_FIELDS = ("model_id", "code", "features", "mid_features")  # a query encoded elsewhere (`encoded_query`)


def is_json(content_type: str) -> bool:
    """Whether a request's Content-Type says its body is JSON (a query encoded elsewhere, not an image file)."""
    return content_type.split(";")[0].strip().lower() == "application/json"


def json_value(body: bytes) -> Any:
    """A request body parsed as JSON, or None where it is not JSON (each caller says what it expected)."""
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return None


def encoded_query(given: Any, model_id: str, bits: int, feature_field: str | None,
                  where: str = "body") -> dict[str, Any]:
    """A query encoded where the photo is (the outputs of `hashindex export`'s ONNX file), parsed from JSON: a
    POST /search body {"model_id", "code", "features" or "mid_features"}, or ``queries[3]`` of a batch's (``where``
    names it in errors), as `Index.search` takes fields: "codes" (1, ceil(K/8)) uint8 and the feature row
    (1, 192) float32 the index's fine stage reads (``feature_field``; None: the search ranks by Hamming alone,
    and needs none). Codes of another model are refused: they rank nothing."""
    import numpy as np

    if not isinstance(given, dict):
        raise RequestError(400, f'{where}: expected a JSON object {{"model_id", "code", "features" or '
                                '"mid_features"} (a query encoded by the model\'s ONNX file)'
                                + (", or an image file" if where == "body" else ""))
    at = "" if where == "body" else f"{where}."  # a field of a batch's query is named with its place
    unknown = sorted(set(given) - set(ENCODED_FIELDS))
    if unknown:
        raise RequestError(400, f"{where}: unknown field {unknown[0]!r} (expected {', '.join(ENCODED_FIELDS)})")
    if given.get("model_id") != model_id:
        raise RequestError(400, f"{at}model_id={given.get('model_id')}: the index holds codes of model {model_id} "
                                f"(encode with its ONNX file: hashindex export {model_id}, or send the image)")
    width = (bits + 7) // 8
    code = given.get("code")
    try:
        packed = np.frombuffer(bytes.fromhex(code), np.uint8) if isinstance(code, str) else None
    except ValueError:
        packed = None
    if packed is None or len(packed) != width or (bits % 8 and packed[-1] >> (bits % 8)):
        raise RequestError(400, f"{at}code: expected {2 * width} hex digits, the {bits}-bit code packed as "
                                "GET /items/ID shows it (the ONNX file's codes output)")
    fields = {"codes": packed[None].copy()}
    if feature_field is not None:
        fields[feature_field] = _feature_row(given.get(feature_field), at + feature_field)
    return fields


def _feature_row(values: Any, name: str):
    """A JSON list of 192 finite numbers as a (1, 192) float32 row; a 400 naming ``name`` otherwise."""
    import numpy as np

    from ..model import FEATURE_DIM

    if values is None:
        raise RequestError(400, f"{name}: needed by this index's fine stage (or rerank=0 for Hamming alone)")
    try:
        row = np.asarray(values, np.float32)
    except (TypeError, ValueError):
        row = None
    if row is None or row.shape != (FEATURE_DIM,) or not np.isfinite(row).all():
        raise RequestError(400, f"{name}: expected a list of {FEATURE_DIM} finite numbers")
    return row[None]


def upload_array(data: bytes, size: int, channels: int):
    """An upload's bytes as the net's (channels, size, size) uint8 input, within the caps both servers keep:
    the pixel count checked from the header before decoding, JPEGs decoded at reduced scale."""
    from ..data.images import BadImage, net_array

    try:
        return net_array(data, size, channels, max_pixels=MAX_PIXELS)  # as extraction read the indexed files
    except BadImage as e:
        what = "usable" if e.reason == "unsupported" else "decodable"  # a colour mode Pillow cannot convert
        raise RequestError(400, f"body: not a {what} image ({e.reason})") from None
