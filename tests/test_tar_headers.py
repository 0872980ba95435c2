"""A plain tar's members read from its headers (`plain_tar_members`) are tarfile's, or left to tarfile."""

import io
import tarfile

import numpy as np
import pytest

from hashindex import HashindexError
from hashindex.data import open_source
from hashindex.data.archives import TarSource
from hashindex.data.tar_headers import plain_tar_members
from tests.conftest import CIFAR_TEST, MNIST_TEST, image_bytes, need


def tarfile_listing(path):
    with tarfile.open(path, "r:") as tf:
        return [(m.name, m.type, m.linkname, m.offset_data, m.size) for m in tf]


def listing(path):
    members = plain_tar_members(path)
    return None if members is None else [tuple(m) for m in members]


def add(tf, name, data=b"", kind=tarfile.REGTYPE, link="", pax=None):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind in tarfile.REGULAR_TYPES else 0
    if pax:
        info.pax_headers = pax
    tf.addfile(info, io.BytesIO(data) if info.size else None)


def every_kind(path, fmt, **kw):
    """Files of every block boundary, folders, links, a fifo, long names and non-ASCII ones, in ``fmt``."""
    with tarfile.open(path, "w", format=fmt, **kw) as tf:
        add(tf, "photos", kind=tarfile.DIRTYPE)
        for size in (0, 1, 511, 512, 513, 1024, 5000):
            add(tf, f"photos/cat/{size}.jpg", bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        add(tf, "photos/dog/" + "long-" * 30 + ".jpg", image_bytes())  # 166 characters
        add(tf, "p/" + "deep/" * 40 + "x.png", b"png")  # a path over 155 + 100: no ustar prefix fits
        add(tf, "photos/link.jpg", kind=tarfile.SYMTYPE, link="cat/1.jpg")
        add(tf, "photos/hard.jpg", kind=tarfile.LNKTYPE, link="photos/cat/1.jpg")
        add(tf, "photos/far.jpg", kind=tarfile.SYMTYPE, link="../" + "far/" * 30 + "x.jpg")  # a long target
        add(tf, "photos/pipe", kind=tarfile.FIFOTYPE)
        add(tf, "photos/dog/sidecar.cls", b"dog\n")
    return path


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_kind_of_member_as_tarfile_lists_it(tmp_path, fmt):
    path = tmp_path / "x.tar"
    if fmt == tarfile.USTAR_FORMAT:  # ustar has no long names: what it can hold
        with tarfile.open(path, "w", format=fmt) as tf:
            add(tf, "photos", kind=tarfile.DIRTYPE)
            for size in (0, 511, 512, 513):
                add(tf, f"photos/{'a' * 120}/{size}.jpg", b"y" * size)  # the prefix field holds the folder
            add(tf, "photos/l.jpg", kind=tarfile.SYMTYPE, link="a.jpg")
    else:
        every_kind(path, fmt)
    got = listing(path)
    assert got is not None and got == tarfile_listing(path)
    assert any(len(name) > 100 for name, *_ in got)


def test_pax_names_sizes_and_a_global_header(tmp_path):
    """Per-member PAX records (non-ASCII names, as Python writes them) and a global comment (as git archive
    writes it) are read; a global header that renames every member is left to tarfile."""
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "d7d05618061fe37d"}) as tf:
        add(tf, "fotos/café/été.jpg", b"z" * 700)
        add(tf, "fotos/日本/写真.png", b"w" * 10, pax={"mtime": "1700000000.5"})
        add(tf, "fotos/plain.jpg", b"v" * 3)
    got = listing(path)
    assert got == tarfile_listing(path) and got[0][0] == "fotos/café/été.jpg"
    renaming = tmp_path / "renaming.tar"
    with tarfile.open(renaming, "w", format=tarfile.PAX_FORMAT, pax_headers={"path": "all.jpg"}) as tf:
        add(tf, "a.jpg", b"a")
    assert listing(renaming) is None


def test_a_v7_folder_and_real_collections(tmp_path):
    """A v7 tar's folder (a file whose name ends in '/'), and the shared data's tars."""
    path = tmp_path / "v7.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        add(tf, "old/", kind=tarfile.AREGTYPE)
        add(tf, "old/x.jpg", b"j" * 100, kind=tarfile.AREGTYPE)
    assert listing(path) == tarfile_listing(path) and listing(path)[0][:2] == ("old", b"5")
    for real in (need(CIFAR_TEST), need(MNIST_TEST)):
        assert listing(real) == tarfile_listing(real)


