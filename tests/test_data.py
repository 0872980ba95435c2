"""Image sources on real shared data and on tiny (partly broken) files made here."""

import io
import gzip
import logging
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashindex import HashindexError
from hashindex.data import (BadImage, SkipLog, decode_image, load_arrays, open_source, reopen_source,
                            shared_folder_names, to_array, to_mode, warn_shared_folder_names)
from hashindex.data.images import as_net_input
from hashindex.service.params import upload_array
from tests.conftest import (CIFAR_TEST, FASHION, MNIST_TEST, SVHN, image_bytes, make_mixed_folder,
                            make_tar, need)


def read_all(src):
    """{path: reason or ''} after trying every item."""
    out = {}
    for i in range(len(src)):
        try:
            src.read_array(i, 32, 3)
            out[src.paths[i]] = ""
        except BadImage as e:
            out[src.paths[i]] = e.reason
    return out


def test_folder_tree_labels_and_bad_files(tmp_path):
    expected = make_mixed_folder(tmp_path)
    src = open_source(tmp_path)
    assert src.class_names == ["cat", "dog"]
    assert sorted(src.paths) == src.paths == sorted(expected)  # notes.txt a counted skip, order sorted
    for path, label in zip(src.paths, src.labels):
        assert src.class_names[label] == path.split("/")[0]
    assert read_all(src) == expected
    assert list(src.ids()) == list(range(len(expected)))
    again = open_source(tmp_path)
    assert again.paths == src.paths and list(again.ids()) == list(src.ids())


def test_folder_labels_parent_top_or_path(tmp_path, caplog):
    """Classes from folders: the parent (default), the first folder under the root (``#labels=top``) or the whole
    folder path (``#labels=path``), kept in the spec so a reopened collection has the same labels. A parent name
    several folders share (2019 of cats/2019 and dogs/2019) is found and warned about; the shards of a set each
    holding the class folders are not such a case."""
    tree = tmp_path / "tree"
    for i, path in enumerate(["4.jpg", "cats/2019/0.jpg", "cats/2020/1.jpg", "dogs/2019/2.jpg", "dogs/3.jpg"]):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(image_bytes(seed=i))
    parent = open_source(tree)
    # in walk order: a folder's files before its subfolders
    assert parent.class_names == ["2019", "2020", "dogs"] and list(parent.labels) == [-1, 0, 1, 2, 0]
    assert shared_folder_names(parent) == {"2019": ["cats/2019", "dogs/2019"]}
    with caplog.at_level(logging.WARNING, logger="hashindex"):
        warn_shared_folder_names(parent, "data")
    assert "class '2019' gathers the images of 2 folders (cats/2019, dogs/2019)" in caplog.text
    assert "'#labels=top'" in caplog.text and "\n" not in caplog.text.strip()
    top = open_source(f"{tree}#labels=top")
    assert top.class_names == ["cats", "dogs"] and list(top.labels) == [-1, 0, 0, 1, 1]
    assert shared_folder_names(top) == {} and top.spec == f"{tree.resolve()}#labels=top"
    again = reopen_source(top.spec + "#limit=4")
    by_path = dict(zip(top.paths, top.labels))
    assert again.class_names == top.class_names and all(by_path[p] == c for p, c in zip(again.paths, again.labels))
    path = open_source(f"{tree}#labels=path")
    assert path.class_names == ["cats/2019", "cats/2020", "dogs", "dogs/2019"]
    # a tar made with `tar cf set.tar .`: ./x.jpg lies at the root (unlabelled, not a class '.')
    members = {f"./{p}": image_bytes(seed=i) for i, p in enumerate(["x.jpg", "cats/2019/0.jpg", "dogs/2019/1.jpg"])}
    tar = make_tar(tmp_path / "set.tar", members)
    assert open_source(tar).class_names == ["2019"] and list(open_source(tar).labels) == [-1, 0, 0]
    assert open_source(f"{tar}#labels=top").class_names == ["cats", "dogs"]
    shards = tmp_path / "shards"
    shards.mkdir()
    for j in range(2):  # each shard holds both class folders: one class each, nothing shared
        make_tar(shards / f"{j}.tar", {f"{c}/{j}.jpg": image_bytes(seed=j) for c in ["cat", "dog"]})
    assert open_source(shards).class_names == ["cat", "dog"] and shared_folder_names(open_source(shards)) == {}
    from hashindex.data.labels import folder_label

    assert [folder_label(n) for n in ("../x.jpg", "./x.jpg", "/abs/cat/x.jpg", "a/../b/x.jpg")] == ["", "", "cat", "b"]
    # a folder copied from a Mac names 'élan' as 'e' + a combining accent (NFD); a list, as most tools, in NFC
    (tmp_path / "mac" / "e\u0301lan").mkdir(parents=True)
    (tmp_path / "mac" / "e\u0301lan" / "0.jpg").write_bytes(image_bytes(seed=1))
    (tmp_path / "nfc.csv").write_text(f"{tmp_path}/mac/e\u0301lan/0.jpg,\u00e9lan\n")
    assert open_source(tmp_path / "mac").class_names == open_source(tmp_path / "nfc.csv").class_names == ["\u00e9lan"]
    with pytest.raises(HashindexError, match=r"#labels=leaf: expected #labels=parent, top or path"):
        open_source(f"{tree}#labels=leaf")
    with pytest.raises(HashindexError, match="has labels of its own"):
        open_source(f"{need(FASHION)}#labels=top")


