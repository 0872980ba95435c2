#!/usr/bin/env python
"""Check hashindex's .mat reader against SciPy on MATLAB-written files (SciPy's own test files by default).

Every numeric variable that ``scipy.io.loadmat`` returns must come back from `hashindex.data.matlab.read_mat`
with the same shape and values; MATLAB 4 files (which the reader refuses) are counted apart. Needs SciPy
(not a dependency of hashindex: run it with a Python that has it, hashindex on its path).

    python tools/check_matlab_reader.py [FILE.mat ...]
    # e.g. pip install --target /tmp/sp scipy && PYTHONPATH=/tmp/sp .venv/bin/python tools/check_matlab_reader.py
    # 2026-12-01, SciPy 1.17: "25 files equal to scipy.io.loadmat, 0 different, 6 refused" (the 6: MATLAB 4)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.io

from hashindex.data.matlab import read_mat
from hashindex.errors import HashindexError


def main(paths: list[Path]) -> int:
    same = differ = refused = 0
    for path in paths:
        try:
            ref = scipy.io.loadmat(path)
        except Exception:  # a file SciPy cannot read either
            continue
        names = tuple(k for k, v in ref.items()
                      if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "iuf")
        if not names:
            continue
        try:
            got = read_mat(path, names)
        except HashindexError as e:
            refused += 1
            print(f"refused {path.name}: {e}")
            continue
        if all(got[n].shape == ref[n].shape and np.array_equal(got[n], ref[n]) for n in names):
            same += 1
        else:
            differ += 1
            print(f"DIFFERENT {path.name}")
    print(f"{same} files equal to scipy.io.loadmat, {differ} different, {refused} refused")
    return 1 if differ else 0


if __name__ == "__main__":
    files = [Path(a) for a in sys.argv[1:]] or sorted((Path(scipy.io.__file__).parent / "matlab" / "tests" / "data").glob("*.mat"))
    sys.exit(main(files))
