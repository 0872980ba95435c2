"""`hashindex query`, `verify`, `eval`, `demo` and `info`: the commands that read what was written (`serve`:
serve_cmds)."""

from __future__ import annotations

import click

from .. import DEFAULT_MODEL
from ..errors import HashindexError
from .group import _echo_json, cli, file_ids


@cli.command()
@click.argument("index_dir")
@click.argument("images", nargs=-1)
@click.option("--model", default=None, help="Checkpoint or shipped name [default: the checkpoint the index's shards "
              "were extracted with, if still there, else the shipped model matching the index].")
@click.option("-k", "--k", "k", default=10, show_default=True, type=int, help="Results per query.")
@click.option("--candidates", default=None, type=int,
              help="Coarse pool re-ranked by the index's signal [default: 1000, whatever --k; past it, "
                   "Hamming order].")
@click.option("--radius", default=None, type=int, help="Return every item within this Hamming distance (inclusive).")
@click.option("--no-rerank", is_flag=True, help="Hamming order only.")
@click.option("--cut-ties", is_flag=True,
              help="Keep the pool at --candidates even when more items tie at its farthest distance.")
@click.option("--nprobe", default=None, type=click.IntRange(1),
              help="IVF index: lists scanned per query (more: higher recall, slower) [default: the value "
                   "build tuned to its --recall target; hashindex info shows it].")
@click.option("--by-id", "by_id", multiple=True, type=int, help="Query with an indexed item (repeatable).")
@click.option("--exclude-self", is_flag=True,
              help="An indexed item (--by-id, an IMAGE file of the folder the index was built from, or a --queries "
                   "item the index holds) is not among its own results: its nearest other items (look-alikes; copies "
                   "of a photo: hashindex duplicates).")
@click.option("--only-class", "only_class", multiple=True,
              help="Results of this class only (repeatable: any of them; a multi-label item carrying one).")
@click.option("--only-folder", "only_folder", multiple=True,
              help="Results whose path (as results show it) is under this folder only (repeatable: any of them).")
@click.option("--only-ids", "only_ids", default=None,
              help="Results among the ids in this file only (one per line; '-': standard input).")
@click.option("--together", is_flag=True,
              help="All IMAGES and --by-id items as one query (more like these): one row of results.")
@click.option("--not-class", "not_class", multiple=True, help="No results of this class (repeatable).")
@click.option("--not-folder", "not_folder", multiple=True,
              help="No results under this folder (repeatable; e.g. the query's own album).")
@click.option("--queries", default=None, help="Batch job: a shard directory or image source of queries.")
@click.option("--out", default=None, help="Batch job: results file (.h5, .jsonl, .csv or .parquet).")
@click.option("--format", "fmt", default=None, type=click.Choice(["h5", "jsonl", "csv", "parquet"]),
              help="Batch results format [default: from --out's suffix].")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(1))
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="Batch job: replace --out.")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="Run on this machine, or as tasks on a Ray cluster (pip install 'hashindex[ray]').")
@click.option("--address", default=None, help="Ray cluster address [default: start a local Ray runtime].")
@click.option("--num-workers", default=2, show_default=True, type=click.IntRange(1), help="Ray workers (actors).")
@click.option("--shard-actors", is_flag=True,
              help="With --backend ray and an index built with --shards S: hold each shard in its own Ray "
                   "actor (an index larger than one machine's RAM); every query fans out to all shards.")
