"""Adding images to a served index and taking items out (`hashindex serve --writable`: POST and DELETE /items).

An upload is decoded as extraction reads a file (`params.upload_array`), encoded by the index's model, written
as a shard directory (`store.write_arrays`) and appended to INDEX_DIR by `build --append`'s code; the service
then reopens the index, as SIGHUP does. So an add is on disk before it is answered, and a crash leaves the
index as it was before the add or after it, never half (append swaps a complete new INDEX_DIR in). Each add is
one append, which rewrites the float store and the table: add photos in batches (multipart, up to 64 files per
request) rather than one request each, and a sharded index (`build --shards`) gains one part per add.
A removal is `hashindex remove`'s (`index.remove`), then the same reopening.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.labels import class_text
from .params import RequestError

ADD_PARAMS = ("label", "path")  # what POST /items may set


def item_labels(raw: str | None, class_names: list[str], multi_label: bool
                ) -> tuple[int, np.ndarray | None]:
    """(label, label set or None) of added items from the ``label`` parameter: a class name of the index (or
    its number); ``a|b`` for a multi-label index; none: unlabelled. Compared in NFC, as collections' class
    names are (`data.labels.class_text`: a Mac's client may send 'é' as 'e' + an accent)."""
    sets = np.zeros(len(class_names), bool) if multi_label else None
    if raw is None or raw == "":
        return -1, sets
    raw = class_text(raw)
    names = raw.split("|") if multi_label or ("|" in raw and raw not in class_names) else [raw]
    if len(names) > 1 and not multi_label:
        raise RequestError(400, f"label={raw}: one class per item in this index")
    labels = []
    for name in names:
        if name in class_names:
            labels.append(class_names.index(name))
        elif name.isdigit() and int(name) < len(class_names):
            labels.append(int(name))
        else:
            shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
            raise RequestError(400, f"label={name}: not a class of this index ({shown or 'it has no classes'})")
    if sets is not None:
        sets[labels] = True
    return labels[0], sets


def add_items(engine, arrays: list[np.ndarray], paths: list[str], label: str | None) -> dict[str, Any]:
    """Encode the net inputs ``arrays`` with the engine's model and append them to its INDEX_DIR with new ids
    (after the largest); returns the ids given. The engine goes on serving the index it opened: reopen it."""
    from ..index import append
    from ..index.layout import next_id
    from ..store import write_arrays

    index = engine.index
    first, row = item_labels(label, index.class_names, index.label_sets is not None)
    fields = engine.model.encode_fields(np.stack(arrays))
    start = next_id(index.meta, index.ids)  # after every id it holds or held: a removed id is not given again
    ids = np.arange(start, start + len(arrays), dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix=".hashindex-add-", dir=Path(index.dir).parent) as tmp:
        shards = write_arrays(Path(tmp) / "items", fields["codes"], fields["features"], ids=ids,
                              labels=np.full(len(ids), first), paths=paths, bits=index.bits,
                              class_names=index.class_names, model_id=index.model_id, description="service upload",
                              label_sets=None if row is None else np.repeat(row[None], len(ids), 0),
                              mid_features=fields["mid_features"], input_digests=fields["input_digests"])
        meta = append(shards.dir, index.dir, progress=False, log=lambda line: None)
    return {"added": len(ids), "ids": ids.tolist(), "items": meta["count"]}


def item_ids(raw: str | None) -> list[int]:
    """The ids of DELETE /items (``ids=3,17``)."""
    try:
        ids = [int(v) for v in (raw or "").split(",") if v.strip()]
    except ValueError:
        raise RequestError(400, f"ids={raw}: expected integers separated by commas") from None
    if not ids:
        raise RequestError(400, "ids: name the items to remove (ids=3,17)")
    return ids


def remove_items(engine, ids: list[int]) -> dict[str, Any]:
    """Take the items ``ids`` out of the engine's INDEX_DIR (`index.remove`); reopen the index afterwards."""
    from ..index import remove

    meta = remove(engine.index.dir, ids, progress=False, log=lambda line: None)
    return {"removed": meta["removed"][-1]["count"], "items": meta["count"]}
