"""Keeping an index in step with the folders (image lists, tars and zips) it was built from (`hashindex sync`): image
files added to a folder since, lines added to a list or members to an archive written again, are extracted and
appended; items whose file is gone (or whose line a list, or whose member an archive, no longer has) are removed.

It composes what exists: `provenance.folder_collections`, `list_collections` and `archive_collections` (the
folders, image lists and archives an index holds that are there now), each listed again as extraction lists it,
`extract` of the new files alone (`ImageSource.select`: numbered after every id the index holds or held, recorded
with the folder's spec, so their images, ``--exclude-self`` and the next sync find them by path as they find the
others), `index.append`, and `index.remove` of `provenance.missing_files`.
Files are known by path (a moved photo is removed and added again; one edited in place keeps its code unless
``check_contents`` decodes every file and compares its net input's digest with the one the index stored).
Each step is atomic and resumable on its own (the new files' shard directory is named by what they are, so a
rerun after a kill resumes their extraction), and a rerun of sync after any step does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from tqdm import tqdm

from .codes import input_digests
from .data import BadImage, FolderSource, ImageSource, ListSource, reopen_source
from .data.spec import FOLLOW_LINKS, LABEL_SETS, LABELS
from .errors import HashindexError
from .extraction import extract
from .files import encode_name
from .index import Index, append, remove
from .index.layout import next_id, read_index_meta, read_table
from .provenance import (archive_collections, collection_spec, folder_collections, lines_name_items,
                         list_collections, lists_files, missing_files)
from .query import index_model
from .store import ShardSet

if TYPE_CHECKING:
    from .model import HashModel

SELECTIONS = ("limit", "every")  # a collection read from part of a folder: its other files are not "new"
SHOWN = 20  # paths listed per kind in a summary


@dataclass
class FolderChanges:
    """One folder an index was built from: the folder as listed now (``source``), its files not in the index
    (``fresh``: their positions in it), where the index holds the others (``held``: path -> index position), or
    why its new files are left alone (``skipped``)."""

    folder: Path
    source: ImageSource | None = None
    fresh: list[int] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None
    edited: list[tuple[int, int]] = field(default_factory=list)  # (index position, source position): `find_edited`
    names: list[str] = field(default_factory=list)  # source.paths as the table spells paths (`encode_name`)

    @property
    def new(self) -> ImageSource | None:
        """The files to extract and append (the fresh ones, then those edited since), a source of them alone."""
        picks = self.fresh + [i for _, i in self.edited]
        return self.source.select(np.array(picks), "new files") if picks else None

    def count(self) -> int:
        return len(self.fresh) + len(self.edited)

    @property
    def listed(self) -> set[str]:
        """The folder's files as the table spells paths."""
        return set(self.names)


def folder_changes(index: Index, tried: list[Path] = ()) -> list[FolderChanges]:
    """Per folder the index holds (one entry however many collections were appended from it), its new files;
    ``tried``: shard directories of earlier syncs, whose skipped files (nothing readable: never appended) are not
    new again."""
    by_root: dict[Path, list[dict[str, Any]]] = {}
    for entry, root in folder_collections(index) + list_collections(index) + archive_collections(index):
        by_root.setdefault(root, []).append(entry)
    skipped_before: dict[Path, set[str]] = {}
    for directory in tried:
        spec = _spec_of(directory)
        if spec:
            skipped_before.setdefault(Path(spec.split("#", 1)[0]).resolve(), set()).update(_skipped(directory))
    changes = []
    for root, entries in by_root.items():
        specs = [collection_spec(e) or "" for e in entries]
        chosen = [s for spec in specs for s in spec.split("#")[1:] if s.partition("=")[0] in SELECTIONS]
        if chosen:
            changes.append(FolderChanges(root, skipped=f"built from part of it (#{chosen[0]}): its other files "
                                                       "are not new"))
            continue
        options = [o for o in specs[0].split("#")[1:] if o in (FOLLOW_LINKS, LABEL_SETS) or
                   o.startswith(f"{LABELS}=")]
        try:
            source = reopen_source("#".join([str(root), *options]))
        except HashindexError:  # nothing readable left in it: nothing new either
            continue
        if type(source) is not ListSource and not lists_files(source):  # a prepared store: items not files
            changes.append(FolderChanges(root, skipped="its items are not image files in it (a prepared store): "
                                                       "extract and build --append those"))
            continue
        held: dict[str, int] = {}
        known = set(skipped_before.get(root, ()))
        for e in entries:
            held.update(zip(index.paths(np.arange(e["start"], e["stop"])), range(e["start"], e["stop"])))
            known.update(_skipped(e["dir"]))
        names = [encode_name(p) for p in source.paths]
        if type(source) is ListSource and not lines_name_items(held, names):
            changes.append(FolderChanges(root, skipped="none of its lines names a path the index holds (items "
                                                       "recorded by an older hashindex, relative to the directory "
                                                       "it ran in): extract the list again and build anew"))
            continue
        fresh = [i for i, p in enumerate(names) if i not in source.unread and p not in held and p not in known]
        changes.append(FolderChanges(root, source, fresh, held, names=names))
    return changes


