"""How far a mean over queries can be trusted: standard errors and paired differences (numpy in, dicts out).

A mAP is a mean of per-query APs, so another draw of queries from the same collection would give another
figure; its standard error says by how much. Two models scored on the same queries are compared query by
query (a paired difference): the spread of the per-query differences, not of each model's APs, decides
whether one is better, and it is much narrower, because a hard query is hard for both. This is the error of
the query sample only: two trainings of one recipe differ too (two fine-tunes on the flowers photos that
differ only in their seed: ~2.4 points of mAP, docs/RESULTS.md "Is a difference real?"), and no interval over
queries shows that.

The intervals are the normal approximation (mean +- 1.96 standard errors), which holds for the hundreds to
thousands of queries of an evaluation; below `FEW_QUERIES` they are marked rough. A leaf: it imports nothing
of the package but `errors`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import HashindexError

Z95 = 1.959964  # the standard normal's 97.5% point: a two-sided 95% interval
FEW_QUERIES = 30  # below this a mean's normal interval is rough (per-query APs are bounded and skewed)


def mean_interval(values: np.ndarray) -> dict[str, Any]:
    """The mean of per-query values with its standard error and 95% interval."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise HashindexError("values: expected at least one per-query value")
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    mean = float(v.mean())
    return {"mean": mean, "se": se, "low": mean - Z95 * se, "high": mean + Z95 * se, "n": int(v.size),
            "rough": bool(v.size < FEW_QUERIES)}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """``b - a`` over the same queries (each array one value per query, in the same order): the mean
    difference, its standard error and 95% interval, and how many queries each side wins.

    ``significant`` is whether the interval excludes 0 (at the 5% level, for this query sample)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise HashindexError(f"a, b: expected one value per query on both sides, got {a.size} and {b.size}")
    out = mean_interval(b - a)
    out["diff"] = out.pop("mean")
    out["a"], out["b"] = float(a.mean()), float(b.mean())
    out["b_better"], out["a_better"] = int((b > a).sum()), int((a > b).sum())
    out["significant"] = bool(out["low"] > 0 or out["high"] < 0)
    return out


def aligned(ids_a: np.ndarray, ids_b: np.ndarray, what: str = "queries") -> tuple[np.ndarray, np.ndarray]:
    """(positions in a, positions in b) that pair the same query ids; both sides must hold the same ids,
    each once (two evaluations of one query set)."""
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    for name, ids in (("a", ids_a), ("b", ids_b)):
        if len(np.unique(ids)) != len(ids):
            raise HashindexError(f"{what}: query ids repeat on side {name}; cannot pair the queries")
    if len(ids_a) != len(ids_b) or not np.array_equal(np.sort(ids_a), np.sort(ids_b)):
        only = np.setdiff1d(ids_a, ids_b).size + np.setdiff1d(ids_b, ids_a).size
        raise HashindexError(f"{what}: the two sides hold different queries ({len(ids_a)} and {len(ids_b)}, "
                             f"{only} on one side only); compare them on the same query set")
    return np.argsort(ids_a, kind="stable"), np.argsort(ids_b, kind="stable")
