"""Test accuracy of each model and of their ensemble as `train --teacher A --teacher B` teaches it (the models'
logits averaged, hashindex.distill.ensemble_logits), each model with its own test views: is an ensemble a
better teacher than its best member?

    python tools/ensemble_accuracy.py runs/table/cifar10-48-e100-ten.pt runs/table/cifar10-48-e100-kd-restart-ten.pt \
        --val ../shared/data/cifar10-jpeg/test.tar [--json]

``--subsets R`` adds the ensemble of every R of the models (which teacher set is strongest); ``--mirror`` adds
the ensemble with each model also given the mirror images (what a consistent teacher that looked at each
augmented view and its mirror would be worth); ``--paired`` compares each with the first model image by image
(the difference of accuracies with a 95% interval over the test images, hashindex.significance: is it more
than the test set's noise?).
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from hashindex.checkpoint import load_model
from hashindex.data import load_arrays, open_source
from hashindex.distill import teacher_logits
from hashindex.errors import HashindexError
from hashindex.significance import paired_difference


def accuracies(models: list[str], val: str, workers: int = 2, limit: int | None = None,
               subsets: tuple[int, ...] = (), mirror: bool = False) -> dict[str, float]:
    """{model: accuracy, ..., 'ensemble': accuracy of the averaged logits, 'ensemble of i,j,...': the same
    for each subset of the sizes in ``subsets`` (0-based positions in ``models``), 'ensemble with mirrors'}
    on the labelled images ``val``."""
    return rates(correctness(models, val, workers, limit, subsets, mirror))


def rates(correct: dict[str, np.ndarray]) -> dict[str, float]:
    """Each entry's accuracy: the share of images it classifies right."""
    return {name: float(right.mean()) for name, right in correct.items()}


def paired_with_first(correct: dict[str, np.ndarray]) -> dict[str, dict]:
    """Each entry after the first against the first, image by image (`paired_difference` of right/wrong)."""
    (_, base), *rest = correct.items()
    return {name: paired_difference(base, right) for name, right in rest}


def correctness(models: list[str], val: str, workers: int = 2, limit: int | None = None,
                subsets: tuple[int, ...] = (), mirror: bool = False) -> dict[str, np.ndarray]:
    """`accuracies`' entries, each as whether it classifies each test image right (bool, in source order)."""
    loaded = [load_model(m) for m in models]
    first = loaded[0]
    if any((m.input_size, m.channels, m.class_names) != (first.input_size, first.channels, first.class_names)
           for m in loaded):
        raise HashindexError("models: expected one input size, channel count and class list for all of them")
    source = open_source(val, arg="val")
    source = source.subset(limit) if limit else source
    source.remap_labels(first.class_names)
    x, y, _ = load_arrays(source, first.input_size, first.channels, workers, True)
    logits = np.stack([teacher_logits(m, x) for m in loaded])

    def acc(z: np.ndarray) -> np.ndarray:
        return z.argmax(1) == y

    out = {name: acc(z) for name, z in zip(models, logits)}
    out["ensemble"] = acc(logits.mean(0))
    for r in subsets:
        for pick in itertools.combinations(range(len(models)), r):
            out[f"ensemble of {','.join(map(str, pick))}"] = acc(logits[list(pick)].mean(0))
    if mirror:
        mirrored = np.stack([teacher_logits(m, np.ascontiguousarray(x[..., ::-1])) for m in loaded])
        out["ensemble with mirrors"] = acc(np.concatenate([logits, mirrored]).mean(0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="checkpoints or shipped names (same classes and input size)")
    ap.add_argument("--val", required=True, help="labelled test images")
    ap.add_argument("--limit", type=int, help="this many test images, spread evenly (a quick look)")
    ap.add_argument("--subsets", type=int, action="append", default=[], metavar="R",
                    help="also the ensemble of every R of the models (repeatable)")
    ap.add_argument("--mirror", action="store_true", help="also the ensemble given each image and its mirror")
    ap.add_argument("--paired", action="store_true",
                    help="each against the first model, image by image: the difference with a 95%% interval")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if any(not 1 <= r <= len(args.models) for r in args.subsets):
        raise SystemExit(f"ensemble_accuracy: error: --subsets: expected 1 to {len(args.models)} (the models given)")
    try:
        correct = correctness(args.models, args.val, limit=args.limit, subsets=tuple(args.subsets),
                              mirror=args.mirror)
    except HashindexError as e:
        raise SystemExit(f"ensemble_accuracy: error: {e}")
    acc = rates(correct)
    paired = paired_with_first(correct) if args.paired else {}
    if args.json:
        print(json.dumps(acc | ({"paired_with_first": paired} if paired else {}), indent=1))
        return
    for name, value in acc.items():
        d = paired.get(name)
        print(f"{value:.4f}  {name}" + (f"  ({d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] vs the first; "
                                        f"right where it was wrong {d['b_better']}, the reverse {d['a_better']})"
                                        if d else ""))


if __name__ == "__main__":
    main()
