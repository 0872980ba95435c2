"""Image grids of search results: a query and its results per row (an evaluation's examples, `query --grid`), and
groups of copies of a photo (`duplicates --grid`); and the two figure helpers `report` shares (matplotlib on
Agg, figures written atomically: PNG, or JPEG, PDF or SVG by the file's name).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import HashindexError
from .files import encode_name
from .targets import class_name, relevant_items


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


FIGURE_FORMATS = {"": "png", "png": "png", "jpg": "jpeg", "jpeg": "jpeg", "pdf": "pdf", "svg": "svg"}


def figure_format(path: str | Path, arg: str = "grid") -> str:
    """The image format a figure's file name asks for (no suffix: PNG); an other suffix is a one-line error, said
    before any work (a grid is drawn last: a PNG under a .txt or .json name would pass for something else)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise HashindexError(f"{arg}={path}: expected a .png, .jpg, .pdf or .svg file name")
    return FIGURE_FORMATS[suffix]


def write_png(fig, path: Path, dpi: int) -> None:
    """Save a figure atomically (never a half-written file under the final name) and free it: a PNG, or the
    format its name asks for (`figure_format`)."""
    from .files import atomic_path

    fmt = figure_format(path, "path")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    pyplot().close(fig)


# A tile is ~1.2 in at 110 dpi (~130 px): a JPEG is decoded at reduced scale down to twice that, not whole (a grid
# of 28 photos at 4000 px drew in 0.028x the time: tools/bench_grid.py, docs/RESULTS.md "Results grids of
# camera-size photos").
TILE_SIDE = 264


def _database_image(originals, position: int, path: str) -> Callable[[], Any]:
    """A reader of the image at an index position (None where its collection cannot be read)."""
    return lambda: originals.read(position, path, TILE_SIDE)


def _file_image(path: str) -> Callable[[], Any]:
    from .data import decode_image

    return lambda: decode_image(Path(path).read_bytes(), max_side=TILE_SIDE)


def _reachable_sources(index):
    """The index's `Originals`; an error when none of its collections can be read (a grid of "?" only)."""
    from .originals import Originals

    originals = Originals(index)
    if not originals.reachable():
        raise HashindexError("results grid: the indexed images are no longer where they were extracted from")
    return originals


def _draw_grid(rows: list[tuple[Callable, str, list[tuple[Callable, str, str]]]], path: Path, title: str,
               columns: int = 1) -> Path:
    """One row per query: (read query image, caption, [(read result image, border colour, caption)]); at least
    ``columns`` result columns (a figure wide enough for its title)."""
    from .data import BadImage

    plt = pyplot()
    k = max([len(hits) for _, _, hits in rows] + [columns])
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.2 * (k + 1), 1.45 * len(rows) + 0.4), squeeze=False)

    def show(ax, read, colour, text):
        try:
            img = read()
            if img is None:  # the path is no longer in its source
                raise KeyError(text)
            ax.imshow(img.convert("RGB"))
        except (BadImage, KeyError, OSError):
            ax.text(0.5, 0.5, "?", ha="center")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_edgecolor(colour)
            side.set_linewidth(3)
        ax.set_title(text, fontsize=6)

    for r, (read, text, hits) in enumerate(rows):
        show(axes[r, 0], read, "black", text)
        for c in range(k):
            if c < len(hits):
                show(axes[r, c + 1], *hits[c])
            else:
                axes[r, c + 1].axis("off")
    # the title wrapped to the figure's width (~14 characters an inch at 8 pt: the grid of 4 results of a query cut
    # its one-line title at both sides), in a top band of 0.15 in a line (two at least) plus 0.15, clear of row one
    lines = textwrap.wrap(title, width=max(24, int(fig.get_figwidth() * 14)))
    band = 0.15 + 0.15 * max(2, len(lines))
    fig.set_figheight(fig.get_figheight() + band - 0.45)
    height = fig.get_figheight()
    fig.suptitle("\n".join(lines), fontsize=8, y=1 - 0.05 / height, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - band / height))
    write_png(fig, path, dpi=110)
    return path


