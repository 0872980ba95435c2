"""Numeric arrays from MATLAB ``.mat`` files (SVHN's ``train_32x32.mat``), without SciPy.

Level 5 files (MATLAB 5 to 7, compressed or not: what ``save`` and ``scipy.io.savemat`` write) are parsed
here: a 128-byte header, then one tagged element per variable. Only numeric, real matrices are read;
anything else (cells, structs, strings, sparse, complex) is skipped, never interpreted, so a crafted file
cannot make this run code. An uncompressed variable is memory-mapped (a view into the file); a compressed
one is inflated once. ``-v7.3`` files are HDF5 and are read with h5py (MATLAB stores them transposed).
"""

from __future__ import annotations

import mmap
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import HashindexError

_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_NUMERIC_CLASSES = set(range(6, 16))  # mxDOUBLE_CLASS .. mxUINT64_CLASS
_COMPLEX_FLAG = 0x0800
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_mat(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named numeric variables of a ``.mat`` file, shaped as MATLAB shows them (column-major views).

    Raises HashindexError naming the file when it is not a MAT file or lacks a variable."""
    try:
        with open(path, "rb") as f:
            head = f.read(520)
            if head[512:520] == _HDF5_SIGNATURE or head[:8] == _HDF5_SIGNATURE:
                found = _read_hdf5(path, names)
            else:
                if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
                    raise HashindexError(f"{path}: not a MATLAB 5+ .mat file")
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                found = _elements(memoryview(buf)[128:], "<" if head[126:128] == b"IM" else ">", set(names))
    except OSError as e:
        raise HashindexError(f"{path}: cannot read ({e})") from None
    except (struct.error, zlib.error, ValueError) as e:
        raise HashindexError(f"{path}: a damaged .mat file ({e})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise HashindexError(f"{path}: no numeric variable '{missing[0]}' (expected {', '.join(names)})")
    return found


def _tag(buf: memoryview, pos: int, order: str) -> tuple[int, int, int]:
    """(type, byte count, offset of the data) of the element at ``pos``; small elements pack all in 8 bytes."""
    first, second = struct.unpack_from(order + "II", buf, pos)
    if first >> 16:  # small data element: count in the high half, data in the next 4 bytes
        return first & 0xFFFF, first >> 16, pos + 4
    return first, second, pos + 8


def _elements(buf: memoryview, order: str, wanted: set[str]) -> dict[str, np.ndarray]:
    """The wanted numeric matrices among the top-level elements of ``buf`` (each follows the last unpadded:
    a matrix's count is a multiple of 8 already, a compressed one's is not padded)."""
    found: dict[str, np.ndarray] = {}
    pos = 0
    while pos + 8 <= len(buf) and len(found) < len(wanted):
        kind, count, start = _tag(buf, pos, order)
        body = buf[start:start + count]
        if len(body) < count:
            raise ValueError(f"an element of {count} bytes at offset {pos + 128} runs past the end")
        pos = start + count
        if kind == _MI_COMPRESSED:
            inner = memoryview(zlib.decompress(body))
            kind, count, start = _tag(inner, 0, order)
            body = inner[start:start + count]
        if kind == _MI_MATRIX:
            named = _matrix(body, order)
            if named is not None and named[0] in wanted:
                found[named[0]] = named[1]
    return found


def _matrix(body: memoryview, order: str) -> tuple[str, np.ndarray] | None:
    """(name, array) of a numeric real miMATRIX element, or None for any other kind of variable."""
    pos, parts = 0, []
    while pos + 8 <= len(body) and len(parts) < 4:  # flags, dimensions, name, real part
        kind, count, start = _tag(body, pos, order)
        parts.append((kind, body[start:start + count]))
        pos = start + count + (-count % 8) if start == pos + 8 else pos + 8  # a small element takes 8 bytes
    if len(parts) < 4:
        return None
    flags = struct.unpack_from(order + "I", parts[0][1])[0]
    if (flags & 0xFF) not in _NUMERIC_CLASSES or flags & _COMPLEX_FLAG:
        return None
    dims = np.frombuffer(parts[1][1], dtype=order + "i4")
    name = bytes(parts[2][1]).decode("ascii", "replace")
    kind, data = parts[3]
    if kind not in _MI_TYPES:
        return None
    values = np.frombuffer(data, dtype=order + _MI_TYPES[kind])
    if values.size != int(np.prod(dims)):
        raise ValueError(f"variable '{name}' holds {values.size} values for dimensions {tuple(dims)}")
    return name, values.reshape(tuple(int(d) for d in dims), order="F")


def _read_hdf5(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Numeric datasets of a ``-v7.3`` file, transposed back to MATLAB's dimension order."""
    import h5py

    with h5py.File(path, "r") as f:
        return {n: np.asarray(f[n]).T for n in names
                if n in f and isinstance(f[n], h5py.Dataset) and f[n].dtype.kind in "iuf"}
