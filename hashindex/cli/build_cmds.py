"""`hashindex train`, `extract`, `build` and `remove`: the commands that write models, shards and indexes."""

from __future__ import annotations

import click

from .. import DEFAULT_MODEL
from ..errors import HashindexError
from .group import _echo_json, as_flags, cli, file_ids, file_lines


@cli.command()
@click.option("--data", required=True,
              help="Labelled training images: folder, tar, zip, list, Parquet, IDX, CIFAR or STL-10 dir.")
@click.option("--val", default=None, help="Labelled validation images (accuracy per epoch, final mAP).")
@click.option("--bits", default=48, show_default=True, type=int, help="Code length K (multiple of 4).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--out", required=True, help="Checkpoint file to write (rewritten every epoch).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--trunk-lr", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              metavar="FRACTION", help="With --init: the trunk learns at this fraction of --lr, the hash layer and "
                                       "classifier at --lr. Under 1 was worse on flowers and Fashion-MNIST, whose "
                                       "classes are far from CIFAR-10's (docs/RESULTS.md).")
@click.option("--weight-decay", default=5e-4, show_default=True, type=click.FloatRange(0))
@click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "step"]))
@click.option("--limit", default=None, type=click.IntRange(1), help="Train on this many images (spread evenly).")
@click.option("--val-limit", default=None, type=click.IntRange(1), help="Validate on this many images.")
@click.option("--val-every", default=None, type=click.IntRange(2),
              help="No separate --val: hold every N-th image of --data out of training to validate on.")
@click.option("--input-size", default=32, show_default=True, type=click.IntRange(8),
              help="Side the images are squashed to. For photographs, fine-tune from a shipped model (--init) "
                   "at 32 for speed or 64 for quality; see 'Which input size' below.")
@click.option("--channels", default=None, type=click.Choice(["1", "3"]),
              help="Input channels [default: 1 for a greyscale set (IDX files; else every one of 16 images spread "
                   "over --data is grey: a folder of grey PNGs), else 3].")
