"""Decoding a source in parallel into batches (DataLoader workers) or into one array in memory (torch)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from functools import partial
from typing import Iterator

import numpy as np
import torch

from ..errors import HashindexError
from ..runtime import check_workers
from .images import BadImage, SkipLog
from .sources import ImageSource

log = logging.getLogger("hashindex")


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset over a source: (uint8 CHW array or None, position, reason)."""

    def __init__(self, source: ImageSource, size: int, channels: int):
        self.source, self.size, self.channels = source, size, channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            return self.source.read_array(i, self.size, self.channels), i, ""
        except BadImage as e:
            return None, i, e.reason


def collate(batch):
    """Stack the good items; keep the positions and reasons of the bad ones.

    The images stay a numpy array: a worker's batch then travels to the parent pickled through the result
    pipe. A torch tensor would travel as a shared-memory file descriptor, handed over through a Unix socket
    that multiprocessing binds in the temp folder, and where that path is over the 107 bytes a socket path may
    have (TMPDIR deep in a job's scratch tree; a pytest worker's tmp_path), the worker's queue thread drops the
    batch with a printed traceback and the parent waits for good (measured 2026-12-03: TMPDIR of 85 characters
    stalled a 60-image range; the test suite's stall). Pickling costs one copy of the batch, lost in decoding's
    time: numpy/tensor time 1.02, 0.97, 0.89 at 32, 96, 224 px (tools/bench_batches.py, 2 workers, 2026-12-03).
    """
    good = [(a, i) for a, i, _ in batch if a is not None]
    bad = [(i, r) for a, i, r in batch if a is None]
    images = np.stack([a for a, _ in good]) if good else None
    positions = np.array([i for _, i in good], dtype=np.int64)
    return images, positions, bad


def _die_with_parent(_worker_id: int, parent: int | None = None) -> None:
    """Decode worker init: on Linux, get SIGKILL when the parent (pid ``parent``) dies.

    Without it, a worker of a job killed with SIGKILL can block forever writing a
    batch nobody reads, and stay behind holding its memory. A parent that died
    between the fork and this call sends no signal (the worker is already someone
    else's child), so the worker checks and ends itself: the kill-and-resume test
    caught one alive 2 s after its parent was killed.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if parent is not None and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)


# No batch from the decode workers for this long: they are taken as stuck, and the rest is decoded in this
# process. A batch of 256 photos takes seconds. A worker whose batch is lost leaves its parent waiting for good:
# torch notices a worker that died, not one whose queue thread dropped a batch (as it did for a socket path over
# the limit, see `collate`), so the wait is bounded here whatever the next such cause is.
STALL_S = 120.0
# torch's warning when there are more decode workers than cores: `check_workers` bounds the count, and -q did not
# silence this one (it printed two lines of torch's source)
warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)


def iter_batches(source: ImageSource, size: int, channels: int, batch_size: int = 256,
                 workers: int = 2, start: int = 0, stop: int | None = None,
                 ) -> Iterator[tuple[torch.Tensor | None, np.ndarray, list[tuple[int, str]]]]:
    """Decode items [start, stop) in order, in worker processes, batch by batch.

    Yields (uint8 images NCHW or None, positions of those images, [(position,
    reason)] for the items that failed). Workers that deliver nothing for `STALL_S`
    seconds are given up for this process, from the first batch not yet yielded.
    """
    check_workers(workers)
    stop = len(source) if stop is None else stop
    subset = torch.utils.data.Subset(ImageDataset(source, size, channels), range(start, stop))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate, persistent_workers=False, worker_init_fn=partial(_die_with_parent, parent=os.getpid()),
        prefetch_factor=4 if workers else None, timeout=STALL_S if workers else 0,
    )
    done = start  # items yielded so far end here (batches are consecutive ranges of batch_size)
    try:
        for images, positions, bad in loader:
            yield (None if images is None else torch.from_numpy(images)), positions, bad
            done = min(done + batch_size, stop)
    except HashindexError as e:  # a user's mistake found in a worker (one line, for the CLI and the API alike)
        raise HashindexError(worker_message(str(e))) from None
    except RuntimeError as e:
        if not workers or "timed out" not in str(e):
            raise
        log.warning("decode workers delivered nothing for %.0f s: decoding items %d-%d in this process",
                    STALL_S, done, stop - 1)
        yield from iter_batches(source, size, channels, batch_size, 0, done, stop)


def worker_message(message: str) -> str:
    """A HashindexError raised in a DataLoader worker comes back as torch re-raises it: "Caught HashindexError
    in DataLoader worker process 0." and the worker's traceback, whose last line holds the message. That line,
    without the exception's name (a message that is not so wrapped is returned as it is)."""
    if "\nOriginal Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith("hashindex.errors.HashindexError: ") else last


def load_arrays(source: ImageSource, size: int, channels: int, workers: int = 2,
                progress: bool = True, skips: SkipLog | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a whole source into memory: (uint8 N,C,H,W images, targets (labels, or a multi-label source's
    label sets), ids).

    Used for training, where 32x32 inputs make a 50,000-image set 150 MB and
    decoding once beats decoding every epoch on a 2-core machine.
    """
    from tqdm import tqdm

    skips = skips if skips is not None else SkipLog()
    ready = source.preloaded(size, channels)
    if ready is not None:  # a prepared store: decoded once already (its skips were counted then)
        return ready, source.targets(), source.ids()
    ids = source.ids()
    out = np.empty((len(source), channels, size, size), dtype=np.uint8)
    keep = np.zeros(len(source), dtype=bool)
    bar = tqdm(total=len(source), desc=f"decode {source.description}", unit="img",
               disable=not progress, leave=False)
    for images, positions, bad in iter_batches(source, size, channels, workers=workers):
        if images is not None:
            out[positions] = images.numpy()
            keep[positions] = True
        for pos, reason in bad:
            skips.add(int(ids[pos]), source.paths[pos], reason)
        bar.update(len(positions) + len(bad))
    bar.close()
    return out[keep], source.targets()[keep], ids[keep]
