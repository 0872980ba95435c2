"""The member list of a plain tar read straight from its 512-byte headers, as `tarfile` would list it.

`tarfile` builds a TarInfo per member in Python: listing CIFAR-10's 50,000-member train.tar took 1.7 s on
2 AVX2 cores (2026-12-02, and 2.9-3.2 s to open it as a collection), paid by every train, extract and demo
that opens it. What `TarSource` needs of a member is its name, type, link target, data offset and size;
reading just those from the headers lists the same tar in 0.37 s (4.7x; `tools/bench_tar_listing.py`,
docs/RESULTS.md "Opening a tar").

It reads the headers that the tars people make hold: POSIX ustar and GNU files, folders and links; PAX
headers ('x', as Python and bsdtar write for long or non-ASCII names, and global 'g' ones, as ``git archive``
writes); GNU long names and link targets ('L', 'K', as GNU tar writes). Anything else (sparse files, base-256
sizes, a bad checksum or a numeric field tarfile cannot parse, a truncated archive, a global header that
renames) answers None, and the caller lists the tar with `tarfile`, which also gives its errors.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

BLOCK = 512
REGULAR = (b"0", b"\0")
NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # hard link, symbolic link, devices, folder, fifo
PAX = (b"x", b"X", b"g")  # extended headers: the next member's ('x'; 'X': Solaris), every member's ('g')
GNU_LONG = {b"L": "name", b"K": "linkname"}  # the next member's long name or link target
MAX_EXTRA = 1 << 20  # a longer PAX or GNU long-name header is left to tarfile
CHECK_EVERY = 1 << 16  # headers whose checksums are checked together (32 MiB of them)
READ = 1 << 20  # headers are read through a buffer of this many bytes, not one system call per member
_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # a PAX record: "LENGTH KEYWORD=VALUE\n"
# the numeric fields tarfile parses besides size and checksum (mode, uid, gid; mtime; devmajor, devminor): a
# header where one does not parse is one tarfile stops at, so it is left to tarfile here too
_NUMERIC = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))  # (start, end) of each
_NUMBERS = np.concatenate([np.arange(start, end) for start, end in _NUMERIC])  # their bytes, for numpy
_PLAIN = np.zeros(256, bool)
_PLAIN[list(b"01234567 \0")] = True  # the bytes of a plain octal field (others: checked as tarfile does)


class Member(NamedTuple):
    """What `TarSource` needs of a member: tarfile's name, type, link target, data offset and size."""
    name: str
    type: bytes
    linkname: str
    offset_data: int
    size: int

    def isdir(self) -> bool:
        return self.type == b"5"

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"

    def isfile(self) -> bool:
        return self.type in REGULAR


def _text(field: bytes) -> str:
    """A NUL-terminated field as tarfile decodes it (the file system's encoding, UTF-8 here; bytes it cannot
    decode kept as surrogates)."""
    if not field[0]:
        return ""  # most prefixes and link targets: no decoding to do
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(tarfile.ENCODING, "surrogateescape")


def _octal(field: bytes) -> int | None:
    """A numeric header field, or None where it is not plain octal (base-256: left to tarfile)."""
    if field[:1] in (b"\x80", b"\xff"):
        return None
    end = field.find(b"\0")
    try:
        return int((field if end < 0 else field[:end]).strip() or b"0", 8)
    except ValueError:
        return None


