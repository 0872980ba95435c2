"""The pool the fine stage re-ranks: its size, the tie groups it takes whole, and the order of its first k.

numpy only, so the searcher, `build`'s signal choice (`tuning`) and the tools share one definition of the pool.
"""

from __future__ import annotations

import numpy as np

MISSING = -1
DEFAULT_CANDIDATES = 1000  # the pool of 192-d features, and of an index without a float store
# The fine stage reads at most this many floats per query by default: DLBHC's 1,000 candidates x 192-d
# features. Narrower signals re-rank a larger pool at the same cost (posterior, 11-d: 17,454 candidates;
# latent, 48-d: 4,000): their quality grows with the pool, where L2 / cosine on features drop (RESULTS.md).
FINE_BUDGET = DEFAULT_CANDIDATES * 192
TIE_CAP = 20_000  # at most this many items in a pool widened to a whole tie group (or the pool, if larger)


def default_pool(dim: int | None) -> int:
    """The default re-ranked pool for stored vectors of width ``dim``: `FINE_BUDGET` floats per query."""
    return max(DEFAULT_CANDIDATES // 10, FINE_BUDGET // dim) if dim else DEFAULT_CANDIDATES


def pool_mask(ham: np.ndarray, pos: np.ndarray, pool_size: int) -> np.ndarray:
    """Which entries of a (Hamming, position)-ordered list are in the pool.

    The pool is every item as close as the ``pool_size``-th one: a whole tie
    group, in the list as `complete_ties` left it (so the same items whatever k).
    """
    bound = ham[:, min(pool_size, ham.shape[1]) - 1:min(pool_size, ham.shape[1])]
    bound = np.where(bound < 0, np.iinfo(np.int32).max, bound)
    capped = np.arange(ham.shape[1]) < max(TIE_CAP, pool_size)
    return (pos >= 0) & (ham <= bound) & capped


def packed_order(mask: np.ndarray) -> np.ndarray:
    """Per row, the columns where ``mask`` holds first (in their order), then the others, cut at the widest
    row's count of true entries (at least 1)."""
    width = max(int(mask.sum(axis=1).max(initial=0)), 1)
    return np.argsort(~mask, axis=1, kind="stable")[:, :width]


def first_k_order(d: np.ndarray, ham: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column order of the first k entries by (d, ham, pos): what a full lexsort gives, cut at k.

    Only the entries as close as the k-th smallest d (ties included) are sorted, found with a partition:
    with the pools the fine stage re-ranks (1,000-17,454 candidates) and k = 10, sorting whole pools was most
    of a search's time (measured: 56 ms of 155 ms for 32 queries over 50,000 CIFAR-10 codes).
    """
    width = d.shape[1]
    if k >= width:
        return np.lexsort((pos, ham, d), axis=-1)
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]
    sel = packed_order(d <= kth)  # the kept columns (at least k per row) first; rows with fewer kept add
    sd, sh, sp = (np.take_along_axis(a, sel, 1) for a in (d, ham, pos))  # farther ones, which sort after them
    return np.take_along_axis(sel, np.lexsort((sp, sh, sd), axis=-1)[:, :k], 1)