def test_load_arrays_counts_skips(tmp_path):
    make_mixed_folder(tmp_path)
    skips = SkipLog()
    images, labels, ids = load_arrays(open_source(tmp_path), 32, 3, workers=0, progress=False, skips=skips)
    assert images.shape == (9, 3, 32, 32) and images.dtype == np.uint8
    assert dict(skips.counts) == {"truncated": 1, "empty": 1, "not-an-image": 2}
    assert skips.summary() == "4 skipped (1 empty, 2 not-an-image, 1 truncated)"
    assert len(ids) == 9 and len(set(ids.tolist())) == 9


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(image_bytes("PNG", seed=i))
    src = open_source(tmp_path)
    assert src.class_names == [] and list(src.labels) == [-1, -1, -1]


def test_hidden_entries_are_counted_not_read(tmp_path):
    """Hidden files and folders (.DS_Store, macOS ._ forks, .ipynb_checkpoints) and __MACOSX are system
    metadata: counted `hidden` skips, never items or classes (torchvision's ImageFolder makes a class of
    .ipynb_checkpoints); a hidden folder is one skip, not walked. In a tar, each hidden member is one."""
    for path in ["cat/0.jpg", "cat/._0.jpg", ".ipynb_checkpoints/1.jpg", ".ipynb_checkpoints/2.jpg",
                 "__MACOSX/cat/._0.jpg", "dog/1.jpg", "dog/.thumbs/1.jpg", "dog/.hidden.tar"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(image_bytes(seed=len(path)))
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    src = open_source(tmp_path)
    assert src.class_names == ["cat", "dog"]
    assert read_all(src) == {"cat/0.jpg": "", "dog/1.jpg": "", **{p: "hidden" for p in [
        ".ipynb_checkpoints", "__MACOSX", ".DS_Store", "cat/._0.jpg", "dog/.thumbs", "dog/.hidden.tar"]}}
    members = {"./data/a/0.jpg": image_bytes(seed=1), "./data/a/._0.jpg": b"\0\5\26\7",
               "./.git/x.jpg": image_bytes(seed=2)}
    src = open_source(make_tar(tmp_path / "set.tar", members))
    assert src.class_names == ["a"] and read_all(src) == {"./data/a/0.jpg": "", "./data/a/._0.jpg": "hidden",
                                                          "./.git/x.jpg": "hidden"}


@pytest.mark.parametrize("name", ["set.tar", "set.tar.gz", "set.tar.bz2", "set.tar.xz"])
def test_tar_sources(tmp_path, name):
    members = {f"data/{c}/{i}.jpg": image_bytes(seed=10 * k + i) for k, c in enumerate(["b", "a"]) for i in range(4)}
    members["data/a/broken.jpg"] = b"\xff\xd8\xff garbage"
    members["README"] = b"not an image"
    src = open_source(make_tar(tmp_path / name, members))
    assert len(src) == 10 and src.class_names == ["a", "b"]  # README: no extension, so decoding decides
    assert src.paths[0] == "data/b/0.jpg"  # archive order
    result = read_all(src)
    assert result.pop("data/a/broken.jpg") in ("corrupt", "not-an-image", "truncated")
    assert result.pop("README") == "not-an-image"
    assert set(result.values()) == {""}
    # bytes read in place equal what was archived, in any order (gzip reopens backwards)
    for i in [3, 0, 7, 1]:
        assert src.read_bytes(i) == members[src.paths[i]]


def _patch_zip_flags(path, flags) -> None:
    """Rewrite the general-purpose flags of a zip's members in place, as other tools write them: ``flags(name,
    old) -> new`` for each local and central header (zipfile itself always flags non-ASCII names UTF-8 and
    writes no encrypted member)."""
    import struct

    raw = bytearray(path.read_bytes())
    for sig, flag_at, len_at, name_at in ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)):
        i = raw.find(sig)
        while i >= 0:
            (n,) = struct.unpack_from("<H", raw, i + len_at)
            name = bytes(raw[i + name_at:i + name_at + n]).decode("utf-8")
            (old,) = struct.unpack_from("<H", raw, i + flag_at)
            struct.pack_into("<H", raw, i + flag_at, flags(name, old))
            i = raw.find(sig, i + name_at + n)
    path.write_bytes(bytes(raw))


