"""Packed binary codes: padding, 64-bit words, Hamming distances between sets, and how a set of codes uses
the code space (numpy in, numpy or numbers out; a leaf any stage may use).

Codes are packed uint8 rows (N, ceil(K / 8)), bit i of a code in byte i // 8, least significant bit first, as
the shards and Faiss's binary indexes hold them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def input_digests(images: np.ndarray) -> np.ndarray:
    """(N,) uint64: a 64-bit BLAKE2b digest of each image's net input (its uint8 pixels as the net reads them),
    never 0 (0 is "not known" in a table). Two items with one digest are the same pixels to the net: a copy of
    a file under another name, or saved again without a pixel changing at the net's size. Measured here
    (2026-12-04, 2 cores beside a training run): 6 us an image at 32 px, 0.11 ms at 224 px, against the net's
    ~2.5 ms an image at 32 px."""
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    out = np.frombuffer(b"".join(hashlib.blake2b(r.tobytes(), digest_size=8).digest() for r in rows),
                        dtype="<u8").astype(np.uint64)
    out[out == 0] = 1
    return out


def pad_codes(codes: np.ndarray, nbytes: int) -> np.ndarray:
    """Append zero bytes to each code (no Hamming distance changes)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.shape[1] == nbytes:
        return codes
    out = np.zeros((len(codes), nbytes), np.uint8)
    out[:, : codes.shape[1]] = codes
    return out


def code_words(codes: np.ndarray) -> np.ndarray:
    """Packed uint8 codes (N, B) as (N, ceil(B / 8)) uint64 words, zero-padded: what the distances here XOR
    and popcount a word at a time."""
    return pad_codes(codes, 8 * max(1, -(-codes.shape[1] // 8))).view(np.uint64)


def row_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes a[k] and b[k], row by row (equal shapes): (N,) int32."""
    return np.bitwise_count(code_words(a) ^ code_words(b)).sum(axis=1, dtype=np.int32)


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, B) and (N, B) packed uint8 codes -> (Q, N) uint16 Hamming distances.

    XOR and popcount a 64-bit word at a time, added word by word: 12-22x faster than byte by byte with a
    sum over the bytes (16 to 128 bits, 64 queries x 50,000 codes; a whole `eval` 1.8x; tools/bench_hamming.py,
    docs/RESULTS.md "Evaluation")."""
    q = code_words(query_codes)
    db = pad_codes(db_codes, 8 * q.shape[1]).view(np.uint64)  # the queries' width
    d = np.bitwise_count(q[:, None, 0] ^ db[None, :, 0]).astype(np.uint16)
    for w in range(1, q.shape[1]):
        d += np.bitwise_count(q[:, None, w] ^ db[None, :, w])
    return d


def code_statistics(codes: np.ndarray, bits: int) -> dict[str, Any]:
    """How a set of packed codes uses the code space.

    Supervised codes collapse each class onto a few codes: big buckets (items
    sharing one code) mean long Hamming ties and few distinct IVF / multi-hash
    lists, and the code entropy says how many of the K bits carry information.
    """
    n = len(codes)
    if n == 0:
        return {"items": 0}
    rows = np.ascontiguousarray(codes).view(np.dtype((np.void, codes.shape[1]))).ravel()
    counts = np.unique(rows, return_counts=True)[1]
    p = counts / n
    on = np.unpackbits(codes, axis=1, count=bits, bitorder="little").mean(axis=0, dtype=np.float64)
    q = np.clip(on, 1e-12, 1 - 1e-12)
    bit_entropy = np.where((on > 0) & (on < 1), -(q * np.log2(q) + (1 - q) * np.log2(1 - q)), 0.0)
    return {"items": n, "distinct_codes": int(len(counts)), "largest_bucket": int(counts.max()),
            "mean_bucket_of_an_item": float((counts.astype(np.float64) ** 2).sum() / n),
            "code_entropy_bits": float(-(p * np.log2(p)).sum()),
            "bit_on_fraction_min": float(on.min()), "bit_on_fraction_max": float(on.max()),
            "constant_bits": int(((on == 0) | (on == 1)).sum()),
            "bit_entropy_sum": float(bit_entropy.sum())}


def format_code_statistics(c: dict[str, Any], bits: int) -> str:
    """One line for people: buckets, entropy, bit balance."""
    if not c.get("items"):
        return "codes: none"
    return (f"codes: {c['distinct_codes']:,} distinct for {c['items']:,} items (largest bucket "
            f"{c['largest_bucket']:,}; an item shares its code with {c['mean_bucket_of_an_item']:,.0f} on average); "
            f"entropy {c['code_entropy_bits']:.2f} of {bits} bits; bits on in "
            f"{c['bit_on_fraction_min']:.2f}-{c['bit_on_fraction_max']:.2f} of items, {c['constant_bits']} constant")


def majority(codes: np.ndarray) -> np.ndarray:
    """(1, B) packed: each bit on where at least half of ``codes`` (N, B, packed as `np.packbits` little) have it
    on: the code nearest all of them in summed Hamming distance (each bit chosen alone), the coarse query of
    several images searched together."""
    bits = np.unpackbits(np.asarray(codes, np.uint8), axis=1, bitorder="little").mean(axis=0) >= 0.5
    return np.packbits(bits[None], axis=1, bitorder="little")

