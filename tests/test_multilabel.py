"""Multi-label collections (NUS-WIDE, MS-COCO: an image carries a set of labels; relevant = a shared label):
label sets read from one-hot lists, stored in shards and the index table, scored by eval."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hashindex.cli import cli
from hashindex.errors import HashindexError
from hashindex.index import Index, append, build
from hashindex.store import ShardSet, write_arrays

from .conftest import CIFAR_TEST, need


def brute_map(q_codes, q_sets, db_codes, db_sets) -> float:
    """mAP@all of Hamming ranking (stable order), relevant = a shared label, written plainly."""
    aps = []
    for qc, qs in zip(q_codes, q_sets):
        d = np.unpackbits(qc[None] ^ db_codes, axis=1).sum(1)
        rel = (db_sets[np.argsort(d, kind="stable")] & qs).any(1)
        hits = np.cumsum(rel)
        aps.append((hits / np.arange(1, len(rel) + 1))[rel].mean() if rel.any() else 0.0)
    return float(np.mean(aps))


def synthetic(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes that carry their label sets (each class sets its own 4 of 32 bits) plus noise, and the sets."""
    rng = np.random.default_rng(seed)
    sets = rng.random((n, classes)) < 0.3
    bits = np.zeros((n, 32), dtype=bool)
    for c in range(classes):
        bits[:, 4 * c:4 * c + 4] |= sets[:, c:c + 1]
    bits ^= rng.random((n, 32)) < 0.1
    return np.packbits(bits, axis=1, bitorder="little"), sets


def test_label_sets_travel_from_shards_to_index_to_eval(tmp_path):
    db_codes, db_sets = synthetic(400, 6, 0)
    q_codes, q_sets = synthetic(40, 6, 1)
    names = [f"tag{c}" for c in range(6)]
    db = write_arrays(tmp_path / "db", db_codes, np.random.default_rng(2).random((400, 8)),
                      label_sets=db_sets, class_names=names)
    write_arrays(tmp_path / "q", q_codes, np.random.default_rng(3).random((40, 8)), label_sets=q_sets,
                 class_names=names)
    assert db.multi_label and db.load(("label_sets",))["label_sets"].tolist() == db_sets.tolist()
    build(tmp_path / "db", tmp_path / "index", binary="flat", rerank="flat", signal="auto", progress=False,
          log=lambda s: None)
    index = Index.load(tmp_path / "index")
    assert index.label_sets.tolist() == db_sets.tolist()
    assert index.labels.tolist() == np.where(db_sets.any(1), db_sets.argmax(1), -1).tolist()
    out = CliRunner().invoke(cli, ["-q", "eval", str(tmp_path / "index"), "--queries", str(tmp_path / "q"), "--json"])
    assert out.exit_code == 0, out.output
    m = json.loads(out.output)
    labelled = q_sets.any(1)  # a query without a label is left out, as an unlabelled one always is
    assert abs(m["hamming"]["map"] - brute_map(q_codes[labelled], q_sets[labelled], db_codes, db_sets)) < 1e-9
    assert m["relevance"] == "a shared label (label sets)" and m["unlabelled_queries_skipped"] == int((~labelled).sum())
    assert m["hamming"]["map"] > 0.6  # the codes carry the sets: chance (a shared label by luck) is about 0.45
    assert 0 < m["hamming"]["ndcg@100"] <= 1 and 0 < m["hamming"]["acg@100"]
    text = CliRunner().invoke(cli, ["-q", "eval", str(tmp_path / "index"), "--queries", str(tmp_path / "q")]).output
    assert "relevant = a shared label (label sets)" in text.splitlines()[0]
    info = CliRunner().invoke(cli, ["-q", "info", str(tmp_path / "db"), "--json"])
    counts = json.loads(info.output)["labels"]
    assert {k: v for k, v in counts.items() if k != "unlabelled"} == \
        {names[c]: int(db_sets[:, c].sum()) for c in range(6) if db_sets[:, c].any()}
    # a collection of one class per item does not join a multi-label index
    write_arrays(tmp_path / "single", q_codes, ids=np.arange(1000, 1040), labels=np.zeros(40), class_names=names,
                 features=np.zeros((40, 8)))
    with pytest.raises(HashindexError, match="holds one class per item, .* holds label sets"):
        append(tmp_path / "single", tmp_path / "index", progress=False, log=lambda s: None)
    grown = write_arrays(tmp_path / "more", q_codes, np.zeros((40, 8)), ids=np.arange(1000, 1040), label_sets=q_sets,
                         class_names=names)
    append(grown.dir, tmp_path / "index", progress=False, log=lambda s: None)
    assert Index.load(tmp_path / "index").label_sets.tolist() == db_sets.tolist() + q_sets.tolist()
    # and a removal keeps the other items' label sets
    from hashindex.index import remove

    remove(tmp_path / "index", ids=np.concatenate([np.arange(400), np.arange(1000, 1040)])[::3], progress=False,
           log=lambda s: None)
    keep = np.arange(440) % 3 != 0
    assert Index.load(tmp_path / "index").label_sets.tolist() == np.concatenate([db_sets, q_sets])[keep].tolist()


