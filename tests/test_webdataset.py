"""WebDataset and img2dataset conventions for --data: tar shard folders, brace patterns, shard lists, .cls / .json
labels sharing an image's key, every Pillow format, and every file that is not read counted with a reason."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex.cli import cli
from hashindex.data import BadImage, open_source, reopen_source
from hashindex.data.members import expand_braces, group_members, sample_key
from tests.conftest import image_bytes


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_shards(root, n_shards=3, per_shard=4, gz=False):
    """img2dataset-style shards: KEY.jpg + KEY.cls + KEY.txt (caption) + KEY.json, one README and one link
    member per shard. Returns the shard paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        path = root / f"{s:05d}.tar{'.gz' if gz else ''}"
        with tarfile.open(path, "w:gz" if gz else "w") as tf:
            for k in range(per_shard):
                key = f"{s:05d}{k:04d}"
                add(tf, f"{key}.jpg", image_bytes("JPEG", seed=s * 10 + k))
                add(tf, f"{key}.cls", str((s + k) % 3).encode())
                add(tf, f"{key}.txt", b"a caption")
                add(tf, f"{key}.json", json.dumps({"url": "http://x", "key": key}).encode())
            add(tf, "README.md", b"not an image")
            link = tarfile.TarInfo("alias.jpg")
            link.type, link.linkname = tarfile.SYMTYPE, f"{s:05d}0000.jpg"
            tf.addfile(link)
        paths.append(path)
    return paths


def reasons(src):
    out = {}
    for i in range(len(src)):
        try:
            src.read(i)
        except BadImage as e:
            out[src.paths[i]] = e.reason
    return out


def test_keys_and_braces():
    assert sample_key("a/b/00042.seg.png") == "a/b/00042" and sample_key("x/.hidden") == "x/.hidden"
    assert expand_braces("s/{00008..00011}.tar") == [f"s/{i:05d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    images, sidecars, unread = group_members(["k.jpg", "k.cls", "k.txt", "notes.md", "raw", "j.webp"])
    assert images == ["k.jpg", "raw", "j.webp"] and sidecars == {"k": "k.cls"} and unread == {"notes.md": "not-an-image"}


@pytest.mark.parametrize("form", ["folder", "pattern", "list", "gz-folder"])
def test_shard_sets_read_as_one_collection(tmp_path, form):
    shards = make_shards(tmp_path / "shards", gz=form == "gz-folder")
    spec = {"folder": tmp_path / "shards", "gz-folder": tmp_path / "shards",
            "pattern": tmp_path / "shards" / "{00000..00002}.tar", "list": tmp_path / "shards.txt"}[form]
    (tmp_path / "shards.txt").write_text("# shards\n" + "\n".join(f"shards/{p.name}" for p in shards) + "\n")
    src = open_source(str(spec))
    assert len(src) == 3 * 6  # 4 images + README + link per shard; captions and metadata travel with a sample
    assert src.class_names == []  # integer .cls labels stay integers
    images = [i for i, p in enumerate(src.paths) if p.endswith("0000.jpg") or p[-8:-4].isdigit()]
    assert [int(src.labels[i]) for i in images] == [(s + k) % 3 for s in range(3) for k in range(4)]
    assert src.paths[0] == f"{shards[0].name}/000000000.jpg"
    got = reasons(src)
    assert sorted(got.values()) == ["link-member"] * 3 + ["not-an-image"] * 3
    again = reopen_source(src.spec)
    assert again.paths == src.paths and np.array_equal(again.labels, src.labels)


def test_missing_shard_of_a_pattern_is_one_line(tmp_path):
    make_shards(tmp_path / "shards", n_shards=2)
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "shards" / "{00000..00003}.tar"),
                                   "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "00002.tar does not exist (2 of the pattern's 4 files missing)" in res.output


def test_sidecar_labels_in_a_folder_and_every_pillow_format(tmp_path):
    """A .json label overrides the parent folder; .jfif, .webp and extension-less files are read; a .txt that
    is no sample's field is a counted skip."""
    (tmp_path / "roses").mkdir()
    (tmp_path / "tulips").mkdir()
    (tmp_path / "roses" / "a.jfif").write_bytes(image_bytes("JPEG", seed=1))
    (tmp_path / "roses" / "b").write_bytes(image_bytes("PNG", seed=2))
    (tmp_path / "roses" / "c.webp").write_bytes(image_bytes("WEBP", seed=3))
    (tmp_path / "tulips" / "d.png").write_bytes(image_bytes("PNG", seed=4))
    (tmp_path / "tulips" / "d.json").write_text(json.dumps({"label": "roses"}))
    (tmp_path / "tulips" / "e.jpg").write_bytes(image_bytes("JPEG", seed=5))
    (tmp_path / "tulips" / "f.jpg").write_bytes(image_bytes("JPEG", seed=6))  # sidecars saved by Notepad: a BOM
    (tmp_path / "tulips" / "f.cls").write_bytes("roses\r\n".encode("utf-8-sig"))
    (tmp_path / "tulips" / "g.jpg").write_bytes(image_bytes("JPEG", seed=7))
    (tmp_path / "tulips" / "g.json").write_bytes(json.dumps({"label": "roses"}).encode("utf-8-sig"))
    (tmp_path / "tulips" / "notes.txt").write_text("hello")
    src = open_source(tmp_path)
    assert src.paths == ["roses/a.jfif", "roses/b", "roses/c.webp", "tulips/d.png", "tulips/e.jpg", "tulips/f.jpg",
                         "tulips/g.jpg", "tulips/notes.txt"]
    assert src.class_names == ["roses", "tulips"] and src.labels.tolist() == [0, 0, 0, 0, 1, 0, 0, -1]
    assert reasons(src) == {"tulips/notes.txt": "not-an-image"}


def test_extract_counts_every_unread_member(tiny_model, tmp_path):
    make_shards(tmp_path / "shards", n_shards=2)
    res = CliRunner().invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(tmp_path / "shards"),
                                   "--out", str(tmp_path / "s"), "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    totals = json.loads(res.stdout)["totals"]
    assert totals == {"read": 12, "written": 8, "skipped": 4,
                      "skipped_by_reason": {"link-member": 2, "not-an-image": 2}}
    lines = (tmp_path / "s" / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in lines) == ["00000.tar/README.md", "00000.tar/alias.jpg",
                                                             "00001.tar/README.md", "00001.tar/alias.jpg"]


@pytest.mark.parametrize("lists", ["images", "shards"])
def test_a_text_list_is_read_once(tmp_path, monkeypatch, lists):
    """A .txt --data is read once whether it lists shards or images (it used to be read twice)."""
    from pathlib import Path

    make_shards(tmp_path, n_shards=2)
    (tmp_path / "a.jpg").write_bytes(image_bytes("JPEG", seed=1))
    listing = tmp_path / "list.txt"
    listing.write_text("00000.tar\n00001.tar\n" if lists == "shards" else "a.jpg,cat\n")
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or real(self, *a, **k))
    per_tar = len(open_source(str(tmp_path / "00000.tar")))
    src = open_source(str(listing))
    assert len(src) == (2 * per_tar if lists == "shards" else 1)
    assert reads.count(listing) == 1
