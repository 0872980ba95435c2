"""Process settings: how many CPU threads torch's and Faiss's parallel loops use (``hashindex --threads``),
and whether malloc keeps freed memory for reuse (`keep_freed_memory`)."""

from __future__ import annotations

import os
import sys

from .errors import HashindexError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PER_CORE = 4  # threads or decode processes a core may be given: past that they only wait and take memory


def most_parallel() -> int:
    """How many threads, or decode processes, this machine is given at most: `PER_CORE` per core, at least 8.

    A typo's count is refused rather than started: `--workers 2147483648` forked until the kernel's OOM killer
    ended the largest process on the machine (another job's training run), `--threads 100000` crashed in
    OpenMP."""
    return max(8, PER_CORE * (os.cpu_count() or 1))


def _limit_note() -> str:
    return f"{PER_CORE} per core of this machine's {os.cpu_count() or 1}"


def check_workers(workers: int) -> None:
    """A count of decode processes: 0 (decode in this process) to `most_parallel`."""
    if type(workers) is not int or not 0 <= workers <= most_parallel():
        raise HashindexError(f"workers={workers}: expected 0 to {most_parallel()} decode processes "
                             f"({_limit_note()}; more only take memory)")


def set_threads(n: int) -> None:
    """Use n threads in torch's and Faiss's parallel loops, in this process and the processes it starts.

    Both default to one thread per core, and their OpenMP threads spin at every barrier while they wait for
    each other; on cores another job keeps busy one of them is often descheduled and the others spin out
    their time slices. Measured on 2 cores (`tools/bench_threads.py`, docs/RESULTS.md "Threads on a shared
    machine"): idle, 2 threads are 1.5-1.8x faster than 1; next to a training loop, Faiss's IVF list
    assignment is 2.0x slower with 2 threads than with 1 and a flat search 1.6x. On a machine shared with
    other work, give hashindex the cores it may use.
    """
    if type(n) is not int or not 1 <= n <= most_parallel():
        raise HashindexError(f"threads={n}: expected 1 to {most_parallel()} ({_limit_note()}: threads past the "
                             "cores only wait for each other)")
    for name in THREAD_VARIABLES:  # read when the libraries load (here, or in a process started from here)
        os.environ[name] = str(n)
    if "torch" in sys.modules:  # already loaded: set through their own calls
        sys.modules["torch"].set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 2**31 - 1  # bytes free at the heap's top before it is given back (mallopt takes an int)
KEEP_ENV = "HASHINDEX_KEEP_FREED_MEMORY"  # "0": leave malloc as it is
_kept = False  # applied in this process already (its variables are then ours, not the user's)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel at every free.

    glibc gives a block over 32 MB (its largest mmap threshold) a mapping of its own and unmaps it when freed,
    so every batch of the net maps and page-faults its activations (~100 MB at batch 128) in again. Measured on
    2 AVX2 cores (`tools/bench_malloc.py`, docs/RESULTS.md "Freed memory kept"): the kernel's share of the
    time fell from 24-33% to 1% in training steps and from 51% to 5-6% in encoding; training ran 1.1-1.6x
    and encoding 1.3-1.6x faster (two runs).

    The cost: the process keeps its peak heap until it exits, which suits commands that run the net over a
    collection (the CLI calls this for every command but `serve`, whose batcher runs the net in a thread of
    its own: other threads allocate from arenas of their own, and there it gained nothing). Also set for the
    processes started from here (decoding workers, local Ray workers), through glibc's variables. Returns
    whether it applied: glibc only, and not where HASHINDEX_KEEP_FREED_MEMORY=0 or glibc's own
    MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ is set.
    """
    import ctypes

    global _kept
    if _kept:
        return True
    if os.environ.get(KEEP_ENV) == "0" or {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False  # asked not to, or malloc tuned by hand: theirs wins
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # "glibc 2.36"; None or an error elsewhere (musl, macOS)
            return False
        libc = ctypes.CDLL(None)
        applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, ValueError, AttributeError):
        return False
    if applied:
        _kept = True
        os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
        os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD))
    return applied