@click.option("--no-flip", is_flag=True, help="No horizontal-flip augmentation (digits, text).")
@click.option("--follow-links", is_flag=True,
              help="Read symbolic links that lead out of a --data folder, and image files a Parquet or Arrow file "
                   "names outside its folder (otherwise each is a counted skip).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--bf16/--no-bf16", default=None,
              help="Train under bf16 autocast, or in float32 [default: bf16 where faster: CUDA, AVX-512 CPUs].")
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
@click.option("--label-smoothing", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Cross-entropy against (1 - e) one-hot + e uniform.")
@click.option("--crop-scale", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              metavar="S", help="Train on a random box of S to 1 of each image's area (aspect 3/4 to 4/3) resized "
                                "to --input-size, instead of the padded shift (the Inception crop); 0: off.")
@click.option("--cutout", default=0, show_default=True, type=click.IntRange(0),
              help="Zero a random square of this side (pixels) in each training image; 0: off.")
@click.option("--trivial-augment", is_flag=True,
              help="Also give each training image one random operation (shear, rotate, colour, equalise, ...) "
                   "at a random strength: TrivialAugment, Mueller & Hutter 2021.")
@click.option("--mixup", default=0.0, show_default=True, type=click.FloatRange(0), metavar="ALPHA",
              help="Blend each training image with another, weight ~ Beta(ALPHA, ALPHA), the loss against both "
                   "labels (mixup, Zhang et al. 2018; with --consistent-teacher the teachers judge the blend: "
                   "function matching); 0: off, 0.2-1 usual.")
@click.option("--sam", default=0.0, show_default=True, type=click.FloatRange(0), metavar="RHO",
              help="Sharpness-aware minimization: each step descends on the worst loss within RHO of the weights "
                   "(Foret et al. 2021; 0.05 usual); twice a step's work. 0: off.")
@click.option("--swa-epochs", default=0, show_default=True, type=click.IntRange(0), metavar="N",
              help="Stochastic weight averaging: the last N of --epochs run at --swa-lr and the model is the "
                   "average of their weights (with --init, --epochs N --swa-epochs N averages a trained model).")
@click.option("--swa-lr", default=0.02, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Constant learning rate of the averaging epochs.")
@click.option("--width", default=1, show_default=True, type=click.Choice(["1", "2", "3", "4"]),
              help="Hidden channels x this: 1 is the NIN the codes come from; a wider net (3.1x a step on 2 CPU "
                   "cores at 2) is a teacher for it (--teacher), its features 192-d alike.")
@click.option("--teacher", multiple=True, metavar="MODEL",
              help="Also learn this model's class posteriors (knowledge distillation; same classes and input "
                   "size; its test views count, e.g. a 10-view model from derive --test-shift). Repeated: "
                   "an ensemble's (the teachers' logits averaged).")
@click.option("--distill-weight", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="With --teacher: loss = (1 - w) cross-entropy + w distillation.")
@click.option("--distill-temperature", default=4.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="With --teacher: the temperature both posteriors are softened at.")
@click.option("--consistent-teacher", is_flag=True,
              help="With --teacher: the teachers see each augmented batch (their logits of that very view, one "
                   "pass a step per teacher), not the un-augmented images once (Beyer et al. 2022).")
@click.option("--test-flip/--no-test-flip", default=None,
              help="The model averages each image with its mirror image when encoding: +0.8 accuracy "
                   "on CIFAR-10, twice the extraction time [default: as the --init model; else off].")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def train(ctx, data, val, bits, epochs, out, batch_size, lr, trunk_lr, weight_decay, schedule, limit,
          val_limit, val_every, input_size, channels, no_flip, follow_links, device, bf16, workers, seed, init,
          binary_weight, balance_weight, bit_balance_weight, label_smoothing, crop_scale, cutout, trivial_augment,
          mixup, sam, swa_epochs, swa_lr, width, teacher, distill_weight, distill_temperature, consistent_teacher,
          test_flip, resume, overwrite, as_json):
    """Train the NIN hashing net on labelled images.

    \b
    Example (2,000 CIFAR-10 images, one epoch, a few minutes on 2 cores):
      hashindex train --data ../shared/data/cifar10-jpeg/train.tar \\
          --val ../shared/data/cifar10-jpeg/test.tar --bits 48 --epochs 1 \\
          --limit 2000 --out /tmp/m.pt

    \b
    Fine-tuning the shipped model on 1,000 labelled images of another set:
      hashindex train --init nin-cifar10-48-v4 --data ../shared/data/fashion-mnist \\
          --val ../shared/data/fashion-mnist:test --limit 1000 --epochs 10 \\
          --out /tmp/ft.pt

    \b
    Which input size for photographs (measured on 2,934 flower photos, 5 classes, 2 CPU cores;
    docs/RESULTS.md "Input size for photographs"):
      32 px, --init nin-cifar10-48-v4, 20 epochs: mAP 0.87 in ~3 min   (the quick start)
      64 px, --init nin-cifar10-48-v4, 12 epochs: mAP 0.90 in ~9 min   (the best under 15 minutes)
      96 / 128 px cost 2-5x more per epoch than 64 and reach less in the same time on CPU;
      from scratch instead of --init: mAP 0.72 at 64 px in the same epochs.
    Prepare the photos once at that size (hashindex prepare) when you train more than once.
    """
    from .. import train as api_train

    def log(line: str) -> None:  # in flags (the library speaks in argument names); beside --json's, on stderr
        click.echo(as_flags(line, ctx.command), err=as_json)

    summary = api_train(
        data, out, resume=resume, overwrite=overwrite, progress=ctx.obj["progress"], log=log,
        val=val, bits=bits, epochs=epochs, batch_size=batch_size, lr=lr, trunk_lr=trunk_lr,
        weight_decay=weight_decay, schedule=schedule, limit=limit, val_limit=val_limit, val_every=val_every,
        input_size=input_size, channels=int(channels) if channels else None, flip=not no_flip,
        follow_links=follow_links,
        device=device, bf16=bf16, workers=workers, seed=seed, init=init,
        binary_weight=binary_weight, balance_weight=balance_weight,
        bit_balance_weight=bit_balance_weight, label_smoothing=label_smoothing, crop_scale=crop_scale, cutout=cutout,
        trivial_augment=trivial_augment, mixup=mixup, sam=sam,
        swa_epochs=swa_epochs, swa_lr=swa_lr, width=int(width), teacher=_one_or_all(teacher),
        distill_weight=distill_weight, distill_temperature=distill_temperature, consistent_teacher=consistent_teacher,
        test_flip=test_flip,
    )
    if as_json:
        _echo_json(summary)


def _one_or_all(models: tuple[str, ...]) -> str | tuple[str, ...] | None:
    """A repeatable option's models as the config takes them: none, one (as checkpoints record it), an ensemble."""
    return None if not models else models[0] if len(models) == 1 else models


@cli.command()
@click.argument("model")
@click.option("--out", required=True, help="Checkpoint file to write.")
@click.option("--test-flip/--no-test-flip", default=None,
              help="Average each image with its mirror image when encoding (better codes, 2x extraction time) "
                   "[default: as MODEL].")
@click.option("--test-shift", default=None, type=click.IntRange(0), metavar="PX",
              help="Also average the 4 diagonal shifts of each view by PX pixels (with --test-flip: 10 views, "
                   "+0.3 accuracy on CIFAR-10 for 5x the flip's extraction time); 0: off [default: as MODEL].")
@click.option("--adapt-codes", default=None, metavar="DATA",
              help="Take the codes from a code head fitted to this collection's images (ITQ on the mid feature; "
                   "no labels needed): for classes the net was not trained on, where its own codes are near "
                   "chance; never for its own (CIFAR-10: Hamming mAP 0.85 -> 0.35) [docs/RESULTS.md 'Codes "
                   "adapted to a collection'].")
@click.option("--adapt-sample", default=20_000, show_default=True, type=click.IntRange(2), metavar="N",
              help="Images of --adapt-codes the code head is fitted on, spread over the collection.")
@click.option("--val", default=None, help="Labelled images to measure the new checkpoint's accuracy on.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto (for --val and "
              "--adapt-codes).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def derive(ctx, model, out, test_flip, test_shift, adapt_codes, adapt_sample, val, device, overwrite, as_json):
    """Copy a finished checkpoint with its inference options changed, or its codes adapted to a collection.

    \b
    The trunk's weights stay; the codes change, so the copy has its own model id
    and never mixes with shards of the original. Example:
      hashindex derive nin-cifar10-48 --test-flip --out /tmp/flip.pt \\
          --val ../shared/data/cifar10-jpeg/test.tar
      hashindex derive nin-cifar10-48-v2 --test-shift 2 --out /tmp/ten-views.pt
      hashindex derive nin-cifar10-48-v4 --adapt-codes ~/photos --out /tmp/photos.pt
    """
    from ..model import views_description
    from ..derive import derive as api_derive

    summary = api_derive(model, out, test_flip, val=val, overwrite=overwrite, device=device,
                         progress=ctx.obj["progress"], test_shift=test_shift, adapt_codes=adapt_codes,
                         adapt_sample=adapt_sample)
    if as_json:
        _echo_json(summary)
    else:
        acc = f", accuracy {summary['accuracy']:.4f}" if summary["accuracy"] is not None else ""
        views = views_description(summary["test_flip"], summary["test_shift"])
        adapted = summary.get("adapted_codes")
        codes = f"; codes adapted to {adapted['data']} ({adapted['images']} images)" if adapted else ""
        click.echo(f"wrote {out}: model {summary['model_id']} ({views}{acc}{codes})")


@cli.command()
@click.option("--data", required=True,
              help="Images: folder, tar(s), zip, list, Parquet, IDX, CIFAR or STL-10 dir (see data/README.md).")
@click.option("--out", required=True, help="Prepared directory to write (resumed if it exists).")
@click.option("--size", default=32, show_default=True, type=click.IntRange(8, 1024),
              help="Side in pixels: the --input-size you will train at.")
@click.option("--channels", default=None, type=click.Choice(["1", "3"]),
              help="[default: 1 for a greyscale set (IDX files; else every one of 16 images spread over --data is "
                   "grey), else 3]")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Decoding processes.")
@click.option("--follow-links", is_flag=True,
              help="Read symbolic links that lead out of a --data folder, and image files a Parquet or Arrow file "
                   "names outside its folder (otherwise each is a counted skip).")
@click.option("--overwrite", is_flag=True, help="Replace a preparation already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print prepared.json.")
@click.pass_context
def prepare(ctx, data, out, size, channels, workers, follow_links, overwrite, as_json):
    """Decode a collection once into an HDF5 store of the net's inputs, for fast training.

    Every `train --data OUT` (or `extract --data OUT`) then reads the images at disk speed instead of
    decoding every photo again (see docs/RESULTS.md, "Prepared images"). Resumable like extract.

    \b
    Example:
      hashindex prepare --data ../shared/data/flowers/train.tar --size 64 --out prepared/flowers-64
    """
    from ..data import open_source
    from ..data.prepared import prepare as api_prepare

    source = open_source(data, "data", follow_links=follow_links)
    meta = api_prepare(source, out, size, int(channels) if channels else None, workers=workers,
                       overwrite=overwrite, progress=ctx.obj["progress"], log=lambda line: click.echo(line, err=as_json))
    if as_json:
        _echo_json(meta)


@cli.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Checkpoint file or shipped model name.")
@click.option("--data", required=True,
              help="Images: folder, tar, zip, list, Parquet, IDX, CIFAR or STL-10 dir (see data/README.md).")
@click.option("--out", required=True, help="Shard directory to write (resumed if it exists).")
@click.option("--shard-size", default=100_000, show_default=True, type=int, help="Source items per shard.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Decoding processes.")
@click.option("--features", default="float16", show_default=True, type=click.Choice(["float16", "float32", "none"]),
              help="Re-ranking features to store.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only this many images (spread evenly).")
@click.option("--id-offset", default=0, show_default=True, type=click.IntRange(0),
              help="Number the images from this id (a collection that joins an index with build --append).")
@click.option("--follow-links", is_flag=True,
              help="Read symbolic links that lead out of a --data folder, and image files a Parquet or Arrow file "
                   "names outside its folder (otherwise each is a counted skip).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--bf16/--no-bf16", default=None,
              help="Run the net under bf16 autocast, or in float32 [default: bf16 where faster: CUDA, AVX-512 CPUs].")
@click.option("--overwrite", is_flag=True, help="Delete the shards in --out and start over.")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="Run on this machine, or as tasks on a Ray cluster (pip install 'hashindex[ray]').")
@click.option("--address", default=None, help="Ray cluster address [default: start a local Ray runtime].")
@click.option("--num-workers", default=2, show_default=True, type=click.IntRange(1), help="Ray workers (actors).")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0),
              help="GPUs per Ray worker.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_context
def extract(ctx, model, data, out, shard_size, batch_size, workers, features, limit, id_offset, follow_links, device,
            bf16, overwrite, backend, address, num_workers, gpus_per_worker, as_json):
    """Encode an image collection into HDF5 shards (codes, features, ids, labels, paths).

    Rerunning the same command after an interruption finishes the job: complete
    shards are kept, the unfinished one is redone. With --backend ray each
    shard is a task on a Ray cluster; the files are the same.

    \b
    Example:
      hashindex extract --data ../shared/data/cifar10-jpeg/test.tar --out shards/test   # the shipped model
      hashindex extract --model m.pt --data photos/ --out shards/photos              # your own
    """
    from ..extraction import extract as api_extract

    manifest = api_extract(model, data, out, shard_size=shard_size, batch_size=batch_size,
                           workers=workers, features=features, device=device, bf16=bf16,
                           overwrite=overwrite, limit=limit, id_offset=id_offset, follow_links=follow_links,
                           progress=ctx.obj["progress"],
                           backend=backend, ray_options={"address": address, "num_workers": num_workers,
                                                         "gpus_per_worker": gpus_per_worker},
                           log=lambda line: click.echo(line, err=as_json))
    if as_json:
        _echo_json(manifest)


@cli.command()
@click.argument("shard_dir")
@click.option("--out", required=True, help="Index directory to create.")
@click.option("--binary", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "ivf", "hnsw", "multihash"]),
              help="Coarse Hamming index. auto: flat (exact) up to 2M items, else (or with --nlist / "
                   "--nprobe) IVF, its nprobe tuned to --recall. hnsw: a graph over the distinct codes, "
                   "each answering with its items.")