def test_what_it_does_not_read_is_left_to_tarfile(tmp_path, monkeypatch):
    """A bad checksum, a truncated archive, an empty one, sparse members: None here, and TarSource lists
    them with tarfile (its one-line error where tarfile fails)."""
    good = every_kind(tmp_path / "good.tar", tarfile.GNU_FORMAT)
    data = good.read_bytes()
    bad = tmp_path / "bad.tar"
    at = 1024 + 5  # a letter of the third header's name
    bad.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[:2000])
    empty = tmp_path / "empty.tar"
    empty.write_bytes(bytes(10240))
    for path in (bad, truncated, empty):
        assert listing(path) is None, path
    from hashindex.data import tar_headers

    for every in (1, 2, 3):  # checksums checked in batches: the same answers wherever a batch ends
        monkeypatch.setattr(tar_headers, "CHECK_EVERY", every)
        assert listing(bad) is None and listing(good) == tarfile_listing(good), every
    with pytest.raises(HashindexError, match="bad.tar: not a readable tar archive \\(a damaged header at byte 1,024"):
        TarSource(bad)  # tarfile stops listing there without a word: the members after it would be missing
    assert TarSource(empty).paths == []  # nothing but end blocks: a tar of no members, as tarfile reads it
    with pytest.raises(HashindexError, match="empty.tar"):
        open_source(empty)
    sparse = bytearray(data)
    sparse[156:157] = b"S"  # the first header as a GNU sparse member, its checksum made right again
    sparse[148:156] = b"%06o\0 " % (sum(sparse[:148]) + 256 + sum(sparse[156:512]))
    (tmp_path / "sparse.tar").write_bytes(bytes(sparse))
    assert listing(tmp_path / "sparse.tar") is None


def with_field(data, header_at, start, value):
    """``data`` with one field of the header at byte ``header_at`` replaced, its checksum made right again."""
    h = bytearray(data[header_at:header_at + 512])
    h[start:start + len(value)] = value
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return data[:header_at] + bytes(h) + data[header_at + 512:]


def test_numeric_fields_are_read_as_tarfile_reads_them(tmp_path):
    """A header whose checksum holds but whose mode, uid or mtime tarfile cannot parse is one tarfile stops
    at: left to tarfile (and its error) here too; base-256 and space-padded fields, which it parses, are
    listed."""
    data = every_kind(tmp_path / "good.tar", tarfile.GNU_FORMAT).read_bytes()
    fields = [("mode", 100, b"07x7\0", False), ("mtime", 136, b"9" * 11, False), ("devminor", 337, b"-x", False),
              ("uid", 108, b"\x80" + bytes(6) + b"\x07", True), ("gid", 116, b"  17 \0", True),
              ("mtime", 136, b"17777777777\0", True)]
    for name, start, value, readable in fields:
        path = tmp_path / f"{name}-{readable}.tar"
        path.write_bytes(with_field(data, 1024, start, value))
        expected = tarfile_listing(path) if readable else None
        assert listing(path) == expected, (name, value)
        if not readable:
            with pytest.raises(HashindexError, match="a damaged header at byte 1,024"):
                TarSource(path)


def test_a_tar_source_is_the_same_read_either_way(tmp_path, monkeypatch):
    """Items, labels, sidecars, counted skips and offsets of a tar are the same read from its headers or
    through tarfile."""
    from hashindex.data import archives

    path = every_kind(tmp_path / "x.tar", tarfile.GNU_FORMAT)
    fast = TarSource(path)
    monkeypatch.setattr(archives, "plain_tar_members", lambda path: None)
    slow = TarSource(path)
    assert fast.paths == slow.paths and fast.class_names == slow.class_names and fast.unread == slow.unread
    assert np.array_equal(fast.labels, slow.labels) and np.array_equal(fast.offsets, slow.offsets)
    assert fast.class_names == ["cat", "deep", "dog"] and np.array_equal(fast.sizes, slow.sizes)
    cifar = open_source(need(CIFAR_TEST))
    assert cifar.read_bytes(0)[:2] == b"\xff\xd8"  # a JPEG, read at the offset found in its header
