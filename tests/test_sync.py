"""`hashindex sync`: an index kept in step with the folder it was built from (new files appended, gone ones
removed), equal to an index built from the folder as it is now."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import extract
from hashindex.cli import cli
from hashindex.data import reopen_source
from hashindex.errors import HashindexError
from hashindex.index import Index, build
from hashindex.originals import Originals
from hashindex.query import query
from hashindex.sync import sync
from tests.conftest import CIFAR_TEST, make_tar, need

CLASSES = ("cat", "dog", "ship")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """20 CIFAR-10 test images of each of three classes, as files (the first 12 of each go in the folder)."""
    need(CIFAR_TEST)
    out = tmp_path_factory.mktemp("pictures")
    counts = dict.fromkeys(CLASSES, 0)
    with tarfile.open(CIFAR_TEST) as tf:
        for m in tf:
            cls = m.name.split("/")[-2] if m.isfile() else None
            if cls in counts and counts[cls] < 20:
                (out / cls).mkdir(exist_ok=True)
                (out / cls / Path(m.name).name).write_bytes(tf.extractfile(m).read())
                counts[cls] += 1
    return out


def folder_of(pictures: Path, root: Path, per_class: int = 12) -> Path:
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for f in sorted((pictures / cls).iterdir())[:per_class]:
            shutil.copy(f, root / cls / f.name)
    return root


def members_of(pictures: Path, per_class: int, skip: int = 0) -> dict[str, bytes]:
    """class/name -> bytes of pictures ``skip`` to ``skip + per_class`` of each class: an archive's members."""
    return {f"{cls}/{f.name}": f.read_bytes() for cls in CLASSES
            for f in sorted((pictures / cls).iterdir())[skip:skip + per_class]}


def items(index_dir: Path) -> dict[str, tuple[bytes, str]]:
    """path -> (code, class) of every item: what an index built from the same files must hold."""
    index = Index.load(index_dir)
    codes = index.table_codes()
    return {p: (codes[i].tobytes(), index.class_names[index.labels[i]])
            for i, p in enumerate(index.paths(np.arange(index.count)))}