def _pax_records(data: bytes) -> dict[str, str] | None:
    """A PAX header's records, decoded as tarfile decodes them (names and link targets UTF-8, else the file
    system's encoding); None for a malformed one."""
    records, pos = {}, 0
    while (match := _RECORD.match(data, pos)) is not None:
        length = int(match.group(1))
        if length == 0:
            return None
        key = match.group(2).decode("utf-8", "surrogateescape")
        value = data[match.end(2) + 1:match.start(1) + length - 1]
        try:
            records[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            records[key] = value.decode(tarfile.ENCODING if key in ("path", "linkpath") else "utf-8",
                                        "surrogateescape")
        pos += length
    return records


def _headers_hold(headers: list[bytes]) -> bool:
    """Whether every header is one tarfile reads: its checksum field equals the sum of its bytes (the field
    counted as 8 spaces) and its numeric fields parse. Checked for a batch of headers at once with numpy (a
    Python sum per header was a third of the listing's time); a header whose numeric fields are not plain
    octal digits (base-256, signs) is checked by tarfile's own parser."""
    if not headers:
        return True
    blocks = np.frombuffer(b"".join(headers), np.uint8).reshape(len(headers), BLOCK)
    sums = blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    if not all(_octal(h[148:156]) == int(s) for h, s in zip(headers, sums)):
        return False
    odd = np.flatnonzero(~_PLAIN[blocks[:, _NUMBERS]].all(axis=1))
    return all(_numbers_parse(headers[i]) for i in odd)


def _numbers_parse(header: bytes) -> bool:
    """Whether tarfile parses every numeric field of ``header`` besides size and checksum."""
    try:
        for start, end in _NUMERIC:
            tarfile.nti(header[start:end])
    except tarfile.HeaderError:
        return False
    return True


def _member(header: bytes, kind: bytes, size: int, offset: int, long: dict[str, str]) -> Member:
    """A file, folder or link header as tarfile reads it, with what the headers before it said (``long``:
    'name' and 'linkname' from GNU headers, 'path', 'linkpath' and 'size' from a PAX one)."""
    name, prefix = _text(header[0:100]), _text(header[345:500])
    if kind == b"\0" and name.endswith("/"):  # v7 tars write a folder as a file whose name ends in '/'
        kind = b"5"
    if kind == b"5":
        name = name.rstrip("/")
    if prefix:
        name = prefix + "/" + name
    if "name" in long:
        name = long["name"].removesuffix("/") if kind == b"5" else long["name"]
    name = long["path"].rstrip("/") if "path" in long else name
    link = long.get("linkpath", long.get("linkname", _text(header[157:257])))
    return Member(name, kind, link, offset + BLOCK, int(long.get("size", size)))


class _Blocks:
    """The file's bytes at any offset, read through one buffer (headers come in order, mostly close)."""

    def __init__(self, fh):
        self.fh, self.buf, self.start = fh, b"", 0

    def read(self, offset: int, n: int) -> bytes:
        at = offset - self.start
        if at < 0 or at + n > len(self.buf):
            self.fh.seek(offset)
            self.buf, self.start, at = self.fh.read(max(READ, n)), offset, 0
        return self.buf[at:at + n]


def plain_tar_members(path: str | Path) -> list[Member] | None:
    """Every member of the uncompressed tar ``path`` in archive order (folders too), or None when it holds
    a header this reader leaves to `tarfile`."""
    members: list[Member] = []
    headers: list[bytes] = []  # checked in batches (`_headers_hold`)
    long: dict[str, str] = {}  # what PAX or GNU headers said of the next member
    with open(path, "rb", buffering=0) as fh:
        blocks, offset = _Blocks(fh), 0
        while True:
            header = blocks.read(offset, BLOCK)
            if len(header) < BLOCK:
                return None  # truncated (or empty): tarfile says which
            if header.count(0) == BLOCK:
                break  # the end-of-archive block
            kind, size = header[156:157], _octal(header[124:136])
            if size is None:
                return None
            if kind in REGULAR or kind in NO_DATA:
                if long and not _usable(long):
                    return None
                member = _member(header, kind, size, offset, long)
                long = {}
                headers.append(header)
                members.append(member)
                if len(headers) == CHECK_EVERY:  # a batch at a time: headers of 10M members would be 5 GB
                    if not _headers_hold(headers):
                        return None
                    headers.clear()
                offset += BLOCK + (0 if member.type in NO_DATA else -(-member.size // BLOCK) * BLOCK)
                continue
            if kind not in PAX and kind not in GNU_LONG or size > MAX_EXTRA or not _headers_hold([header]):
                return None
            said = _extra(kind, blocks.read(offset + BLOCK, size))
            if said is None or said.keys() & long.keys():
                return None  # sparse files, binary names, a field said twice: tarfile's to read
            long.update(said)
            offset += BLOCK + -(-size // BLOCK) * BLOCK
    if not members or long or not _headers_hold(headers):
        return None  # an empty tar (tarfile's error), a header left without its member, a bad checksum
    return members


def _extra(kind: bytes, data: bytes) -> dict[str, str] | None:
    """What a PAX or GNU header says of the member(s) after it that matters here, or None where tarfile must
    read it (sparse files, binary names, a global header that names or sizes every member)."""
    if kind in GNU_LONG:
        return {GNU_LONG[kind]: _text(data + b"\0")}
    records = _pax_records(data)
    if records is None or any(k.startswith("GNU.sparse") or k == "hdrcharset" for k in records):
        return None
    wanted = {k: v for k, v in records.items() if k in ("path", "linkpath", "size")}
    if kind == b"g":
        return None if wanted else {}
    return wanted


def _usable(long: dict[str, str]) -> bool:
    """Whether what the headers before a member said can be applied as tarfile applies it here."""
    return (long.get("size", "0").isdigit() and not {"name", "path"} <= long.keys()
            and not {"linkname", "linkpath"} <= long.keys())