def results_grid(index, examples: dict[str, Any], path: Path) -> Path:
    """Query image + top-k results per row (`query.example_results`), green border = same label, red = not."""
    from .originals import reopen_or_none

    qsrc = reopen_or_none(examples["source_spec"])
    if qsrc is None:
        raise HashindexError("results grid: the query images are no longer where they were extracted from")
    sources = _reachable_sources(index)
    res, k = examples["result"], examples["result"].positions.shape[1]
    paths = index.paths(res.positions)
    rows = []
    relevant = relevant_items(examples["targets"], examples["db_targets"], np.maximum(res.positions, 0))
    for row, (qpath, ql) in enumerate(zip(examples["paths"], examples["labels"])):
        item = qsrc.item_of(qpath)
        hits = []
        for col in range(k):
            pos = int(res.positions[row, col])
            if pos >= 0:
                colour = "grey" if ql < 0 else "green" if relevant[row, col] else "red"  # grey: no label to judge
                hits.append((_database_image(sources, pos, paths[row * k + col]), colour,
                             f"d={int(res.hamming[row, col])}"))
        rows.append(((lambda item=item: qsrc.read(item, TILE_SIDE) if item is not None else None),
                     f"query: {class_name(index.class_names, int(ql)) if ql >= 0 else Path(qpath).name[-20:]}", hits))
    borders = ("green = same class (a shared label for label sets), red = other"
               + ("; grey = an unlabelled query" if (examples["labels"] < 0).any() else ""))
    return _draw_grid(rows, path, f"top {k} (re-ranked): {borders}; model {index.model_id}")


def query_grid_rows(index, rows: list[dict[str, Any]], most: int = 20) -> list:
    """Grid rows for `hashindex query` results (``query.query``'s dicts): the query image, then its hits.

    A query by id has a label: borders green / red for same / other class; an
    image file has none, so its hits get grey borders and their class as caption.
    """
    sources = _reachable_sources(index)
    out = []
    for row in rows:
        name, hits = row["query"], row["results"][:most]
        qlabel = None
        positions = index.positions_of(np.array([h["id"] for h in hits], np.int64)) if hits else []
        if name.startswith("id:"):
            qpos = int(index.positions_of(np.array([int(name[3:])]))[0])
            read, qlabel = _database_image(sources, qpos, index.paths([qpos])[0]), int(index.labels[qpos])
            caption = f"{name} ({class_name(index.class_names, qlabel)})"
            db = index.targets()
            same = relevant_items(db[qpos:qpos + 1], db, np.asarray(positions, np.int64)[None])[0]
        else:
            read, caption = _file_image(name), Path(name).name
        cells = []
        for j, (h, pos) in enumerate(zip(hits, positions)):
            colour = "grey" if qlabel is None else ("green" if same[j] else "red")
            cls = h["class"] if h["class"] is not None else str(h["label"])
            cells.append((_database_image(sources, int(pos), h["path"]), colour, f"{cls} d={h['hamming']}"))
        out.append((read, caption, cells))
    return out


def query_grid(index, rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the results of `hashindex query` as a PNG grid (query image, then its results)."""
    return _draw_grid(query_grid_rows(index, rows), Path(path),
                      f"hashindex query: {index.count} items, model {index.model_id} (border: green same class or a "
                      "shared label, red other, grey unknown)")


def duplicates_grid(groups: list[list[dict[str, Any]]], sources: dict[str, Any], path: str | Path,
                    most: int = 30) -> Path:
    """Write groups of copies (`duplicates.find_duplicates`) as a PNG grid: a row per group, its first image,
    then each copy with its Hamming distance ("d=6", "d=6 cut" where a crop box matched: one of the two cut to
    it); ``sources`` maps each collection name to its `ImageSource`."""
    def reader(row: dict[str, Any]) -> Callable[[], Any]:
        src = sources[row["collection"]]
        pos = src.item_of(encode_name(row["path"]))
        return lambda: src.read(pos, TILE_SIDE) if pos is not None else None

    def caption(row: dict[str, Any]) -> str:
        where = f"{Path(row['collection']).name}: " if len(sources) > 1 else ""
        return f"{where}{Path(row['path']).name}"[-22:]

    def distance(row: dict[str, Any]) -> str:
        return f"d={row['distance']}" + ("" if row.get("match", "whole") == "whole" else " cut")

    rows = [(reader(g[0]), caption(g[0]), [(reader(r), "grey", f"{distance(r)} {caption(r)[-16:]}")
                                           for r in g[1:12]]) for g in groups[:most]]
    if not rows:
        raise HashindexError("duplicates grid: no groups of copies to draw")
    title = (f"hashindex duplicates: {min(len(groups), most)} of {len(groups)} groups\n(first image, then its "
             "copies and their Hamming distance to it; cut: in a crop box)")
    return _draw_grid(rows, Path(path), title, columns=4)