@click.option("--grid", default=None, help="Also draw the results as an image (.png, .jpg, .pdf or .svg by "
                                           "the name): the query image, then its top results (up to 20) with their "
                                           "class and Hamming distance.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def query(ctx, index_dir, images, model, k, candidates, radius, no_rerank, cut_ties, nprobe, by_id, exclude_self,
          only_class, only_folder, only_ids, together, not_class, not_folder, queries, out, fmt, batch_size, device,
          overwrite, backend, address, num_workers, shard_actors, grid, as_json):
    """Coarse-to-fine search: Hamming pool from the binary index, re-ranked by features.

    \b
    Examples:
      hashindex query index/train cat.jpg dog.png --model m.pt --k 10
      hashindex query index/train --by-id 42 --radius 2 --json
      hashindex query index/train cat.jpg --grid cat-results.png
      hashindex query index/train --queries shards/test --out results.h5
      hashindex query index/photos --queries shards/photos --k 5 --exclude-self --out nearest.csv
      hashindex query index/photos holiday.jpg --only-class roses --only-folder 2024
      hashindex query index/photos --by-id 42 --not-folder 2024/june       # not from its own album
      hashindex query index/photos a.jpg b.jpg c.jpg --together --exclude-self   # more like these
    """
    from .. import query as query_app
    from ..batch import batch_search
    from ..index import Index
    from ..index.subset import only

    listed = file_ids(only_ids, "--only-ids")
    if only_ids and not listed:
        raise HashindexError(f"--only-ids {only_ids}: no ids in it (expected one per line)")
    where = only(only_class, only_folder, listed, not_class, not_folder)

    if shard_actors and backend != "ray":
        raise HashindexError("--shard-actors: needs --backend ray")
    if grid:
        from ..grids import figure_format

        figure_format(grid, "grid")
    if queries or out:
        if grid:
            raise HashindexError("--grid: draws interactive queries (IMAGES / --by-id), not a batch job")
        if not (queries and out):
            raise HashindexError("--queries and --out go together (a batch job needs both)")
        if radius is not None or cut_ties or by_id or images or together:
            what = "--radius" if radius is not None else "--cut-ties" if cut_ties else "--by-id" if by_id else \
                "--together" if together else "IMAGES"
            raise HashindexError(f"{what}: not for a batch job (--queries --out: the top --k of every query)")
        job = batch_search(index_dir, queries, out, k=k, candidates=candidates, rerank=not no_rerank,
                           batch_size=batch_size, nprobe=nprobe, fmt=fmt, model=model, device=device,
                           overwrite=overwrite, progress=ctx.obj["progress"], backend=backend,
                           ray_options={"address": address, "num_workers": num_workers},
                           shard_actors=shard_actors, exclude_self=exclude_self, only=where,
                           log=lambda line: click.echo(line, err=as_json))
        if as_json:
            _echo_json(job)
        return
    index = Index.load(index_dir, shard_actors={"address": address} if shard_actors else None)
    rows = query_app.query(index, list(images), list(by_id), model=model, k=k, candidates=candidates,
                        radius=radius, rerank=not no_rerank, complete_ties=not cut_ties, nprobe=nprobe,
                        device=device, exclude_self=exclude_self, only=where, together=together)
    if grid:
        from ..grids import query_grid

        query_grid(index, rows, grid)
    if as_json:
        _echo_json(rows)
    else:
        click.echo(query_app.format_table(rows))
        if grid:
            click.echo(f"grid: {grid}")


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(path, as_json):
    """Check anything hashindex wrote against what was recorded when it was written.

    A shard directory, an index or a prepared store: every file hashed against its recorded SHA-256 (commands
    that open them check them too, but skip files unchanged since their last good check). A checkpoint (or a
    shipped model's name): its weights against its model id. An exported model (.onnx): its graph against the
    SHA-256 recorded at export. A batch results file: against the SHA-256 its job recorded. A mismatch is one
    line naming the first bad file, and exit status 2.

    \b
    Examples:
      hashindex verify index/photos
      hashindex verify model.pt
    """
    from ..verification import verify as run

    result = run(path)
    if as_json:
        _echo_json(result)
    elif result["files_verified"] == 0:
        click.echo(f"{path}: {'an' if result['kind'] == 'index' else 'a'} {result['kind']} written before "
                   "checksums were recorded; nothing to verify (rebuild it)")
    elif result["kind"] == "checkpoint":
        click.echo(f"{path}: the checkpoint's weights match its model id {result['model_id']}")
    elif result["kind"] == "onnx model":
        click.echo(f"{path}: the exported graph matches the SHA-256 recorded at export (model {result['model_id']})")
    else:
        click.echo(f"{path}: {result['files_verified']} file(s) of the {result['kind']} match their recorded SHA-256")


