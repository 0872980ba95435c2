"""Which classes a ranking's top results come from, by the query's class (numpy only, a leaf).

`hashindex eval`'s "results of another class" line and its mix-ups plot (`report.confusion_plot`) read these
counts: where two classes share codes, each one's queries find the other's items near the top.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MOST_CLASSES = 300  # a dense (C, C) table of counts up to here (720 KB); more classes: no table


class Confusion:
    """Which classes the top ``k`` results of a query come from, by the query's class: (C, C) counts, row =
    query class, column = result class (unlabelled results not counted). Where the codes mix two classes up."""

    def __init__(self, q_labels: np.ndarray, db_labels: np.ndarray, k: int):
        self.db, self.k = db_labels, k
        classes = int(max(q_labels.max(initial=-1), db_labels.max(initial=-1))) + 1
        self.classes = classes if classes <= MOST_CLASSES else 0
        self.counts = np.zeros((self.classes, self.classes), np.int64)

    def add(self, q_labels: np.ndarray, order: np.ndarray) -> None:
        """One chunk: its queries' labels and their rankings (database positions, best first)."""
        if not self.classes:
            return
        top = self.db[order[:, :self.k]]
        query = np.broadcast_to(q_labels[:, None], top.shape)
        ok = (top >= 0) & (query >= 0)
        self.counts += np.bincount(query[ok] * self.classes + top[ok],
                                   minlength=self.classes ** 2).reshape(self.classes, self.classes)


def confusion_shares(confusion: dict[str, Any]) -> np.ndarray:
    """`metrics.evaluate_arrays`' confusion counts as shares of each query class's results (rows sum to 1; 0
    without results)."""
    counts = np.asarray(confusion["counts"], np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
