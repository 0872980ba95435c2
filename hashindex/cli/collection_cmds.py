"""`hashindex duplicates` (what a collection holds more than once; no model, no index needed) and `hashindex
sync` (an index kept in step with the folders it was built from)."""

from __future__ import annotations

import click

from .group import _echo_json, cli


@cli.command()
@click.argument("data", nargs=-1, required=True)
@click.option("--radius", default=None, type=click.IntRange(0, 63),
              help="Largest Hamming distance between the 64-bit perceptual hashes of two copies [default: 8].")
@click.option("--fine-radius", default=None, type=click.IntRange(0, 256),
              help="Largest distance between the 256-bit hashes of a pair found within --radius: a second check "
                   "that turns away different photos alike in outline [default: 64; 256: no check].")
@click.option("--crops", default="centre", show_default=True, metavar="FAMILIES",
              help="Also match an image against copies cut to crop boxes, families joined by commas: centre (crops "
                   "of 2-15 % a side, centred; 4x the search of none), sides (a strip of 3-20 % off one edge), "
                   "square (the centre square of a 4:3, 3:2 or 5:3 photo), uneven (0-10 % off each side, by a "
                   "different amount on each), corners (3-20 % off two adjacent sides); none: whole images only, "
                   "the fastest "
                   "[docs/RESULTS.md 'Duplicates: crops'].")
@click.option("--keep", default=None, type=click.Choice(["largest", "first"]),
              help="Which image of a group is kept (--redundant lists the others): the largest (the widest view, "
                   "the one the others are cropped from, then the most pixels, then bytes: the original over its "
                   "crops, resized and re-encoded copies) or the first in DATA order [default: largest; first "
                   "with --across, so the copies listed are the later DATA's].")
@click.option("--across", is_flag=True,
              help="Only groups with images from more than one DATA (a test set's photos that are also in the "
                   "training set).")
@click.option("--out", default=None,
              help="Write the groups as CSV (group, collection, id, path, file, distance, fine_distance, match, "
                   "keep).")
@click.option("--redundant", default=None,
              help="Write every image but the kept one of each group (--keep), one per line: its file for a folder "
                   "of images, else its recorded path (for `hashindex remove --paths-file`).")
@click.option("--grid", default=None,
              help="Also draw the groups as an image (.png, .jpg, .pdf or .svg by the name; up to 30 "
                   "rows: first image, then its copies).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Decoding processes.")
@click.option("--hashes", "hashes_dir", default=None, metavar="DIR",
              help="Keep the images' hashes in DIR: a rerun (the same command after an interruption, another "
                   "--radius, the collection beside others) decodes no image hashed before.")
@click.option("--follow-links", is_flag=True,
              help="Read symbolic links that lead out of a DATA folder (otherwise each is a counted skip).")
