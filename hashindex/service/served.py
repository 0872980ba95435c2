"""What both servers serve: an opened index and the model that encodes its image queries."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..index import INDEX_JSON, Index
from .params import RequestError, encoded_query, own_of, upload_array


def disk_stamp(index_dir: str | Path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of INDEX_DIR's index.json, which every build, append, removal or sync replaces; None
    while there is none (between the two renames of a swap)."""
    try:
        st = os.stat(Path(index_dir) / INDEX_JSON)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class Served:
    """An index opened once, its model (given, or found by the index's model id) checked against it."""

    def __init__(self, index_dir: str | Path, model: str | None = None, device: str = "cpu",
                 name: str | None = None):
        from ..query import index_model

        self.opened_with = (str(index_dir), model, device)  # what a reload opens again
        self.stamp = disk_stamp(index_dir)  # which version of INDEX_DIR this is (`serve --watch`)
        self.index = Index.load(index_dir)
        self.model = index_model(self.index, model, device)
        # the input digests sorted now (10M items: 2.3 s here beside a training run), not in the first upload's time
        self.index.positions_of_inputs(np.zeros(1, np.uint64))
        self.name = name or Path(index_dir).name
        self._originals = None  # the items' image files (`item_image`), reopened on first use

    def info(self) -> dict[str, Any]:
        """What is served: GET / and /indexes/NAME."""
        binary = self.index.meta["binary"]
        tuning = binary.get("tuning")
        return {"name": self.name, "index": str(self.index.dir), "items": self.index.count, "bits": self.index.bits,
                "model_id": self.index.model_id, "binary": binary["kind"],
                "coarse_recall_at_10": tuning["recall"] if tuning else (1.0 if binary["kind"] == "flat" else None),
                "rerank": self.index.meta["rerank"]["kind"], "signal": self.index.signal,
                "class_names": self.index.class_names}

    def image_array(self, data: bytes) -> np.ndarray:
        """An upload's bytes as the net's input (`params.upload_array`: pixel cap, one-line 400s)."""
        return upload_array(data, self.model.input_size, self.model.channels)

    def encode(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(codes, fine-stage query vectors, `codes.input_digests`) of image queries (the net's input arrays), in
        one forward pass; the digest finds the indexed item with the same pixels (`params.own_of`)."""
        fields = self.model.encode_fields(arrays)
        codes, feats = self.index.search_inputs(fields)
        return codes, self.index.query_vectors(feats).astype(np.float32), fields["input_digests"].tolist()

    def encoded(self, given: Any, rerank: bool, where: str = "body") -> tuple[np.ndarray, np.ndarray]:
        """(codes, fine-stage query vectors) of a query encoded elsewhere: a POST /search JSON body parsed, or one
        of a POST /batch body's "queries" (``where`` names it: ``queries[3]``; `params.encoded_query`); its
        feature is needed only where the search re-ranks."""
        from ..model import FEATURE_DIM

        needs = self.index.feature_field if rerank and self.index.rerank is not None else None
        fields = encoded_query(given, self.index.model_id, self.index.bits, needs, where)
        feats = fields.get(needs) if needs else np.zeros((1, FEATURE_DIM), np.float32)  # (unread: Hamming alone)
        return fields["codes"], self.index.query_vectors(feats).astype(np.float32)

    def together(self, images: list[tuple[str, np.ndarray]], ids: list[int], options: dict[str, Any],
                 encoded: list[tuple[str, tuple[np.ndarray, np.ndarray]]] = ()) -> dict:
        """Images (name, the net's input array), indexed items (``ids``) and queries encoded elsewhere (name,
        `encoded_query`'s codes and vectors) searched as one (`query.search_together`, POST /batch?together=1):
        one result row; an id the index lacks is a 404."""
        from ..query import indexed_queries, search_together

        t0 = time.perf_counter()
        parts, digests = [], []
        if images:
            codes, vecs, digests = self.encode(np.stack([a for _, a in images]))
            parts.append((codes, vecs))
        if ids:
            wanted = np.array(ids, np.int64)
            missing = wanted[self.index.positions_of(wanted, missing=-1) < 0]
            if len(missing):
                raise no_item(int(missing[0]))
            codes, vecs = indexed_queries(self.index, list(ids))
            parts.append((codes, vecs.astype(np.float32)))
        parts += [vectors for _, vectors in encoded]
        own = own_of(self.index, [None] * len(images) + list(ids) + [None] * len(encoded),
                     digests + [None] * (len(ids) + len(encoded)))
        names = [n for n, _ in images] + [f"id:{i}" for i in ids] + [n for n, _ in encoded]
        row = search_together(self.index, np.concatenate([c for c, _ in parts]),
                              np.concatenate([v for _, v in parts]), names, own=own, **options)[0]
        row["took_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return row

    def _position(self, item_id: int) -> int:
        """The index position of an item id; a 404 naming it where the index has no such item."""
        position = int(self.index.positions_of(np.array([item_id]), missing=-1)[0])
        if position < 0:
            raise RequestError(404, f"id={item_id}: no such item in {self.name}")
        return position

    def item(self, item_id: int) -> dict[str, Any]:
        """GET /items/ID: what the index holds of an item, as a search result names it (id, path, label, class),
        and its code: the bytes Hamming distances are counted on, in hex, packed as the index stores them."""
        from ..query import item_fields

        position = self._position(item_id)
        codes = self.index.codes(np.array([position]))
        return {**item_fields(self.index, position, self.index.paths(np.array([position]))[0]),
                "code": codes[0].tobytes().hex(), "bits": self.index.bits}

    def item_image(self, item_id: int, size: int | None = None) -> tuple[bytes, str]:
        """(bytes, media type) of an indexed item's image file, as its collection holds it now (GET
        /items/ID/image), or with ``size`` a JPEG of it at most that many pixels a side (`?size=`: what a page
        of results shows); a 404 naming why when the item or its file is not there."""
        from ..data import BadImage, thumbnail_jpeg
        from ..originals import Originals

        position = self._position(item_id)
        if self._originals is None:
            self._originals = Originals(self.index)
        path = self.index.paths(np.array([position]))[0]
        try:
            data = self._originals.read_bytes(position, path)
            if data is not None and size is not None:
                return thumbnail_jpeg(data, size), "image/jpeg"
        except BadImage as e:
            raise RequestError(404, f"id={item_id}: its image file cannot be read now ({e.reason})") from None
        if data is None:
            raise RequestError(404, f"id={item_id}: its collection is no longer where it was read from, or its "
                                    "images were not kept (added through the service)")
        return data, media_type(data, path)


def no_item(item_id: int) -> RequestError:
    """The 404 of a search with an id the index does not hold (both servers, every endpoint)."""
    return RequestError(404, f"id={item_id}: no item with this id in the index")


@functools.cache
def ui_page() -> str:
    """The page GET /ui serves (both servers), read from the package once."""
    return (Path(__file__).parent / "ui.html").read_text(encoding="utf-8")


MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
         (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))


def media_type(data: bytes, path: str) -> str:
    """An image file's media type from its first bytes (an IDX or CIFAR item is served as the PNG it is
    written as, whatever its "path" says), else from its name."""
    import mimetypes

    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    found = next((kind for magic, kind in MAGIC if data.startswith(magic)), None)
    return found or mimetypes.guess_type(path)[0] or "application/octet-stream"
