"""Retrieval metrics on arrays (numpy in, numbers out; no index, no files).

Used by `hashindex eval` (hashindex.evaluation), by training (final mAP), by
`build`'s choice of re-ranking signal and by the tools. Conventions:
  * relevance = same class label; with label sets ((N, C) bool, one column per class: multi-label sets such
    as NUS-WIDE and MS-COCO), a shared label (the HashNet / DeepHash-pytorch protocol);
  * Hamming ranking over the whole database, ties broken by database order
    (index position; a stable sort): the headline mAP, deterministic and
    reproducible from the codes and labels alone;
  * the tie-aware mAP (McSherry & Najork 2008: the expectation over random
    orders within each tie), computed exactly in O(K) per query from the
    per-distance counts; so is the tie-aware precision@k;
  * mAP@k divides by the relevant items within the top k (DLBHC / DSH / HashNet
    evaluation code); a query with no relevant item scores AP 0 (counted in ``queries_without_relevant``);
  * precision within Hamming radius r: a query with no item within r counts
    precision 0 (the common protocol);
  * re-ranked ranking: the ranking `Index.search` returns. The pool is the first
    ``candidates`` items of the Hamming ranking widened to every item tied at
    its farthest distance (at most ``tie_cap``), re-ordered by the signal
    distance (then Hamming, then position); the Hamming ranking continues after it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .codes import hamming_distances
from .confusion import Confusion
from .significance import mean_interval, paired_difference
from .targets import Relevance, relevant_items


def average_precision(rel: np.ndarray, at: int | None = None) -> np.ndarray:
    """AP of each row of a (Q, N) relevance matrix in ranked order (optionally @at)."""
    if at is not None:
        rel = rel[:, :at]
    hits = np.cumsum(rel, axis=1, dtype=np.float64)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    return np.where(n_rel > 0, (prec * rel).sum(axis=1) / np.maximum(n_rel, 1), 0.0)


class _GradedScores:
    """NDCG@k and ACG@k of one ranking, where an item's gain is the number of labels it shares with the query
    (label sets; DSRH, Zhao et al. CVPR 2015): NDCG = sum (2^r - 1) / log2(1 + rank) over the top k, over the
    same sum for the best order of the whole database (0 for a query sharing nothing); ACG = mean r of the top k."""

    def __init__(self, at: tuple[int, ...]):
        self.at = at
        self.sums = {f"{m}@{k}": 0.0 for k in at for m in ("ndcg", "acg")}
        self.n = 0

    def add(self, ranked_gains: np.ndarray, ideal: np.ndarray) -> None:
        """``ranked_gains`` (q, n) in ranked order; ``ideal`` (q, max k) the largest gains, descending."""
        self.n += len(ranked_gains)
        ranked_gains, ideal = ranked_gains.astype(np.float64), ideal.astype(np.float64)  # sums in float64
        for k in self.at:  # both hold at least max(at) columns (evaluate_arrays caps at at the database size)
            discount = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = ((2.0 ** ranked_gains[:, :k] - 1) * discount).sum(axis=1)
            best = ((2.0 ** ideal[:, :k] - 1) * discount).sum(axis=1)
            self.sums[f"ndcg@{k}"] += float(np.where(best > 0, dcg / np.maximum(best, 1e-12), 0.0).sum())
            self.sums[f"acg@{k}"] += float(ranked_gains[:, :k].mean(axis=1).sum())

    def means(self) -> dict[str, float]:
        return {name: total / max(self.n, 1) for name, total in self.sums.items()}


def ideal_gains(gains: np.ndarray, k: int) -> np.ndarray:
    """(q, k) each row's k largest gains, descending."""
    k = min(k, gains.shape[1])
    top = -np.partition(-gains, k - 1, axis=1)[:, :k]
    return -np.sort(-top, axis=1)


