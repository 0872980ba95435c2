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

from .errors import HashindexError

SIGNALS = ("l2", "cosine", "latent", "posterior", "mid")
HEAD_SIGNALS = ("latent", "posterior")  # need the head's weights
MID_FIELD = "mid_features"  # the shard field the mid signal reads


def feature_field(signal: str) -> str:
    """The stored field whose rows a signal's vectors are made from: "mid_features" for ``mid``, else
    "features" (the 192-d pooled feature, which the head's signals read too)."""
    return MID_FIELD if signal == "mid" else "features"


# Without labels nothing can be measured, and no signal beat Hamming alone on every set (RESULTS.md, "The mid
# feature"): with the default model cosine's mAP@all was under it by 0.0005 on CIFAR-10 and by 0.019 on flowers
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
                     multi_label=np.array(self.multi_label))

    @classmethod
    def load(cls, path: str | Path) -> "Head":
        """Read a head file; arrays only (allow_pickle=False), shapes checked."""
        try:
            with np.load(path, allow_pickle=False) as z:
                head = cls(*(np.asarray(z[k], np.float32) for k in
                             ("latent_w", "latent_b", "classifier_w", "classifier_b")),
                           multi_label=bool(z["multi_label"]) if "multi_label" in z.files else False)
        except (OSError, ValueError, KeyError) as e:
            raise HashindexError(f"{path}: not a readable head file ({e})") from None
        k, c = head.latent_w.shape[0], head.classifier_w.shape[0]
        if head.latent_b.shape != (k,) or head.classifier_w.shape[1:] != (k,) or head.classifier_b.shape != (c,):
            raise HashindexError(f"{path}: head arrays of inconsistent shapes")
        return head


def check_signal(signal: str, head: Head | None, has_mid: bool = True) -> None:
    """A clear error for an unknown signal, one that needs the head where there is none, or ``mid`` where
    the shards hold no mid features (``has_mid`` False)."""
    if signal not in SIGNALS:
        raise HashindexError(f"signal {signal!r}: expected one of {', '.join(SIGNALS)} (or 'auto')")
    if signal in HEAD_SIGNALS and head is None:
        raise HashindexError(f"signal {signal!r}: needs the model's head weights, which these shards lack "
                             "(extract them again, or give the model)")
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


def choose(candidates: dict[str, Callable[[], float]], labelled: bool) -> tuple[str, dict[str, float]]:
    """The signal for ``auto``: the best score among the candidates when the collection is labelled.

    ``candidates`` maps each signal (and "hamming", no fine stage) to a function
    scoring it on the collection itself; without labels nothing can be scored and
    `UNLABELLED_DEFAULT` is used. Ties go to the earlier entry.
    """
    if not labelled:
        return UNLABELLED_DEFAULT, {}
    scores = {name: float(fn()) for name, fn in candidates.items()}
    best = max(scores, key=lambda s: scores[s])
    return best, scores
