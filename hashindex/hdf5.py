"""HDF5 files written and read without a crash or a traceback: the one way every format owner opens one.

HDF5 2.0 (h5py 3.16) crashes the process when a write fails for want of space, so writers ask for room
first (`ensure_room`) and write through a guarded file object (`create_h5`); a file cut short or not HDF5 at
all is one HashindexError saying how to mend it (`open_h5`).
"""

from __future__ import annotations

import errno
import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import HashindexError

# Room asked for beyond a file's own bytes: the format's overhead (HDF5 headers, heaps, padding; measured: a
# 200-item shard is 16.5 KB over its arrays and paths, 10% of it).
ROOM_MARGIN, ROOM_SLACK = 1.05, 1 << 18


def ensure_room(path: str | Path, nbytes: int) -> None:
    """Raise OSError(ENOSPC) naming ``path`` when its folder's filesystem has not room for ``nbytes`` more.

    For HDF5 writers, which ask before writing: a write the disk refuses surfaces only when ``create_h5``
    closes the file (HDF5 itself would crash, see ``_WriteGuard``), after all the work; asking first refuses
    a disk already nearly full at once. A disk that fills up during the write (another writer) is left to
    ``create_h5``.
    """
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:  # a folder the writer is yet to make
        folder = folder.parent
    st = os.statvfs(folder)
    free, need = st.f_bavail * st.f_frsize, int(nbytes * ROOM_MARGIN) + ROOM_SLACK
    if st.f_blocks and free < need:  # a filesystem reporting no size at all (some FUSE mounts) is not judged
        raise OSError(errno.ENOSPC, f"about {need / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free", str(path))


class _WriteGuard(io.RawIOBase):
    """A file object for h5py's ``fileobj`` driver that never lets a failed write reach HDF5.

    HDF5 2.0 (h5py 3.16) crashes the process (SIGSEGV in ``File.close``) once a write has failed, whether it
    writes to a path or through a Python file object (measured 2026-12-03: a chunked dataset grown into a
    tmpfs until it filled; build's table.h5 onto a tmpfs with 16 or 64 KB free, exit -11), or prints HDF5's
    error stack in its message. So the first OSError is kept and from then on the guard is a sink: writes are
    dropped, reads of what was never written are zeros; HDF5 finishes and closes cleanly and ``create_h5``
    raises the kept error. Writes loop until every byte is written: h5py ignores ``write``'s return value.
    """

    def __init__(self, raw: io.FileIO):
        super().__init__()
        self.raw, self.error, self.pos, self.end = raw, None, 0, 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.error is None:
            try:
                n = self.raw.readinto(buffer)
                self.pos += n or 0
                return n
            except OSError as e:
                self.error = e
        view = memoryview(buffer).cast("B")
        view[:] = bytes(len(view))
        self.pos += len(view)
        return len(view)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += self.raw.write(view[done:]) or 0
            except OSError as e:
                self.error = e
        self.pos += len(view)
        self.end = max(self.end, self.pos)
        return len(view)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.error is None:
            try:
                self.pos = self.raw.seek(offset, whence)
                return self.pos
            except OSError as e:
                self.error = e
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.end}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                self.raw.truncate(size)
            except OSError as e:
                self.error = e
        self.end = size
        return size

    def flush(self) -> None:
        pass  # the raw file is unbuffered; atomic_path fsyncs it


def _raw_file(path: Path) -> io.FileIO:
    """The unbuffered file ``create_h5`` writes through (a test replaces it with one that fills up)."""
    return io.FileIO(path, "w+")


@contextmanager
def create_h5(path: str | Path, **kwargs) -> Iterator[Any]:
    """``h5py.File(path, "w", **kwargs)``, written so that a write the disk refuses is an OSError once the
    file is closed, never a crash (see ``_WriteGuard``); used inside ``atomic_path`` or ``naming``, which give
    the error the file's name. The Python file object costs little: time ratio to h5py given the path 1.05
    (a 100,000-row shard), 1.01 (its table, filled in blocks), 1.03 (a 400 MB dataset, no extra memory: h5py
    hands the buffer over without a copy); `tools/bench_h5_writes.py`, best of 5, training paused."""
    import h5py

    path = Path(path)
    with _raw_file(path) as raw:
        guard = _WriteGuard(raw)
        try:
            with h5py.File(guard, "w", **kwargs) as f:
                yield f
        except Exception:
            if guard.error is None:
                raise
            # else HDF5 stumbled on what the sink dropped: the kept error is the cause, raised below
        if guard.error is not None:  # bare, like Python's own write errors: atomic_path / naming name the file
            raise OSError(guard.error.errno, guard.error.strerror) from None


def open_h5(path: str | Path, arg: str | None, fix: str):
    """``h5py.File(path, "r")``. A file whose bytes are not a whole HDF5 file (cut short where its recorded
    checksum is the short file's, or never checked) is one HashindexError naming it under ``arg`` and saying
    ``fix``, not h5py's errno-less OSError; errors with an errno (missing, denied) pass for the CLI to word."""
    import h5py

    path = Path(path)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if e.errno:
            raise
        text = str(e)
        why = text[text.find("(") + 1:text.rfind(")")] if "(" in text else text
        where = f"{arg}={path.parent}" if arg else str(path.parent)
        raise HashindexError(f"{where}: {path.name} is not an HDF5 file h5py can read ({why}); {fix}") from None
