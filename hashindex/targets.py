"""What relevance is judged on: class labels ((N,) int, -1 unlabelled) or label sets ((N, C) bool, one column
per class: multi-label collections such as NUS-WIDE and MS-COCO), and the counts reports show (numpy only).

A leaf under `metrics` (which scores rankings with `Relevance`), the index, the store and the reports.
"""

from __future__ import annotations

import numpy as np


class Relevance:
    """Which database items are relevant to which queries: the same class (labels (N,) int, -1 unlabelled,
    never relevant) or a shared label (label sets (N, C) bool; a row of zeros is unlabelled)."""

    def __init__(self, q_labels: np.ndarray, db_labels: np.ndarray):
        if q_labels.ndim != db_labels.ndim or (q_labels.ndim == 2 and q_labels.shape[1] != db_labels.shape[1]):
            raise ValueError(f"query labels {q_labels.shape} and database labels {db_labels.shape} differ in kind")
        self.sets = q_labels.ndim == 2
        # sets: one float32 product per chunk ((64, C) @ (C, N)) beats a bool broadcast of (64, N, C)
        self.q = q_labels.astype(np.float32) if self.sets else q_labels
        self.db = np.ascontiguousarray(db_labels.T, dtype=np.float32) if self.sets else db_labels

    def __call__(self, sl: slice, order: np.ndarray | None = None) -> np.ndarray:
        """(q, n) bool: relevance of the database (in ``order``, per query, when given) to queries ``sl``."""
        if self.sets:
            rel = self.shared(sl) > 0
            return rel if order is None else np.take_along_axis(rel, order, 1)
        ranked = self.db[None, :] if order is None else self.db[order]
        return (ranked == self.q[sl, None]) & (self.q[sl, None] >= 0)  # an unlabelled query: nothing relevant

    def shared(self, sl: slice) -> np.ndarray:
        """(q, n) float32: how many labels each database item shares with each query ``sl`` (label sets)."""
        return self.q[sl] @ self.db


def relevant_items(q_targets: np.ndarray, db_targets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(q, k) bool: whether the database items at ``positions`` (q, k) (valid positions) are relevant to each
    query; labels or label sets, as `Relevance`."""
    ranked = db_targets[positions]
    if q_targets.ndim == 2:
        return (ranked & q_targets[:, None, :].astype(bool)).any(axis=2)
    return (ranked == q_targets[:, None]) & (q_targets[:, None] >= 0)


def one_hot_sets(labels: np.ndarray, classes: int) -> np.ndarray:
    """Class labels (-1: none) as label sets (N, classes) bool: one class per item meets a multi-label one."""
    sets = np.zeros((len(labels), classes), dtype=bool)
    has = (labels >= 0) & (labels < classes)
    sets[np.flatnonzero(has), labels[has]] = True
    return sets


def first_labels(sets: np.ndarray) -> np.ndarray:
    """Each item's first class in label sets (N, C) (-1 for none): the one class per item that code reading
    a single label sees (the inverse of `one_hot_sets` for sets of one)."""
    return np.where(sets.any(axis=1), sets.argmax(axis=1), -1).astype(np.int32)


def common_kind(q_targets: np.ndarray, db_targets: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Query and database targets of one kind: as given when both are labels or both label sets, else both
    label sets (a single-label query of a multi-label collection is relevant to the items holding its class)."""
    if q_targets.ndim == db_targets.ndim:
        return q_targets, db_targets
    return (one_hot_sets(q_targets, classes) if q_targets.ndim == 1 else q_targets,
            one_hot_sets(db_targets, classes) if db_targets.ndim == 1 else db_targets)


def class_name(names: list[str], label: int) -> str:
    """The class name of a label, or the label itself where the names do not cover it."""
    return names[label] if 0 <= label < len(names) else str(label)


def label_counts(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    """Items per label, keyed by class name (the label itself where the names do not cover it; 'unlabelled'
    for -1)."""
    return {("unlabelled" if k < 0 else class_name(names, int(k))): int(n)
            for k, n in zip(*np.unique(labels, return_counts=True))}


def set_counts(sets: np.ndarray, names: list[str]) -> dict[str, int]:
    """Items per class of label sets (N, C), an item counted in each of its classes ('unlabelled': none)."""
    out = {class_name(names, int(c)): int(n) for c, n in enumerate(sets.sum(axis=0)) if n}
    none = int((~sets.any(axis=1)).sum())
    return {**out, "unlabelled": none} if none else out
