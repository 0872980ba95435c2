"""Where an index's items came from: the collections it holds (`collection_spec`, `folder_collections`,
`list_collections`), which item a query or an image file is (`own_positions` for query shards, `image_positions`
for files), and which items' files are gone from their folder (`missing_files`). Queries use it to put a
query's own item first (or leave it out), `remove --missing` and `sync` to find what was deleted, the service to
serve an item's image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Collection, Iterable

import numpy as np

from .errors import HashindexError
from .index import Index


def own_positions(index, shards, ids: np.ndarray, paths: list[str]) -> np.ndarray | None:
    """Per query, the database position of the query's own item (-1: none), or None when no query is an
    indexed item. A query is one when its shards are a collection the index holds (the shard directory it was
    built or appended from, by manifest checksum; the same collection extracted again, by source fingerprint
    and spec), or come from the same collection as one (its spec without ``#limit=`` / ``#every=``
    selections) and an item there has the query's id and path (a subset of what was indexed, or more)."""
    from .files import sha256_file
    from .index.layout import collections
    from .store import MANIFEST

    src = shards.manifest["source"]
    sha = sha256_file(shards.dir / MANIFEST)
    base = base_spec(src.get("spec"))
    pos = index.positions_of(ids, missing=-1)
    own = np.full(len(ids), -1, np.int64)
    for entry in collections(index.meta):
        inside = (pos >= entry["start"]) & (pos < entry["stop"])
        spec = collection_spec(entry) if entry.get("manifest_sha256") != sha else None
        if entry.get("manifest_sha256") == sha or (
                entry.get("fingerprint") == src["fingerprint"] and spec == src.get("spec")):
            own = np.where(inside, pos, own)
        elif base is not None and base_spec(spec) == base and inside.any():
            at = np.flatnonzero(inside)
            same = np.array(index.paths(pos[at])) == np.array([paths[i] for i in at])
            own[at[same]] = pos[at[same]]
    return own if (own >= 0).any() else None


def collection_spec(entry: dict[str, Any]) -> str | None:
    """The source spec of a collection an index holds (index.json's; for indexes built before specs were
    recorded there, its shard directory's manifest's, while that directory exists), or None."""
    from .store import source_spec

    return entry.get("spec") or source_spec(entry["dir"])


def _present(index: Index, kind: Callable[[Path], bool]) -> list[tuple[dict[str, Any], Path]]:
    """(entry, path) for each collection the index holds whose source path (its spec without selections) exists
    now and is of ``kind``."""
    from .index.layout import collections

    out = []
    for entry in collections(index.meta):
        spec = collection_spec(entry)
        root = Path(base_spec(spec) or "").resolve() if spec else None
        if root is not None and kind(root):
            out.append((entry, root))
    return out


def folder_collections(index: Index) -> list[tuple[dict[str, Any], Path]]:
    """(entry, folder) for each collection the index holds that was read from a folder that exists now (its
    items' paths are relative to it); a collection whose folder is gone (a drive unmounted) is not listed."""
    return _present(index, Path.is_dir)


def list_collections(index: Index) -> list[tuple[dict[str, Any], Path]]:
    """(entry, list file) for each collection the index holds that was read from an image list (a ``.txt``,
    ``.csv``, ``.lst`` or ``.tsv`` of paths) that exists now: `sync` keeps those in step as it keeps folders."""
    from .data.lists import LIST_EXTENSIONS

    return _present(index, lambda p: p.name.lower().endswith(LIST_EXTENSIONS) and p.is_file())


def archive_collections(index: Index) -> list[tuple[dict[str, Any], Path]]:
    """(entry, archive) for each collection the index holds that was read from one tar or zip that exists now (its
    items' paths are member names): `sync` keeps those in step as it keeps folders, the archive written again with
    members added or taken out."""
    from .data.members import TAR_EXTENSIONS, ZIP_EXTENSIONS

    return _present(index, lambda p: p.name.lower().endswith(TAR_EXTENSIONS + ZIP_EXTENSIONS) and p.is_file())


def lists_files(source: Any) -> bool:
    """Whether a collection's items are files it lists again as extraction read them (`missing_files`, `sync`): a
    folder of images or of tars and zips (their members named under each archive's name), one tar or zip; not a
    prepared store, whose items are not files in it (an image list is read by its lines: `_gone_from_list`)."""
    from .data import FolderSource, TarSource, ZipSource
    from .data.webdataset import ConcatSource

    return type(source) in (FolderSource, ConcatSource, TarSource, ZipSource)


