"""Parquet and Arrow files as --data (hashindex.data.columnar): a Hugging Face dataset folder (Image and ClassLabel
columns, split files), `datasets`' save_to_disk and cache layouts (Arrow), plain Parquet written by other tools (a
binary column, string or list labels), and bad input."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hashindex import ShardSet, extract
from hashindex.cli import cli
from hashindex.data import BadImage, iter_batches, open_source, reopen_source
from hashindex.errors import HashindexError
from tests.conftest import CIFAR_TEST, image_bytes, make_tar, need

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def cifar_members(n: int) -> list[tuple[str, bytes]]:
    """n CIFAR-10 test JPEGs spread over the classes (every 10,000 / n-th member): (name, bytes)."""
    step = 10_000 // n
    out = []
    with tarfile.open(need(CIFAR_TEST)) as tf:
        for i, m in enumerate(m for m in tf if m.isfile()):
            if i % step == 0:
                out.append((m.name, tf.extractfile(m).read()))
    return out[:n]


def hf_table(members: list[tuple[str, bytes]], column: str = "img"):
    """A table as Hugging Face datasets writes one: an Image struct column and a ClassLabel column."""
    features = {column: {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}
    table = pa.table({column: pa.array([{"bytes": data, "path": None} for _, data in members], IMAGE_TYPE),
                      "label": pa.array([CLASSES.index(name.split("/")[1]) for name, _ in members], pa.int64())})
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def write_hf_dataset(root, members, test_members):
    """A dataset folder as the Hub holds one: data/{split}-0000N-of-00002.parquet and a card."""
    (root / "data").mkdir(parents=True)
    half = len(members) // 2
    for k, part in enumerate((members[:half], members[half:])):
        pq.write_table(hf_table(part), root / "data" / f"train-{k:05d}-of-00002.parquet", row_group_size=16)
    pq.write_table(hf_table(test_members), root / "data" / "test-00000-of-00001.parquet", row_group_size=16)
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    return root


def test_hugging_face_dataset_folder_reads_its_splits(tmp_path):
    members = cifar_members(60)
    root = write_hf_dataset(tmp_path / "cifar", members[:40], members[40:])
    train = open_source(root)
    assert len(train) == 40 and train.class_names == CLASSES and train.spec == f"{root.resolve()}:train"
    assert train.paths[0] == "data/train-00000-of-00002.parquet#0"
    assert train.paths[25] == "data/train-00001-of-00002.parquet#5"
    assert [train.read_bytes(i) for i in range(40)] == [data for _, data in members[:40]]  # row groups of 16
    assert [CLASSES[v] for v in train.labels] == [name.split("/")[1] for name, _ in members[:40]]
    test = open_source(f"{root}:test")
    assert len(test) == 20 and test.read_bytes(19) == members[59][1]
    again = reopen_source(test.spec)
    assert again.paths == test.paths and again.fingerprint() == test.fingerprint()
    one = open_source(root / "data" / "test-00000-of-00001.parquet")  # a file on its own
    assert one.paths[3] == "test-00000-of-00001.parquet#3" and one.read_bytes(3) == members[43][1]


def test_a_brace_pattern_or_a_list_of_parquet_files(tmp_path):
    """Parquet files named by a brace pattern or a .txt list read as one source, every file in the order named
    (whatever split their names say), reopened from the recorded spec; a missing one is one line."""
    members = cifar_members(60)
    data = write_hf_dataset(tmp_path / "cifar", members[:40], members[40:]) / "data"
    pattern = f"{data}/{{train-00001-of-00002,test-00000-of-00001}}.parquet"
    source = open_source(pattern)
    assert len(source) == 40 and source.paths[0] == "train-00001-of-00002.parquet#0"
    assert [source.read_bytes(i) for i in (0, 19, 20, 39)] == [members[i][1] for i in (20, 39, 40, 59)]
    assert source.class_names == CLASSES and source.spec == pattern
    assert reopen_source(source.spec + "#limit=5").paths == source.subset(5).paths
    listed = tmp_path / "tables.txt"
    listed.write_text("# one per line, relative to the list\ncifar/data/test-00000-of-00001.parquet\n"
                      f"{data}/train-00000-of-00002.parquet\n")
    from_list = open_source(listed)
    assert len(from_list) == 40 and from_list.read_bytes(20) == members[0][1]
    assert reopen_source(from_list.spec).fingerprint() == from_list.fingerprint()
    by_index = open_source(f"{listed}#labels=label")
    assert by_index.labels.tolist() == from_list.labels.tolist()
    for spec, said in ((f"{data}/train-0000{{0..2}}-of-00002.parquet", "train-00002-of-00002.parquet does not "
                        "exist (1 of the pattern's 3 files missing)"),
                       (f"{data}/{{train-00000-of-00002.parquet,../README.md}}", "a brace pattern must name")):
        res = CliRunner().invoke(cli, ["info", spec])
        assert res.exit_code == 2 and said in res.output and res.output.count("\n") == 1, res.output
    listed.write_text("cifar/data/gone.parquet\n")
    res = CliRunner().invoke(cli, ["info", str(listed)])
    assert res.exit_code == 2 and "lists" in res.output and "gone.parquet, which does not exist" in res.output
    listed.write_text("cifar/data/test-00000-of-00001.parquet\nshard-000.tar\n")  # two kinds: not an image list
    res = CliRunner().invoke(cli, ["info", str(listed)])
    assert res.exit_code == 2 and "lists both tars and Parquet/Arrow files" in res.output, res.output
    assert res.output.count("\n") == 1


def test_workers_read_their_own_row_groups(tmp_path):
    members = cifar_members(50)
    root = write_hf_dataset(tmp_path / "cifar", members[:40], members[40:])
    source = open_source(root)
    clone = pickle.loads(pickle.dumps(source))  # as a DataLoader worker gets it: no open reader travels
    assert clone.read_bytes(39) == members[39][1]
    here = np.concatenate([b.numpy() for b, _, _ in iter_batches(source, 32, 3, batch_size=8, workers=0)])
    there = np.concatenate([b.numpy() for b, _, _ in iter_batches(source, 32, 3, batch_size=8, workers=2)])
    assert here.shape == (40, 3, 32, 32) and np.array_equal(here, there)


def test_extract_from_parquet_equals_extract_from_the_tar(tiny_model, tmp_path):
    members = cifar_members(100)
    tar = make_tar(tmp_path / "same.tar", dict(members))
    pq.write_table(hf_table(members), tmp_path / "same.parquet", row_group_size=32)
    a = extract(str(tiny_model), str(tar), tmp_path / "from-tar", workers=0, progress=False, log=lambda s: None)
    b = extract(str(tiny_model), str(tmp_path / "same.parquet"), tmp_path / "from-parquet", workers=0,
                progress=False, log=lambda s: None)
    assert a["totals"] == b["totals"]
    x, y = (ShardSet(tmp_path / d).load(("codes", "features", "labels")) for d in ("from-tar", "from-parquet"))
    for key in ("codes", "features", "labels"):
        assert np.array_equal(x[key], y[key]), key


def test_plain_parquet_string_and_list_labels(tmp_path):
    images = [image_bytes("PNG", seed=s) for s in range(6)]
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": list(range(6)), "image": pa.array(images, pa.binary()),
                             "class": ["dog", "cat", "dog", None, "emu", "cat"],
                             "tags": [["a"], ["b", "a"], [], None, ["c"], ["a"]]}), path)
    source = open_source(path)
    assert source.class_names == ["cat", "dog", "emu"] and source.labels.tolist() == [1, 0, 1, -1, 2, 0]
    assert source.read_bytes(4) == images[4]
    tags = open_source(f"{path}#labels=tags")
    assert tags.multi_label and tags.class_names == ["a", "b", "c"]
    assert tags.label_sets.astype(int).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1],
                                                    [1, 0, 0]]
    assert reopen_source(tags.spec).multi_label  # the column choice is in the spec
    ints = open_source(f"{path}#labels=id")
    assert ints.class_names == [str(i) for i in range(6)] and ints.labels.tolist() == list(range(6))


def test_greyscale_rows_and_missing_images(tmp_path):
    path = tmp_path / "digits.parquet"
    cells = [{"bytes": image_bytes("PNG", mode="L", seed=s), "path": None} for s in range(3)]
    cells[1] = {"bytes": None, "path": None}
    pq.write_table(pa.table({"image": pa.array(cells, IMAGE_TYPE), "label": [0, 1, 2]}), path)
    source = open_source(path)
    assert source.greyscale is None  # opening reads no image: only training asks
    assert source.is_greyscale() and source.subset(2).is_greyscale()  # training's default: one channel
    rgb = tmp_path / "rgb.parquet"
    pq.write_table(pa.table({"image": pa.array([{"bytes": image_bytes("PNG", seed=0), "path": None}], IMAGE_TYPE),
                             "label": [0]}), rgb)
    assert not open_source(rgb).is_greyscale()
    for mode in ("LA", "I;16B"):  # grey with alpha, 16-bit big-endian grey: one channel too (were read as RGB)
        buf = io.BytesIO()
        Image.new(mode, (8, 8)).save(buf, format="PNG" if mode == "LA" else "TIFF")
        grey = tmp_path / f"grey-{len(mode)}.parquet"
        pq.write_table(pa.table({"image": pa.array([{"bytes": buf.getvalue(), "path": None}], IMAGE_TYPE),
                                 "label": [0]}), grey)
        assert open_source(grey).is_greyscale(), mode
    with pytest.raises(BadImage) as e:
        source.read_bytes(1)
    assert e.value.reason == "missing"


@pytest.mark.parametrize("spec_suffix,table,expected", [
    ("#labels=nope", {"image": [b"x"], "label": [0]}, "#labels=nope: no such column; columns: image, label"),
    ("", {"name": ["a.jpg"], "label": [0]}, "no image column"),
    ("#labels=top", {"image": [b"x"], "label": [0]}, "classes of Parquet or Arrow rows come from a column"),
    ("#labels=weight", {"image": [b"x"], "weight": [0.5]}, "label column 'weight' holds double"),
])
def test_bad_parquet_input_is_one_line(tmp_path, spec_suffix, table, expected):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(table), path)
    with pytest.raises(HashindexError, match=expected.replace("(", r"\(")):
        open_source(f"{path}{spec_suffix}")
    result = CliRunner().invoke(cli, ["info", f"{path}{spec_suffix}"])
    assert result.exit_code == 2 and expected in result.output and len(result.output.strip().splitlines()) == 1


def test_split_not_there_and_class_label_out_of_range(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    table = hf_table([("test/cat/0.jpg", image_bytes())])
    pq.write_table(table, root / "validation-00000-of-00001.parquet")
    with pytest.raises(HashindexError, match="no 'train' split among its Parquet or Arrow files "
                                             "\\(splits: validation\\)"):
        open_source(root)
    bad = table.set_column(1, "label", pa.array([12], pa.int64()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(HashindexError, match="label 12 in column 'label' is not one of its 10 class names"):
        open_source(tmp_path / "bad.parquet")


def test_label_column_option_is_refused_where_folders_name_classes(tmp_path):
    tar = make_tar(tmp_path / "x.tar", {"cat/1.jpg": image_bytes()})
    with pytest.raises(HashindexError, match="a label column is chosen so in Parquet and Arrow files only"):
        open_source(f"{tar}#labels=label")
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_bytes(image_bytes())
    with pytest.raises(HashindexError, match="a label column is chosen so in Parquet and Arrow files only"):
        open_source(f"{tmp_path / 'photos'}#labels=label")


def write_arrow(path, table, stream: bool = True, batch: int = 16):
    """An Arrow IPC file as `datasets` writes one (a stream of record batches), or in the IPC file format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink:
        writer = (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, table.schema)
        for b in table.to_batches(max_chunksize=batch):
            writer.write_batch(b)
        writer.close()


