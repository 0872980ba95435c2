"""The `hashindex` command line: a thin click layer over the Python API.

User mistakes raise HashindexError; `main` prints them as one line
("hashindex: error: ...") and exits with status 2. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import sys

import click

from .errors import HashindexError

EXIT_USAGE = 2


_ARG = re.compile(r"(?<![\w./=-])([a-z][a-z0-9_]*)=(True\b|None\b|(?=[\s,;)]|$))?")


def as_flags(message: str, command: click.Command | None) -> str:
    """A library message in Python terms, in the command line's words: ``k=5`` -> ``--k 5``, ``shard_dir=x`` ->
    ``SHARD_DIR x``, ``overwrite=True`` (or a bare ``val=``) -> ``--overwrite``. The running command's parameters first, then any
    command's options (flags mean the same everywhere); other names stay as they are."""
    spelled = {p.name: p.opts[0] for c in cli.commands.values() for p in c.params if isinstance(p, click.Option)}
    if command is not None:  # the running command's own words first (its positional arguments too)
        spelled |= {p.name: (p.opts[0] if isinstance(p, click.Option) else p.human_readable_name)
                    for p in command.params}

    def flag(m: re.Match) -> str:
        name, bare = m.group(1), m.group(2)
        if name not in spelled:
            return m.group(0)
        return spelled[name] if bare is not None else spelled[name] + " "

    return _ARG.sub(flag, message)


class _Group(click.Group):
    """Click group that turns HashindexError (worded in Python terms) into a one-line message in flags."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HashindexError as e:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"hashindex: error: {as_flags(str(e), command)}", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("hashindex: interrupted; rerun the same command to resume", err=True)
            ctx.exit(130)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" writing {e.filename}" if e.filename else ""
            click.echo(f"hashindex: error: no space left on the device{where}; nothing already written is lost: "
                       "free some space and rerun the same command to resume", err=True)
            ctx.exit(EXIT_USAGE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hashindex")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or warnings.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Image retrieval with learned binary hash codes (NIN + latent hash layer).

    \b
    Pipeline:  train -> extract -> build -> query / eval
    Example:
      hashindex train --data train.tar --val test.tar --bits 48 --out m.pt
      hashindex info m.pt
    """
    ctx.obj = {"progress": not quiet}
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING,
                        format="hashindex: warning: %(message)s", stream=sys.stderr)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@cli.command()
@click.option("--data", required=True, help="Labelled training images: folder, tar, list, IDX or CIFAR dir.")
@click.option("--val", default=None, help="Labelled validation images (accuracy per epoch, final mAP).")
@click.option("--bits", default=48, show_default=True, type=int, help="Code length K (multiple of 4).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--out", required=True, help="Checkpoint file to write (rewritten every epoch).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=0.1, show_default=True, type=float)
@click.option("--weight-decay", default=5e-4, show_default=True, type=float)
@click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "step"]))
@click.option("--limit", default=None, type=click.IntRange(1), help="Train on this many images (spread evenly).")
@click.option("--val-limit", default=None, type=click.IntRange(1), help="Validate on this many images.")
@click.option("--val-every", default=None, type=click.IntRange(2),
              help="No separate --val: hold every N-th image of --data out of training to validate on.")
@click.option("--input-size", default=32, show_default=True, type=click.IntRange(8))
@click.option("--channels", default=None, type=click.Choice(["1", "3"]), help="Input channels [default: 1 for greyscale sets, else 3].")
@click.option("--no-flip", is_flag=True, help="No horizontal-flip augmentation (digits, text).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--no-bf16", is_flag=True, help="Train in float32 instead of bf16 autocast.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Decoding processes.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--init", default=None, metavar="MODEL",
              help="Fine-tune from this checkpoint or shipped model: its trunk always, its hash layer if "
                   "--bits match, its classifier if the classes match too.")