def test_single_label_queries_meet_a_multi_label_index(tmp_path):
    """A query of one class is relevant to the items whose sets hold that class."""
    db_codes, db_sets = synthetic(300, 5, 4)
    q_codes, q_sets = synthetic(30, 5, 5)
    q_labels = np.where(q_sets.any(1), q_sets.argmax(1), -1)
    write_arrays(tmp_path / "db", db_codes, label_sets=db_sets, class_names=list("abcde"))
    write_arrays(tmp_path / "q", q_codes, labels=q_labels, class_names=list("abcde"))
    build(tmp_path / "db", tmp_path / "index", binary="flat", rerank="none", progress=False, log=lambda s: None)
    out = CliRunner().invoke(cli, ["-q", "eval", str(tmp_path / "index"), "--queries", str(tmp_path / "q"), "--json"])
    assert out.exit_code == 0, out.output
    keep = q_labels >= 0
    one_hot = np.eye(5, dtype=bool)[q_labels[keep]]
    assert abs(json.loads(out.output)["hamming"]["map"] - brute_map(q_codes[keep], one_hot, db_codes, db_sets)) < 1e-9


def pair_mosaics(folder: Path, n: int, seed: int) -> Path:
    """A multi-label set of real photos: n images, each two CIFAR-10 test images side by side (64 x 32), listed
    in a one-hot list with both classes set (one, when both are of a class)."""
    need(CIFAR_TEST)
    with tarfile.open(CIFAR_TEST) as tar:
        members = [m for m in tar.getmembers() if m.isfile()][::37][:2 * n]
        images = [(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"), m.name.split("/")[1])
                  for m in members]
    classes = sorted({c for _, c in images})
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        (a, ca), (b, cb) = images[rng.integers(len(images))], images[rng.integers(len(images))]
        mosaic = Image.new("RGB", (64, 32))
        mosaic.paste(a, (0, 0))
        mosaic.paste(b, (32, 0))
        mosaic.save(folder / f"{i:04d}.png")
        cols = ["1" if c in (ca, cb) else "0" for c in classes]
        lines.append(f"{i:04d}.png " + " ".join(cols))
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def test_a_multi_label_list_of_photos_extracts_builds_and_evaluates(tiny_model, tmp_path):
    listed = pair_mosaics(tmp_path / "pairs", 120, 0)
    queries = listed.with_name("queries.txt")
    queries.write_text("".join(listed.read_text().splitlines(keepends=True)[::4]))
    runner = CliRunner()
    for name, data in (("db", listed), ("q", queries)):
        res = runner.invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(data), "--out",
                                  str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    shards = ShardSet(tmp_path / "db")
    rows = shards.load(("codes", "label_sets", "paths"))
    bits = np.array([line.split()[1:] for line in listed.read_text().splitlines()]) == "1"
    assert shards.multi_label and rows["label_sets"].tolist() == bits.tolist()
    assert (rows["label_sets"].sum(1) == 2).sum() > 50  # most mosaics hold two classes
    res = runner.invoke(cli, ["-q", "build", str(tmp_path / "db"), "--out", str(tmp_path / "index")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["-q", "eval", str(tmp_path / "index"), "--queries", str(tmp_path / "q"), "--json",
                              "--plot", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    q = ShardSet(tmp_path / "q").load(("codes", "label_sets"))
    assert abs(m["hamming"]["map"] - brute_map(q["codes"], q["label_sets"], rows["codes"], rows["label_sets"])) < 1e-9
    assert {"results_grid", "per_class_map"} <= set(m["plots"])  # the grid's borders: a shared label is green
    from hashindex.targets import relevant_items
    from hashindex.query import example_results

    ex = example_results(Index.load(tmp_path / "index"), tmp_path / "q")
    pos = ex["result"].positions
    shared = (rows["label_sets"][pos] & ex["targets"][:, None, :]).any(2)
    assert ex["targets"].shape[1] == len(shards.class_names) and (relevant_items(ex["targets"], ex["db_targets"], pos) == shared).all()
    res = runner.invoke(cli, ["-q", "query", str(tmp_path / "index"), "--by-id", "3", "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0 and (tmp_path / "g.png").stat().st_size > 1000, res.output


def test_binary_cross_entropy_per_class_for_label_sets():
    import torch

    from hashindex.recipe import class_term, top1_hits

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    sets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    plain = -(sets * p.log() + (1 - sets) * (1 - p).log()).sum() / 2  # summed over classes, mean over images
    assert abs(float(class_term(logits, sets, 0.0)) - float(plain)) < 1e-6
    smooth = sets * 0.9 + 0.05
    assert abs(float(class_term(logits, sets, 0.1)) - float(-(smooth * p.log() + (1 - smooth) * (1 - p).log()).sum() / 2)) < 1e-6
    assert top1_hits(logits, sets) == 1  # image 0's top class (0) is in its set; image 1's (1) is not
    assert top1_hits(logits, torch.tensor([0, 1])) == 2


def test_a_net_trains_on_label_sets_and_its_posterior_reranks(tmp_path):
    """Training on a multi-label list: per-class sigmoids, a checkpoint and head that say so, validation as
    top-1 precision, the final mAP over shared labels; the same collection through prepare trains alike."""
    from hashindex import train
    from hashindex.checkpoint import checkpoint_head, read_checkpoint
    from hashindex.data import open_source
    from hashindex.data.prepared import prepare

    listed = pair_mosaics(tmp_path / "pairs", 160, 1)
    out = tmp_path / "multi.pt"
    summary = train(str(listed), str(out), val_every=4, epochs=2, bits=16, input_size=16, workers=0,
                    progress=False, log=lambda s: None)
    ckpt = read_checkpoint(out)
    assert ckpt["multi_label"] and ckpt["class_names"] == [str(c) for c in range(10)]
    assert checkpoint_head(ckpt).multi_label
    assert 0.0 < summary["accuracy"] <= 1.0 and 0.0 < summary["map"] <= 1.0
    assert ckpt["map_protocol"].endswith("relevant = a shared label")
    loss = CliRunner().invoke(cli, ["-q", "info", str(out), "--json"])
    assert json.loads(loss.output)["loss"] == "binary cross-entropy per class (label sets)"
    prepare(open_source(str(listed)), tmp_path / "prep", size=16, workers=0, progress=False, log=lambda s: None)
    stored = open_source(str(tmp_path / "prep"))
    assert stored.multi_label and stored.label_sets.tolist() == open_source(str(listed)).label_sets.tolist()
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "extract", "--model", str(out), "--data", str(listed), "--out", str(tmp_path / "db")])
    assert res.exit_code == 0, res.output
    head = ShardSet(tmp_path / "db").head()
    assert head.multi_label
    feats = ShardSet(tmp_path / "db").load(("features",))["features"].astype(np.float32)
    p = head.posterior(feats)  # per-class sigmoids over sqrt(C): independent, |p| <= 1
    logits = head.latent(feats) @ head.classifier_w.T + head.classifier_b
    assert np.allclose(p, 1 / (1 + np.exp(-logits)) / np.sqrt(10), atol=1e-6) and (np.linalg.norm(p, axis=1) <= 1).all()
    res = runner.invoke(cli, ["-q", "build", str(tmp_path / "db"), "--out", str(tmp_path / "index"),
                              "--signal", "posterior"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["-q", "eval", str(tmp_path / "index"), "--queries", str(tmp_path / "db"), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["reranked"]["signal"] == "posterior" and 0 < m["reranked"]["map"] <= 1


def test_query_results_show_every_class_of_a_multi_label_item(tmp_path):
    codes, sets = synthetic(50, 3, 6)
    write_arrays(tmp_path / "db", codes, label_sets=sets, class_names=["sky", "sea", "dog"])
    build(tmp_path / "db", tmp_path / "index", binary="flat", rerank="none", progress=False, log=lambda s: None)
    res = CliRunner().invoke(cli, ["-q", "query", str(tmp_path / "index"), "--by-id", "7", "--k", "50", "--json"])
    assert res.exit_code == 0, res.output
    hits = {h["id"]: h for h in json.loads(res.output)[0]["results"]}
    assert len(hits) == 50
    for i, h in hits.items():
        assert h["classes"] == [n for n, on in zip(["sky", "sea", "dog"], sets[i]) if on]
    table = CliRunner().invoke(cli, ["-q", "query", str(tmp_path / "index"), "--by-id", "7", "--k", "50"]).output
    first = next(i for i in range(50) if sets[i].sum() >= 2)
    assert "+".join(hits[first]["classes"]) in table


def test_json_sidecars_that_list_labels_make_a_multi_label_shard_set(tmp_path):
    """WebDataset samples whose .json lists several labels (COCO's categories) are label sets; a shard set of
    such a tar and a single-label one shares one vocabulary, the single-label items as sets of one."""
    from hashindex.data import open_source

    from .conftest import image_bytes, make_tar

    shards = tmp_path / "shards"
    shards.mkdir()
    make_tar(shards / "a.tar", {
        "s0.jpg": image_bytes(), "s0.json": json.dumps({"labels": ["person", "dog"], "caption": "x"}).encode(),
        "s1.jpg": image_bytes(seed=1), "s1.json": json.dumps({"categories": ["sky"]}).encode(),
        "s2.jpg": image_bytes(seed=2), "s2.json": json.dumps({"caption": "no label"}).encode(),
    })
    make_tar(shards / "b.tar", {"t0.jpg": image_bytes(seed=3), "t0.cls": b"cat"})
    one = open_source(shards / "a.tar")
    assert one.multi_label and one.class_names == ["dog", "person", "sky"]
    assert one.label_sets.tolist() == [[True, True, False], [False, False, True], [False, False, False]]
    assert list(one.labels) == [0, 2, -1]
    both = open_source(shards)
    assert both.class_names == ["cat", "dog", "person", "sky"] and both.multi_label
    assert both.label_sets.tolist() == [[False, True, True, False], [False, False, False, True], [False] * 4,
                                        [True, False, False, False]]
    plain = tmp_path / "plain.tar"  # lists of one label each: one class per image, as before
    make_tar(plain, {"u0.jpg": image_bytes(), "u0.json": b'{"labels": ["a"]}', "u1.jpg": image_bytes(seed=1),
                     "u1.json": b'{"label": "b"}'})
    single = open_source(plain)
    assert not single.multi_label and list(single.labels) == [0, 1] and single.class_names == ["a", "b"]
    info = CliRunner().invoke(cli, ["-q", "info", str(shards / "a.tar"), "--json"])
    assert info.exit_code == 0, info.output
    described = json.loads(info.output)  # an item counts in each of its classes
    assert described["multi_label"] and described["labels"] == {"dog": 1, "person": 1, "sky": 1, "unlabelled": 1}


def test_a_csv_list_with_several_labels_in_a_field_is_multi_label(tmp_path):
    from hashindex.data import open_source

    (tmp_path / "tags.csv").write_text("path,label\na.jpg,beach|sunset\nb.jpg, beach \nc.jpg,\nd.jpg,sunset|dog|\n")
    src = open_source(tmp_path / "tags.csv")
    assert src.multi_label and src.class_names == ["beach", "dog", "sunset"]
    assert src.label_sets.tolist() == [[True, False, True], [True, False, False], [False] * 3, [False, True, True]]
    assert list(src.labels) == [0, 0, -1, 1] and src.paths[0] == "a.jpg"
    (tmp_path / "one.csv").write_text("a.jpg,beach\nb.jpg,dog\n")  # no separator: one class per image, as before
    assert not open_source(tmp_path / "one.csv").multi_label


def test_label_sets_from_a_folder_tree_of_copies(tiny_model, tmp_path):
    """``DIR#label-sets``: a photo copied into each folder it belongs to (an album export) is one item labelled
    with every one of them; same names with other bytes stay apart; skips stay skips; the plain folder is
    unchanged; the spec reopens to the same collection, and the pipeline scores label sets."""
    from hashindex.data import open_source
    from hashindex.data.spec import reopen_source
    from tests.conftest import image_bytes

    root = tmp_path / "albums"
    files = {"beach/a.jpg": 1, "sunset/a.jpg": 1, "city/renamed.jpg": 1, "beach/b.jpg": 2, "city/b.jpg": 3,
             "sunset/c.jpg": 4, "city/d.jpg": 5, "beach/e.jpg": 6}
    for name, seed in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(image_bytes(seed=seed, size=(40, 30)))
    (root / "beach" / "notes.txt").write_text("not an image")
    plain = open_source(root)
    assert len(plain) == 9 and not plain.multi_label
    src = open_source(f"{root}#label-sets")
    assert src.multi_label and src.copies == 2 and src.spec == f"{root.resolve()}#label-sets"
    sets = {p: {src.class_names[c] for c in np.flatnonzero(row)} for p, row in zip(src.paths, src.label_sets)}
    assert sets == {"beach/a.jpg": {"beach", "sunset", "city"}, "beach/b.jpg": {"beach"}, "beach/e.jpg": {"beach"},
                    "beach/notes.txt": set(), "city/b.jpg": {"city"}, "city/d.jpg": {"city"},
                    "sunset/c.jpg": {"sunset"}}
    assert [src.paths[i] for i in src.unread] == ["beach/notes.txt"]  # still a counted skip
    again = reopen_source(src.spec)
    assert again.fingerprint() == src.fingerprint() and again.paths == src.paths
    for spec, message in [(f"{tmp_path / 'none'}#label-sets", "no such directory"),
                          (f"{CIFAR_TEST}#label-sets", "label sets are read from a folder tree")]:
        with pytest.raises(HashindexError, match=message):
            open_source(spec)
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", f"{root}#label-sets",
                              "--out", str(tmp_path / "shards")])
    assert res.exit_code == 0, res.output
    shards = ShardSet(tmp_path / "shards")
    assert shards.multi_label and shards.rows == 6  # notes.txt: a counted skip
    assert runner.invoke(cli, ["-q", "build", str(tmp_path / "shards"), "--out", str(tmp_path / "index"),
                               "--rerank", "none"]).exit_code == 0
    res = runner.invoke(cli, ["-q", "eval", str(tmp_path / "index"), "--queries", str(tmp_path / "shards"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["relevance"] == "a shared label (label sets)"
