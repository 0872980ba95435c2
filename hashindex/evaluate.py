"""Deep-hashing retrieval metrics, vectorised numpy.

Relevance is "same label". Rankings are by Hamming distance with ties broken
by database order (stable sort): deterministic and reproducible by anyone
with the codes and labels. A query with no relevant item scores AP 0.
"""

from __future__ import annotations

import numpy as np


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, B) and (N, B) packed uint8 codes -> (Q, N) uint16 Hamming distances."""
    x = np.bitwise_xor(query_codes[:, None, :], db_codes[None, :, :])
    return np.bitwise_count(x).sum(axis=2, dtype=np.uint16)


def _ap_rows(order: np.ndarray, rel_labels: np.ndarray, query_labels: np.ndarray,
             at: int | None) -> np.ndarray:
    """AP of each row of a ranking (Q, N) of database positions."""
    if at is not None:
        order = order[:, :at]
    rel = rel_labels[order] == query_labels[:, None]
    hits = np.cumsum(rel, axis=1, dtype=np.float64)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    return np.where(n_rel > 0, (prec * rel).sum(axis=1) / np.maximum(n_rel, 1), 0.0)


def mean_average_precision(query_codes: np.ndarray, query_labels: np.ndarray,
                           db_codes: np.ndarray, db_labels: np.ndarray,
                           at: int | None = None, chunk: int = 128) -> float:
    """mAP of Hamming ranking (mAP@all, or mAP@at), ties in database order.

    For mAP@at the AP of a query divides by the relevant items within the
    top ``at`` (the convention of the DLBHC / DSH / HashNet evaluation code).
    """
    aps = []
    for s in range(0, len(query_codes), chunk):
        d = hamming_distances(query_codes[s:s + chunk], db_codes)
        order = np.argsort(d, axis=1, kind="stable")
        aps.append(_ap_rows(order, db_labels, query_labels[s:s + chunk], at))
    return float(np.concatenate(aps).mean()) if aps else 0.0