def _harmonic(n: np.ndarray) -> np.ndarray:
    """The n-th harmonic numbers: summed up to 64, past it ln n + Euler's gamma + 1/2n - 1/12n^2 (within 1e-9
    there), so a database of 100M items costs nothing."""
    n = np.maximum(np.asarray(n, np.float64), 1)  # H_0 is never asked for (an empty database scores 0)
    small = np.cumsum(1.0 / np.arange(1, 65))
    big = np.log(n) + 0.5772156649015329 + 1 / (2 * n) - 1 / (12 * n * n)
    return np.where(n <= 64, small[np.minimum(n.astype(np.int64), 64) - 1], big)


def random_order_ap(relevant: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """The expected AP of a query with ``relevant`` (counts, per query) of ``n`` items relevant, in a uniformly
    random order: what labels unrelated to the images score (0 where none is relevant, as `average_precision`).

    A relevant item at rank r (uniform over 1..n) has (r - 1)(R - 1) / (n - 1) other relevant items above it
    on average, so E[AP] = H_n / n + (R - 1) / (n - 1) * (1 - H_n / n), H_n the n-th harmonic number."""
    r = np.asarray(relevant, np.float64)
    n = np.broadcast_to(np.asarray(n, np.float64), r.shape)
    h = _harmonic(n) / np.maximum(n, 1)
    ap = h + (r - 1) / np.maximum(n - 1, 1) * (1 - h)
    return np.where(r > 0, np.where(n > 1, ap, 1.0), 0.0)


def chance_map(q_targets: np.ndarray, db_targets: np.ndarray, own: np.ndarray | None = None,
               chunk: int = 64) -> float:
    """The mAP@all a uniformly random order of the database would score for these queries (labels or label
    sets, as `Relevance`): the floor a ranking that knows nothing of the images sits on. ``own``: each query's
    own database position (-1: none), left out of its ranking as `evaluate_arrays` leaves it."""
    if not len(q_targets):
        return 0.0
    if q_targets.ndim == 1:  # labels: a count per class, O(database) whatever the queries
        per_class = np.bincount(db_targets[db_targets >= 0], minlength=max(int(q_targets.max()) + 1, 1))
        counts = np.where(q_targets >= 0, per_class[np.maximum(q_targets, 0)], 0).astype(np.int64)
    else:
        rel = Relevance(q_targets, db_targets)
        counts = np.concatenate([rel(slice(s, s + chunk)).sum(axis=1) for s in range(0, len(q_targets), chunk)])
    n = np.full(len(counts), len(db_targets))
    if own is not None:  # its own item is relevant to it (unless unlabelled) and not in its ranking
        inside = own >= 0
        counts[inside] -= _own_relevant(q_targets, db_targets, own)[inside]
        n[inside] -= 1
    return float(random_order_ap(counts, n).mean())


def _own_relevant(q_targets: np.ndarray, db_targets: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Whether each query's own database item (at ``own``; -1 read as position 0, masked by the caller) is
    relevant to it (0/1)."""
    return relevant_items(q_targets, db_targets, np.maximum(own, 0)[:, None])[:, 0].astype(np.int64)


def mean_average_precision(query_codes: np.ndarray, query_labels: np.ndarray,
                           db_codes: np.ndarray, db_labels: np.ndarray,
                           at: int | None = None, chunk: int = 128) -> float:
    """mAP of Hamming ranking (mAP@all, or mAP@at), ties in database order; labels or label sets."""
    relevant = Relevance(query_labels, db_labels)
    aps = []
    for s in range(0, len(query_codes), chunk):
        d = hamming_distances(query_codes[s:s + chunk], db_codes)
        order = np.argsort(d, axis=1, kind="stable")
        aps.append(average_precision(relevant(slice(s, s + chunk), order), at))
    return float(np.concatenate(aps).mean()) if aps else 0.0


def per_distance_counts(d: np.ndarray, rel: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, K+1) number of items and of relevant items at each Hamming distance."""
    q = d.shape[0]
    idx = (np.arange(q)[:, None] * (bits + 1) + d).ravel()
    n = np.bincount(idx, minlength=q * (bits + 1)).reshape(q, bits + 1)
    r = np.bincount(idx, weights=rel.ravel(), minlength=q * (bits + 1)).reshape(q, bits + 1)
    return n, r


def tie_aware_ap(n: np.ndarray, r: np.ndarray, harmonic: np.ndarray) -> np.ndarray:
    """Expected AP over random orders within ties, from per-distance counts.

    A relevant item in a tie group of n items starting after rank s, with R_b
    relevant items ranked before the group and r relevant in it, has expected
    precision (1/n) * sum_p (R_b + 1 + (p-1)(r-1)/(n-1)) / (s+p); summing over
    p uses harmonic numbers H, so each query costs O(K).
    """
    s = np.cumsum(n, axis=1) - n
    rb = np.cumsum(r, axis=1) - r
    dh = harmonic[s + n] - harmonic[s]
    alpha = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
    contrib = np.where(n > 0, r / np.maximum(n, 1) * ((rb + 1) * dh + alpha * (n - (s + 1) * dh)), 0.0)
    total = r.sum(axis=1)
    return np.where(total > 0, contrib.sum(axis=1) / np.maximum(total, 1), 0.0)


def tie_aware_precision_at_k(n: np.ndarray, r: np.ndarray, k_max: int) -> np.ndarray:
    """(Q, k_max) expected precision@k over random orders within ties, from per-distance counts.

    The top k holds every item of the groups that end by rank k, plus k - (items
    before it) of the group that straddles rank k, relevant in proportion r/n.
    """
    cn, cr = np.cumsum(n, axis=1), np.cumsum(r, axis=1)
    k = np.arange(1, k_max + 1)
    g = np.minimum((cn[:, :, None] < k).sum(axis=1), n.shape[1] - 1)  # the group holding rank k
    n_before = np.take_along_axis(cn - n, g, 1)
    r_before = np.take_along_axis(cr - r, g, 1)
    share = np.take_along_axis(r, g, 1) / np.maximum(np.take_along_axis(n, g, 1), 1)
    return (r_before + (k - n_before) * share) / k


class _RankingScores:
    """AP per query (of the whole ranking and at each cut-off) and summed precision@k of one ranking,
    accumulated chunk by chunk of queries."""

    def __init__(self, at: tuple[int, ...], pk_max: int):
        self.at, self.pk_max = at, pk_max
        self.ap: dict[str, list[np.ndarray]] = {"all": [], **{str(k): [] for k in at}}
        self.pk_sum = np.zeros(pk_max)

    def add(self, rel: np.ndarray) -> None:
        """One chunk: ``rel`` (q, n) bool, whether each ranked item is relevant to its query."""
        self.ap["all"].append(average_precision(rel))
        for k in self.at:
            self.ap[str(k)].append(average_precision(rel, k))
        self.pk_sum += (np.cumsum(rel[:, :self.pk_max], axis=1) / np.arange(1, self.pk_max + 1)).sum(axis=0)

    def maps(self) -> dict[str, float]:
        """mAP@all with its standard error over the queries (`significance`), and mAP at each cut-off."""
        ap = self.per_query()
        se = mean_interval(ap)["se"] if len(ap) > 1 else None
        return {"map": float(ap.mean()) if len(ap) else 0.0, "map_se": se,
                **{f"map@{k}": _mean(self.ap[str(k)]) for k in self.at}}

    def per_query(self) -> np.ndarray:
        """AP@all of each query, in query order."""
        return np.concatenate(self.ap["all"]) if self.ap["all"] else np.zeros(0)


def _radius_figures(n_le: np.ndarray, r_le: np.ndarray, total: np.ndarray, radius: int, bits: int
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(precision and recall within ``radius``, the PR curve over every radius) from per-query counts of
    items (``n_le``) and relevant items (``r_le``) within each distance, and each query's relevant total."""
    prec_r = np.where(n_le > 0, r_le / np.maximum(n_le, 1), 0.0)
    rec_r = np.where(total[:, None] > 0, r_le / np.maximum(total[:, None], 1), 0.0)
    within = {"precision": float(prec_r[:, radius].mean()), "recall": float(rec_r[:, radius].mean()),
              "queries_with_no_item": int((n_le[:, radius] == 0).sum())}
    curve = {"radius": list(range(bits + 1)), "precision": prec_r.mean(axis=0).tolist(),
             "recall": rec_r.mean(axis=0).tolist()}
    return within, curve


def pair_distances(relevant: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """How far apart the codes of query-item pairs are, relevant pairs against the others, from the number of
    pairs of each kind at each Hamming distance 0..K: the counts, each kind's mean distance, and ``auc``, the
    chance that a relevant pair is nearer than another pair (ties count half; 1.0: one radius separates them,
    0.5: codes that ignore the labels). How well codes separate the classes, before any ranking."""
    relevant, other = np.asarray(relevant, np.int64), np.asarray(other, np.int64)
    d = np.arange(len(relevant))
    out: dict[str, Any] = {"relevant": relevant.tolist(), "other": other.tolist()}
    for name, counts in (("relevant", relevant), ("other", other)):
        out[f"mean_{name}"] = float((d * counts).sum() / counts.sum()) if counts.sum() else None
    if relevant.sum() and other.sum():
        p, q = relevant / relevant.sum(), other / other.sum()
        farther = q[::-1].cumsum()[::-1] - q  # share of other pairs beyond each distance
        out["auc"] = float((p * (farther + 0.5 * q)).sum())
    else:
        out["auc"] = None
    return out


def evaluate_arrays(q_codes: np.ndarray, q_labels: np.ndarray, db_codes: np.ndarray,
                    db_labels: np.ndarray, bits: int, *, at: tuple[int, ...] = (1000,),
                    pk_max: int = 1000, radius: int = 2, rerank=None, candidates: int = 1000,
                    tie_cap: int | None = None, chunk: int = 64, progress: bool = False,
                    graded_at: tuple[int, ...] = (100,), own: np.ndarray | None = None,
                    confusion_at: int = 100, per_query: bool = False) -> dict[str, Any]:
    """All metrics in one pass over the queries; labels (N,) or label sets (N, C) (`Relevance`; with label
    sets also NDCG@k and ACG@k for k in ``graded_at``, the gain of an item being the labels it shares).

    ``rerank(query_slice, positions) -> (q, m) float distances`` re-orders each
    query's pool when given: its first ``candidates`` items widened to the whole
    tie group at the last one's distance (at most ``tie_cap`` items, default
    ``candidates``: no widening), as `Index.search` does.
    ``confusion_at``: with class labels (up to `confusion.MOST_CLASSES`), count the classes of each query's top
    ``confusion_at`` results (re-ranked when ``rerank`` is given) by query class (`Confusion`).
    ``own`` (Q,): the database position of each query's own item (-1: none), left out of its ranking
    (leave-one-out: a query drawn from the database would otherwise find itself first).
    ``per_query``: also return each query's AP@all (numpy arrays under "per_query": "hamming", and "reranked"
    with ``rerank``), what a paired comparison of two models on the same queries needs (`significance`).
    """
    from tqdm import tqdm

    nq, ndb = len(q_codes), len(db_codes)
    ndb -= int(own is not None and bool((own >= 0).any()))  # cut-offs within the items a query is ranked against
    pk_max = min(pk_max, ndb)
    candidates = min(candidates, ndb)
    hamming, reranked = _RankingScores(at, pk_max), _RankingScores(at, pk_max)
    ties = _TieCounts(pk_max, len(db_codes))
    pool_sum = 0
    relevant = Relevance(q_labels, db_labels)
    graded_at = tuple(min(k, ndb) for k in graded_at) if relevant.sets else ()
    graded, graded_rr = _GradedScores(graded_at), _GradedScores(graded_at)
    confusion = None if relevant.sets else Confusion(q_labels, db_labels, min(confusion_at, ndb))
    for s in tqdm(range(0, nq, chunk), desc="eval", unit="chunk", disable=not progress):
        sl = slice(s, min(s + chunk, nq))
        d = hamming_distances(q_codes[sl], db_codes)
        gains = relevant.shared(sl) if graded_at else None
        rel = gains > 0 if gains is not None else relevant(sl)
        mine = _own_cells(own, sl)
        rel[mine] = False  # never relevant...
        if gains is not None:
            gains[mine] = 0
        n, r = per_distance_counts(d, rel, bits)
        np.subtract.at(n, (mine[0], d[mine]), 1)  # ...nor counted at its distance...
        d[mine] = bits + 1  # ...and ranked after every other item
        order = np.argsort(d, axis=1, kind="stable")
        hamming.add(np.take_along_axis(rel, order, 1))
        if graded_at:
            ideal = ideal_gains(gains, max(graded_at))
            graded.add(np.take_along_axis(gains, order[:, :max(graded_at)], 1), ideal)
        ties.add(n, r)
        if rerank is not None:
            order, sizes = rerank_order(order, np.take_along_axis(d, order, 1), rerank, sl, candidates,
                                        tie_cap or candidates)
            pool_sum += int(sizes.sum())
            reranked.add(np.take_along_axis(rel, order, 1))
            if graded_at:
                graded_rr.add(np.take_along_axis(gains, order[:, :max(graded_at)], 1), ideal)
        if confusion is not None:
            confusion.add(q_labels[sl], order)
    maps = hamming.maps()
    figures = ties.figures(nq, min(radius, bits), bits)
    out: dict[str, Any] = {
        "queries": nq, "database": len(db_codes), "bits": bits,
        "hamming": {"map": maps.pop("map"), "map_tie_aware": figures.pop("map_tie_aware"), **maps},
        "precision_at_k": (hamming.pk_sum / nq).tolist(), **figures,
    }
    if graded_at:
        out["hamming"].update(graded.means())
    if rerank is not None:
        out["reranked"] = {"candidates": candidates, "mean_pool": pool_sum / max(nq, 1), **reranked.maps(),
                           **(graded_rr.means() if graded_at else {})}
        out["precision_at_k_reranked"] = (reranked.pk_sum / nq).tolist()
    if confusion is not None and confusion.classes:
        out["confusion"] = {"k": confusion.k, "ranking": "reranked" if rerank is not None else "hamming",
                            "counts": confusion.counts.tolist()}
    return _per_query_figures(out, q_labels, hamming, reranked if rerank is not None else None, per_query)


class _TieCounts:
    """Each query's items and relevant items at each Hamming distance, chunk by chunk: the figures that do not
    depend on how ties are ordered (tie-aware AP and precision@k, precision and recall within a radius, the PR
    curve over radii, relevant and other pairs by distance)."""

    def __init__(self, pk_max: int, n_items: int):
        self.pk_max = pk_max
        self.harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_items + 1))])
        self.ap: list[np.ndarray] = []
        self.pk_sum = np.zeros(pk_max)
        self.n_le: list[np.ndarray] = []
        self.r_le: list[np.ndarray] = []
        self.total: list[np.ndarray] = []

    def add(self, n: np.ndarray, r: np.ndarray) -> None:
        """One chunk: (q, bits + 1) counts of items and of relevant items at each distance."""
        self.ap.append(tie_aware_ap(n, r, self.harmonic))
        self.pk_sum += tie_aware_precision_at_k(n, r, self.pk_max).sum(axis=0)
        self.n_le.append(np.cumsum(n, axis=1))
        self.r_le.append(np.cumsum(r, axis=1))
        self.total.append(r.sum(axis=1))

    def figures(self, nq: int, radius: int, bits: int) -> dict[str, Any]:
        """The figures, by their keys in `evaluate_arrays`' result."""
        n_le, r_le, total = np.concatenate(self.n_le), np.concatenate(self.r_le), np.concatenate(self.total)
        within, curve = _radius_figures(n_le, r_le, total, radius, bits)
        pairs_n = np.diff(n_le.sum(axis=0), prepend=0)  # pairs at each distance, from the counts within each
        pairs_r = np.rint(np.diff(r_le.sum(axis=0), prepend=0)).astype(np.int64)
        return {"map_tie_aware": _mean(self.ap), "precision_at_k_tie_aware": (self.pk_sum / nq).tolist(),
                f"radius{radius}": within, "pr_curve": curve,
                "pair_distances": pair_distances(pairs_r, pairs_n - pairs_r),
                # a one-photo class under leave-one-out, a query class the database lacks: AP 0 whatever the ranking
                "queries_without_relevant": int((total == 0).sum())}