def test_save_to_disk_and_cache_layouts_read_as_arrow(tmp_path):
    members = cifar_members(50)
    saved = tmp_path / "saved"  # DatasetDict.save_to_disk: a folder per split, dataset_dict.json beside them
    write_arrow(saved / "train" / "data-00000-of-00001.arrow", hf_table(members[:30]))
    write_arrow(saved / "test" / "data-00000-of-00001.arrow", hf_table(members[30:]))
    for name in ("train/state.json", "train/dataset_info.json", "test/state.json", "dataset_dict.json"):
        (saved / name).write_text("{}")
    train, test = open_source(saved), open_source(f"{saved}:test")
    assert (len(train), len(test)) == (30, 20) and train.class_names == CLASSES
    assert train.paths[17] == "train/data-00000-of-00001.arrow#17" and train.read_bytes(17) == members[17][1]
    assert [test.read_bytes(i) for i in range(20)] == [d for _, d in members[30:]]
    assert pickle.loads(pickle.dumps(test)).read_bytes(19) == members[49][1]
    cache = tmp_path / "cache"  # the datasets cache: cifar10-train.arrow, cifar10-test.arrow
    write_arrow(cache / "cifar10-train.arrow", hf_table(members[:30]), stream=False)
    write_arrow(cache / "cifar10-test.arrow", hf_table(members[30:]))
    assert [open_source(f"{cache}:test").read_bytes(i) for i in (0, 19)] == [members[30][1], members[49][1]]
    assert open_source(cache).labels.tolist() == train.labels.tolist()
    assert reopen_source(open_source(f"{cache}:test").spec).paths[0] == "cifar10-test.arrow#0"
    (tmp_path / "junk.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(HashindexError, match="junk.arrow: not an Arrow file pyarrow reads"):
        open_source(tmp_path / "junk.arrow")


def test_a_damaged_row_group_is_a_counted_skip_of_its_rows(tmp_path):
    images = [image_bytes("PNG", seed=s) for s in range(8)]
    path = tmp_path / "two-groups.parquet"
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": [0, 1] * 4}), path, row_group_size=4)
    data = bytearray(path.read_bytes())
    data[4:40] = b"\x07" * 36  # the first row group's first page header
    path.write_bytes(bytes(data))
    source = open_source(path)
    with pytest.raises(BadImage) as e:
        source.read_bytes(1)
    assert e.value.reason == "unreadable" and "row group 0" in str(e.value)
    assert [source.read_bytes(i) for i in range(4, 8)] == images[4:]


def test_a_damaged_label_column_is_one_line(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": [0, 1] * 4, "image": pa.array([image_bytes()] * 8, pa.binary())}), path)
    data = bytearray(path.read_bytes())
    data[4:40] = b"\x07" * 36  # the label column's first page header
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 2 and "label column 'label' cannot be read" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_set_of_many_files_keeps_few_open(tmp_path, monkeypatch):
    import hashindex.data.columnar as columnar

    monkeypatch.setattr(columnar, "OPEN_FILES", 2)
    images = [image_bytes("PNG", seed=s) for s in range(10)]
    (tmp_path / "ds").mkdir()
    for k in range(5):
        write = (lambda t, p: pq.write_table(t, p)) if k % 2 else (lambda t, p: write_arrow(p, t))
        table = pa.table({"image": pa.array(images[2 * k:2 * k + 2], pa.binary()), "label": ["a", "b"]})
        write(table, tmp_path / "ds" / f"part-{k}.{'parquet' if k % 2 else 'arrow'}")
    source = open_source(tmp_path / "ds")
    assert len(source) == 10 and len(source._handles) <= 2 and source.labels.tolist() == [0, 1] * 5
    assert [source.read_bytes(i) for i in (9, 0, 5, 2)] == [images[i] for i in (9, 0, 5, 2)]
    assert len(source._handles) <= 2


def test_validation_split_and_splits_of_what_has_none(tmp_path):
    members = cifar_members(30)
    root = write_hf_dataset(tmp_path / "ds", members[:10], members[10:20])
    pq.write_table(hf_table(members[20:]), root / "data" / "validation-00000-of-00001.parquet")
    val = open_source(f"{root}:validation")
    assert len(val) == 10 and val.read_bytes(9) == members[29][1] and val.spec.endswith(":validation")
    assert len(reopen_source(val.spec)) == 10
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_bytes(image_bytes())
    for spec in (f"{tmp_path / 'photos'}:test", f"{need(CIFAR_TEST)}:train"):
        with pytest.raises(HashindexError, match="has no '(test|train)' split"):
            open_source(spec)


def test_images_stored_by_path_are_read_inside_the_folder_only(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    inside, outside = image_bytes(seed=1), image_bytes(seed=2)
    (tmp_path / "ds" / "images" / "a.jpg").write_bytes(inside)
    (tmp_path / "private.jpg").write_bytes(outside)
    cells = [{"bytes": None, "path": "images/a.jpg"}, {"bytes": None, "path": str(tmp_path / "private.jpg")},
             {"bytes": None, "path": "../private.jpg"}]
    path = tmp_path / "ds" / "t.parquet"
    pq.write_table(pa.table({"image": pa.array(cells, IMAGE_TYPE), "label": [0, 1, 1]}), path)
    source = open_source(path)
    assert source.read_bytes(0) == inside
    for i in (1, 2):
        with pytest.raises(BadImage) as e:
            source.read_bytes(i)
        assert e.value.reason == "outside-root"
    trusted = open_source(path, follow_links=True)
    assert trusted.read_bytes(1) == trusted.read_bytes(2) == outside
    assert reopen_source(trusted.spec).read_bytes(1) == outside  # the choice is in the spec
