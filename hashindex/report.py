"""Pictures of an evaluation: PR curve, precision@k, pair distances, confusions, mAP per class, a results grid
(drawn by `grids`).

Everything is written with matplotlib's Agg backend to PNG files, with the
run's settings in the title, for people who would rather look than read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import HashindexError
from .grids import pyplot, results_grid, write_png
from .confusion import confusion_shares
from .metrics import default_ranking
from .significance import aligned


def _title(metrics: dict[str, Any]) -> str:
    return (f"{metrics['bits']}-bit codes, {metrics['queries']} queries vs {metrics['database']} items, "
            f"model {metrics.get('model_id', '')}")


def _save(fig, ax, title: str, path: Path) -> Path:
    """Title, grid, tight layout, write the PNG and free the figure."""
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    write_png(fig, path, dpi=120)
    return path


def write_plots(metrics: dict[str, Any], plot_dir: str | Path, index=None, examples: dict[str, Any] | None = None,
                warn=None) -> dict[str, str]:
    """PR curve, precision@k, Hamming distances of pairs, the classes of the results by query class, mAP per
    class and (given example results) a results grid in plot_dir.

    ``examples`` is `hashindex.query.example_results`' output for ``index``; this
    module draws results, it does not search. If the source images are no
    longer reachable the grid is skipped with ``warn(message)`` when given,
    else the HashindexError propagates.
    """
    out = Path(plot_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"pr_curve": str(plot_pr_curve(metrics, out / "pr_curve.png")),
             "precision_at_k": str(plot_precision_at_k(metrics, out / "precision_at_k.png"))}
    if metrics.get("pair_distances", {}).get("auc") is not None:
        plots["hamming_distances"] = str(plot_pair_distances(metrics, out / "hamming_distances.png"))
    if len(metrics.get("confusion", {}).get("counts", [])) >= 2:
        plots["confusion"] = str(plot_confusion(metrics, out / "confusion.png"))
    if metrics.get("per_class"):
        plots["per_class_map"] = str(plot_per_class(metrics, out / "per_class_map.png"))
    if examples is not None:
        try:
            plots["results_grid"] = str(results_grid(index, examples, out / "results_grid.png"))
        except HashindexError as e:
            if warn is None:
                raise
            warn(str(e))
    return plots


def plot_pr_curve(metrics: dict[str, Any], path: Path) -> Path:
    """Precision-recall over Hamming radii 0..K."""
    plt = pyplot()
    pr = metrics["pr_curve"]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(pr["recall"], pr["precision"], marker="o", markersize=3)
    for r in (0, 2, 4):
        if r < len(pr["radius"]):
            ax.annotate(f"r={r}", (pr["recall"][r], pr["precision"][r]), fontsize=8)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (0 for queries with no item in radius)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    return _save(fig, ax, f"Precision-recall over Hamming radius\n{_title(metrics)}", path)


def plot_precision_at_k(metrics: dict[str, Any], path: Path) -> Path:
    """Precision@k for k = 1..1000, Hamming ranking and re-ranked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    pk = metrics["precision_at_k"]
    ax.plot(np.arange(1, len(pk) + 1), pk, label=f"Hamming ranking (mAP {metrics['hamming']['map']:.4f})")
    if "precision_at_k_tie_aware" in metrics:
        pt = metrics["precision_at_k_tie_aware"]
        ax.plot(np.arange(1, len(pt) + 1), pt, linestyle="--",
                label=f"Hamming, tie-aware expectation (mAP {metrics['hamming']['map_tie_aware']:.4f})")
    if "precision_at_k_reranked" in metrics:
        rr = metrics["precision_at_k_reranked"]
        ax.plot(np.arange(1, len(rr) + 1), rr,
                label=f"re-ranked top {metrics['reranked']['candidates']} (mAP {metrics['reranked']['map']:.4f})")
    ax.set_xlabel("k (number of retrieved items)")
    ax.set_ylabel("precision@k")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, ax, f"Precision@k\n{_title(metrics)}", path)


