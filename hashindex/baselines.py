"""Unsupervised hashing baselines: LSH, PCAH and ITQ (numpy in, packed codes out).

What a learned code is compared against in the deep-hashing literature. Each
method is a linear projection of centred vectors followed by sign:

- ``lsh``: Gaussian random projections (SimHash, Charikar 2002);
- ``pcah``: the top principal directions;
- ``itq``: the top principal directions rotated to minimise quantisation error
  (Gong & Lazebnik, CVPR 2011: iterative quantisation, 50 iterations).

Fitted on training vectors (the database, in the standard protocol) and applied
to queries and database alike; codes are packed in Faiss bit order like the
net's, so `hashindex.metrics.evaluate_arrays` scores them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("lsh", "pcah", "itq")


@dataclass
class LinearHash:
    """Codes = sign((x - mean) @ projection), packed; projection is (d, bits)."""

    method: str
    mean: np.ndarray
    projection: np.ndarray

    @property
    def bits(self) -> int:
        return self.projection.shape[1]

    def encode(self, x: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """(N, d) vectors -> (N, ceil(bits/8)) uint8 codes."""
        out = [np.packbits((x[s:s + chunk].astype(np.float32) - self.mean) @ self.projection > 0,
                           axis=1, bitorder="little") for s in range(0, len(x), chunk)]
        return np.concatenate(out) if out else np.zeros((0, (self.bits + 7) // 8), np.uint8)


def principal_directions(xc: np.ndarray, bits: int) -> np.ndarray:
    """The `bits` leading eigenvectors of the covariance of centred vectors, (d, bits)."""
    if bits > xc.shape[1]:
        raise ValueError(f"{bits} bits from {xc.shape[1]}-d vectors: PCA gives at most {xc.shape[1]}")
    cov = xc.T.astype(np.float64) @ xc.astype(np.float64)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, ::-1][:, :bits].astype(np.float32)


def itq_rotation(v: np.ndarray, iters: int = 50, seed: int = 0) -> np.ndarray:
    """Orthogonal R minimising ||B - vR||_F with B = sign(vR) (Gong & Lazebnik's alternation)."""
    bits = v.shape[1]
    r, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((bits, bits)))
    v64 = v.astype(np.float64)
    for _ in range(iters):
        b = np.where(v64 @ r >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v64)  # Procrustes: R = W U^T for B^T V = U S W^T
        r = wt.T @ u.T
    return r.astype(np.float32)


def fit(method: str, train: np.ndarray, bits: int, seed: int = 0, iters: int = 50,
        directions: np.ndarray | None = None) -> LinearHash:
    """Fit one baseline on training vectors (N, d).

    ``directions``: `principal_directions` of the same centred vectors for at least
    ``bits`` components, computed once for several code lengths (PCA of 3,072-d
    pixels takes a minute).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    x = train.astype(np.float32)
    mean = x.mean(axis=0)
    xc = x - mean
    if method == "lsh":
        proj = np.random.default_rng(seed).standard_normal((x.shape[1], bits)).astype(np.float32)
    else:
        proj = (directions[:, :bits] if directions is not None and directions.shape[1] >= bits
                else principal_directions(xc, bits))
        if method == "itq":
            proj = proj @ itq_rotation(xc @ proj, iters, seed)
    return LinearHash(method, mean, proj)