def test_zip_sources(tmp_path, tiny_model):
    """A zip reads as the same folder does: items in archive order, labels from folders and sidecars, every
    odd member a counted skip (hidden, a link, encrypted, broken); UTF-8 names without the flag read right;
    extraction from the zip gives the folder's codes."""
    import stat
    import zipfile

    expected = make_mixed_folder(tmp_path / "f")
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        for rel in sorted(expected):
            zf.write(tmp_path / "f" / rel, rel)
        zf.writestr("__MACOSX/cat/._good.jpg", b"\0\5\26\7")
        link = zipfile.ZipInfo("dog/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../cat/good.jpg")
        zf.writestr("dog/locked.jpg", image_bytes(seed=3))
        zf.writestr("dog/7.jpg", image_bytes(seed=11))
        zf.writestr("dog/7.cls", "cat")  # the sidecar wins over the folder
    _patch_zip_flags(tmp_path / "set.zip", lambda name, old: old | (name == "dog/locked.jpg"))  # encrypted
    src = open_source(tmp_path / "set.zip")
    assert src.description == f"zip {tmp_path / 'set.zip'}" and src.class_names == ["cat", "dog"]
    assert read_all(src) == {**expected, "__MACOSX/cat/._good.jpg": "hidden", "dog/link.jpg": "link-member",
                             "dog/locked.jpg": "encrypted", "dog/7.jpg": ""}
    assert src.class_names[src.labels[src.paths.index("dog/7.jpg")]] == "cat"
    folder = open_source(tmp_path / "f")
    for i, p in enumerate(folder.paths):
        if not expected[p]:
            assert src.read_bytes(src.paths.index(p)) == folder.read_bytes(i)
    from hashindex import ShardSet, extract

    for name in ("f", "set.zip"):  # worker processes each open the archive
        extract(str(tiny_model), str(tmp_path / name), tmp_path / f"s-{name}", workers=2, progress=False,
                log=lambda s: None)
    a, b = (ShardSet(tmp_path / f"s-{name}").load(("codes", "paths")) for name in ("f", "set.zip"))
    by_path = dict(zip(a["paths"], a["codes"].tolist()))
    assert {p: c for p, c in zip(b["paths"], b["codes"].tolist()) if p in by_path} == by_path
    assert sorted(set(b["paths"]) - set(by_path)) == ["dog/7.jpg"]
    names = {"dög café/ïmage 1.jpg": image_bytes(seed=1), "cat/0.jpg": image_bytes(seed=2)}
    with zipfile.ZipFile(tmp_path / "names.zip", "w") as zf:
        for name, data in names.items():
            zf.writestr(name, data)
    _patch_zip_flags(tmp_path / "names.zip", lambda name, old: old & ~0x800)  # UTF-8 names, not flagged so
    assert zipfile.ZipFile(tmp_path / "names.zip").namelist()[0] != "dög café/ïmage 1.jpg"  # Python's cp437 reading
    named = open_source(tmp_path / "names.zip")
    assert named.paths == list(names) and named.class_names == ["cat", "dög café"]
    assert named.read_bytes(0) == names["dög café/ïmage 1.jpg"]
    with zipfile.ZipFile(tmp_path / "powershell.zip", "w") as zf:  # Compress-Archive's '\' between folders
        zf.writestr("cat\\", b"")
        for name, data in names.items():
            zf.writestr(name.replace("/", "\\"), data)
    windows = open_source(tmp_path / "powershell.zip")
    assert windows.paths == list(names) and windows.class_names == ["cat", "dög café"] and not windows.unread
    assert windows.read_bytes(1) == names["cat/0.jpg"]
    # a folder of a set downloaded in parts: its zips and tars are read as shards, loose images first
    parts, members = tmp_path / "parts", {"cat/0.jpg": image_bytes(seed=4), "dog/1.jpg": image_bytes(seed=5)}
    parts.mkdir()
    with zipfile.ZipFile(parts / "a.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    make_tar(parts / "b.tar", {"cat/2.jpg": image_bytes(seed=6)})
    (parts / "loose.jpg").write_bytes(image_bytes(seed=7))
    shards = open_source(parts)
    assert shards.paths == ["loose.jpg", "a.zip/cat/0.jpg", "a.zip/dog/1.jpg", "b.tar/cat/2.jpg"]
    assert shards.class_names == ["cat", "dog"] and list(shards.labels) == [-1, 0, 1, 0] and not shards.unread
    assert shards.read_bytes(2) == members["dog/1.jpg"] and reopen_source(shards.spec).paths == shards.paths
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(HashindexError, match=r"data=.*bad\.zip: not a readable zip archive"):
        open_source(tmp_path / "bad.zip")


def test_real_cifar_tar():
    src = open_source(need(CIFAR_TEST))
    assert len(src) == 10000
    assert src.class_names[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(src.labels).tolist() == [1000] * 10
    img = src.read(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert src.class_names[src.labels[0]] == src.paths[0].split("/")[1]


def test_real_mnist_png_tar_is_greyscale():
    src = open_source(need(MNIST_TEST))
    assert len(src) == 10000 and src.class_names == [str(d) for d in range(10)]
    assert src.read(5).mode == "L"
    assert to_array(src.read(5), 32, 3).shape == (3, 32, 32)
    assert src.greyscale is None and src.is_greyscale()  # training's default: a 1-channel net


def test_a_folder_of_grey_images_is_greyscale_and_one_colour_image_makes_it_colour(tmp_path):
    (tmp_path / "grey" / "a").mkdir(parents=True)
    # 8-bit, 16-bit and grey-with-alpha PNGs, a grey JPEG, a bilevel BMP
    for i, (mode, fmt) in enumerate([("L", "PNG"), ("I;16", "PNG"), ("LA", "PNG"), ("L", "JPEG"), ("1", "BMP")]):
        Image.new(mode, (9, 7)).save(tmp_path / "grey" / "a" / f"{i}.{fmt.lower()}", format=fmt)
    (tmp_path / "grey" / "a" / "notes.png").write_bytes(b"not an image")  # unreadable: not counted either way
    assert open_source(tmp_path / "grey").is_greyscale()
    from hashindex.info import describe_collection
    assert describe_collection(str(tmp_path / "grey"))["channels"] == 1  # `hashindex info` says what training takes
    (tmp_path / "grey" / "a" / "z.png").write_bytes(image_bytes("PNG", mode="P", seed=9))
    assert not open_source(tmp_path / "grey").is_greyscale()  # a palette image: colour, whatever its palette
    assert not open_source(tmp_path / "grey" / "a" / "notes.png").is_greyscale()  # nothing readable: colour
    assert not open_source(need(CIFAR_TEST)).subset(100).is_greyscale()


def test_real_fashion_mnist_idx():
    need(FASHION)
    train = open_source(FASHION)
    test = open_source(f"{FASHION}:test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.class_names[0] == "T-shirt/top" and train.greyscale and train.is_greyscale()
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.read(0).size == (28, 28)


def write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_made_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(7, dtype=np.uint8))
    src = open_source(f"{tmp_path}:test")
    assert len(src) == 7 and list(src.labels) == list(range(7))
    assert np.array_equal(np.asarray(src.read(3)), images[3])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"junk"))
    with pytest.raises(HashindexError, match="not a valid IDX"):
        open_source(f"{tmp_path}:test")


def test_cifar_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 4]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in "abcdefghij"]}, f)
    src = open_source(f"{tmp_path}:test")
    assert len(src) == 5 and src.class_names == list("abcdefghij")
    expect = data[2].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(src.read(2)), expect)
    with pytest.raises(HashindexError, match="data_batch_1"):
        open_source(tmp_path)  # train split absent


