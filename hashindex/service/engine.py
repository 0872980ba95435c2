"""One served index: its model, a decode pool, and a batcher that gathers concurrent searches for Faiss.

Concurrent requests are not searched one at a time under a lock: each is queued, and one batcher thread
takes everything waiting (up to ``max_batch``), encodes the image queries in one forward pass, and searches
each group of identical options with one Faiss call. A batch search costs far less per query than single
searches (one scan of the codes serves every query, and the net runs one batched pass), so throughput
rises with load while a lone request waits for nobody (the batcher never holds a request back to wait for
company). Decoding uploads (the other CPU-heavy step) runs in a small thread pool beside it: Pillow
releases the GIL while decoding and resizing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HashindexError
from ..query import indexed_queries, search_vectors
from .params import RequestError, own_of
from .served import Served, no_item

log = logging.getLogger("hashindex.service")
MAX_QUEUE = 1024  # searches waiting for one index's batcher; past it a search is refused at once (503, retry)


@dataclass(eq=False)
class Query:
    """One search waiting for the batcher: an image (the net's input array), an indexed item's id, a query
    encoded elsewhere (``encoded``: its codes and fine-stage vectors, `Served.encoded`), or several images or
    ids searched as one (``members``)."""

    name: str
    options: dict[str, Any]
    array: np.ndarray | None = None
    item_id: int | None = None
    encoded: tuple[np.ndarray, np.ndarray] | None = None
    digest: int | None = None  # an image's `codes.input_digests`, set when it is encoded
    members: list["Query"] | None = None  # several queries searched as one (`query.search_together`)
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class Engine(Served):
    """A served index with batched searching."""

    def __init__(self, index_dir: str | Path, model: str | None = None, device: str = "cpu", *,
                 name: str | None = None, max_batch: int = 64, decode_workers: int = 2, max_queue: int = MAX_QUEUE):
        super().__init__(index_dir, model, device, name)
        self.max_batch, self.decode_workers, self.max_queue = max_batch, decode_workers, max_queue
        self.decoder = ThreadPoolExecutor(decode_workers, thread_name_prefix=f"decode-{self.name}")
        self.batch_sizes: Counter[int] = Counter()  # batches answered, by size (for /metrics; at most max_batch keys)
        self._queue: queue.Queue[Query | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, query: Query) -> Future:
        """Queue a search; its future resolves to the result row (or raises RequestError / HashindexError). A
        full queue refuses it at once (503): under more load than the index answers, a search that waits
        would time out anyway, after taking its place from one that would not. Cancelling the future (the
        request timed out) before the batcher takes it saves the work."""
        if self._queue.qsize() >= self.max_queue:
            raise RequestError(503, f"busy: {self.max_queue} searches of {self.name} are waiting; retry shortly")
        self._queue.put(query)
        return query.future

    def reopen(self) -> "Engine":
        """A new engine over the same index directory, model and options, as they are on disk now (after
        `build --append` swapped a grown index in, say); its batch counts for /metrics go on from this one's."""
        index_dir, model, device = self.opened_with
        fresh = Engine(index_dir, model, device, name=self.name, max_batch=self.max_batch,
                       decode_workers=self.decode_workers, max_queue=self.max_queue)
        fresh.batch_sizes = self.batch_sizes
        return fresh

    def close(self) -> None:
        """Finish what is queued, then stop the batcher (graceful shutdown)."""
        self._queue.put(None)
        self._thread.join(timeout=60)
        self.decoder.shutdown(wait=True)

    # ------------------------------------------------------------------ the batcher thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self.max_batch:  # everything already waiting, without waiting for more
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            live = [q for q in batch if q.future.set_running_or_notify_cancel()]  # timed out while queued: skip
            if live:
                self.batch_sizes[len(live)] += 1
                self._process_safely(live)
            if stop:
                return

    def _process_safely(self, batch: list[Query]) -> None:
        """`_process`, with any error it lets through failing the batch's unanswered searches (a bug must not
        end the batcher, or every later search of this index would wait for nothing)."""
        try:
            self._process(batch)
        except Exception as e:  # noqa: BLE001
            log.exception("batch of %d searches failed", len(batch))
            for q in batch:
                if not q.future.done():
                    q.future.set_exception(e)

    def _process(self, batch: list[Query]) -> None:
        for q in batch:
            if q.members is not None:
                self._together(q)
        batch = [q for q in batch if q.members is None]
        ready: list[tuple[Query, np.ndarray, np.ndarray]] = []
        images = [q for q in batch if q.array is not None]
        if images:
            try:
                codes, vecs = self._encode(images)
                ready += [(q, codes[i:i + 1], vecs[i:i + 1]) for i, q in enumerate(images)]
            except Exception as e:  # noqa: BLE001 (a bug fails these requests, not the batcher)
                for q in images:
                    q.future.set_exception(e)
        ready += [(q, *q.encoded) for q in batch if q.encoded is not None]
        for q in batch:
            if q.item_id is not None:
                try:
                    codes, vecs = indexed_queries(self.index, [q.item_id])
                    ready.append((q, codes, vecs.astype(np.float32)))
                except HashindexError:
                    q.future.set_exception(no_item(q.item_id))
        groups: dict[tuple, list[tuple[Query, np.ndarray, np.ndarray]]] = {}
        for entry in ready:
            groups.setdefault(tuple(sorted(entry[0].options.items())), []).append(entry)
        for group in groups.values():
            self._search(group)

    def _search(self, group: list[tuple[Query, np.ndarray, np.ndarray]]) -> None:
        t0 = time.perf_counter()
        queries = [q for q, _, _ in group]
        options = dict(queries[0].options)  # one group, one set of options
        try:
            own = own_of(self.index, [q.item_id for q in queries], [q.digest for q in queries])
            rows = search_vectors(self.index, np.concatenate([c for _, c, _ in group]),
                                  np.concatenate([v for _, _, v in group]), [q.name for q in queries],
                                  own=own, **options)
        except Exception as e:  # noqa: BLE001
            if len(group) == 1:
                queries[0].future.set_exception(e)
                return
            for entry in group:  # one query's problem (a radius past the cap) must not fail the others
                self._search([entry])
            return
        took = (time.perf_counter() - t0) * 1000
        for q, row in zip(queries, rows):
            row["took_ms"] = round(took, 2)
            q.future.set_result(row)

    def _encode(self, images: list[Query]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, fine-stage query vectors) of image queries, in one forward pass; each one's digest set (the
        indexed item with the same pixels is found by it)."""
        codes, vecs, digests = self.encode(np.stack([q.array for q in images]))
        for q, digest in zip(images, digests):
            q.digest = digest
        return codes, vecs

    def _together(self, query: Query) -> None:
        """Its members as one query (`Served.together`); one row, or the request's one error (an unknown id: a
        404)."""
        try:
            images = [(m.name, m.array) for m in query.members if m.array is not None]
            ids = [m.item_id for m in query.members if m.item_id is not None]
            encoded = [(m.name, m.encoded) for m in query.members if m.encoded is not None]
            row = self.together(images, ids, query.options, encoded)
        except Exception as e:  # noqa: BLE001 (this request fails, not the batcher)
            query.future.set_exception(e)
            return
        query.future.set_result(row)
