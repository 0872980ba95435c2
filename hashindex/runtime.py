"""How many CPU threads torch's and Faiss's parallel loops use (``hashindex --threads``)."""

from __future__ import annotations

import os
import sys

from .errors import HashindexError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_threads(n: int) -> None:
    """Use n threads in torch's and Faiss's parallel loops, in this process and the processes it starts.

    Both default to one thread per core, and their OpenMP threads spin at every barrier while they wait for
    each other; on cores another job keeps busy one of them is often descheduled and the others spin out
    their time slices. Measured on 2 cores (`tools/bench_threads.py`, docs/RESULTS.md "Threads on a shared
    machine"): idle, 2 threads are 1.5-1.8x faster than 1; next to a training loop, Faiss's IVF list
    assignment is 2.0x slower with 2 threads than with 1 and a flat search 1.6x. On a machine shared with
    other work, give hashindex the cores it may use.
    """
    if n < 1:
        raise HashindexError(f"threads={n}: expected 1 or more")
    for name in THREAD_VARIABLES:  # read when the libraries load (here, or in a process started from here)
        os.environ[name] = str(n)
    if "torch" in sys.modules:  # already loaded: set through their own calls
        sys.modules["torch"].set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)