@click.option("--binary-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="SSDH term: weight of pushing the latent sigmoids towards 0 or 1.")
@click.option("--balance-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="SSDH term: weight of asking each code to have half its bits on.")
@click.option("--bit-balance-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Weight of asking each bit to be on for half of a batch's images (no constant bits).")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def train(ctx, data, val, bits, epochs, out, batch_size, lr, weight_decay, schedule, limit,
          val_limit, val_every, input_size, channels, no_flip, device, no_bf16, workers, seed, init,
          binary_weight, balance_weight, bit_balance_weight, resume, overwrite, as_json):
    """Train the NIN hashing net on labelled images.

    \b
    Example (2,000 CIFAR-10 images, one epoch, a few minutes on 2 cores):
      hashindex train --data ../shared/data/cifar10-jpeg/train.tar \\
          --val ../shared/data/cifar10-jpeg/test.tar --bits 48 --epochs 1 \\
          --limit 2000 --out /tmp/m.pt

    \b
    Fine-tuning the shipped model on 1,000 labelled images of another set:
      hashindex train --init nin-cifar10-48 --data ../shared/data/fashion-mnist \\
          --val ../shared/data/fashion-mnist:test --limit 1000 --epochs 10 \\
          --out /tmp/ft.pt
    """
    from . import train as api_train

    summary = api_train(
        data, out, resume=resume, overwrite=overwrite, progress=ctx.obj["progress"],
        val=val, bits=bits, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, schedule=schedule, limit=limit, val_limit=val_limit, val_every=val_every,
        input_size=input_size, channels=int(channels) if channels else None, flip=not no_flip,
        device=device, bf16=not no_bf16, workers=workers, seed=seed, init=init,
        binary_weight=binary_weight, balance_weight=balance_weight,
        bit_balance_weight=bit_balance_weight,
    )
    if as_json:
        _echo_json(summary)


@cli.command()
@click.option("--model", required=True, help="Checkpoint file or shipped model name.")
@click.option("--data", required=True, help="Images: folder, tar, list, IDX or CIFAR dir (see data/README.md).")
@click.option("--out", required=True, help="Shard directory to write (resumed if it exists).")
@click.option("--shard-size", default=100_000, show_default=True, type=int, help="Source items per shard.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Decoding processes.")
@click.option("--features", default="float16", show_default=True, type=click.Choice(["float16", "float32", "none"]),
              help="Re-ranking features to store.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only this many images (spread evenly).")
@click.option("--id-offset", default=0, show_default=True, type=click.IntRange(0),
              help="Number the images from this id (a collection that joins an index with build --append).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--no-bf16", is_flag=True, help="Run the net in float32.")
@click.option("--overwrite", is_flag=True, help="Delete the shards in --out and start over.")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="Run on this machine, or as tasks on a Ray cluster (pip install 'hashindex[ray]').")
@click.option("--address", default=None, help="Ray cluster address [default: start a local Ray runtime].")
@click.option("--num-workers", default=2, show_default=True, type=click.IntRange(1), help="Ray workers (actors).")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=float, help="GPUs per Ray worker.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_context
def extract(ctx, model, data, out, shard_size, batch_size, workers, features, limit, id_offset, device,
            no_bf16, overwrite, backend, address, num_workers, gpus_per_worker, as_json):
    """Encode an image collection into HDF5 shards (codes, features, ids, labels, paths).

    Rerunning the same command after an interruption finishes the job: complete
    shards are kept, the unfinished one is redone. With --backend ray each
    shard is a task on a Ray cluster; the files are the same.

    \b
    Example:
      hashindex extract --model m.pt --data ../shared/data/cifar10-jpeg/test.tar --out shards/test
    """
    from .extraction import extract as api_extract

    manifest = api_extract(model, data, out, shard_size=shard_size, batch_size=batch_size,
                           workers=workers, features=features, device=device, bf16=not no_bf16,
                           overwrite=overwrite, limit=limit, id_offset=id_offset, progress=ctx.obj["progress"],
                           backend=backend, ray_options={"address": address, "num_workers": num_workers,
                                                         "gpus_per_worker": gpus_per_worker},
                           log=lambda line: click.echo(line, err=as_json))
    if as_json:
        _echo_json(manifest)


@cli.command()
@click.argument("shard_dir")
@click.option("--out", required=True, help="Index directory to create.")
@click.option("--binary", default="flat", show_default=True,
              type=click.Choice(["flat", "ivf", "hnsw", "multihash"]), help="Coarse Hamming index.")
@click.option("--rerank", default="flat", show_default=True,
              type=click.Choice(["flat", "fp16", "sq8", "pq", "none"]), help="Float re-rank store.")
@click.option("--signal", default="auto", show_default=True,
              type=click.Choice(["auto", "l2", "cosine", "latent", "posterior"]),
              help="What the fine stage orders the pool by: pooled-feature L2 or cosine, the latent "
                   "activations against the codes, or the class posterior. auto measures them on the "
                   "collection's own labels (posterior wins in the net's classes, cosine on others; "
                   "without labels: cosine).")
@click.option("--model", default=None,
              help="The shards' model, for its head (only for shard directories extracted before signals).")
@click.option("--nlist", default=None, type=click.IntRange(1), help="IVF lists [default: ~4 sqrt(N)].")
@click.option("--nprobe", default=None, type=click.IntRange(1), help="IVF lists probed per query.")
@click.option("--shards", default=1, show_default=True, type=click.IntRange(1),
              help="Split the binary index into this many indexes by position range (exact merged search).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--append", is_flag=True,
              help="Add SHARD_DIR's items to the existing index --out (same model, new ids; "
                   "the index keeps its kinds and parameters).")
@click.option("--json", "as_json", is_flag=True, help="Print index.json.")
@click.pass_context
def build(ctx, shard_dir, out, binary, rerank, signal, model, nlist, nprobe, shards, overwrite, append, as_json):
    """Build Faiss indexes over a shard directory: binary (coarse) + float (re-rank).

    \b
    Examples:
      hashindex build shards/train --out index/train --binary flat --rerank flat
      hashindex build shards/new --out index/train --append     # a collection that grows
    """
    from .index import append as api_append, build as api_build

    log = lambda line: click.echo(line, err=as_json)  # noqa: E731
    if append:
        fixed = [f"--{name}" for name in ("binary", "rerank", "signal", "model", "nlist", "nprobe", "shards",
                                          "overwrite")
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if fixed:
            raise HashindexError(f"--append: {fixed[0]} cannot be combined with it (the index at --out "
                                 "keeps its kinds and parameters; rebuild without --append to change them)")
        meta = api_append(shard_dir, out, progress=ctx.obj["progress"], log=log)
    else:
        meta = api_build(shard_dir, out, binary=binary, rerank=rerank, signal=signal, model=model,
                         nlist=nlist, nprobe=nprobe,
                         shards=shards, overwrite=overwrite, progress=ctx.obj["progress"], log=log)
    if as_json:
        _echo_json(meta)


@cli.command()
@click.argument("index_dir")
@click.argument("images", nargs=-1)
@click.option("--model", default=None, help="Checkpoint or shipped name [default: the shipped model matching the index].")
@click.option("--k", "k", default=10, show_default=True, type=int, help="Results per query.")
@click.option("--candidates", default=None, type=int,
              help="Coarse pool re-ranked by the index's signal [default: 1000, whatever --k; past it, "
                   "Hamming order].")
@click.option("--radius", default=None, type=int, help="Return every item within this Hamming distance (inclusive).")
@click.option("--no-rerank", is_flag=True, help="Hamming order only.")
@click.option("--cut-ties", is_flag=True,
              help="Keep the pool at --candidates even when more items tie at its farthest distance.")
@click.option("--by-id", "by_id", multiple=True, type=int, help="Query with an indexed item (repeatable).")
@click.option("--queries", default=None, help="Batch job: a shard directory or image source of queries.")
@click.option("--out", default=None, help="Batch job: results file (.h5, .jsonl or .csv).")
@click.option("--format", "fmt", default=None, type=click.Choice(["h5", "jsonl", "csv"]),
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
@click.option("--grid", default=None, help="Also draw the results as a PNG: the query image, then its top "
                                           "results (up to 20) with their class and Hamming distance.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def query(ctx, index_dir, images, model, k, candidates, radius, no_rerank, cut_ties, by_id, queries, out, fmt,
          batch_size, device, overwrite, backend, address, num_workers, shard_actors, grid, as_json):
    """Coarse-to-fine search: Hamming pool from the binary index, re-ranked by features.

    \b
    Examples:
      hashindex query index/train cat.jpg dog.png --model m.pt --k 10
      hashindex query index/train --by-id 42 --radius 2 --json
      hashindex query index/train cat.jpg --grid cat-results.png
      hashindex query index/train --queries shards/test --out results.h5
    """
    from . import query as query_app
    from .index import Index

    if shard_actors and backend != "ray":
        raise HashindexError("--shard-actors: needs --backend ray")
    if queries or out:
        if grid:
            raise HashindexError("--grid: draws interactive queries (IMAGES / --by-id), not a batch job")
        if not (queries and out):
            raise HashindexError("--queries and --out go together (a batch job needs both)")
        job = query_app.batch_search(index_dir, queries, out, k=k, candidates=candidates, rerank=not no_rerank,
                                  batch_size=batch_size, fmt=fmt, model=model, device=device,
                                  overwrite=overwrite, progress=ctx.obj["progress"], backend=backend,
                                  ray_options={"address": address, "num_workers": num_workers},
                                  shard_actors=shard_actors, log=lambda line: click.echo(line, err=as_json))
        if as_json:
            _echo_json(job)
        return
    index = Index.load(index_dir, shard_actors={"address": address} if shard_actors else None)
    rows = query_app.query(index, list(images), list(by_id), model=model, k=k, candidates=candidates,
                        radius=radius, rerank=not no_rerank, complete_ties=not cut_ties, device=device)
    if grid:
        from .report import query_grid

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
    """Check a shard directory or an index against the checksums recorded when it was written.

    Every byte is hashed (commands that open shards or an index check them too, but skip files unchanged
    since their last good check). A mismatch is one line naming the first bad file, and exit status 2.

    \b
    Example:
      hashindex verify index/photos
    """
    from pathlib import Path

    from .index import INDEX_JSON
    from .store import MANIFEST

    p = Path(path)
    if (p / MANIFEST).exists():
        from .store import ShardSet

        shards = ShardSet(p, "path", require_complete=False)
        shards.check("path", use_cache=False)
        count, kind = len(shards.checksums()), "shard directory"
    elif (p / INDEX_JSON).exists():
        from .index.layout import check_index, read_index_meta

        meta = read_index_meta(p, "path")
        check_index(p, meta, "path", use_cache=False)
        count, kind = len(meta.get("files") or {}), "index"
    else:
        raise HashindexError(f"path={p}: neither a shard directory (manifest.json) nor an index (index.json)")
    result = {"path": str(p), "kind": kind, "files_verified": count, "ok": True}
    if as_json:
        _echo_json(result)
    elif count == 0:
        click.echo(f"{p}: an {kind} written before checksums were recorded; nothing to verify (rebuild it)")
    else:
        click.echo(f"{p}: {count} file(s) of the {kind} match their recorded SHA-256")


@cli.command(name="eval")
@click.argument("index_dir")
@click.option("--queries", required=True, help="Labelled query shard directory (hashindex extract).")
@click.option("--at", "at", multiple=True, type=click.IntRange(1), default=(1000,), show_default=True,
              help="mAP@k cut-offs (repeatable).")
@click.option("--candidates", default=None,
              help="Pool re-ranked by the index's signal: a number, or 'all' for the whole database "
                   "[default: a query's default pool, 1000 widened to whole tie groups].")
@click.option("--radius", default=2, show_default=True, type=click.IntRange(0), help="Hamming radius for precision/recall.")
@click.option("--no-rerank", is_flag=True, help="Hamming ranking only.")
@click.option("--plot", "plot_dir", default=None, help="Write PR-curve, precision@k and results-grid PNGs here.")
@click.option("--json", "as_json", is_flag=True, help="Print all metrics as JSON.")
@click.pass_context
def eval_cmd(ctx, index_dir, queries, at, candidates, radius, no_rerank, plot_dir, as_json):
    """Retrieval metrics: mAP, precision@k, precision/recall within a Hamming radius.

    Relevance is "same label"; ties in Hamming distance are broken by database
    order (the headline mAP), and the tie-aware expectation is given beside it.

    \b
    Example:
      hashindex eval index/train --queries shards/test --plot plots/ --json
    """
    from .evaluation import evaluate, format_metrics

    if candidates is not None and candidates != "all":
        if not candidates.isdigit() or int(candidates) < 1:
            raise HashindexError(f"--candidates {candidates}: expected a positive number or 'all'")
        candidates = int(candidates)
    metrics = evaluate(index_dir, queries, at=tuple(at), candidates=candidates, radius=radius,
                          rerank=not no_rerank, progress=ctx.obj["progress"])
    if plot_dir:
        from .index import Index
        from .query import example_results
        from .report import write_plots

        index = Index.load(index_dir)
        metrics["plots"] = write_plots(metrics, plot_dir, index, example_results(index, queries),
                                       warn=lambda msg: click.echo(f"hashindex: warning: {msg}", err=True))
    if as_json:
        _echo_json(metrics)
    else:
        click.echo(format_metrics(metrics))


@cli.command()
@click.option("--data", default=None, help="Collection to use [default: CIFAR-10 test set via torchvision, downloaded once].")
@click.option("--out", default="hashindex-demo", show_default=True, help="Folder for shards, index, metrics, plots.")
@click.option("--model", default="nin-cifar10-48", show_default=True, help="Checkpoint or shipped model name.")
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
    from .demo import run_demo

    summary = run_demo(out, data, model, every, limit, workers, device, progress=ctx.obj["progress"],
                       log=lambda line: click.echo(line, err=as_json))
    if as_json:
        _echo_json(summary)


@cli.command()
@click.argument("index_dir")
@click.option("--model", default=None, help="Checkpoint for image queries [default: the shipped model of the index].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.pass_context
def serve(ctx, index_dir, model, host, port, device):
    """Keep INDEX_DIR and its model in memory and answer searches over HTTP (JSON).

    \b
    Example:
      hashindex serve index/photos --port 8000 &
      curl -s --data-binary @cat.jpg 'localhost:8000/search?k=10'
      curl -s 'localhost:8000/search?id=42&radius=2'
    """
    from .serve import Searcher, make_server

    searcher = Searcher(index_dir, model=model, device=device)
    server = make_server(searcher, host, port, log=(lambda line: click.echo(line, err=True))
                         if ctx.obj["progress"] else None)
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"serving {index_dir} ({searcher.index.count:,} items, {searcher.index.bits} bits) "
               f"at http://{bound_host}:{bound_port}/ ; Ctrl-C to stop", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(path, as_json):
    """Summarise a checkpoint, a shard directory or an index.

    \b
    Example:
      hashindex info model.pt --json
    """
    from .info import describe

    summary = describe(path)
    if as_json:
        _echo_json(summary)
    else:
        for key, value in summary.items():
            click.echo(f"{key:>16}: {value}")


def main() -> None:
    cli(prog_name="hashindex")


if __name__ == "__main__":
    main()
