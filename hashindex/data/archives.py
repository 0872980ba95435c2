"""Image collections inside one archive file, read in place: a tar (or tar.gz) and a zip.

Both list their members once, make items of them as a folder's files are made (`sources.items_of`: WebDataset
samples, label sidecars, counted skips), and read a member's bytes on demand, from any worker process.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import HashindexError
from .images import BadImage
from .members import LABEL_SIDECARS, suffix as name_suffix
from .sources import MAX_FILE_BYTES, ImageSource, items_of
from .tar_headers import BLOCK, plain_tar_members

SIDECAR_BYTES = 1 << 20  # a label sidecar larger than this is not read


class _InPlace(ImageSource):
    """An archive read from any process: each process opens its own handle (``_open``) at its first read."""

    _open_handle = None
    _pid = None
    folder_labels = True  # classes named by the members' folders

    def _open(self):
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open_handle"], state["_pid"] = None, None  # open files do not cross processes
        return state

    def _handle(self):
        if self._open_handle is None or self._pid != os.getpid():
            self._open_handle, self._pid = self._open(), os.getpid()
        return self._open_handle

    def _reopen(self):
        self._open_handle.close()
        self._open_handle = None
        return self._handle()


# kind -> (the names' endings, the stream that reads it)
COMPRESSED_TARS = {"gz": ((".gz", ".tgz"), gzip.open), "bz2": ((".bz2", ".tbz2", ".tbz"), bz2.open),
                   "xz": ((".xz", ".txz"), lzma.open)}


def _is_sidecar(m) -> bool:
    """A tar member that may give an image's label (`members.LABEL_SIDECARS`), small enough to read."""
    return m.isfile() and name_suffix(m.name) in LABEL_SIDECARS and m.size <= SIDECAR_BYTES