def find_edited(change: FolderChanges, index: Index, size: int, channels: int, progress: bool = True) -> None:
    """Fill ``change.edited``: the files the index holds whose pixels at the net's input (``size``, ``channels``)
    are no longer those it indexed (`codes.input_digests` against the table's), decoded one by one (the cost of
    an extraction without the net). Items indexed before digests were stored (0) are not checked."""
    if change.source is None or not change.held:
        return
    stored = read_table(index.dir, ("input_digests",))["input_digests"] if index.dir else None
    if stored is None:
        return
    pairs = [(change.held[p], i) for i, p in enumerate(change.names)
             if p in change.held and i not in change.source.unread]
    for position, i in tqdm(pairs, desc="check", unit="img", disable=not progress):
        if not stored[position]:
            continue
        try:
            now = input_digests(change.source.read_array(i, size, channels)[None])[0]
        except BadImage:  # unreadable now: edited into something that is not an image; extraction will say so
            now = 0
        if now != stored[position]:
            change.edited.append((position, i))


def _spec_of(directory: Path) -> str | None:
    """The source spec a shard directory was extracted from (None: not a readable one)."""
    try:
        return ShardSet(directory).manifest["source"].get("spec")
    except (HashindexError, OSError):
        return None


def _skipped(directory: str | Path) -> set[str]:
    """The paths an extraction skipped (an empty or broken file), as its shard directory records them: not new
    files at the next sync (while that directory is there; else they are tried, and skipped, again)."""
    try:
        return {encode_name(p) for _, p, _ in ShardSet(directory).skipped()}
    except (HashindexError, OSError):
        return set()


def sync(index_dir: str | Path, *, shards: str | Path | None = None, model: str | None = None,
         device: str = "cpu", dry_run: bool = False, check_contents: bool = False, progress: bool = True,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Bring INDEX_DIR in step with its folders: append their new image files (extracted with the index's model
    into ``shards``, default ``INDEX_DIR.sync/``, kept as every appended collection's shards are) and remove the
    items whose file is gone. ``check_contents``: also decode every file the index holds, and take a file edited
    since (other pixels at the net's input) as gone and new. ``dry_run``: say what would change, change nothing.
    Returns a summary."""
    index_dir = Path(index_dir)
    index = Index.load(index_dir)
    shards = Path(shards) if shards is not None else index_dir.with_name(index_dir.name + ".sync")
    changes = folder_changes(index, sorted(shards.glob("new-*")) if shards.is_dir() else [])
    if not changes:
        raise HashindexError(f"index_dir={index_dir}: holds no collection read from a folder, an image list, a tar "
                             "or a zip that is there now (sync keeps those in step; extract others and build "
                             "--append them)")
    encoder = index_model(index, model, device) if check_contents else None
    for change in changes if check_contents else ():
        find_edited(change, index, encoder.input_size, encoder.channels, progress)
    edited = np.array([p for c in changes for p, _ in c.edited], np.int64)
    listed = {c.folder: c.listed for c in changes if lists_files(c.source)}
    lists = {c.folder: c.source for c in changes if type(c.source) is ListSource}
    gone = np.union1d(missing_files(index, listed, lists), edited)  # folders and lists read once: `folder_changes`
    summary: dict[str, Any] = {
        "index": str(index_dir), "dry_run": dry_run, "removed": len(gone), "edited": len(edited),
        "removed_paths": index.paths(gone[:SHOWN]) if len(gone) else [],
        "folders": [{"folder": str(c.folder), "new": c.count(), **({"skipped": c.skipped} if c.skipped else {}),
                     "new_paths": c.new.paths[:SHOWN] if c.count() else []} for c in changes]}
    if dry_run:
        return {**summary, "added": sum(c.count() for c in changes)}
    gone_ids = index.ids[gone]
    added, unread, written = 0, 0, []
    if encoder is None and any(c.count() for c in changes):
        encoder = index_model(index, model, device)
    for change in changes:
        if not change.count():
            continue
        rows, out = _append_new(change, index, index_dir, shards, encoder, device, progress, log)
        added, unread = added + rows, unread + change.count() - rows
        written.append(str(out))
    if len(gone_ids):
        remove(index_dir, ids=gone_ids, progress=progress, log=log)
    return {**summary, "added": added, "unreadable": unread, "shards": written}


def _append_new(change: FolderChanges, index: Index, index_dir: Path, shards: Path, model: HashModel,
                device: str, progress: bool, log: Callable[[str], None]) -> tuple[int, Path]:
    """Extract one folder's new files into a shard directory named by what they are and append them; (rows
    appended, the directory). Files that cannot be decoded are extraction's counted skips."""
    source = change.new  # a fresh selection: its labels are remapped and its ids set here
    try:
        source.remap_labels(index.class_names)
    except HashindexError:
        extra = [c for c in source.class_names if c not in index.class_names]
        what = "class folders" if type(change.source) is FolderSource else "classes"
        raise HashindexError(f"index_dir={index_dir}: {change.folder} has new {what} ({', '.join(extra[:5])}) the "
                             "index does not know: build the index again to take them") from None
    meta = read_index_meta(index_dir)  # as it is now: another folder's new files may have been appended
    source.id_offset = next_id(meta, read_table(index_dir, ("ids",))["ids"])
    out = shards / f"new-{source.fingerprint()}"
    manifest = extract(model, source, out, device=device, progress=progress, log=log)
    rows = sum(s["rows"] for s in manifest["shards"])
    if rows:
        append(out, index_dir, progress=progress, log=log)
    return rows, out
