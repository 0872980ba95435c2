"""Which fine-stage signal an index gets: measured on the collection itself (``signal="auto"``).

Like autofaiss choosing index parameters from a target, `build` chooses the
re-ranking signal from the collection: labelled items are held out, searched
against the rest with the ranking a query gets, and the best signal wins
("hamming", no fine stage, is a candidate too). Without labels, a label-free
test of whether the items are of the net's own classes chooses (`signals.unlabelled_choice`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import HashindexError
from ..metrics import chance_map, evaluate_arrays
from ..signals import (MID_FIELD, Head, check_signal, choose, database_vectors, feature_field, head_signals,
                       query_vectors, unlabelled_choice)
from ..store import ShardSet, targets
from .pool import TIE_CAP, default_pool

SIGNAL_QUERIES = 1000  # labelled items held out of the collection to choose its signal
SIGNAL_SAMPLE = 100_000  # items of a large collection the choice is measured on
MIN_LABELLED = 20  # fewer labelled items: too few held-out queries to tell the signals apart
# Labels that tell something: the best mAP@all over a random order's by 10% of it, or of what it leaves to 1 where
# that is less (a collection of one big class: chance near 1), and by 0.005 at least. Measured (RESULTS.md,
# "Labels that say nothing of the images"): shuffled over five collections, the best signal scores within 0.0003 of
# a random order; the weakest real labels at hand clear it by far more: flowers photos with the CIFAR-10 model
# (zero-shot) 0.297 against 0.206, the tests' one-epoch model on CIFAR-10 about 0.12 against 0.101.
LABELS_MARGIN = 0.1
LABELS_FLOOR = 0.005


def training_sample(shards: ShardSet, name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n rows of one field, drawn evenly from all shards."""
    return shards.sample_rows((name,), n, rng)[name]


def head_for(shards: ShardSet, model: str | None = None) -> Head | None:
    """The net's layers above the pooled feature, for the model that made ``shards``.

    From ``model`` (a checkpoint or shipped name) when given, else from the
    shard directory (written by extract; the shipped model's where that file predates the recorded
    validation accuracy), else from the checkpoint the shards record or the shipped model with their model id;
    None when none has it.
    """
    from ..checkpoint import checkpoint_head, find_model_for, read_checkpoint

    if model is not None:
        ckpt = read_checkpoint(model)
        if ckpt["model_id"] != shards.model_id:
            raise HashindexError(f"model {model}: its id {ckpt['model_id']} is not the model of "
                                 f"{shards.dir} ({shards.model_id})")
        return checkpoint_head(ckpt)
    head = shards.head()
    if head is not None and head.accuracy is not None:
        return head
    try:  # none, or one written before heads recorded the model's accuracy: the shipped model's, if it is one
        return checkpoint_head(read_checkpoint(find_model_for(shards.model_id, shards.manifest.get("model"))))
    except HashindexError:
        return head