def test_cifar100_python_files(tmp_path):
    """The official CIFAR-100 layout (cifar-100-python/{train,test,meta}): the 100 fine labels and their names."""
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    fine = [99, 0, 42, 7, 7, 3]
    with open(d / "test", "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * 6,
                     b"filenames": [b"x.png"] * 6}, f)
    names = [f"class{i}".encode() for i in range(100)]
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, f)
    for spec in (f"{tmp_path}:test", f"{d}:test"):
        src = open_source(spec)
        assert len(src) == 6 and list(src.labels) == fine and src.class_names[42] == "class42"
        assert np.array_equal(np.asarray(src.read(4)), data[4].reshape(3, 32, 32).transpose(1, 2, 0))
    with pytest.raises(HashindexError, match=r"cifar-100-python: missing CIFAR-100 file 'train'"):
        open_source(tmp_path)
    with open(d / "test", "wb") as f:
        pickle.dump({b"data": data[:, :100], b"fine_labels": fine}, f)
    with pytest.raises(HashindexError, match=r"test: not a CIFAR python batch \(expected 'data' rows of 3,072"):
        open_source(f"{d}:test")
    with open(d / "test", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(HashindexError, match=r"test: not a CIFAR python batch \(holds a list, not a dict\)"):
        open_source(f"{d}:test")


def test_stl10_binaries(tmp_path):
    """The official STL-10 layout (stl10_binary/{train,test}_{X,y}.bin, class_names.txt): images stored channel
    by channel in column-major order come out upright, labels 1-10 as 0-9; bad files are one-line errors."""
    rng = np.random.default_rng(0)
    d = tmp_path / "stl10_binary"
    d.mkdir()
    images = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)  # (N, H, W, C) as a viewer shows them
    images[1, :10, :, :] = 255  # a white band along the top of image 1: rows, not columns
    images.transpose(0, 3, 2, 1).tofile(d / "test_X.bin")  # the file's (N, C, W, H) order
    np.array([10, 1, 4], np.uint8).tofile(d / "test_y.bin")
    (d / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    for spec in (f"{tmp_path}:test", f"{d}:test"):
        src = open_source(spec)
        assert len(src) == 3 and list(src.labels) == [9, 0, 3] and src.class_names[9] == "c9"
        assert np.array_equal(np.asarray(src.read(1)), images[1]) and np.asarray(src.read(1))[:10].min() == 255
    with pytest.raises(HashindexError, match=r"stl10_binary: missing STL-10 file 'train_X.bin'"):
        open_source(tmp_path)
    np.array([11, 1, 4], np.uint8).tofile(d / "test_y.bin")
    with pytest.raises(HashindexError, match=r"test_y.bin: expected 3 labels from 1 to 10"):
        open_source(f"{d}:test")
    (d / "test_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(HashindexError, match=r"test_X.bin: not STL-10 images"):
        open_source(f"{d}:test")


def test_svhn_mat_files(tmp_path):
    """SVHN's format 2 (X: 32x32x3xN, y: 1-10 with 10 the digit 0), read without SciPy. The files in
    tests/data/svhn were written by SciPy 1.17 (``scipy.io.savemat``: train compressed, test not), an
    independent writer: train labels 10, 1, 7, test 3, 10; image i has a red band of value 200 + i along its
    top rows and a blue band of 100 + i down its left columns."""
    for spec, labels in ((SVHN, [0, 1, 7]), (f"{SVHN}:test", [3, 0]), (SVHN / "test_32x32.mat", [3, 0])):
        src = open_source(spec)
        assert list(src.labels) == labels and src.class_names == [str(d) for d in range(10)]
        for i in range(len(labels)):
            image = np.asarray(src.read(i))
            assert image.shape == (32, 32, 3) and (image[:4, :, 0] == 200 + i).all() and image[4:, 4:].max() == 0
            assert (image[:, :4, 2] == 100 + i).all()
        assert reopen_source(src.spec).paths == src.paths and src.spec.endswith(("svhn:train", "svhn:test", ".mat"))
    import h5py  # a -v7.3 file is HDF5 after a 512-byte header, each variable stored transposed
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        f["X"], f["y"] = np.asarray(src.images).transpose(0, 3, 2, 1), np.array([[3, 10]], np.float64)
    with open(tmp_path / "v73.mat", "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64")
    v73 = open_source(tmp_path / "v73.mat")
    assert list(v73.labels) == [3, 0] and np.array_equal(np.asarray(v73.read(1)), np.asarray(src.read(1)))
    with h5py.File(tmp_path / "no-y.mat", "w", userblock_size=512) as f:
        f["X"] = np.asarray(src.images).transpose(0, 3, 2, 1)
    with pytest.raises(HashindexError, match=r"no-y.mat: no numeric variable 'y' \(expected X, y\)"):
        open_source(tmp_path / "no-y.mat")
    (tmp_path / "notes.mat").write_bytes(b"MATLAB 4 data" + b"\0" * 200)
    with pytest.raises(HashindexError, match=r"notes.mat: not a MATLAB 5\+ .mat file"):
        open_source(tmp_path / "notes.mat", "--data")
    damaged = (SVHN / "train_32x32.mat").read_bytes()
    (tmp_path / "cut.mat").write_bytes(damaged[:200])
    with pytest.raises(HashindexError, match=r"cut.mat: a damaged .mat file"):
        open_source(tmp_path / "cut.mat")
    with pytest.raises(HashindexError, match=r"missing SVHN file 'train_32x32.mat'"):
        (tmp_path / "svhn").mkdir()
        (tmp_path / "svhn" / "test_32x32.mat").write_bytes((SVHN / "test_32x32.mat").read_bytes())
        open_source(tmp_path / "svhn")


def test_torchvision_svhn_reads_the_downloaded_file(tmp_path, monkeypatch):
    """torchvision:svhn[:test] fetches SVHN's file with torchvision's downloader (here a copy of the test file:
    no network) into the cache and reads it without SciPy, which torchvision's SVHN class would need."""
    import shutil

    import torchvision.datasets.utils as tvu

    fetched = []

    def download(url, root, filename, md5):
        fetched.append((url, filename))
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copy(SVHN / filename, Path(root) / filename)

    monkeypatch.setattr("hashindex.data.formats.DEFAULT_CACHE", tmp_path)
    monkeypatch.setattr(tvu, "download_url", download)
    src = open_source("torchvision:svhn:test")
    assert list(src.labels) == [3, 0] and fetched == [(fetched[0][0], "test_32x32.mat")]
    assert fetched[0][0].startswith("http") and (tmp_path / "torchvision" / "svhn" / "test_32x32.mat").is_file()


class _RunsCode:
    """Unpickling this calls os.system: what a crafted CIFAR batch named in a manifest could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_cannot_run_code(tmp_path, protocol):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": _RunsCode(tmp_path / "pwned"), b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(HashindexError, match="not a CIFAR python batch .*refusing to load posix.system"):
        open_source(f"{tmp_path}:test")
    assert not (tmp_path / "pwned").exists()
    # the reader still takes real batches written with the old protocol (as the official files are)
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [1, 0], b"filenames": [b"a.png", b"b.png"]}, f, protocol=protocol)
    assert np.array_equal(np.asarray(open_source(f"{tmp_path}:test").read(1)),
                          data[1].reshape(3, 32, 32).transpose(1, 2, 0))


def test_file_list(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    (tmp_path / "list.csv").write_text(
        "path,label\n# a comment\nimgs/cat/good.jpg,cat\n\nimgs/dog/pic.bmp,dog\nimgs/cat/missing.jpg,cat\n"
    )
    src = open_source(tmp_path / "list.csv")
    assert src.class_names == ["cat", "dog"] and list(src.labels) == [0, 1, 0]
    assert list(read_all(src).values()) == ["", "", "missing"]
    # a header naming its columns otherwise (Kaggle's "filename,class"; a .TSV, tab-separated) is no item either
    (tmp_path / "kaggle.TSV").write_text("Filename\tclass\nimgs/cat/good.jpg\tcat\nimgs/dog/pic.bmp\tdog\n")
    kaggle = open_source(tmp_path / "kaggle.TSV")
    assert kaggle.class_names == ["cat", "dog"] and list(kaggle.labels) == [0, 1] and len(kaggle) == 2
    # Excel's "CSV UTF-8": a byte-order mark first, CRLF line ends
    (tmp_path / "excel.csv").write_bytes("path,label\r\nimgs/cat/good.jpg,cat\r\n".encode("utf-8-sig"))
    excel = open_source(tmp_path / "excel.csv")  # items named as the list names them, files beside the list
    assert excel.paths == ["imgs/cat/good.jpg"] and excel.file(0) == tmp_path / "imgs/cat/good.jpg"
    (tmp_path / "id").write_bytes(image_bytes())  # a first field naming a file that is there is an item
    (tmp_path / "ids.csv").write_text("id,x\n")
    assert open_source(tmp_path / "ids.csv").paths == ["id"]
    (tmp_path / "ints.txt").write_text(f"{tmp_path}/imgs/cat/good.jpg,3\nimgs/dog/pic.bmp\n")
    ints = open_source(tmp_path / "ints.txt")
    assert list(ints.labels) == [3, -1]


def test_caffe_image_list(tmp_path):
    """DLBHC's and SSDH's lists (Caffe ImageData: 'path label', space-separated) read as they are; a path may
    hold spaces (the label is after the last one); a file with any comma, or an entry without a label, is CSV."""
    make_mixed_folder(tmp_path / "my imgs")
    (tmp_path / "train-file.txt").write_text(
        "# DLBHC style\nmy imgs/cat/good.jpg 3\n\n" f"{tmp_path}/my imgs/dog/pic.bmp\t7\nmy imgs/cat/missing.jpg 3\n")
    src = open_source(tmp_path / "train-file.txt")
    assert src.paths == ["my imgs/cat/good.jpg", f"{tmp_path}/my imgs/dog/pic.bmp", "my imgs/cat/missing.jpg"]
    assert src.file(0) == tmp_path / "my imgs/cat/good.jpg" and src.file(1) == tmp_path / "my imgs/dog/pic.bmp"
    assert list(src.labels) == [3, 7, 3] and src.class_names == []
    assert list(read_all(src).values()) == ["", "", "missing"]
    (tmp_path / "mixed.txt").write_text("my imgs/cat/good.jpg 3\nmy imgs/dog/pic.bmp,dog\n")
    mixed = open_source(tmp_path / "mixed.txt")  # a comma: the CSV format, where the first entry is a path
    assert mixed.paths[0] == "my imgs/cat/good.jpg 3" and list(mixed.labels) == [-1, 0]
    (tmp_path / "list.csv").write_text("my imgs/cat/good.jpg 3\n")  # .csv is always CSV
    assert open_source(tmp_path / "list.csv").paths == ["my imgs/cat/good.jpg 3"]


def test_one_hot_image_list(tmp_path):
    """HashNet's and DeepHash-pytorch's lists ('path 0 0 1 0', one column per class) read as class indices; a
    row of zeros is unlabelled; a list with several 1s on a line is a multi-label set; a Caffe list stays one."""
    make_mixed_folder(tmp_path / "imgs")
    (tmp_path / "train.txt").write_text("imgs/cat/good.jpg 0 0 1 0\nimgs/dog/pic.bmp  1 0 0 0 \n"
                                        "imgs/cat/missing.jpg 0 0 0 0\n")
    src = open_source(tmp_path / "train.txt")
    assert src.paths == ["imgs/cat/good.jpg", "imgs/dog/pic.bmp", "imgs/cat/missing.jpg"]
    assert list(src.labels) == [2, 0, -1] and src.class_names == [] and not src.multi_label
    (tmp_path / "multi.txt").write_text("imgs/cat/good.jpg 0 1 1 0\nimgs/dog/pic.bmp 1 0 0 0\n"
                                        "imgs/cat/missing.jpg 0 0 0 0\n")
    multi = open_source(tmp_path / "multi.txt")  # NUS-WIDE's and COCO's lists: label sets, one column per class
    assert multi.multi_label and multi.class_names == ["0", "1", "2", "3"]
    assert multi.label_sets.tolist() == [[False, True, True, False], [True, False, False, False], [False] * 4]
    assert list(multi.labels) == [1, 0, -1]  # each item's first class: what reads one class per item
    assert multi.targets() is multi.label_sets
    sub = multi.subset(2)
    assert sub.label_sets.tolist() == [multi.label_sets[0].tolist(), multi.label_sets[2].tolist()]
    assert multi.fingerprint() != open_source(tmp_path / "train.txt").fingerprint()
    multi.remap_labels(["3", "2", "1", "0", "4"])  # another vocabulary: the columns follow their names
    assert multi.label_sets.tolist()[0] == [False, True, True, False, False] and list(multi.labels) == [2, 3, -1]
    (tmp_path / "caffe.txt").write_text("imgs/cat/good.jpg 1\nimgs/dog/pic.bmp 0\n")  # one column: Caffe's label
    assert list(open_source(tmp_path / "caffe.txt").labels) == [1, 0]
    (tmp_path / "ragged.txt").write_text("imgs/cat/good.jpg 0 1\nimgs/dog/pic.bmp 1 0 0\n")  # widths differ
    ragged = open_source(tmp_path / "ragged.txt")  # so a Caffe list: the label is the last integer
    assert list(ragged.labels) == [1, 0] and ragged.paths[0] == "imgs/cat/good.jpg 0"


@pytest.mark.parametrize("spec, message", [
    ("/no/such/path", "no such file or directory"),
    ("{tmp}/empty", "holds no images"),
    ("{tmp}/x.json", "expected a folder"),
    ("{tmp}/bad.tar", "not a readable tar"),
])
def test_bad_specs(tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "bad.tar").write_bytes(b"\x00" * 100 + b"junk")
    with pytest.raises(HashindexError, match=message) as err:
        open_source(spec.format(tmp=tmp_path), "--data")
    assert "\n" not in str(err.value) and "--data" in str(err.value)


def test_modes_are_converted():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert to_mode(rgba, 3).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    i16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert to_mode(i16, 1).getpixel((0, 0)) == 255
    grey = Image.new("L", (4, 4), 77)
    assert to_mode(grey, 3).getpixel((0, 0)) == (77, 77, 77)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert to_mode(cmyk, 3).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    """A phone's portrait photo is stored sideways with an EXIF orientation tag: extraction, the Python API
    and the service's decoder all see it upright, as viewers show it (so it codes as the upright file does)."""
    upright = np.zeros((40, 24, 3), np.uint8)
    upright[:20] = 255  # white top half: tall and top-heavy, so a wrong turn shows
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the file holds the picture turned 90 degrees CCW
    Image.fromarray(upright).rotate(90, expand=True).save(tmp_path / "tagged.png", exif=exif)
    Image.fromarray(upright).save(tmp_path / "plain.png")
    src = open_source(tmp_path)
    tagged, plain = (src.read_array(src.paths.index(n), 32, 3) for n in ("tagged.png", "plain.png"))
    assert src.read(src.paths.index("tagged.png")).size == (24, 40)
    assert np.array_equal(tagged, plain) and tagged[:, :12].min() == 255 and tagged[:, 20:].max() == 0
    assert np.array_equal(as_net_input(Image.open(tmp_path / "tagged.png"), 32, 3)[0], plain)
    assert np.array_equal(upload_array((tmp_path / "tagged.png").read_bytes(), 32, 3), plain)
    exif[0x0112] = 9  # not an orientation: left as stored
    (tmp_path / "odd").mkdir()
    Image.fromarray(upright).save(tmp_path / "odd" / "plain.png", exif=exif)
    assert np.array_equal(open_source(tmp_path / "odd").read_array(0, 32, 3), plain)


def test_heic_photos_are_read(tmp_path, monkeypatch):
    """HEIC, the format phones store photos in, is read through pillow-heif (the heif extra; the tests install
    it) in folders, uploads and the Python API; without pillow-heif a .heic file is skipped with a reason that
    says what to install, never silently."""
    from hashindex.data import members

    picture = np.zeros((40, 24, 3), np.uint8)
    picture[:20] = 255  # white top half
    (tmp_path / "flowers").mkdir()
    Image.fromarray(picture).save(tmp_path / "flowers" / "IMG_0001.HEIC", format="HEIF", quality=95)
    Image.fromarray(picture).save(tmp_path / "flowers" / "plain.png")
    src = open_source(tmp_path)
    heic, plain = (src.read_array(src.paths.index(f"flowers/{n}"), 32, 3) for n in ("IMG_0001.HEIC", "plain.png"))
    assert src.read(src.paths.index("flowers/IMG_0001.HEIC")).size == (24, 40) and src.class_names == ["flowers"]
    assert np.abs(heic.astype(int) - plain).mean() < 8 and heic[:, :12].min() > 200 and heic[:, 20:].max() < 60
    assert np.array_equal(upload_array((tmp_path / "flowers" / "IMG_0001.HEIC").read_bytes(), 32, 3), heic)
    assert np.array_equal(as_net_input(Image.open(tmp_path / "flowers" / "IMG_0001.HEIC"), 32, 3)[0], heic)
    without = members.image_extensions() - set(members.HEIF_EXTENSIONS)
    monkeypatch.setattr(members, "image_extensions", lambda: without)  # as if pillow-heif were not installed
    images, _, unread = members.group_members(["a/IMG_0002.heic", "a/b.jpg", "a/notes.txt"])
    assert images == ["a/b.jpg"] and unread == {"a/IMG_0002.heic": "needs-pillow-heif", "a/notes.txt": "not-an-image"}


def test_a_thumbnail_is_a_jpeg_every_browser_draws(tmp_path):
    """`thumbnail_jpeg` (GET /items/ID/image?size=N): any file pillow reads (a TIFF, a 16-bit PNG, a HEIC, a
    sideways phone photo with its EXIF tag, a transparent PNG) becomes an upright JPEG at most N px a side,
    its aspect kept, never enlarged; what is not an image raises BadImage."""
    from hashindex.data import thumbnail_jpeg

    picture = np.zeros((400, 240, 3), np.uint8)
    picture[:200] = 255  # white top half: tall and top-heavy, so a wrong turn shows
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {}
    for name, img, kw in (("a.tif", Image.fromarray(picture), {}), ("a.heic", Image.fromarray(picture), {}),
                          ("sideways.jpg", Image.fromarray(picture).rotate(90, expand=True), {"exif": exif}),
                          ("deep.png", Image.fromarray((picture[..., 0].astype(np.uint16) * 257)), {})):
        img.save(tmp_path / name, **kw)
        files[name] = (tmp_path / name).read_bytes()
    for name, data in files.items():
        small = Image.open(io.BytesIO(thumbnail_jpeg(data, 100)))
        grey = np.asarray(small.convert("L"), float)
        assert small.format == "JPEG" and small.size == (60, 100), name
        assert grey[:45].min() > 200 and grey[55:].max() < 60, name  # upright, levels kept (16-bit scaled)
    clear = Image.new("RGBA", (50, 20), (255, 0, 0, 0))  # wholly transparent: drawn on white, not black
    out = io.BytesIO()
    clear.save(out, "PNG")
    small = Image.open(io.BytesIO(thumbnail_jpeg(out.getvalue(), 100)))
    assert small.size == (50, 20) and np.asarray(small).min() > 240  # never enlarged
    with pytest.raises(BadImage, match="not-an-image"):
        thumbnail_jpeg(b"not an image at all", 100)


def test_decode_reasons():
    with pytest.raises(BadImage) as e:
        decode_image(b"")
    assert e.value.reason == "empty"
    with pytest.raises(BadImage) as e:
        decode_image(b"GIF89a nonsense")
    assert e.value.reason in ("corrupt", "truncated", "not-an-image")
    big = decode_image(image_bytes(size=(4000, 3000)), max_side=64)
    assert max(big.size) <= 4000 // 8 * 2  # JPEG draft decodes at reduced scale


def test_a_jpeg_over_pillows_bomb_limit_is_decoded_at_reduced_scale(monkeypatch):
    """A JPEG bound for the net is decoded at reduced scale, so the pixel limits apply to what is decoded: a photo
    over Pillow's decompression-bomb limit (179 MP; a 200 MP phone photo) is read, not skipped as too-large, with
    the pixels it would have had under the limit; a PNG of that size, or a JPEG decoded whole, is still refused,
    and so is a JPEG still over the limit at 1/8 scale. Pillow's limit is lowered here to keep the images small."""
    jpeg = image_bytes(size=(400, 300))
    png = image_bytes("PNG", size=(400, 300))
    under = upload_array(jpeg, 32, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 400 x 300 is 12x it; at 1/4 scale 100 x 75, under
    assert np.array_equal(upload_array(jpeg, 32, 3), under)  # (was BadImage("too-large"))
    assert decode_image(jpeg, max_side=64).size == (100, 75)
    for data, side in ((png, 64), (jpeg, None)):
        with pytest.raises(BadImage) as e:
            decode_image(data, max_side=side)
        assert e.value.reason == "too-large"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(BadImage) as e:  # 7,500 pixels at 1/4 scale, over twice 500
        decode_image(jpeg, max_side=64)
    assert e.value.reason == "too-large"
    monkeypatch.undo()
    assert decode_image(jpeg, max_side=64, max_pixels=10_000).size == (100, 75)  # a cap counts what is decoded
    with pytest.raises(BadImage, match="too-large: 400x300 pixels, more than 10,000"):
        decode_image(png, max_side=64, max_pixels=10_000)


def test_a_source_reads_a_picture_to_draw_at_reduced_scale(tmp_path):
    """`ImageSource.read(i, max_side)` (a results grid's tiles): a camera-size JPEG decoded at reduced scale, not
    whole; other formats and array-backed sources as they are."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big.jpg").write_bytes(image_bytes(size=(2000, 1500)))
    (tmp_path / "a" / "big.png").write_bytes(image_bytes("PNG", size=(600, 400)))
    src = open_source(tmp_path)
    whole, small = src.read(0), src.read(0, max_side=264)
    assert whole.size == (2000, 1500) and small.size == (500, 375)  # 1/4 scale: the largest still >= 264
    assert src.read(1, max_side=264).size == (600, 400)


def test_odd_modes_never_crash(tmp_path):
    """Colour modes Pillow may not convert give an array or a counted skip, never another error."""
    Image.new("LAB", (8, 8)).save(tmp_path / "lab.tif")
    Image.new("I;16", (8, 8)).save(tmp_path / "deep.png")
    Image.new("1", (8, 8)).save(tmp_path / "bilevel.png")
    skips = SkipLog()
    images, _, _ = load_arrays(open_source(tmp_path), 32, 3, workers=0, progress=False, skips=skips)
    assert len(images) + skips.total == 3 and len(images) >= 2
    assert set(skips.counts) <= {"unsupported", "corrupt", "not-an-image"}


class _SlowInWorkers:
    """An array source whose item 9 takes 3 s to read in a decode worker, and no time in the main process."""

    def __new__(cls, parent: int):
        from hashindex.data import ArraySource

        class Slow(ArraySource):
            def read_array(self, i, size, channels):
                if i == 9 and os.getpid() != parent:
                    time.sleep(3)
                return super().read_array(i, size, channels)

        images = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)
        return Slow("16 arrays", images, np.arange(16) % 2, ["a", "b"], "mem")


def test_decode_workers_deliver_under_a_temp_folder_too_deep_for_a_socket(tmp_path, monkeypatch, caplog):
    """A temp folder whose path leaves no room for a Unix socket's name (107 bytes at most) cost every batch
    handed over as a shared-memory tensor: the worker's queue thread dropped it and the parent waited (the test
    suite's stall, under a pytest worker's deep tmp_path). The batches come back whole and at once."""
    import tempfile

    import torch

    from hashindex.data import ArraySource, loading

    deep = tmp_path / ("d" * (110 - len(str(tmp_path))))
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))  # the workers, forked, inherit it
    monkeypatch.setattr(loading, "STALL_S", 10.0)
    images = np.random.default_rng(1).integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)
    source = ArraySource("16 arrays", images, np.arange(16) % 2, ["a", "b"], "mem")
    with caplog.at_level(logging.WARNING, logger="hashindex"):
        batches = list(loading.iter_batches(source, 8, 3, batch_size=4, workers=2))
    assert "decode workers delivered nothing" not in caplog.text
    assert np.concatenate([pos for _, pos, _ in batches]).tolist() == list(range(16))
    assert all(isinstance(b, torch.Tensor) and b.dtype == torch.uint8 for b, _, _ in batches)
    assert torch.equal(torch.cat([b for b, _, _ in batches]), torch.from_numpy(images.transpose(0, 3, 1, 2)))


def test_stuck_decode_workers_are_given_up_and_the_rest_decoded_here(monkeypatch, caplog):
    """Workers that deliver no batch for STALL_S seconds (a batch lost on its way, as the too-deep temp folder
    lost them) are given up: the batches not yet yielded are decoded in this process, each item once, in order."""
    from hashindex.data import loading

    monkeypatch.setattr(loading, "STALL_S", 1.0)
    source = _SlowInWorkers(os.getpid())
    with caplog.at_level(logging.WARNING, logger="hashindex"):
        batches = list(loading.iter_batches(source, 8, 3, batch_size=4, workers=2))
    assert np.concatenate([pos for _, pos, _ in batches]).tolist() == list(range(16))
    assert "decode workers delivered nothing for 1 s: decoding items 8-15 in this process" in caplog.text