@click.option("--rerank", default="flat", show_default=True,
              type=click.Choice(["flat", "fp16", "sq8", "pq", "none"]), help="Float re-rank store.")
@click.option("--signal", default="auto", show_default=True,
              type=click.Choice(["auto", "l2", "cosine", "latent", "posterior", "mid"]),
              help="What the fine stage orders the pool by: pooled-feature L2 or cosine, the latent "
                   "activations against the codes, the class posterior, or cosine on the mid feature (the "
                   "middle of the trunk: it carries best to classes the net never saw). auto measures them on "
                   "the collection's own labels (posterior wins in the net's classes, mid on others; "
                   "without labels: cosine).")
@click.option("--model", default=None,
              help="The shards' model, for its head (only for shard directories extracted before signals).")
@click.option("--nlist", default=None, type=click.IntRange(1),
              help="IVF lists [default: the power of 2 nearest 1.3 sqrt(N), at most 16384].")
@click.option("--nprobe", default=None, type=click.IntRange(1), help="IVF lists probed per query.")
@click.option("--recall", default=None, type=click.FloatRange(0, 1, min_open=True),
              help="Target recall@10 against exact Hamming search: the smallest nprobe / efSearch / nflip "
                   "that reaches it on held-out items is chosen and recorded [default with --binary auto "
                   "past 2M items: 0.95].")