@click.option("--show", default=10, show_default=True, type=click.IntRange(0), help="Groups to print.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups and counts as JSON.")
@click.pass_context
def duplicates(ctx, data, radius, fine_radius, crops, keep, across, out, redundant, grid, workers, hashes_dir,
               follow_links, show, as_json):
    """Copies of the same photo (re-encoded, resized, re-exposed, cropped) in one or more collections.

    Every image is decoded to a 32x32 grey thumbnail and hashed (64-bit and 256-bit pHash), whole and cut to
    the crop boxes of --crops; pairs within --radius bits of the short hash and --fine-radius of the long one,
    whole or one of them cut to a box, are copies. Each image not yet in a group gathers its copies: a group
    is listed from that first image (in DATA order), with each copy's distances to it. The learned codes are
    not used: they are made to match different photos of one class.

    \b
    Examples:
      hashindex duplicates ~/photos --out copies.csv --redundant copies.txt --grid copies.png
      hashindex remove index/photos --paths-file copies.txt       # then keep one of each in the index
      hashindex duplicates train.tar test.tar --across            # test photos that are also training photos
      hashindex duplicates ~/photos --hashes ~/.cache/phash       # a million photos: resumes, reruns decode nothing
    """
    from pathlib import Path

    from ..data import open_source
    from ..duplicates import DEFAULT_FINE_RADIUS, DEFAULT_RADIUS, find_duplicates, write_groups_csv, write_redundant
    from ..errors import HashindexError

    for flag, path in (("--out", out), ("--redundant", redundant), ("--grid", grid)):
        if path and Path(path).is_dir():
            raise HashindexError(f"{flag} {path}: is a directory; expected a file to write")
    if grid:
        from ..grids import figure_format

        figure_format(grid, "grid")
    sources = [open_source(d, "data", follow_links=follow_links) for d in data]
    result = find_duplicates(sources, list(data), radius=DEFAULT_RADIUS if radius is None else radius,
                             fine_radius=DEFAULT_FINE_RADIUS if fine_radius is None else fine_radius,
                             crops=crops, keep=keep, across=across, workers=workers, hashes_dir=hashes_dir,
                             progress=ctx.obj["progress"], log=lambda line: click.echo(line, err=as_json))
    if out:
        write_groups_csv(out, result["groups"])
    if redundant:
        write_redundant(redundant, result["groups"])
    if grid and result["groups"]:
        from ..grids import duplicates_grid

        duplicates_grid(result["groups"], dict(zip(data, sources)), grid)
    elif grid:
        click.echo(f"--grid {grid}: no groups of copies to draw; not written", err=True)
    if as_json:
        _echo_json(result)
        return
    for g, rows in enumerate(result["groups"][:show], 1):
        click.echo(f"group {g} ({len(rows)} images):")
        for r in rows:
            where = f"{r['collection']}: " if len(data) > 1 else ""
            click.echo(f"  {r['distance']:>2}  {where}{r['path']}  (id {r['id']}{', kept' if r['keep'] else ''})")
    if len(result["groups"]) > show:
        click.echo(f"... {len(result['groups']) - show} more group(s)" + ("" if out else " (--out FILE lists all)"))


@cli.command()
@click.argument("index_dir")
@click.option("--shards", default=None, help="Where the new files' shards go [default: INDEX_DIR.sync/ beside "
                                             "the index; kept, as every appended collection's are].")
@click.option("--model", default=None, help="Checkpoint to encode the new files with [default: the one the "
                                            "index's shards were extracted with].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--check-contents", is_flag=True,
              help="Also decode every indexed file and take one edited since (other pixels at the net's input) "
                   "as removed and added again [default: files are known by path].")
@click.option("--dry-run", is_flag=True, help="Say what would be added and removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def sync(ctx, index_dir, shards, model, device, check_contents, dry_run, as_json):
    """Keep an index in step with the folders (image lists, tars or zips) it was built from: add their new image
    files (a list's new lines, an archive's new members), remove the items whose file is gone (or whose line or
    member is).

    The new files are extracted with the index's model and appended (ids after every id the index holds or
    held); the others keep their ids. Each step is atomic: after a kill, run it again.

    \b
    Examples:
      hashindex sync index/photos --dry-run
      hashindex sync index/photos && kill -HUP SERVE_PID     # a running serve then answers from it
    """
    from ..sync import sync as run

    summary = run(index_dir, shards=shards, model=model, device=device, dry_run=dry_run,
                  check_contents=check_contents, progress=ctx.obj["progress"],
                  log=lambda line: click.echo(line, err=as_json))
    if as_json:
        _echo_json(summary)
        return
    for folder in summary["folders"]:
        why = f" (left alone: {folder['skipped']})" if "skipped" in folder else ""
        click.echo(f"{folder['folder']}: {folder['new']} new file(s){why}")
        for path in folder["new_paths"][:5] if dry_run else []:
            click.echo(f"  + {path}")
    for path in summary["removed_paths"][:5] if dry_run else []:
        click.echo(f"  - {path}")
    verb = ("would add", "would remove") if dry_run else ("added", "removed")
    unread = f" ({summary['unreadable']} could not be read)" if summary.get("unreadable") else ""
    edited = f" ({summary['edited']} of them files edited since: added again)" if summary["edited"] else ""
    click.echo(f"{index_dir}: {verb[0]} {summary['added']}{unread}, {verb[1]} {summary['removed']} item(s){edited}")