def _check_ended(path: Path, offset: int) -> None:
    """Raise where tarfile stopped listing at a damaged header (it stops without a word, and the members
    after it would be silently missing) rather than at the end-of-archive block or the end of the file."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        block = fh.read(BLOCK)
    if block and block.count(0) != len(block):
        raise HashindexError(f"{path}: not a readable tar archive (a damaged header at byte {offset:,}: the "
                             "members from there on cannot be listed)")


class TarSource(_InPlace):
    """Image members of a tar, tar.gz, tar.bz2 or tar.xz, read in place by offset.

    Plain tars are read with pread at the member's offset, so any worker can
    read any item. Compressed tars are read through a per-process stream
    that only moves forward; reading in order (as extraction does) costs one
    decompression pass per worker.
    """

    def __init__(self, path: str | Path, folders: str = "parent"):
        self.path = Path(path)
        name = self.path.name.lower()
        self.compression = next((kind for kind, (ends, _) in COMPRESSED_TARS.items() if name.endswith(ends)), None)
        names, where, odd = [], {}, {}
        try:
            members, sidecar_bytes = self._listing()
            for m in members:
                if m.isdir():
                    continue
                names.append(m.name)
                if m.issym() or m.islnk():
                    odd[m.name] = ("link-member", f"{m.name}: a {'symbolic' if m.issym() else 'hard'} "
                                   f"link to {m.linkname} (links in tars are not followed)")
                elif not m.isfile():
                    odd[m.name] = ("not-a-file", f"{m.name}: a tar member of type {m.type!r}")
                else:
                    where[m.name] = (m.offset_data, m.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            first = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
            raise HashindexError(f"{self.path}: not a readable tar archive ({first})") from None
        paths, labels, class_names, unread, sets = items_of(names, odd, lambda n: sidecar_bytes.get(n, b""),
                                                            f"tar {self.path}", folders)
        self.offsets = np.array([where.get(n, (-1, 0))[0] for n in paths], dtype=np.int64)
        self.sizes = np.array([where.get(n, (-1, 0))[1] for n in paths], dtype=np.int64)
        super().__init__(f"tar {self.path}", paths, labels, class_names, unread=unread, label_sets=sets)

    def _listing(self) -> tuple[list, dict[str, bytes]]:
        """The archive's members in order, and the bytes of its label sidecars: a plain tar's members read
        straight from its headers (`plain_tar_members`), others through tarfile (compressed, or with headers
        only tarfile reads), the sidecars read as the stream passes them."""
        if self.compression is None:
            members = plain_tar_members(self.path)
            if members is not None:
                with open(self.path, "rb") as fh:
                    return members, {m.name: os.pread(fh.fileno(), m.size, m.offset_data)
                                     for m in members if _is_sidecar(m)}
        members, sidecars = [], {}
        with tarfile.open(self.path, "r:*") as tf:
            for m in tf:
                members.append(m)
                if _is_sidecar(m):
                    sidecars[m.name] = tf.extractfile(m).read()
            if self.compression is None:
                _check_ended(self.path, tf.offset)
        return members, sidecars

    def _open(self):
        if self.compression is None:
            return open(self.path, "rb")
        return COMPRESSED_TARS[self.compression][1](self.path, "rb")

    def read_bytes(self, i: int) -> bytes:
        self._refuse_unread(i)
        off, size = int(self.offsets[i]), int(self.sizes[i])
        try:
            fh = self._handle()
            if self.compression:
                if fh.tell() > off:  # a compressed stream seeks backwards by restarting: reopen instead
                    fh = self._reopen()
                fh.seek(off)
                return fh.read(size)
            return os.pread(fh.fileno(), size, off)
        except (OSError, EOFError) as e:
            raise BadImage("unreadable", str(e)) from None


class ZipSource(_InPlace):
    """Image members of a zip archive (a dataset or a photo export as it was downloaded), read in place.

    Each worker process opens the archive once and reads members by name. Symbolic links, encrypted members
    and members over MAX_FILE_BYTES are counted skips, as in a folder or a tar. An archive whose names all
    separate folders with '\\' (Windows PowerShell 5.1's Compress-Archive writes them so; the zip format says
    '/') is read with '/' in its item paths, so its folders name classes as any other's do.
    """

    def __init__(self, path: str | Path, folders: str = "parent"):
        self.path = Path(path)
        names, odd, sidecar_bytes = [], {}, {}
        try:
            zf, self.encoding = _open_names(self.path)
            with zf:
                for info in zf.infolist():
                    if info.is_dir() or (info.filename.endswith("\\") and not info.file_size):
                        continue
                    names.append(info.filename)
                    odd_reason = _odd_member(info)
                    if odd_reason is not None:
                        odd[info.filename] = odd_reason
                    elif name_suffix(info.filename) in (".cls", ".json") and info.file_size <= SIDECAR_BYTES:
                        try:
                            sidecar_bytes[info.filename] = _read_member(zf, info.filename)
                        except BadImage:  # a damaged sidecar gives no label, as an unreadable file in a folder
                            pass
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise HashindexError(f"{self.path}: not a readable zip archive ({e})") from None
        self.members: dict[str, str] = {}  # item path -> member name, where they differ ('\\' separators)
        if any("\\" in n for n in names) and not any("/" in n for n in names):
            self.members = {n.replace("\\", "/"): n for n in names}
            names = list(self.members)
            odd = {k.replace("\\", "/"): v for k, v in odd.items()}
            sidecar_bytes = {k.replace("\\", "/"): v for k, v in sidecar_bytes.items()}
        paths, labels, class_names, unread, sets = items_of(names, odd, lambda n: sidecar_bytes.get(n, b""),
                                                            f"zip {self.path}", folders)
        super().__init__(f"zip {self.path}", paths, labels, class_names, unread=unread, label_sets=sets)

    def _open(self):
        return _open_zip(self.path, self.encoding)

    def read_bytes(self, i: int) -> bytes:
        self._refuse_unread(i)
        return _read_member(self._handle(), self.members.get(self.paths[i], self.paths[i]))


def _open_names(path: Path) -> tuple[zipfile.ZipFile, str | None]:
    """The archive opened once, and how its names are read where a member does not flag them UTF-8: as
    UTF-8 when they all are (Info-ZIP and many Windows tools write UTF-8 names without the flag, which Python
    would read as cp437: 'dög' as 'd├╢g'), else zipfile's cp437 (None)."""
    if sys.version_info >= (3, 11):  # no metadata_encoding before 3.11
        try:
            return _open_zip(path, "utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    return _open_zip(path, None), None


def _open_zip(path: Path, encoding: str | None) -> zipfile.ZipFile:
    return zipfile.ZipFile(path, **({"metadata_encoding": encoding} if encoding else {}))


def _odd_member(info: zipfile.ZipInfo) -> tuple[str, str] | None:
    """(reason, detail) for a zip member that is not read as an image file, else None."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "link-member", f"{info.filename}: a symbolic link (links in archives are not followed)"
    if info.flag_bits & 0x1:
        return "encrypted", f"{info.filename}: encrypted (hashindex reads no passwords)"
    if info.file_size > MAX_FILE_BYTES:
        return "too-large", f"{info.filename}: {info.file_size} bytes"
    return None


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes; a damaged or unsupported member raises BadImage."""
    try:
        return zf.read(name)
    except zipfile.BadZipFile as e:
        raise BadImage("corrupt", f"{name}: {e}") from None
    except (NotImplementedError, RuntimeError, OSError, EOFError, KeyError) as e:
        raise BadImage("unreadable", f"{name}: {e}") from None