@cli.command(name="eval")
@click.argument("index_dir")
@click.option("--queries", required=True,
              help="Labelled queries: a shard directory (hashindex extract), or images (a folder, a tar or zip, "
                   "DIR:test, ...) encoded on the fly with --model.")
@click.option("--model", default=None,
              help="Checkpoint that encodes image --queries [default: the checkpoint the index's shards were "
                   "extracted with, if still there, else the shipped model matching the index].")
@click.option("--device", default="cpu", show_default=True, help="With image --queries: cpu, cuda, cuda:N or auto.")
@click.option("--at", "at", multiple=True, type=click.IntRange(1), default=(1000,), show_default=True,
              help="mAP@k cut-offs (repeatable).")
@click.option("--candidates", default=None,
              help="Pool re-ranked by the index's signal: a number, or 'all' for the whole database "
                   "[default: a query's default pool, 1000 widened to whole tie groups].")
@click.option("--radius", default=2, show_default=True, type=click.IntRange(0), help="Hamming radius for precision/recall.")
@click.option("--no-rerank", is_flag=True, help="Hamming ranking only.")
@click.option("--include-self", is_flag=True,
              help="Queries that are indexed items (the index's own shards or images) may find themselves "
                   "[default: each is left out of its own ranking].")
@click.option("--plot", "plot_dir", default=None,
              help="Write PR-curve, precision@k and results-grid PNGs here (with --compare: both PR curves and "
                   "the per-query differences).")
@click.option("--compare", "compare_dir", default=None, metavar="INDEX_DIR",
              help="Also score this index on the same queries and compare the two query by query: B - A with a "
                   "95% interval (another model, signal or index kind; is the difference more than the queries' "
                   "noise?).")
@click.option("--compare-queries", default=None,
              help="With --compare and a shard directory as --queries: the same queries extracted with the other "
                   "index's model [default: --queries].")
@click.option("--json", "as_json", is_flag=True, help="Print all metrics as JSON.")
@click.pass_context
def eval_cmd(ctx, index_dir, queries, model, device, at, candidates, radius, no_rerank, include_self, plot_dir,
             compare_dir, compare_queries, as_json):
    """Retrieval metrics: mAP, precision@k, precision/recall within a Hamming radius.

    Relevance is "same label"; ties in Hamming distance are broken by database
    order (the headline mAP), and the tie-aware expectation is given beside it.

    \b
    Examples:
      hashindex eval index/train --queries shards/test --plot plots/ --json
      hashindex eval index/train --queries ../shared/data/cifar10-jpeg/test.tar   # images: encoded first
      hashindex eval index/v3 --queries test.tar --compare index/v4   # B - A, query by query
    """
    from ..evaluation import compare, evaluate, format_comparison, format_metrics, query_shard_dir

    if candidates is not None and candidates != "all":
        if not candidates.isdigit() or int(candidates) < 1:
            raise HashindexError(f"--candidates {candidates}: expected a positive number or 'all'")
        candidates = int(candidates)
    if compare_dir is None and compare_queries is not None:
        raise HashindexError("--compare-queries: needs --compare (the index those queries were extracted for)")
    from ..index import Index

    index = Index.load(index_dir)  # once, for the metrics and the plots
    progress = ctx.obj["progress"]
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    options = dict(at=tuple(at), candidates=candidates, radius=radius, rerank=not no_rerank, progress=progress,
                   exclude_self=not include_self)
    if compare_dir is not None:
        comparison, first, second = compare(index, compare_dir, queries, compare_queries=compare_queries,
                                            model=model, device=device, log=log, **options)
        if plot_dir:
            from ..report import plot_comparisons

            comparison["plots"] = plot_comparisons(first, second, plot_dir)
        if as_json:
            _echo_json(comparison | {"metrics": {side: {k: v for k, v in m.items() if k != "per_query"}
                                                 for side, m in (("a", first), ("b", second))}})
        else:
            click.echo(format_comparison(comparison))
        return
    with query_shard_dir(index, queries, model, device, progress, log) as shard_dir:
        # image queries are extracted once, for the metrics and the plots
        metrics = evaluate(index, shard_dir, **options) | {"queries_dir": queries}
        if plot_dir:
            from ..query import example_results
            from ..report import write_plots

            metrics["plots"] = write_plots(metrics, plot_dir, index, example_results(index, shard_dir, exclude_self=not include_self),
                                           warn=lambda msg: click.echo(f"hashindex: warning: {msg}", err=True))
    if as_json:
        _echo_json(metrics)
    else:
        click.echo(format_metrics(metrics))


