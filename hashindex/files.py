"""Atomic writes and checksums: work already done is never lost or half-written.

Every output is written under a temporary name in its final folder, flushed,
fsynced and renamed into place, so a reader (or a rerun after kill -9) sees
either the old complete file or the new complete file, never a torn one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"
# A writer killed with -9 dies at once, but the decode workers it forked share its lock's open file and die a
# moment later (PR_SET_PDEATHSIG): a rerun waits up to this long for them instead of refusing (measured: a
# rerun started right after the kill found the lock still held).
DEAD_HOLDER_WAIT_S = 10.0


def encode_name(name: str) -> str:
    """A file name as valid UTF-8 text, losslessly: what HDF5 strings and JSON can hold.

    Names are whatever bytes the file system allows (Python hands undecodable bytes over as
    surrogates, which h5py refuses). A name that is valid UTF-8 without a backslash is kept as it
    is; otherwise backslashes become ``\\\\`` and undecodable bytes ``\\xNN`` (`decode_name` reverses it).
    """
    raw = name.encode("utf-8", "surrogateescape")
    if b"\\" not in raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def decode_name(text: str) -> str:
    """The name `encode_name` stored, as the str the os module takes (undecodable bytes as surrogates)."""
    if "\\" not in text:
        return text
    out, i, raw = bytearray(), 0, text.encode("utf-8")
    while i < len(raw):
        if raw[i:i + 2] == b"\\\\":
            out += b"\\"
            i += 2
        elif raw[i:i + 2] == b"\\x" and i + 4 <= len(raw):
            out.append(int(raw[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out).decode("utf-8", "surrogateescape")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` if the block succeeds. An OSError making the
    temp file names ``path``, not the temp name the user never gave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming(path):
            yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """OSErrors raised in the block without a file name are given ``path``'s: a write through a file object
    (Python's, or a C++ library writing through one) fails with a bare "[Errno 28] No space left on device",
    and the CLI's one line should say which file."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or not e.errno:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths (folders) in one step, so a reader finds one or the other at each path at every
    moment, never nothing: Linux's renameat2 with RENAME_EXCHANGE, macOS's renamex_np with RENAME_SWAP. False
    where the C library, kernel or file system has no such call (the caller renames twice instead); another
    failure is an OSError."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform == "darwin":  # macOS 10.12 and later
            call, args = libc.renamex_np, (os.fsencode(a), os.fsencode(b), 0x2)  # RENAME_SWAP
        else:
            at_fdcwd, rename_exchange = -100, 2
            call, args = libc.renameat2, (at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    except (AttributeError, OSError):
        return False
    if call(*args) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_npz(path: str | Path, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arrays ``names`` (and those of ``optional`` it holds) of an .npz file, each read whole, without
    pickle (so nothing in it can run code); one of `errors.NPZ_ERRORS` where the file is damaged."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in names + tuple(n for n in optional if n in z.files)}


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def exclusive(target: str | Path, busy: str) -> Iterator[None]:
    """Hold the lock of ``target`` (``.NAME.lock`` beside it): one writer of an output at a time.

    A second writer gets a BusyError (a HashindexError) ``busy`` plus who holds the lock (pid, host, since
    when). flock is released by the kernel when its holder dies, so a killed writer leaves no stale lock to
    clear by hand.
    The holder removes the file as it finishes (a killed one leaves it, for the next writer to lock and then
    remove), so outputs are not left with a lock file beside them; a writer that locked a file just removed
    this way locks the path's new file instead. (flock: reliable between processes of one machine, not
    across NFS clients.)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    while True:
        try:
            f = open(lock, "a+")
        except OSError as e:  # a folder this user may not write: say which output, not our lock file
            raise OSError(e.errno, e.strerror, str(target)) from None
        try:
            _flock(f, lock, busy)
        except BaseException:
            f.close()
            raise
        if _is_file_at(f, lock):
            break
        f.close()  # the holder before us removed it as it finished: lock the file now at the path
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        f.flush()
        yield
    finally:
        try:
            if _is_file_at(f, lock):  # (not a file another writer made after ours was deleted by hand)
                lock.unlink()  # still locked: no other writer holds this file, and the next one makes a new one
        except OSError:
            pass
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _flock(f, lock: Path, busy: str) -> None:
    """flock ``f`` exclusively, or a BusyError ``busy`` naming the holder (a dead holder's forked children
    are waited for a moment)."""
    from .errors import BusyError

    deadline = time.monotonic() + DEAD_HOLDER_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            if not _holder_dead(holder) or time.monotonic() > deadline:
                raise BusyError(f"{busy} (lock {lock}, held by {holder})") from None
            time.sleep(0.05)  # its holder is dead; the decode workers it forked still hold the lock a moment


def _is_file_at(f, path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path`` (not removed, nor replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _holder_dead(holder: str) -> bool:
    """Whether the lock text names a process of this host that no longer exists."""
    parts = holder.split()
    if len(parts) < 4 or parts[0] != "pid" or parts[3] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


VERIFIED = ".verified.json"  # per folder: the file states whose checksums were last found right


def file_checksums(folder: str | Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each named file of a folder (recorded when the files are written)."""
    return {name: sha256_file(Path(folder) / name) for name in names}


def _state(path: Path, sha: str) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha]


def remember_verified(folder: str | Path, checksums: dict[str, str]) -> None:
    """Record files just written with these checksums as verified (their writer hashed them already)."""
    folder = Path(folder)
    atomic_write_json(folder / VERIFIED, {name: _state(folder / name, sha) for name, sha in checksums.items()})


def verify_files(folder: str | Path, expected: dict[str, str], use_cache: bool = True) -> list[tuple[str, str]]:
    """The files of ``folder`` whose bytes differ from the recorded SHA-256, as (name, what is wrong).

    Hashing streams each file. With ``use_cache``, a file whose (size, mtime, ctime, inode) are those of
    its last good check is not hashed again (``.verified.json`` beside it; ctime cannot be set back by a
    user, so an edit is always rehashed), so opening a large index does not rehash it every time; pass
    ``use_cache=False`` (``hashindex verify``) to hash everything.
    """
    folder = Path(folder)
    cache: dict[str, list] = {}
    if use_cache:
        try:
            cache = read_json(folder / VERIFIED)
        except (OSError, ValueError):
            cache = {}
    bad, good = [], {}
    for name, want in expected.items():
        try:
            state = _state(folder / name, want)
        except OSError:
            bad.append((name, "missing"))
            continue
        if isinstance(cache, dict) and cache.get(name) == state:
            good[name] = state
            continue
        got = sha256_file(folder / name)
        if got != want:
            bad.append((name, f"SHA-256 {got[:12]}… where {want[:12]}… was recorded"))
        else:
            good[name] = state
    if good != cache:
        try:
            atomic_write_json(folder / VERIFIED, good)
        except OSError:  # a read-only folder: verified again next time
            pass
    return bad


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temp files an interrupted writer left in ``folder``; returns how many."""
    n = 0
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n