@click.option("--tune-queries", default=None, metavar="SHARD_DIR",
              help="Measure --recall on these extracted queries (same model; ones like those the index will "
                   "serve) instead of held-out items: a net's codes of its own training images cluster "
                   "tighter than new images', which flatters the held-out figure.")
@click.option("--shards", default=1, show_default=True, type=click.IntRange(1),
              help="Split the binary index and the float store into this many parts by position range "
                   "(exact merged search; each part can live in its own Ray actor: query --shard-actors).")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="ray: build each of the --shards parts as a Ray task from the shard files (same files).")
@click.option("--address", default=None, help="Ray cluster address [default: start a local Ray runtime].")
@click.option("--num-workers", default=2, show_default=True, type=click.IntRange(1), help="Ray workers.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--append", is_flag=True,
              help="Add SHARD_DIR's items to the existing index --out (same model, new ids; "
                   "the index keeps its kinds and parameters).")
@click.option("--json", "as_json", is_flag=True, help="Print index.json.")
@click.pass_context
def build(ctx, shard_dir, out, binary, rerank, signal, model, nlist, nprobe, recall, tune_queries, shards, backend,
          address, num_workers, overwrite, append, as_json):
    """Build Faiss indexes over a shard directory: binary (coarse) + float (re-rank).

    \b
    Examples:
      hashindex build shards/train --out index/train --binary flat --rerank flat
      hashindex build shards/new --out index/train --append     # a collection that grows
    """
    from ..index import append as api_append, build as api_build

    log = lambda line: click.echo(line, err=as_json)  # noqa: E731
    if append:
        fixed = [f"--{name.replace('_', '-')}"
                 for name in ("binary", "rerank", "signal", "model", "nlist", "nprobe", "recall", "tune_queries",
                              "shards", "backend", "overwrite")
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if fixed:
            raise HashindexError(f"--append: {fixed[0]} cannot be combined with it (the index at --out "
                                 "keeps its kinds and parameters; rebuild without --append to change them)")
        meta = api_append(shard_dir, out, progress=ctx.obj["progress"], log=log)
    else:
        meta = api_build(shard_dir, out, binary=binary, rerank=rerank, signal=signal, model=model,
                         nlist=nlist, nprobe=nprobe, recall=recall, tune_queries=tune_queries, shards=shards,
                         overwrite=overwrite, progress=ctx.obj["progress"],
                         backend=backend, ray_options={"address": address, "num_workers": num_workers}, log=log)
    if as_json:
        _echo_json(meta)


@cli.command()
@click.argument("index_dir")
@click.argument("ids", nargs=-1, type=int)
@click.option("--ids-file", default=None, help="A file of ids to remove, one per line ('-': standard input).")
@click.option("--path", "paths", multiple=True,
              help="Remove the item of this image file of an indexed folder or list (it may be deleted already), "
                   "or the item recorded with this path (as `query` shows it); repeatable.")
@click.option("--paths-file", default=None, help="A file of such paths, one per line ('-': standard input).")
@click.option("--missing", is_flag=True,
              help="Remove every item whose image file is gone from its indexed folder (deleted or moved), "
                   "from its image list (its line or its file), or from its tar or zip (its member).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the new index.json (with --dry-run: the items).")
@click.pass_context
def remove(ctx, index_dir, ids, ids_file, paths, paths_file, missing, dry_run, as_json):
    """Take items out of an index (deleted photos, a takedown): by id, by image file, or all whose file is gone.

    The other items keep their ids, and the index its kinds and parameters; the shard directories it was
    built from are not touched. INDEX_DIR is replaced whole, as by build --append.

    \b
    Examples:
      hashindex remove index/photos 17 42
      hashindex remove index/photos --path ~/photos/holiday/IMG_0042.jpg
      hashindex remove index/photos --missing --dry-run      # photos deleted from the folder since
      hashindex duplicates ~/photos --redundant copies.txt     # copies of a photo, then keep one of each:
      hashindex remove index/photos --paths-file copies.txt
    """
    import numpy as np

    from ..index import Index, remove as api_remove
    from ..provenance import image_positions, missing_files

    ids = list(ids) + file_ids(ids_file, "--ids-file")
    paths = list(paths) + file_lines(paths_file, "--paths-file")
    if not ids and not paths and not missing:
        raise HashindexError("remove: name the items to remove (IDS, --ids-file, --path, --paths-file or --missing)")
    index = Index.load(index_dir)
    found = image_positions(index, paths) if paths else np.zeros(0, np.int64)
    ids += index.ids[found[found >= 0]].tolist()
    paths = [p for p, pos in zip(paths, found) if pos < 0]  # not a file of an indexed folder: a recorded path
    if missing:
        ids += index.ids[missing_files(index)].tolist()
        if not ids and not paths:
            click.echo(f"{index_dir}: every item's file is in its folder; nothing to remove", err=as_json)
            if as_json:  # what a script reads: no items (--dry-run), or the index.json, unchanged
                _echo_json([] if dry_run else index.meta)
            return
    if dry_run:
        _dry_run(index, index_dir, ids, paths, as_json)
        return
    meta = api_remove(index_dir, ids, paths, log=lambda line: click.echo(line, err=as_json))
    if as_json:
        _echo_json(meta)


def _dry_run(index, index_dir: str, ids: list[int], paths: list[str], as_json: bool) -> None:
    """What `remove --dry-run` prints: the items that would go (their ids and paths), checked as a removal is."""
    import numpy as np

    from ..index.removing import removed_positions

    positions = removed_positions(index.dir, np.asarray(ids, np.int64), paths)
    rows = [{"id": int(i), "path": p} for i, p in zip(index.ids[positions], index.paths(positions))]
    if as_json:
        _echo_json(rows)
        return
    for row in rows[:20]:
        click.echo(f"{row['id']}\t{row['path']}")
    click.echo(f"would remove {len(rows)} of {index.count} items from {index_dir}" +
               (" (the first 20 shown)" if len(rows) > 20 else ""))