def image_positions(index: Index, images: list[str]) -> np.ndarray:
    """Per image file, the position of the indexed item read from that very file (-1: none), found through
    the folder and image-list collections the index holds (`folder_collections`, `list_collections`: a list's
    items are named relative to its folder, or by the absolute path a line gives; the file need not exist any
    more). Reads the table's paths of such a collection only when some image may be one of its items."""
    from .files import encode_name

    own = np.full(len(images), -1, np.int64)
    files = [Path(p).resolve() for p in images]
    roots = [(entry, root, False) for entry, root in folder_collections(index)]
    roots += [(entry, listing.parent, True) for entry, listing in list_collections(index)]
    for entry, root, is_list in roots:
        wanted = {encode_name(f.relative_to(root).as_posix()): q for q, f in enumerate(files)
                  if own[q] < 0 and f.is_relative_to(root)}
        if is_list:  # (a line may name its file by an absolute path)
            wanted |= {encode_name(f.as_posix()): q for q, f in enumerate(files) if own[q] < 0}
        if wanted:
            for p, path in enumerate(index.paths(np.arange(entry["start"], entry["stop"]))):
                if path in wanted:
                    own[wanted[path]] = entry["start"] + p
    return own


def missing_files(index: Index, listings: dict[Path, set[str]] | None = None,
                  lists: dict[Path, Any] | None = None) -> np.ndarray:
    """Positions of the items of folder collections whose image file is no longer in the folder (deleted or moved
    away), of archive collections whose member the tar or zip (written again) no longer has, and of image-list
    collections whose line the list no longer has or whose file is gone: what `hashindex remove --missing` takes
    out. Each folder or archive is listed again as extraction read it (its ``#label-sets`` / ``#follow-links``
    options, without ``#limit`` / ``#every`` selections); a folder of image files, or of tars and zips (their
    members named under each archive's name), counts, a prepared store not (its items are not files in it), and a
    collection whose folder or archive is gone is skipped. ``listings``: folders and archives a caller has just
    listed (resolved path -> its files' encoded paths), used as they are instead of being listed again (`sync`);
    ``lists``: image lists a caller has just read (resolved list -> its `ListSource`), likewise not read again."""
    from .data import reopen_source
    from .data.spec import FOLLOW_LINKS, LABEL_SETS
    from .files import encode_name

    gone: list[int] = []
    for entry, root in folder_collections(index) + archive_collections(index):
        listed = (listings or {}).get(root)
        if listed is None:
            options = [o for o in collection_spec(entry).split("#")[1:] if o in (FOLLOW_LINKS, LABEL_SETS)]
            try:
                src = reopen_source("#".join([str(root), *options]))
            except HashindexError:  # nothing readable left in it: as a folder that is gone, left alone
                continue
            if not lists_files(src):
                continue
            listed = {encode_name(p) for p in src.paths}
        paths = index.paths(np.arange(entry["start"], entry["stop"]))
        gone += [entry["start"] + p for p, path in enumerate(paths) if path not in listed]
    for entry, listing in list_collections(index):
        gone += _gone_from_list(index, entry, listing, (lists or {}).get(listing))
    return np.array(gone, np.int64)


def _gone_from_list(index: Index, entry: dict[str, Any], listing: Path, src=None) -> list[int]:
    """Positions of an image list's items that no line of the list names now, or whose file is gone; ``src``: the
    list as a caller has just read it (else it is read here)."""
    from .data import ListSource, reopen_source
    from .data.spec import LABEL_SETS
    from .files import encode_name

    if src is None:
        options = [o for o in collection_spec(entry).split("#")[1:] if o == LABEL_SETS]
        try:
            src = reopen_source("#".join([str(listing), *options]))
        except HashindexError:  # a list that names nothing now (or no longer reads): left alone, as a folder gone
            return []
    if type(src) is not ListSource:
        return []
    line = {encode_name(p): i for i, p in enumerate(src.paths)}
    paths = index.paths(np.arange(entry["start"], entry["stop"]))
    if not lines_name_items(paths, line):  # not "every item gone": left alone, as a folder that is gone
        return []
    return [entry["start"] + p for p, path in enumerate(paths)
            if path not in line or not src.file(line[path]).exists()]


def lines_name_items(recorded: Iterable[str], names: Collection[str]) -> bool:
    """Whether an image list's lines (``names``, encoded) name the items an index recorded from it: False when it
    holds some and the list names none of them, their paths recorded relative to the working directory of an
    extraction made before lists named items by their lines (c8ace9b). `sync` and `remove --missing` leave such
    a list alone rather than take every item as gone and every line as new."""
    recorded = set(recorded)
    return not recorded or not recorded.isdisjoint(names)


def base_spec(spec: str | None) -> str | None:
    """A source spec without its selections (``#limit=N``, ``#every=N:part``, ``#follow-links``)."""
    return spec.split("#", 1)[0] if spec else None
