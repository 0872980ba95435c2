"""`hashindex demo`: the whole pipeline on one collection, with the shipped model.

The collection is split into a held-out query set (every 10th image) and a
database (the rest); both are extracted, the database is indexed, and the
queries are evaluated against it, with plots and a results grid. Every step
resumes: rerunning the command after an interruption redoes only what is
missing.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from . import DEFAULT_MODEL
from .checkpoint import load_model
from .data import open_source
from .errors import HashindexError
from .evaluation import evaluate, format_metrics
from .extraction import extract
from .files import atomic_write_json, sha256_file
from .index import Index, build, read_index_meta
from .query import example_results
from .grids import results_grid
from .report import write_plots
from .store import MANIFEST

DEFAULT_DATA = "torchvision:cifar10:test"


def _index_is_current(index_dir: Path, shard_dir: Path) -> bool:
    """True if index_dir exists and was built from the current shard manifest."""
    try:
        meta = read_index_meta(index_dir)
    except HashindexError:
        return False
    return meta["source"]["manifest_sha256"] == sha256_file(shard_dir / MANIFEST)


def fine_tune_hint(classes: list[str], model_classes: list[str], model: str, data: str, every: int,
                   out: Path) -> str | None:
    """For a collection whose classes the model was not trained on (its codes are zero-shot): how to fine-tune
    it, holding out the same every-n-th images the demo queries with (`train --val-every` splits alike)."""
    if not classes or set(classes) <= set(model_classes):
        return None
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    tuned = shlex.quote(str(out.with_name(out.name + "-model.pt")))
    return (f"note: this collection's classes ({shown}) are not the model's, so these codes are zero-shot; "
            "fine-tuning on it is the big step (on the 736 flowers test photos these two commands took mAP@all "
            "from 0.27 to 0.66, 0.69 re-ranked, with 77 s of training on 2 cores; docs/RESULTS.md, 'The demo on "
            "classes of your own'):\n"
            f"  hashindex train --init {shlex.quote(model)} --data {shlex.quote(data)} --val-every {every} "
            f"--epochs 6 --out {tuned}\n"
            f"  hashindex demo --model {tuned} --data {shlex.quote(data)} --every {every} "
            f"--out {shlex.quote(str(out))}-tuned")


def foreign_photos_hint(choice: dict[str, Any], signal: str, model: str, data: str = "PHOTOS") -> str | None:
    """For photos without labels that the label-free test (`signals.unlabelled_choice`) found foreign to the
    model: that the codes are zero-shot, how to fit them to the photos without labels (`derive --adapt-codes`),
    and how labels would let the model be fine-tuned on them."""
    if choice.get("classes") != "other":  # the test's verdict, as index.json records it
        return None
    return (f"note: these photos look like classes {model} was not trained on (mean top posterior "
            f"{choice['confidence']:.2f} = {choice['ratio']:.2f} x its validation accuracy), so the codes are "
            f"zero-shot and the index re-ranks by {signal!r}; without labels, codes fitted to the photos rank "
            "them better (flowers: Hamming mAP@all 0.25 -> 0.32; docs/RESULTS.md, 'Codes adapted to a "
            "collection'), and sorting some photos into a folder per class and fine-tuning on them is the big "
            "step (flowers: mAP@all 0.27 -> 0.66 with 77 s of training; 'The demo on classes of your own'):\n"
            f"  hashindex derive {shlex.quote(model)} --adapt-codes {shlex.quote(data)} --out adapted.pt\n"
            f"  hashindex train --init {shlex.quote(model)} --data FOLDER_OF_CLASS_FOLDERS/ --val-every 10 "
            "--epochs 6 --out mine.pt")


def meaningless_folders_hint(choice: dict[str, Any], classes: list[str], signal: str, model: str,
                             data: str = "PHOTOS") -> str | None:
    """For a collection whose folders say nothing of its photos (`index.tuning.labels_tell`: folders by date):
    that its metrics measure nothing and fine-tuning on those folders would teach nothing; the index's signal
    was chosen without them (and, for photos foreign to the model, how class folders would help)."""
    if "label_scores" not in choice:
        return None
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    note = (f"note: this collection's folders ({shown}) say nothing of what its photos show: every ranking "
            f"scores what a random order does (mAP@all {max(choice['label_scores'].values()):.3f} against "
            f"{choice['chance']:.3f}), so the metrics above measure nothing and fine-tuning on these folders "
            f"would teach nothing; the index re-ranks by {signal!r}, chosen without them")
    foreign = foreign_photos_hint(choice, signal, model, data)
    return note + (f"\n{foreign}" if foreign else "")


def run_demo(out: str | Path, data: str | None = None, model: str = DEFAULT_MODEL, every: int = 10,
             limit: int | None = None, workers: int = 2, device: str = "cpu", progress: bool = True,
             log=print) -> dict[str, Any]:
    """Extract, index, evaluate and plot; returns where everything is plus the headline metrics."""
    t0 = time.time()
    out = Path(out)
    hm = load_model(model, device)
    collection = data or DEFAULT_DATA
    source = open_source(collection, "data", split="test")
    if limit:
        source = source.subset(limit)
    if len(source) < 2 * every:
        raise HashindexError(f"data={data}: {len(source)} images are too few for a query/database split")
    queries, database = source.split_every(every)
    log(f"[1/4] extract {len(database)} database + {len(queries)} query images with {model} ({hm.model_id})")
    for name, src in (("database", database), ("queries", queries)):
        extract(hm, src, out / "shards" / name, workers=workers, progress=progress, log=log)
    index_dir = out / "index"
    log("[2/4] build the index (flat Hamming + flat float re-rank)")
    if _index_is_current(index_dir, out / "shards" / "database"):
        log(f"{index_dir}: up to date")
    else:
        build(out / "shards" / "database", index_dir, overwrite=True, progress=progress, log=log)
    index = Index.load(index_dir)  # once, for the metrics and the plots
    examples = example_results(index, out / "shards" / "queries")
    if (index.labels >= 0).any() and (examples["labels"] >= 0).any():
        log("[3/4] evaluate (mAP, precision@k, radius 2, PR curve)")
        metrics = evaluate(index, out / "shards" / "queries", progress=progress)
        atomic_write_json(out / "metrics.json", metrics)
        log("[4/4] plots and results grid")
        files = {"index": str(index_dir), "metrics": str(out / "metrics.json"),
                 **write_plots(metrics, out / "plots", index, examples)}
        log(format_metrics(metrics))
    else:  # photos without labels (a flat folder): no mAP to measure; the grid shows what the codes find
        metrics = None
        log(f"[3/4] evaluate: skipped, {source.description} has no labels (a folder of class folders has them)")
        log("[4/4] results grid")
        files = {"index": str(index_dir), "results_grid": str(results_grid(index, examples,
                                                                           out / "plots" / "results_grid.png"))}
    width = max(map(len, files))
    log("\n".join(f"{k:>{width}}: {v}" for k, v in files.items()))
    if metrics is None:
        log(f"search it: hashindex query {shlex.quote(str(index_dir))} PHOTO.jpg --model {shlex.quote(model)} "
            "--grid results.png")
    choice = index.meta["rerank"].get("signal_choice", {})
    hint = meaningless_folders_hint(choice, source.class_names, index.signal, model, collection) or \
        fine_tune_hint(source.class_names, hm.class_names, model, collection, every, out) or \
        foreign_photos_hint(choice, index.signal, model, collection)
    if hint:
        log(hint)
    log(f"done in {time.time() - t0:.0f} s")
    return {"files": files, "map": metrics["hamming"]["map"] if metrics else None, "hint": hint,
            "map_reranked": metrics.get("reranked", {}).get("map") if metrics else None, "model_id": hm.model_id,
            "seconds": time.time() - t0, "summary": dict(metrics["hamming"]) if metrics else None}