def plot_pair_distances(metrics: dict[str, Any], path: Path) -> Path:
    """How far apart relevant and other query-item pairs are: the share of each kind at each Hamming distance
    (each kind sums to 1), the classic picture of whether one radius separates the classes."""
    plt = pyplot()
    pairs = metrics["pair_distances"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    same = "a shared label" if "relevance" in metrics else "same label"
    for name, label in (("relevant", f"relevant pairs ({same})"), ("other", "other pairs")):
        counts = np.asarray(pairs[name], np.float64)
        ax.step(np.arange(len(counts)), counts / max(counts.sum(), 1), where="mid",
                label=f"{label}: {int(counts.sum()):,}, mean distance {pairs[f'mean_{name}']:.2f}")
    ax.set_xlabel("Hamming distance between a query's code and an item's")
    ax.set_ylabel("share of the pairs of its kind")
    ax.set_xlim(-0.5, len(pairs["relevant"]) - 0.5)
    ax.legend(fontsize=8)
    return _save(fig, ax, f"Hamming distances of query-item pairs (a relevant pair nearer: {pairs['auc']:.4f})\n"
                 f"{_title(metrics)}", path)


def plot_confusion(metrics: dict[str, Any], path: Path) -> Path:
    """Which classes each query class's top-k results come from, as shares of its results (a heat map; class
    names on the axes up to 40 classes, the shares written in the cells up to 12)."""
    plt = pyplot()
    conf = metrics["confusion"]
    shares = confusion_shares(conf)
    c = len(shares)
    names = conf.get("classes") or [str(i) for i in range(c)]
    side = min(12.0, 3.0 + 0.35 * c)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(shares, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the query class's results")
    if c <= 40:
        ax.set_xticks(range(c), names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
    if c <= 12:
        for (i, j), v in np.ndenumerate(shares):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
    ranking = "re-ranked" if conf["ranking"] == "reranked" else "Hamming"
    ax.set_xlabel(f"class of a result (top {conf['k']}, {ranking})")
    ax.set_ylabel("query class")
    ax.set_title(f"Classes of the results by query class\n{_title(metrics)}", fontsize=9)
    fig.tight_layout()
    write_png(fig, path, dpi=120)
    return path


def plot_per_class(metrics: dict[str, Any], path: Path, most: int = 60) -> Path:
    """mAP per query class as horizontal bars, worst at the top (the worst and best most/2 if many)."""
    plt = pyplot()
    rows = sorted(metrics["per_class"], key=lambda r: r["map"])
    what = "mAP per query class"
    if len(rows) > most:
        what = f"mAP per query class: the {most // 2} worst and {most // 2} best of {len(rows)}"
        rows = rows[:most // 2] + rows[-(most // 2):]
    y = np.arange(len(rows))[::-1]
    names = [str(r.get("name", r["label"])) for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 1.8 + 0.28 * len(rows)))
    rr = "map_reranked" in rows[0]
    h = 0.4 if rr else 0.8
    ax.barh(y + (h / 2 if rr else 0), [r["map"] for r in rows], height=h, label="Hamming ranking")
    if rr:
        ax.barh(y - h / 2, [r["map_reranked"] for r in rows], height=h, label="re-ranked")
    ax.axvline(metrics["hamming"]["map"], color="black", linewidth=1, linestyle=":",
               label=f"mAP over all queries {metrics['hamming']['map']:.4f}")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("mAP@all of the class's queries")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / (1 + 0.25 * len(rows))), ncol=3)
    return _save(fig, ax, f"{what}\n{_title(metrics)}", path)


def plot_comparison(runs: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """PR curves and precision@k of several evaluations side by side (e.g. one per code length)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, m in runs.items():
        pr, pk = m["pr_curve"], m["precision_at_k"]
        left.plot(pr["recall"], pr["precision"], marker="o", markersize=2, label=f"{name} (mAP {m['hamming']['map']:.4f})")
        line, = right.plot(np.arange(1, len(pk) + 1), pk, label=name)
        if "precision_at_k_tie_aware" in m:
            pt = m["precision_at_k_tie_aware"]
            right.plot(np.arange(1, len(pt) + 1), pt, linestyle="--", color=line.get_color(), linewidth=1)
    left.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
             title="Precision-recall over Hamming radius")
    right.set(xlabel="k (number of retrieved items)", ylabel="precision@k", ylim=(0, 1.02),
              title="Precision@k, Hamming ranking: ties in index order (solid), tie-aware (dashed)")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.title.set_fontsize(9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, left, left.get_title(), path)


def plot_comparisons(a: dict[str, Any], b: dict[str, Any], plot_dir: str | Path) -> dict[str, str]:
    """Two evaluations of the same queries (``per_query``) drawn in plot_dir: both PR curves and precision@k
    (comparison.png), and the per-query differences (paired_differences.png)."""
    out = Path(plot_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"A: {a.get('index', '')}, B: {b.get('index', '')}"
    return {"comparison": str(plot_comparison({"A": a, "B": b}, out / "comparison.png", title)),
            "paired_differences": str(plot_paired(a, b, out / "paired_differences.png"))}


def plot_paired(a: dict[str, Any], b: dict[str, Any], path: Path) -> Path:
    """Per-query AP differences B - A (two evaluations with ``per_query``, paired by query id) as histograms,
    Hamming and each side's default ranking, their means marked: is a gain spread over the queries or a few?"""
    ia, ib = aligned(a["per_query"]["ids"], b["per_query"]["ids"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key, label in (("hamming", "Hamming"), ("ranking", "default ranking")):
        side = [m["per_query"][default_ranking(m["per_query"]) if key == "ranking" else "hamming"] for m in (a, b)]
        diff = side[1][ib] - side[0][ia]
        line = ax.hist(diff, bins=np.linspace(-1, 1, 81), histtype="step", linewidth=1.4,
                       label=f"{label}: mean {diff.mean():+.4f}")[2][0]
        ax.axvline(diff.mean(), color=line.get_edgecolor(), linestyle=":", linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("AP of B - AP of A, per query (right: B better)")
    ax.set_ylabel("queries (log scale)")
    ax.legend(fontsize=8)
    models = f"A: model {a.get('model_id', '')}, B: model {b.get('model_id', '')}"
    return _save(fig, ax, f"{len(ia):,} queries, {models}", path)


def plot_training(histories: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """Learning curves of training runs (checkpoints' per-epoch histories, by run name): accuracy by epoch
    (validation solid, training dashed; the best validation epoch marked) beside the training loss and the
    learning rate, to see where a schedule stops paying and to set recipes side by side."""
    empty = [name for name, rows in histories.items() if not rows]
    if not histories or empty:
        raise HashindexError(f"training curves: no epochs recorded in {', '.join(empty) or 'any run'}")
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    rate = right.twinx()
    for name, rows in histories.items():
        epoch = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
        val = [(e, r["val_acc"]) for e, r in zip(epoch, rows) if r.get("val_acc") is not None]
        if val:
            best = max(val, key=lambda p: p[1])
            line, = left.plot(*zip(*val), label=f"{name} (best val {best[1]:.4f} at epoch {best[0]})")
            left.plot(*best, marker="o", color=line.get_color())
            left.plot(epoch, [r["train_acc"] for r in rows], linestyle="--", linewidth=1, color=line.get_color())
        else:
            line, = left.plot(epoch, [r["train_acc"] for r in rows], linestyle="--",
                              label=f"{name} (no validation set)")
        right.plot(epoch, [r["loss"] for r in rows], color=line.get_color(), label=name)
        if all("lr" in r for r in rows):
            rate.plot(epoch, [r["lr"] for r in rows], color=line.get_color(), linestyle=":", linewidth=1)
    left.set(xlabel="epoch", ylabel="accuracy", title="Accuracy: validation (solid), training (dashed)")
    right.set(xlabel="epoch", ylabel="training loss", title="Training loss (solid), learning rate (dotted, right)")
    rate.set_ylabel("learning rate")
    rate.set_ylim(bottom=0)
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.title.set_fontsize(9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, left, left.get_title(), Path(path))


def training_curves(checkpoints: list[str | Path], path: str | Path) -> Path:
    """`plot_training` of checkpoints (files or shipped model names), each run named by its file's stem."""
    from .checkpoint import read_checkpoint

    runs = {}
    for c in checkpoints:
        ckpt = read_checkpoint(c, arg="checkpoint")
        name = Path(ckpt["path"]).stem
        runs[name if name not in runs else f"{name} ({len(runs) + 1})"] = ckpt.get("history") or []
    title = "learning curves of " + ", ".join(runs) if len(runs) > 1 else f"learning curves of {next(iter(runs))}"
    return plot_training(runs, path, title)