def _per_query_figures(out: dict[str, Any], q_labels: np.ndarray, hamming: _RankingScores,
                       reranked: _RankingScores | None, per_query: bool) -> dict[str, Any]:
    """``out`` with what the queries' APs one by one give: mAP per class, the fine stage's gain over Hamming
    query by query (a paired interval), and with ``per_query`` the APs themselves."""
    ap, ap_rr = hamming.per_query(), reranked.per_query() if reranked is not None else None
    out["per_class"] = per_class_map(q_labels, ap, ap_rr)
    if ap_rr is not None and len(ap) > 1:  # what the fine stage adds, query by query (a paired interval)
        gain = paired_difference(ap, ap_rr)
        out["reranked"]["over_hamming"] = {k: gain[k] for k in ("diff", "low", "high", "significant")} | \
            {"queries_better": gain["b_better"], "queries_worse": gain["a_better"]}
    if per_query:
        out["per_query"] = {"hamming": ap, **({"reranked": ap_rr} if ap_rr is not None else {})}
    return out


def default_ranking(per_query: dict[str, np.ndarray]) -> str:
    """Which of `evaluate_arrays`' per-query APs are the ranking a query gets: "reranked" where there is a fine
    stage, else "hamming"."""
    return "reranked" if "reranked" in per_query else "hamming"