def choose_signal(shards: ShardSet, head: Head | None, rng: np.random.Generator,
                  pool: int | None = None, queries: int = SIGNAL_QUERIES,
                  sample: int = SIGNAL_SAMPLE) -> tuple[str, dict[str, Any]]:
    """The fine-stage signal for a collection, measured on the collection itself.

    With labels: ``queries`` labelled items are held out and searched against
    the rest (at most ``sample`` items) with the ranking a query gets (each
    signal's default pool, or ``pool``; whole tie groups); the signal with the highest mAP wins, and
    "hamming" (no fine stage) is a candidate too, so the choice never ranks
    these held-out items worse than Hamming alone. Without labels (or too few): the label-free test of
    `unlabelled_choice`. In-domain collections measured here choose the posterior, collections of classes
    the net never saw choose the mid feature (cosine, in shards without it), with labels or without.
    """
    floats = ("features",) + ((MID_FIELD,) if shards.has_mid else ())
    rows = shards.sample_rows(("codes",) + floats + shards.label_fields, sample, rng)
    rows["targets"] = targets(rows)  # label sets of a multi-label collection: relevant = a shared label
    labelled = np.flatnonzero(rows["labels"] >= 0)
    why = _unmeasurable(rows["labels"][labelled])
    free, free_choice = unlabelled_choice(head, rows["features"].astype(np.float32), shards.has_mid)
    if why:  # the label-free test, on the sampled items
        return free, {**free_choice, "labels": why}
    held = rng.choice(labelled, size=min(queries, len(labelled) // 5), replace=False)
    rest = np.setdiff1d(np.arange(len(rows["labels"])), held)
    q = {name: a[held] for name, a in rows.items()}
    db = {name: a[rest] for name, a in rows.items()}
    for name in floats:
        q[name], db[name] = q[name].astype(np.float32), db[name].astype(np.float32)

    def score(signal: str) -> float:
        if signal == "hamming":
            return evaluate_arrays(q["codes"], q["targets"], db["codes"], db["targets"], shards.bits,
                                   at=(), pk_max=1, graded_at=())["hamming"]["map"]
        qv = query_vectors(signal, q[feature_field(signal)], head)
        dv = database_vectors(signal, db[feature_field(signal)], db["codes"], head)
        dn = (dv * dv).sum(axis=1)
        size = min(pool or default_pool(dv.shape[1]), len(rest))
        pools[signal] = size

        def distances(sl, pos):
            full = dn[None, :] - 2 * qv[sl] @ dv.T
            return np.take_along_axis(full, pos, 1)

        return evaluate_arrays(q["codes"], q["targets"], db["codes"], db["targets"], shards.bits, at=(),
                               pk_max=1, graded_at=(), rerank=distances, candidates=size,
                               tie_cap=max(TIE_CAP, size))["reranked"]["map"]

    pools: dict[str, int] = {}
    names = ["hamming", "l2", "cosine"] + head_signals(head) + (["mid"] if shards.has_mid else [])
    signal, scores = choose({name: (lambda n=name: score(n)) for name in names})
    chance = chance_map(q["targets"], db["targets"])
    scores = {k: round(v, 4) for k, v in scores.items()}
    if not labels_tell(scores[signal], chance):  # folders by date, say: the label-free test chooses instead
        return free, {**free_choice, "labels": f"labels that tell nothing of the images (the best signal's mAP@all "
                                               f"{scores[signal]:.4f}, a random order's {chance:.4f})",
                      "label_scores": scores, "chance": round(chance, 4)}
    return signal, {"by": f"mAP@all of {len(held)} labelled items held out against {len(rest)} others "
                          "(each signal with its default pool)", "pools": pools, "scores": scores,
                    "chance": round(chance, 4),
                    "label_free": {"signal": free, **free_choice}}  # what it would choose without the labels


def labels_tell(best: float, chance: float) -> bool:
    """Whether a collection's labels say something of its images: the best ranking's mAP@all clears what a
    random order scores (`metrics.chance_map`) by LABELS_MARGIN of it or of its distance to 1, whichever is
    less, and by LABELS_FLOOR at least. Labels unrelated to the images (folders by date) score at chance
    whatever the signal, so the "best" is noise."""
    return best - chance >= max(LABELS_FLOOR, LABELS_MARGIN * min(chance, 1 - chance))


def _unmeasurable(labels: np.ndarray) -> str | None:
    """Why the labels of a collection cannot choose its signal (None: they can)."""
    if not len(labels):
        return "an unlabelled collection"
    if len(labels) < MIN_LABELLED:
        return f"{len(labels)} labelled items, fewer than the {MIN_LABELLED} a choice is measured on"
    if len(np.unique(labels)) < 2:
        return "one class (every item relevant to every query)"
    return None


def fine_stage(store: ShardSet, rerank: str, signal: str, model: str | None, rng: np.random.Generator,
                log) -> tuple[Head | None, str, dict[str, Any]]:
    """(head, signal, how it was chosen) of a new index; signal "none" without a float store."""
    if rerank == "none":
        return None, "none", {"by": "no float store (rerank none)"}
    head = head_for(store, model)
    if signal != "auto":
        check_signal(signal, head, store.has_mid)
        return head, signal, {"by": "given"}
    signal, choice = choose_signal(store, head, rng)
    if "scores" in choice:
        log(f"signal: {signal} ({', '.join(f'{k} {v:.4f}' for k, v in choice['scores'].items())}; {choice['by']})")
    else:
        log(f"signal: {signal} ({choice['labels']}: {choice['by']})")
    return head, signal, choice