def test_sync_adds_new_files_and_removes_gone_ones(pictures, tiny_model, tmp_path):
    photos = folder_of(pictures, tmp_path / "photos")
    (photos / "cat" / "empty.jpg").write_bytes(b"")  # skipped by the extraction: never 'new' to a sync
    extract(str(tiny_model), str(photos), tmp_path / "shards", progress=False, log=lambda s: None)
    build(tmp_path / "shards", tmp_path / "index", progress=False, log=lambda s: None)
    before = Index.load(tmp_path / "index")
    added = []
    for cls in ("cat", "ship"):
        for f in sorted((pictures / cls).iterdir())[12:15]:
            shutil.copy(f, photos / cls / f.name)
            added.append(f"{cls}/{f.name}")
    gone = [sorted((photos / "dog").iterdir())[0], sorted((photos / "cat").iterdir())[1]]
    gone_ids = [int(before.ids[before.paths(np.arange(before.count)).index(f"{p.parent.name}/{p.name}")])
                for p in gone]
    for p in gone:
        p.unlink()
    (photos / "dog" / "notes.txt").write_text("not an image")  # a counted skip, never 'new'

    plan = sync(tmp_path / "index", dry_run=True, progress=False, log=lambda s: None)
    assert plan["added"] == 6 and plan["removed"] == 2 and sorted(plan["folders"][0]["new_paths"]) == sorted(added)
    assert Index.load(tmp_path / "index").count == before.count  # a dry run changes nothing

    done = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert done["added"] == 6 and done["removed"] == 2 and done["unreadable"] == 0
    after = Index.load(tmp_path / "index")
    assert after.count == before.count + 4
    assert not set(gone_ids) & set(after.ids.tolist())
    kept = np.isin(before.ids, after.ids)
    assert (after.ids[:kept.sum()] == before.ids[kept]).all()  # the others keep their ids and order
    assert after.ids[kept.sum():].min() > before.ids.max()  # new ids after every id held
    # what it holds equals an index built from the folder as it is now (same files, codes, classes)
    extract(str(tiny_model), str(photos), tmp_path / "fresh-shards", progress=False, log=lambda s: None)
    build(tmp_path / "fresh-shards", tmp_path / "fresh", progress=False, log=lambda s: None)
    assert items(tmp_path / "index") == items(tmp_path / "fresh")
    # a new file is an indexed item as any other: it finds itself first, and its image is served
    new_file = photos / added[0]
    rows = query(after, [str(new_file)], [], k=3)
    position = after.paths(np.arange(after.count)).index(added[0])
    assert rows[0]["results"][0]["path"] == added[0]
    assert Originals(after).read_bytes(position) == new_file.read_bytes()
    again = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert again["added"] == 0 and again["removed"] == 0
    (photos / "ship" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # new, but cannot be read
    broken = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert broken["added"] == 0 and broken["unreadable"] == 1
    assert sync(tmp_path / "index", dry_run=True, progress=False, log=lambda s: None)["added"] == 0  # not again


def test_sync_refuses_what_it_cannot_keep_in_step(pictures, tiny_model, tmp_path):
    photos = folder_of(pictures, tmp_path / "photos", per_class=5)
    extract(str(tiny_model), str(photos), tmp_path / "shards", progress=False, log=lambda s: None)
    build(tmp_path / "shards", tmp_path / "index", progress=False, log=lambda s: None)
    (photos / "zebra").mkdir()
    shutil.copy(sorted((pictures / "dog").iterdir())[-1], photos / "zebra" / "z.jpg")
    with pytest.raises(HashindexError, match=r"has new class folders \(zebra\) the index does not know"):
        sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert Index.load(tmp_path / "index").count == 15  # nothing changed
    res = CliRunner().invoke(cli, ["sync", str(tmp_path / "index")])
    assert res.exit_code == 2 and "has new class folders (zebra)" in res.output and len(res.output.splitlines()) == 1

    archive = make_tar(tmp_path / "gone.tar", members_of(pictures, 3))
    extract(str(tiny_model), str(archive), tmp_path / "tar-shards", progress=False, log=lambda s: None)
    build(tmp_path / "tar-shards", tmp_path / "tar-index", progress=False, log=lambda s: None)
    archive.unlink()  # (a drive unmounted): nothing there now to keep the index in step with
    res = CliRunner().invoke(cli, ["sync", str(tmp_path / "tar-index")])
    assert res.exit_code == 2 and "holds no collection read from a folder, an image list, a tar or a zip that is " \
        "there now" in res.output, res.output


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_an_archive_written_again_is_kept_in_step(pictures, tiny_model, tmp_path, kind):
    """A tar or a zip the index was built from, written again with members taken out and others added: sync
    appends the new members and removes the gone ones, so the index holds what one built from the archive as it
    is now holds (same paths, codes, classes); a new member's image is served from the archive; a second sync
    does nothing."""
    import zipfile

    def write(members: dict[str, bytes]) -> Path:
        path = tmp_path / f"photos.{kind}"
        if kind == "tar":
            return make_tar(path, members)
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return path

    archive = write(members_of(pictures, 6))
    extract(str(tiny_model), str(archive), tmp_path / "shards", progress=False, log=lambda s: None)
    build(tmp_path / "shards", tmp_path / "index", progress=False, log=lambda s: None)
    now = {k: v for i, (k, v) in enumerate(members_of(pictures, 6).items()) if i % 5}  # 4 members gone
    new = members_of(pictures, 2, skip=6)  # 6 added
    write({**now, **new})
    res = CliRunner().invoke(cli, ["remove", str(tmp_path / "index"), "--missing", "--dry-run", "--json"])
    gone = sorted(set(members_of(pictures, 6)) - set(now))
    assert res.exit_code == 0 and sorted(r["path"] for r in json.loads(res.output)) == gone  # remove --missing too
    plan = sync(tmp_path / "index", dry_run=True, progress=False, log=lambda s: None)
    assert plan["added"] == 6 and plan["removed"] == 4 and sorted(plan["folders"][0]["new_paths"]) == sorted(new)
    done = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert done["added"] == 6 and done["removed"] == 4
    extract(str(tiny_model), str(archive), tmp_path / "fresh-shards", progress=False, log=lambda s: None)
    build(tmp_path / "fresh-shards", tmp_path / "fresh", progress=False, log=lambda s: None)
    assert items(tmp_path / "index") == items(tmp_path / "fresh") and len(items(tmp_path / "fresh")) == 20
    after = Index.load(tmp_path / "index")
    name = sorted(new)[0]
    assert Originals(after).read_bytes(after.paths(np.arange(after.count)).index(name)) == new[name]
    again = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert again["added"] == 0 and again["removed"] == 0


def test_a_folder_of_tar_shards_is_kept_in_step(pictures, tiny_model, tmp_path):
    """A folder of tars (WebDataset shards) the index was built from, a shard added and one deleted: sync appends
    the new shard's members and removes the deleted one's (named under each shard's name), so the index holds
    what one built from the folder as it is now holds."""
    shards = tmp_path / "shards"
    shards.mkdir()
    members = list(members_of(pictures, 6).items())  # 18: three shards of 6
    for k in range(2):
        make_tar(shards / f"s{k}.tar", dict(members[6 * k:6 * k + 6]))
    extract(str(tiny_model), str(shards), tmp_path / "x", progress=False, log=lambda s: None)
    build(tmp_path / "x", tmp_path / "index", progress=False, log=lambda s: None)
    make_tar(shards / "s2.tar", dict(members[12:]))
    (shards / "s0.tar").unlink()
    done = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert done["added"] == 6 and done["removed"] == 6
    assert sorted(done["removed_paths"]) == sorted(f"s0.tar/{name}" for name, _ in members[:6])
    extract(str(tiny_model), str(shards), tmp_path / "fresh-x", progress=False, log=lambda s: None)
    build(tmp_path / "fresh-x", tmp_path / "fresh", progress=False, log=lambda s: None)
    assert items(tmp_path / "index") == items(tmp_path / "fresh") and len(items(tmp_path / "fresh")) == 12
    again = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert again["added"] == 0 and again["removed"] == 0


def test_sync_cli_dry_run_and_json(pictures, tiny_model, tmp_path):
    photos = folder_of(pictures, tmp_path / "photos", per_class=4)
    extract(str(tiny_model), str(photos), tmp_path / "shards", progress=False, log=lambda s: None)
    build(tmp_path / "shards", tmp_path / "index", progress=False, log=lambda s: None)
    new = sorted((pictures / "ship").iterdir())[10]
    shutil.copy(new, photos / "ship" / new.name)
    res = CliRunner().invoke(cli, ["-q", "sync", str(tmp_path / "index"), "--dry-run"])
    assert res.exit_code == 0 and f"+ ship/{new.name}" in res.output and "would add 1, would remove 0" in res.output
    res = CliRunner().invoke(cli, ["-q", "sync", str(tmp_path / "index"), "--json"])
    summary = json.loads(res.stdout)  # the extraction and append lines go to stderr
    assert res.exit_code == 0 and summary["added"] == 1 and Path(summary["shards"][0]).parent.name == "index.sync"


def test_check_contents_finds_files_edited_in_place(pictures, tiny_model, tmp_path):
    """A file the index holds, overwritten with another picture: by path nothing changed; with check_contents
    its item is removed and the file added again with its new code, as an index built now holds it."""
    photos = folder_of(pictures, tmp_path / "photos", per_class=5)
    extract(str(tiny_model), str(photos), tmp_path / "shards", progress=False, log=lambda s: None)
    build(tmp_path / "shards", tmp_path / "index", progress=False, log=lambda s: None)
    target = sorted((photos / "dog").iterdir())[2]
    target.write_bytes(sorted((pictures / "ship").iterdir())[-1].read_bytes())  # edited in place
    quiet = {"progress": False, "log": lambda s: None}
    assert sync(tmp_path / "index", dry_run=True, **quiet)["added"] == 0  # by path: nothing new
    plan = sync(tmp_path / "index", dry_run=True, check_contents=True, **quiet)
    assert plan["edited"] == 1 and plan["added"] == 1 and plan["removed_paths"] == [f"dog/{target.name}"]
    done = sync(tmp_path / "index", check_contents=True, **quiet)
    assert done["edited"] == 1 and done["added"] == 1 and done["removed"] == 1
    extract(str(tiny_model), str(photos), tmp_path / "fresh-shards", **quiet)
    build(tmp_path / "fresh-shards", tmp_path / "fresh", **quiet)
    assert items(tmp_path / "index") == items(tmp_path / "fresh")
    assert sync(tmp_path / "index", dry_run=True, check_contents=True, **quiet)["edited"] == 0



def test_an_image_list_is_kept_in_step_and_its_items_found_from_any_directory(pictures, tiny_model, tmp_path,
                                                                              monkeypatch):
    """A collection read from an image list (a CSV of path,label lines) names its items as its lines do, so the
    index finds their files from any working directory (`Originals`: grids, GET /items/ID/image); `sync` adds
    the lines added since, removes the items whose line is gone or whose file was deleted, and equals an index
    built from the list as it is now."""
    photos = folder_of(pictures, tmp_path / "photos", per_class=6)
    files = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    listing = photos / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{f},{f.split('/')[0]}\n" for f in files))
    monkeypatch.chdir(tmp_path)  # the list named relative to the directory extraction runs in
    extract(str(tiny_model), "photos/list.csv", "shards", progress=False, log=lambda s: None)
    build("shards", "index", progress=False, log=lambda s: None)
    monkeypatch.chdir(photos / "cat")  # and read from another
    index = Index.load(tmp_path / "index")
    assert index.paths(np.arange(2)) == files[:2]
    assert Originals(index).read_bytes(0) == (photos / files[0]).read_bytes()  # (was None: paths from the cwd)
    assert sync(tmp_path / "index", dry_run=True, progress=False, log=lambda s: None)["added"] == 0
    for named in (str(photos / files[3]), f"../{files[3]}"):  # a list item's file, as `duplicates --redundant`
        res = CliRunner().invoke(cli, ["remove", str(tmp_path / "index"), "--path", named, "--dry-run", "--json"])
        assert res.exit_code == 0 and [r["path"] for r in json.loads(res.stdout)] == [files[3]], res.output

    extra = sorted((pictures / "ship").iterdir())[10:12]
    for f in extra:
        shutil.copy(f, photos / "ship" / f.name)
    dropped, deleted = files[0], files[7]
    kept = [f for f in files if f != dropped] + [f"ship/{f.name}" for f in extra]
    listing.write_text("path,label\n" + "".join(f"{f},{f.split('/')[0]}\n" for f in kept))
    (photos / deleted).unlink()
    res = CliRunner().invoke(cli, ["remove", str(tmp_path / "index"), "--missing", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output  # --missing: the item whose line and the one whose file is gone
    assert sorted(row["path"] for row in json.loads(res.stdout)) == sorted([dropped, deleted])
    opened = []

    def counted(spec, *args, **kwargs):
        opened.append(spec)
        return reopen_source(spec, *args, **kwargs)
    monkeypatch.setattr("hashindex.sync.reopen_source", counted)
    monkeypatch.setattr("hashindex.data.reopen_source", counted)
    done = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert done["added"] == 2 and done["removed"] == 2 and done["folders"][0]["folder"] == str(listing)
    assert len(opened) == 1, opened  # the list read once: for its new lines and its gone items
    monkeypatch.setattr("hashindex.sync.reopen_source", reopen_source)
    monkeypatch.setattr("hashindex.data.reopen_source", reopen_source)
    after = Index.load(tmp_path / "index")
    assert sorted(after.paths(np.arange(after.count))) == sorted(set(kept) - {deleted})
    extract(str(tiny_model), str(listing), tmp_path / "fresh-shards", progress=False, log=lambda s: None)
    build(tmp_path / "fresh-shards", tmp_path / "fresh", progress=False, log=lambda s: None)
    assert items(tmp_path / "index") == items(tmp_path / "fresh")
    again = sync(tmp_path / "index", progress=False, log=lambda s: None)
    assert again["added"] == 0 and again["removed"] == 0
    # a list that names none of the index's paths (an index of a list made before items were named by their
    # lines: paths relative to the working directory) is left alone, not taken as every item gone
    listing.write_text("path,label\nphotos/ship/other.png,ship\n")
    res = CliRunner().invoke(cli, ["remove", str(tmp_path / "index"), "--missing", "--dry-run", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == [], res.output
    plan = sync(tmp_path / "index", dry_run=True, progress=False, log=lambda s: None)
    assert plan["removed"] == 0 and "none of its lines names a path the index holds" in plan["folders"][0]["skipped"]