@cli.command()
@click.option("--data", default=None, help="Collection to use [default: CIFAR-10 test set via torchvision, downloaded once].")
@click.option("--out", default="hashindex-demo", show_default=True, help="Folder for shards, index, metrics, plots.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Checkpoint or shipped model name.")
@click.option("--every", default=10, show_default=True, type=click.IntRange(2), help="Every n-th image is a query.")
@click.option("--limit", default=None, type=click.IntRange(2), help="Use only this many images.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0))
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def demo(ctx, data, out, model, every, limit, workers, device, as_json):
    """The whole pipeline in one command: extract, index, evaluate, plot.

    Every 10th image is a query, the rest the database.

    \b
    Example:
      hashindex demo --data ../shared/data/cifar10-jpeg/test.tar --out /tmp/demo
    """
    from ..demo import run_demo

    summary = run_demo(out, data, model, every, limit, workers, device, progress=ctx.obj["progress"],
                       log=lambda line: click.echo(line, err=as_json))
    if as_json:
        _echo_json(summary)


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--plot", "plot", default=None, metavar="PNG",
              help="A checkpoint's learning curves (accuracy, loss, learning rate by epoch) in this PNG file.")
def info(path, as_json, plot):
    """Summarise a checkpoint, an exported model (.onnx), a shard directory, an index, or an image collection
    (before extracting it).

    \b
    Examples:
      hashindex info model.pt --json
      hashindex info model.pt --plot curves.png   # accuracy and loss by epoch
      hashindex info model.onnx     # what `hashindex export` recorded in it (its graph checked)
      hashindex info photos/        # what extract would read: items, skips by name, labels
    """
    from ..info import describe

    summary = describe(path)
    if plot:
        if summary.get("kind") != "checkpoint":
            raise HashindexError(f"plot={plot}: learning curves come from a checkpoint (model.pt), "
                                 f"not from {_KINDS.get(summary.get('kind'), 'this')} ({path})")
        from ..report import training_curves

        summary["plot"] = str(training_curves([path], plot))
    if as_json:
        _echo_json(summary)
    else:
        width = max(16, *(len(key) for key in summary))
        for key, value in summary.items():
            click.echo(f"{key:>{width}}: {_shown(value)}")


_KINDS = {"index": "an index", "shards": "a shard directory", "images": "an image collection",
          "batch results": "a batch results file"}


def _shown(value: object, most: int = 12, nested: bool = False) -> str:
    """A value as the terminal shows it (--json keeps it whole): a dict as key=value pairs, a list comma-separated
    (nested ones in braces and brackets), a long one cut to its first ``most`` entries (a thousand classes),
    a float to 4 decimals, None as none."""
    if isinstance(value, float):
        return str(round(value, 4))
    if value is None:
        return "none"
    if isinstance(value, dict):
        items = [f"{k}={_shown(v, most, True)}" for k, v in list(value.items())[:most]]
    elif isinstance(value, (list, tuple)):
        items = [_shown(v, most, True) for v in value[:most]]
    else:
        return str(value)
    if len(value) > most:
        items.append(f"... ({len(value) - most:,} more; --json for all)")
    if not nested:
        return ", ".join(items) or "none"
    return ("{%s}" if isinstance(value, dict) else "[%s]") % ", ".join(items)