def _own_cells(own: np.ndarray | None, sl: slice) -> tuple[np.ndarray, np.ndarray]:
    """(rows, positions) of the queries ``sl`` that have an own item in the database, and of those items."""
    if own is None:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    rows = np.flatnonzero(own[sl] >= 0)
    return rows, own[sl][rows].astype(np.intp)


def pool_sizes(sorted_hamming: np.ndarray, candidates: int, tie_cap: int) -> np.ndarray:
    """Per query, how many of its Hamming-ranked items form the re-ranked pool.

    Every item as close as the ``candidates``-th one (a whole tie group), at most ``tie_cap``.
    """
    bound = sorted_hamming[:, candidates - 1:candidates]
    return np.minimum((sorted_hamming <= bound).sum(axis=1), max(tie_cap, candidates))


def rerank_order(order: np.ndarray, sorted_hamming: np.ndarray, distances, sl, candidates: int,
                 tie_cap: int) -> np.ndarray:
    """A Hamming ranking (positions, ordered) with each query's pool re-ordered by signal distance; and the pool sizes.

    ``distances(sl, positions) -> (q, m)`` gives the signal distance of candidates.
    Within the pool: (distance, Hamming, position); after it, the Hamming order.
    """
    sizes = pool_sizes(sorted_hamming, candidates, tie_cap)
    width = int(sizes.max())
    head = order[:, :width]
    inside = np.arange(width) < sizes[:, None]
    dist = np.where(inside, distances(sl, head), np.inf)
    new = np.lexsort((head, sorted_hamming[:, :width], dist), axis=-1)
    order = order.copy()
    order[:, :width] = np.take_along_axis(head, new, 1)
    return order, sizes


def per_class_map(q_labels: np.ndarray, ap: np.ndarray, ap_reranked: np.ndarray | None = None
                  ) -> list[dict[str, Any]]:
    """mAP@all per query class (which classes the codes serve badly); query-weighted, they average to mAP.
    With label sets a query counts in each class it has (the rows no longer average to mAP)."""
    rows = []
    classes = np.flatnonzero(q_labels.any(axis=0)) if q_labels.ndim == 2 else np.unique(q_labels)
    for label in classes:
        mine = q_labels[:, label].astype(bool) if q_labels.ndim == 2 else q_labels == label
        row = {"label": int(label), "queries": int(mine.sum()), "map": float(ap[mine].mean())}
        if ap_reranked is not None:
            row["map_reranked"] = float(ap_reranked[mine].mean())
        rows.append(row)
    return rows


def _mean(parts: list[np.ndarray]) -> float:
    return float(np.concatenate(parts).mean()) if parts else 0.0
