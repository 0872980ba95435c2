"""Fine-stage signals: what the re-rank stage orders a candidate pool by (numpy only).

Every signal is something the net already computes for an image from its
192-d pooled feature ``f``, through the two small layers on top of it (the
*head*: latent ``h = sigmoid(W f + b)``, logits ``V h + c``):

  * ``l2``        squared L2 between pooled features (DLBHC's fine stage);
  * ``cosine``    1 - cosine of the pooled features (their scale carries little);
  * ``latent``    the query's sigmoid activations against the database's *bits*
                  (an asymmetric distance: a soft Hamming distance, exact on
                  the database side where only the code is kept);
  * ``posterior`` the inner product of the class posteriors softmax(V h + c) (for a net trained on label
                  sets, the per-class sigmoid(V h + c) / sqrt(C): independent labels, scaled so |p| <= 1);
  * ``mid``       1 - cosine of the *mid features* (block 2's output averaged over the image, the shard
                  field "mid_features"): the one signal that reads another stored feature (`feature_field`).

Each is turned into plain vectors whose squared L2 distance orders the pool
as the signal does, so one Faiss float store (flat, fp16, sq8 or pq) serves
every signal. ``posterior`` is an inner product; a database vector gets one
more coordinate sqrt(1 - |p|^2) (|p| <= 1 for a probability vector) and the
query a 0 there, so |q - x|^2 = |p_q|^2 + 1 - 2 p_q.p_x: the usual reduction
of maximum inner product to nearest neighbour search.

Measured (docs/RESULTS.md, "Re-ranking signals"): in the net's own classes the
posterior adds most; on classes the net was not trained on it ranks worse than
Hamming alone, and the middle of the trunk carries best (``mid``; cosine on the
last layer adds less). ``auto`` (the default of `build`) therefore chooses per
collection: see `choose`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import NPZ_ERRORS, HashindexError

SIGNALS = ("l2", "cosine", "latent", "posterior", "mid")
HEAD_SIGNALS = ("latent", "posterior")  # need the head's weights
MID_FIELD = "mid_features"  # the shard field the mid signal reads


def feature_field(signal: str) -> str:
    """The stored field whose rows a signal's vectors are made from: "mid_features" for ``mid``, else
    "features" (the 192-d pooled feature, which the head's signals read too)."""
    return MID_FIELD if signal == "mid" else "features"


# Without labels the signals cannot be scored. The label-free test (`unlabelled_choice`) tells the net's own
# classes from others where it can; where it cannot: no signal beat Hamming alone on every set (RESULTS.md, "The
# mid feature"): with the default model cosine's mAP@all was under it by 0.0005 on CIFAR-10 and by 0.019 on flowers
# fine-tuned, mid's by 0.129 there (the last layer is what fine-tuning taught), while cosine's P@10 was above it
# on all four sets. So cosine: the smallest loss where it loses, a gain at the top of every ranking.
UNLABELLED_DEFAULT = "cosine"


@dataclass
class Head:
    """The layers above the pooled feature: latent (K x D, K) and classifier (C x K, C), float32."""

    latent_w: np.ndarray
    latent_b: np.ndarray
    classifier_w: np.ndarray
    classifier_b: np.ndarray
    multi_label: bool = False  # trained on label sets: the classifier's outputs are independent sigmoids
    accuracy: float | None = None  # the model's validation accuracy (with its test views), if measured: the
    #                                reference of the label-free in-domain test (`unlabelled_choice`)
    adapted_codes: bool = False  # the codes come from a code head fitted to a collection, not from `latent`

    @property
    def bits(self) -> int:
        return self.latent_w.shape[0]

    @property
    def classes(self) -> int:
        return self.classifier_w.shape[0]

    def latent(self, features: np.ndarray) -> np.ndarray:
        """Sigmoid activations (N, K) in float32, as the net computes them."""
        z = np.asarray(features, np.float32) @ self.latent_w.T + self.latent_b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def posterior(self, features: np.ndarray) -> np.ndarray:
        """Class posteriors (N, C), softmax of the classifier's logits; a multi-label net's per-class sigmoids
        over sqrt(C) (a uniform scale: the inner products order alike and |p| <= 1, as the signal needs)."""
        logits = self.latent(features) @ self.classifier_w.T + self.classifier_b
        if self.multi_label:
            return (1.0 / (1.0 + np.exp(-logits)) / np.sqrt(self.classes)).astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Write as a plain .npz (no pickle: numpy arrays only)."""
        with open(path, "wb") as f:
            np.savez(f, latent_w=self.latent_w, latent_b=self.latent_b,
                     classifier_w=self.classifier_w, classifier_b=self.classifier_b,
                     multi_label=np.array(self.multi_label),
                     accuracy=np.array(np.nan if self.accuracy is None else self.accuracy, np.float64),
                     adapted_codes=np.array(self.adapted_codes))

    @classmethod
    def load(cls, path: str | Path) -> "Head":
        """Read a head file; arrays only (allow_pickle=False), shapes checked."""
        try:
            with np.load(path, allow_pickle=False) as z:
                head = cls(*(np.asarray(z[k], np.float32) for k in
                             ("latent_w", "latent_b", "classifier_w", "classifier_b")),
                           multi_label=bool(z["multi_label"]) if "multi_label" in z.files else False,
                           accuracy=_accuracy(z["accuracy"]) if "accuracy" in z.files else None,
                           adapted_codes=bool(z["adapted_codes"]) if "adapted_codes" in z.files else False)
        except NPZ_ERRORS as e:
            raise HashindexError(f"{path}: not a readable head file ({e})") from None
        k, c = head.latent_w.shape[0], head.classifier_w.shape[0]
        if head.latent_b.shape != (k,) or head.classifier_w.shape[1:] != (k,) or head.classifier_b.shape != (c,):
            raise HashindexError(f"{path}: head arrays of inconsistent shapes")
        return head


def _accuracy(value: np.ndarray) -> float | None:
    """A head file's accuracy scalar: None for nan (not measured) or anything outside (0, 1]."""
    a = float(value)
    return a if 0 < a <= 1 else None


def head_signals(head: Head | None) -> list[str]:
    """The head's signals this model can serve: none without a head; not ``latent`` where the codes come from a
    code head adapted to a collection (the latent activations are then not what the codes were cut from)."""
    return [] if head is None else [s for s in HEAD_SIGNALS if not (s == "latent" and head.adapted_codes)]


def check_signal(signal: str, head: Head | None, has_mid: bool = True) -> None:
    """A clear error for an unknown signal, one that needs the head where there is none, or ``mid`` where
    the shards hold no mid features (``has_mid`` False)."""
    if signal not in SIGNALS:
        raise HashindexError(f"signal {signal!r}: expected one of {', '.join(SIGNALS)} (or 'auto')")
    if signal in HEAD_SIGNALS and head is None:
        raise HashindexError(f"signal {signal!r}: needs the model's head weights, which these shards lack "
                             "(extract them again, or give the model)")
    if signal in HEAD_SIGNALS and signal not in head_signals(head):  # latent, where the codes are adapted
        raise HashindexError("signal 'latent': this model's codes come from a code head adapted to a collection "
                             "(derive --adapt-codes), not from its latent layer; choose another signal")
    if signal == "mid" and not has_mid:
        raise HashindexError("signal 'mid': needs mid features, which these shards lack (extracted before "
                             "hashindex stored them, or with features none: extract them again)")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def database_vectors(signal: str, features: np.ndarray, codes: np.ndarray, head: Head | None) -> np.ndarray:
    """Vectors stored in the float store for database items (squared L2 between them orders the pool).

    ``features``: the items' rows of the signal's `feature_field`.
    """
    if signal == "l2":
        return np.ascontiguousarray(features, np.float32)
    if signal in ("cosine", "mid"):
        return _unit(features)
    if signal == "latent":
        return np.unpackbits(codes, axis=1, count=head.bits, bitorder="little").astype(np.float32)
    if signal == "posterior":
        p = head.posterior(features)
        return np.hstack([p, np.sqrt(np.maximum(1.0 - (p * p).sum(axis=1, keepdims=True), 0.0))])
    raise HashindexError(f"signal {signal!r}: expected one of {', '.join(SIGNALS)}")


def query_vectors(signal: str, features: np.ndarray, head: Head | None) -> np.ndarray:
    """Vectors for queries given their features of the signal's `feature_field` (the counterpart of
    `database_vectors`)."""
    if signal in ("l2", "cosine", "mid"):
        return database_vectors(signal, features, None, head)
    if signal == "latent":
        return head.latent(features)
    if signal == "posterior":
        p = head.posterior(features)
        return np.hstack([p, np.zeros((len(p), 1), np.float32)])
    raise HashindexError(f"signal {signal!r}: expected one of {', '.join(SIGNALS)}")


def query_from_database(signal: str, vectors: np.ndarray) -> np.ndarray:
    """Query vectors for items already in the index (queries by id), from their stored vectors.

    For ``latent`` the stored bits stand in for the activations (the fine stage
    then agrees with Hamming); for ``posterior`` the extra coordinate is zeroed.
    """
    q = np.array(vectors, np.float32, copy=True)
    if signal == "posterior":
        q[:, -1] = 0.0
    return q


def choose(candidates: dict[str, Callable[[], float]]) -> tuple[str, dict[str, float]]:
    """The signal for ``auto`` on a labelled collection: the best score among the candidates.

    ``candidates`` maps each signal (and "hamming", no fine stage) to a function
    scoring it on the collection itself. Ties go to the earlier entry.
    """
    scores = {name: float(fn()) for name, fn in candidates.items()}
    best = max(scores, key=lambda s: scores[s])
    return best, scores


# The label-free test: the mean top posterior of a collection's items over the model's validation accuracy (the
# maximum-softmax-probability baseline of Hendrycks & Gimpel 2017, scaled by what the model scores on its own
# classes). Measured (RESULTS.md, "Collections without labels": 14 pairs of 4 models and 4 collections): 1.01-1.09
# on the net's own classes (1.04 in grey or at JPEG quality 50), 0.63-0.87 on classes it was not trained on (0.88
# for its own classes blurred to 12 px, where every signal but the posterior ranks within 0.006 of Hamming, and
# turned a quarter, where mid ranks best); between the bounds the test abstains.
OWN_CLASSES_RATIO = 0.97  # at or above: the net's own classes -> posterior (+0.012 to +0.070 mAP@all over Hamming)
FOREIGN_RATIO = 0.92  # at or below: others -> mid (+0.012 to +0.072). Between the bounds it abstains rather than
#                        guess: mid on own classes cost up to 0.129 mAP@all, the posterior on others up to 0.040


def _informative(head: Head) -> float:
    """The least validation accuracy the test trusts: twice chance, or halfway from chance to 1 for a net of
    two or three classes (where twice chance is out of reach)."""
    return min(2 / head.classes, (1 + 1 / head.classes) / 2)


def unlabelled_choice(head: Head | None, features: np.ndarray, has_mid: bool) -> tuple[str, dict]:
    """The signal for a collection whose labels cannot score the signals, from its items' pooled ``features``
    (a sample will do) and the model's head: ``posterior`` where they look like the net's own classes, ``mid``
    (where the shards hold it) where they look foreign, `UNLABELLED_DEFAULT` where the test cannot tell or
    cannot run (no head, a multi-label net, a model whose validation accuracy was never measured or is near
    chance, `_informative`: a posterior that tells nothing)."""
    why = ("no head" if head is None else "a multi-label net" if head.multi_label else
           "the model's validation accuracy is not recorded" if head.accuracy is None else
           f"the model's validation accuracy {head.accuracy:.3f} is near chance" if head.accuracy < _informative(head)
           else "no items" if not len(features) else None)
    if why:
        return UNLABELLED_DEFAULT, {"by": f"default ({why})"}
    confidence = float(head.posterior(features).max(axis=1).mean())
    ratio = confidence / head.accuracy
    facts = {"confidence": round(confidence, 4), "accuracy": round(head.accuracy, 4), "ratio": round(ratio, 4)}
    said = (f"mean top posterior {confidence:.3f} = {ratio:.2f} x the model's validation accuracy "
            f"{head.accuracy:.3f}")
    if ratio >= OWN_CLASSES_RATIO:
        return "posterior", {"by": f"{said}: the net's own classes", "classes": "own", **facts}
    if ratio > FOREIGN_RATIO:
        return UNLABELLED_DEFAULT, {"by": f"default ({said}: cannot tell)", "classes": "unclear", **facts}
    if has_mid:
        return "mid", {"by": f"{said}: classes the net was not trained on", "classes": "other", **facts}
    return UNLABELLED_DEFAULT, {"by": f"default ({said}: foreign classes, but the shards hold no mid features)",
                                "classes": "other", **facts}
