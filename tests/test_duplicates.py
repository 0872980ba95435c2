"""`hashindex duplicates`: copies of a photo (re-encoded, resized, brightened) found by perceptual hash, on
real photographs; the hash and the pair search against direct numpy computations."""

import csv
import io
import json
import tarfile
from unittest.mock import ANY

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from hashindex import HashindexError
from hashindex.cli import cli
from hashindex.duplicates import find_duplicates, redundant_paths
from hashindex.hash_groups import pair_distances, star_groups
from hashindex.phash import _DCT, box_name, crop_boxes, crop_hashes, crop_spec, perceptual_hashes
from tests.conftest import DATA, need

FLOWERS_TEST = DATA / "flowers" / "test.tar"
QUIET = {"progress": False, "log": lambda m: None}


def _photos(n: int) -> list[Image.Image]:
    """n real photos, spread over the flowers test set (different photos of five species)."""
    with tarfile.open(need(FLOWERS_TEST)) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name)
        pick = [members[k] for k in np.linspace(0, len(members) - 1, n).astype(int)]
        return [Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB") for m in pick]


def _copies(img: Image.Image) -> dict[str, tuple[Image.Image, int]]:
    w, h = img.size
    return {"q40": (img, 40), "small": (img.resize((w * 3 // 5, h * 3 // 5), Image.BILINEAR), 88),
            "bright": (ImageEnhance.Brightness(img).enhance(1.15), 88)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of 16 distinct photos, 4 of them also as three edited copies each; returns (folder, groups)."""
    root = tmp_path_factory.mktemp("photos") / "album"
    root.mkdir()
    expected = []
    for k, img in enumerate(_photos(16)):
        img.save(root / f"p{k:02d}.jpg", quality=88)
        if k % 4 == 1:
            for kind, (copy, quality) in _copies(img).items():
                copy.save(root / f"p{k:02d}_{kind}.jpg", quality=quality)
            expected.append(sorted([f"p{k:02d}.jpg"] + [f"p{k:02d}_{kind}.jpg" for kind in _copies(img)]))
    return root, expected


def _dct_direct(a: np.ndarray, u: int, v: int) -> float:
    """One orthonormal 2-D DCT-II coefficient by its defining sum."""
    n = a.shape[0]
    x = np.arange(n)
    cu = np.sqrt((1 if u == 0 else 2) / n)
    cv = np.sqrt((1 if v == 0 else 2) / n)
    return cu * cv * float((a * np.outer(np.cos(np.pi * (2 * x + 1) * u / (2 * n)),
                                         np.cos(np.pi * (2 * x + 1) * v / (2 * n)))).sum())


@pytest.mark.parametrize("block", [8, 16])
def test_perceptual_hash_against_the_dct_sum(block):
    grey = np.random.default_rng(0).integers(0, 256, (3, 32, 32)).astype(np.uint8)
    hashes = perceptual_hashes(grey, block)
    assert hashes.shape == (3, block * block // 8) and hashes.dtype == np.uint8
    for img, h in zip(grey.astype(np.float64), hashes):
        low = np.array([[_dct_direct(img, u, v) for v in range(block)] for u in range(block)]).ravel()
        assert np.array_equal(np.unpackbits(h).astype(bool), low > np.median(low))
    with pytest.raises(HashindexError, match="expected \\(n, 32, 32\\)"):
        perceptual_hashes(np.zeros((2, 16, 16), np.uint8))


def _bilinear_crop(img: np.ndarray, box) -> np.ndarray:
    """img's region (cut left, top, right, bottom) resampled to its size pixel by pixel: each output pixel
    centre mapped into the region, its value weighed from the four nearest input pixels (edges clamped)."""
    n = img.shape[0]
    out = np.zeros((n, n))
    left, top, right, bottom = box
    for r in range(n):
        for c in range(n):
            y = np.clip((top + (r + 0.5) / n * (1 - top - bottom)) * n - 0.5, 0, n - 1)
            x = np.clip((left + (c + 0.5) / n * (1 - left - right)) * n - 0.5, 0, n - 1)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, n - 1), min(x0 + 1, n - 1)
            wy, wx = y - y0, x - x0
            out[r, c] = ((1 - wy) * ((1 - wx) * img[y0, x0] + wx * img[y0, x1])
                         + wy * ((1 - wx) * img[y1, x0] + wx * img[y1, x1]))
    return out


def test_a_crop_box_hash_is_the_hash_of_the_thumbnail_cut_and_resampled():
    """The crop folded into the DCT's matrices (`phash`) equals cutting the region out and hashing it."""
    grey = np.random.default_rng(1).integers(0, 256, (3, 32, 32)).astype(np.uint8)
    assert [box_name(b) for b in crop_boxes("sides,centre")[2:5]] == ["centre 12%", "left 8%", "left 16%"]
    assert [box_name(b) for b in crop_boxes("square")[::3]] == ["left and right 12.5%", "top and bottom 12.5%"]
    assert crop_spec("square, centre") == "centre,square" and crop_boxes("none") == () and len(crop_boxes("sides")) == 8
    assert crop_spec("corners,uneven,centre") == "centre,uneven,corners"
    assert [box_name(b) for b in crop_boxes("uneven")[1::14]] == ["left 2.5% top 2.5% right 2.5% bottom 7.5%",
                                                                  "centre 7.5%"]
    assert [box_name(b) for b in crop_boxes("corners")[3::4]] == ["left 15% top 15%", "top 15% right 15%",
                                                                   "right 15% bottom 15%", "left 15% bottom 15%"]
    for box in ((0.08, 0.08, 0.08, 0.08), (0.0, 0.0, 0.0, 0.16), (0.1, 0.05, 0.0, 0.2)):
        for block in (8, 16):
            direct = []
            for img in grey.astype(np.float64):
                low = _DCT[:block] @ _bilinear_crop(img, box) @ _DCT[:block].T
                direct.append(np.packbits(low.ravel() > np.median(low)))
            assert np.array_equal(perceptual_hashes(grey, block, box), np.array(direct))
    assert crop_hashes(grey, "centre").shape == (3, 3, 8) and crop_hashes(grey, "none").shape == (3, 0, 8)
    assert np.array_equal(crop_hashes(grey, "centre,sides", 16)[:, 4], perceptual_hashes(grey, 16, (0.16, 0, 0, 0)))
    for bad in ("all", "", "none,centre", "centre,,sides"):
        with pytest.raises(HashindexError, match=f"crops='{bad}': expected 'none' or families of crop boxes joined "
                                                 "by commas, of centre, sides, square, uneven, corners"):
            crop_hashes(grey, bad)


def _planted(n: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes with near copies (0 to 10 bits flipped) of copies, and exact repeats."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    for k in rng.choice(n, n // 2):
        bits = np.unpackbits(h[k])
        bits[rng.choice(64, rng.integers(0, 11), replace=False)] ^= 1
        h[rng.integers(n)] = np.packbits(bits)
    h[rng.choice(n, n // 10)] = h[0]  # one picture many times
    return h


def _bit_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every Hamming distance between packed rows of a and of b, bit by bit."""
    return (np.unpackbits(a, axis=1)[:, None, :] != np.unpackbits(b, axis=1)[None, :, :]).sum(-1)


def _reference_stars(h: np.ndarray, radius: int, accept, crops: np.ndarray | None = None) -> list[list[int]]:
    """The grouping by its definition, over the full distance matrix (with ``crops``, the least over the views:
    whole against whole, and the whole of one against each crop hash of the other)."""
    dist = _bit_distances(h, h)
    for k in range(0 if crops is None else crops.shape[1]):
        cut = _bit_distances(h, crops[:, k])  # cut[i, j]: the whole of i against j cut to box k
        dist = np.minimum(dist, np.minimum(cut, cut.T))
    taken = np.zeros(len(h), bool)
    groups = []
    for i in range(len(h)):
        if taken[i]:
            continue
        others = [j for j in range(len(h)) if j != i and not taken[j] and dist[i, j] <= radius and accept(i, j)]
        if others:
            taken[[i] + others] = True
            groups.append([i] + others)
    return groups


@pytest.mark.parametrize("radius", [0, 3, 8])
def test_star_groups_equal_the_definition(radius):
    h = _planted(1500, radius)
    assert [g.tolist() for g in star_groups(h, radius)] == _reference_stars(h, radius, lambda i, j: True)
    odd = lambda a, b: (a + b) % 3 != 0  # a pair test, as the 256-bit check and --across are
    want = _reference_stars(h, radius, lambda i, j: (i + j) % 3 != 0)
    got = star_groups(h, radius, odd)
    assert [g.tolist() for g in got] == want and len(want) > 20
    assert np.array_equal(pair_distances(h, np.zeros(5, np.int64), np.arange(5)),
                          np.unpackbits(h[:5] ^ h[0], axis=1).sum(1))


@pytest.mark.parametrize("radius", [0, 4])
def test_star_groups_with_crop_hashes_equal_the_definition(radius):
    """Each item's crop hashes are searched too: j joins i when j's whole hash is near one of i's crop hashes
    or the other way round, found from either side, and the test ``accept`` still has the last word."""
    rng = np.random.default_rng(radius)
    h = _planted(600, radius + 7)
    crops = rng.integers(0, 256, (600, 3, 8), dtype=np.uint8)
    for i in rng.choice(600, 150, replace=False):  # j is a crop of i: j's whole hash near i's box k
        j, k = rng.integers(600), rng.integers(3)
        bits = np.unpackbits(crops[i, k])
        bits[rng.choice(64, rng.integers(0, 6), replace=False)] ^= 1
        h[j] = np.packbits(bits)
    crops[rng.choice(600, 60)] = crops[5]  # items alike in their whole hash but not their crops, and the reverse
    want = _reference_stars(h, radius, lambda i, j: True, crops)
    assert [g.tolist() for g in star_groups(h, radius, crops=crops)] == want
    assert len(want) > len(_reference_stars(h, radius, lambda i, j: True)) + 15  # 28 against 8 at radius 0
    odd = lambda a, b: (a + b) % 3 != 0
    assert [g.tolist() for g in star_groups(h, radius, odd, crops=crops)] == \
        _reference_stars(h, radius, lambda i, j: (i + j) % 3 != 0, crops)
    assert [g.tolist() for g in star_groups(h, radius, crops=crops[:, :0])] == \
        [g.tolist() for g in star_groups(h, radius)]  # no boxes: the whole hashes alone


def test_star_groups_do_not_chain():
    """Hashes 0 -2 bits- 1 -2 bits- 2 (4 bits from 0), radius 2: 2 is no copy of 0, and 1 is 0's."""
    h = np.zeros((3, 8), np.uint8)
    h[1, 0], h[2, 0] = 0b11, 0b1111
    assert [g.tolist() for g in star_groups(h, 2)] == [[0, 1]]
    assert star_groups(np.zeros((0, 8), np.uint8), 2) == []


def test_keeping_the_first_of_each_group_leaves_no_two_images_within_the_radius():
    h = _planted(3000, 1)
    groups = star_groups(h, 4)
    assert len(groups) > 100
    first = np.full(len(h), -1)
    for g in groups:
        first[g] = g[0]
        assert np.all(pair_distances(h, first[g], g) <= 4)  # every member within the radius of its first
    kept = np.flatnonzero((first == -1) | (first == np.arange(len(h))))
    assert star_groups(h[kept], 4) == []


def test_one_picture_a_hundred_thousand_times_is_one_group_without_the_pairs():
    """10^10 pairs would not fit in memory: the search runs over distinct hashes."""
    h = np.random.default_rng(3).integers(0, 256, (120_000, 8), dtype=np.uint8)
    h[::6] = h[1]  # 20,000 copies of one picture
    h[1::6] = h[1]
    h[2::6] = h[1]
    h[3::6] = h[1]
    h[4::6] = h[1]
    groups = star_groups(h, 4)
    assert len(groups[0]) == 100_000 and groups[0][0] == 0


def test_edited_copies_of_real_photos_are_grouped_and_distinct_photos_are_not(photos):
    root, expected = photos
    result = find_duplicates([str(root)], radius=8, **QUIET)
    found = sorted(sorted(r["path"] for r in g) for g in result["groups"])
    assert found == sorted(expected)
    assert result["images"] == 16 + 3 * 4 and result["skipped"] == []
    for g in result["groups"]:
        assert g[0]["distance"] == 0 and g[0]["path"].endswith(("p01.jpg", "p05.jpg", "p09.jpg", "p13.jpg"))
        assert all(r["file"] == str(root.resolve() / r["path"]) for r in g)
        assert all(r["distance"] <= 8 and r["fine_distance"] <= 64 for r in g)
    assert result["copies"] == 3 * 4 and find_duplicates([str(root)], radius=0, **QUIET)["copies"] < 12
    strict = find_duplicates([str(root)], radius=8, fine_radius=4, **QUIET)  # the 256-bit check drops pairs
    assert strict["copies"] < result["copies"]
    assert all(r["fine_distance"] <= 4 for g in strict["groups"] for r in g)


CUTS = {"c8": (0.08, 0.08, 0.08, 0.08), "c12": (0.12, 0.12, 0.12, 0.12), "b14": (0, 0, 0, 0.14), "sq": None}


@pytest.fixture(scope="module")
def cropped(tmp_path_factory):
    """16 distinct photos, 4 of them also cut by 8 % and 12 % a side, by a 14 % strip off the bottom, and to
    their centre square."""
    root = tmp_path_factory.mktemp("cropped")
    for k, img in enumerate(_photos(16)):
        img.save(root / f"p{k:02d}.jpg", quality=88)
        if k % 4 == 2:
            w, h = img.size
            side = min(w, h)
            for name, cut in CUTS.items():
                left, top, right, bottom = cut or ((w - side) / 2 / w, (h - side) / 2 / h) * 2
                box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
                img.crop(box).save(root / f"p{k:02d}_{name}.jpg", quality=88)
    return root


def _found_cuts(result) -> dict[str, str]:
    """Each crop copy grouped with its own photo -> the view that matched it; a group mixing photos fails."""
    found = {}
    for g in result["groups"]:
        assert len({r["path"][:3] for r in g}) == 1, g  # one photo per group
        found.update({r["path"]: r["match"] for r in g if "_" in r["path"]})
    return found


def test_crop_boxes_find_cropped_copies_that_the_whole_hash_misses(cropped):
    """--crops: a copy cut to about a box hashes like the original cut to it. Without boxes, crops of 8 % or more
    a side are out of reach; "centre" finds the centred ones, "sides" the strip off one edge, "square" the
    centre square; distinct photos stay apart, and each row says in which view it matched."""
    found = lambda crops: _found_cuts(find_duplicates([str(cropped)], crops=crops, **QUIET))  # noqa: E731
    cut = lambda *kinds: {f"p{k:02d}_{c}.jpg" for k in (2, 6, 10, 14) for c in kinds}  # noqa: E731
    none, centre = found("none"), found("centre")
    assert len(none) <= 4  # 2 of 16 here (two cuts of one photo, grouped with each other)
    assert cut("c8", "c12") <= set(centre) and len(centre) <= 10  # (a photo nearly square: its square cut too)
    assert {centre[f"p02_{c}.jpg"] for c in ("c8", "c12")} <= {f"first cut centre {p}%" for p in (4, 8, 12)}
    assert cut("c8", "c12", "b14") <= set(found("centre,sides"))
    assert found("sides")["p02_b14.jpg"] == "first cut bottom 16%"
    square = found("square")
    assert cut("sq") <= set(square)  # a portrait 4:3 photo's square, a landscape 3:2 one's:
    assert (square["p02_sq.jpg"], square["p06_sq.jpg"]) == ("first cut top and bottom 12.5%",
                                                             "first cut left and right 16.7%")
    every = find_duplicates([str(cropped)], crops="square,sides,centre", **QUIET)
    assert set(_found_cuts(every)) == cut(*CUTS) and every["crops"] == "centre,sides,square"
    for g in every["groups"]:
        assert g[0]["match"] == "whole" and g[0]["distance"] == g[0]["fine_distance"] == 0
        assert all(r["distance"] <= 8 and r["fine_distance"] <= 64 for r in g)
    with pytest.raises(HashindexError, match="crops='all': expected 'none' or families"):
        find_duplicates([str(cropped)], crops="all", **QUIET)


UNEVEN_CUTS = {"u": (0.03, 0.08, 0.07, 0.02), "k": (0.14, 0.08, 0, 0), "k2": (0, 0, 0.07, 0.16)}


def test_uneven_and_corner_boxes_find_crops_the_other_families_miss(tmp_path):
    """"uneven" (each side cut by 2.5 or 7.5 %) finds a crop cut by a different amount on each side, "corners"
    (two adjacent sides cut by 7.5 or 15 % each) a crop that keeps one corner; the centred, one-side and
    square boxes find neither, and distinct photos stay apart."""
    for k, img in enumerate(_photos(16)):
        img.save(tmp_path / f"p{k:02d}.jpg", quality=88)
        if k % 4 == 3:
            w, h = img.size
            for name, (left, top, right, bottom) in UNEVEN_CUTS.items():
                box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
                img.crop(box).save(tmp_path / f"p{k:02d}_{name}.jpg", quality=88)
    found = lambda crops: _found_cuts(find_duplicates([str(tmp_path)], crops=crops, **QUIET))  # noqa: E731
    cut = lambda *kinds: {f"p{k:02d}_{c}.jpg" for k in (3, 7, 11, 15) for c in kinds}  # noqa: E731
    assert not found("centre,sides,square")
    uneven = found("uneven")
    assert set(uneven) == cut("u") and uneven["p03_u.jpg"] == "first cut left 2.5% top 7.5% right 7.5% bottom 2.5%"
    corners = found("corners")
    assert cut("k", "k2") <= set(corners) <= cut("k", "k2", "u")
    assert (corners["p07_k.jpg"], corners["p07_k2.jpg"]) == ("first cut left 15% top 7.5%",
                                                              "first cut right 7.5% bottom 15%")
    assert set(found("centre,uneven,corners")) == cut(*UNEVEN_CUTS)


def test_across_reports_only_groups_that_span_collections(photos, tmp_path):
    root, _ = photos
    other = tmp_path / "other"
    other.mkdir()
    Image.open(root / "p05.jpg").save(other / "again.jpg", quality=70)  # one photo also in the second set
    Image.open(root / "p02.jpg").save(other / "broken.jpg")
    (other / "broken.jpg").write_bytes((other / "broken.jpg").read_bytes()[:200])  # unreadable: skipped
    result = find_duplicates([str(root), str(other)], ["album", "other"], across=True, **QUIET)
    assert len(result["groups"]) == 1
    group = result["groups"][0]
    assert {r["collection"] for r in group} == {"album", "other"}
    paths = {r["path"] for r in group}
    assert {"p05.jpg", "again.jpg"} <= paths and all(p.startswith("p05") for p in paths - {"again.jpg"})
    assert [s[:2] for s in result["skipped"]] == [["other", "broken.jpg"]]
    assert result["keep"] == "first" and redundant_paths(result["groups"]) == [str(other.resolve() / "again.jpg")]
    with pytest.raises(HashindexError, match="across=True: expected two collections"):
        find_duplicates([str(root)], across=True, **QUIET)
    with pytest.raises(HashindexError, match="same collection as one before it"):
        find_duplicates([str(root), str(root) + "/"], **QUIET)
    with pytest.raises(HashindexError, match="radius=64"):
        find_duplicates([str(root)], radius=64, **QUIET)


def test_cli_writes_groups_and_the_copies_that_remove_takes_out_of_an_index(photos, tiny_model, tmp_path):
    """duplicates --out / --redundant, then remove --paths-file: the index keeps one image of each group."""
    root, expected = photos
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "duplicates", str(root), "--out", str(tmp_path / "g.csv"),
                              "--redundant", str(tmp_path / "copies.txt"), "--grid", str(tmp_path / "g.png"), "--json"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "g.png").size[1] > 4 * 100  # a row per group
    groups = json.loads(res.stdout)["groups"]
    rows = list(csv.DictReader(open(tmp_path / "g.csv")))
    assert [(int(r["group"]), r["path"], r["match"]) for r in rows] == \
        [(g, r["path"], r["match"]) for g, rs in enumerate(groups, 1) for r in rs]
    assert {r["match"] for r in rows} == {"whole"}  # re-encoded, resized, brightened: no crop box needed
    copies = (tmp_path / "copies.txt").read_text().splitlines()
    assert len(copies) == 3 * len(expected) and all(c.startswith(str(root.resolve())) for c in copies)

    assert runner.invoke(cli, ["-q", "extract", "--model", str(tiny_model), "--data", str(root),
                               "--out", str(tmp_path / "shards")]).exit_code == 0
    res = runner.invoke(cli, ["-q", "build", str(tmp_path / "shards"), "--out", str(tmp_path / "index")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["-q", "remove", str(tmp_path / "index"), "--paths-file", str(tmp_path / "copies.txt"),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 16

    res = runner.invoke(cli, ["duplicates", str(root), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--out" in res.output and "is a directory" in res.output
    res = runner.invoke(cli, ["duplicates", str(root), "--grid", str(tmp_path / "copies.json")])
    assert res.exit_code == 2 and "--grid" in res.output and "expected a .png, .jpg, .pdf or .svg" in res.output
    res = runner.invoke(cli, ["duplicates", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such file or directory" in res.output


def test_a_prepared_store_is_hashed_from_its_arrays(photos, tmp_path):
    """A prepared store holds the net's inputs at its own size, not images: each is shrunk to the thumbnail,
    so a collection and its prepared copy are copies of each other."""
    from hashindex.data import open_source
    from hashindex.data.prepared import prepare

    root, expected = photos
    prepare(open_source(root), tmp_path / "p64", 64, workers=0, **QUIET)
    result = find_duplicates([str(root), str(tmp_path / "p64")], ["album", "prepared"], across=True, **QUIET)
    pairs = {(g[0]["path"], r["path"]) for g in result["groups"] for r in g[1:]}
    # every prepared image joins a photo of the album, and the same photo (an edited copy of it at most)
    assert result["copies"] == 28 and all(a[:3] == b[:3] for a, b in pairs)
    alone = find_duplicates([str(tmp_path / "p64")], **QUIET)
    assert sorted(sorted(r["path"] for r in g) for g in alone["groups"]) == sorted(expected)


def test_kept_hashes_resume_an_interrupted_run_and_spare_a_rerun_any_decoding(photos, tmp_path, monkeypatch):
    """--hashes DIR: a run stopped part-way keeps the parts it finished and the rerun decodes only the rest;
    a rerun with another radius or another collection beside decodes nothing already kept; the groups and
    skips are those of a run without it; a damaged part or a file for DIR is a one-line error."""
    from functools import partial

    import hashindex.duplicates as dup

    root, _ = photos
    other = tmp_path / "other"
    other.mkdir()
    Image.open(root / "p05.jpg").save(other / "again.jpg", quality=70)
    (other / "broken.jpg").write_bytes(b"not a jpeg")
    plain = find_duplicates([str(root), str(other)], **QUIET)
    monkeypatch.setattr(dup, "PART", 5)  # parts of 8 items: two batches of 4
    thumbnails, starts = partial(dup._thumbnails, batch=4), []

    def stopped(source, workers, start=0, *, after=5):
        starts.append((len(source), start))
        for n, batch in enumerate(thumbnails(source, workers, start)):
            if n == after:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(dup, "_thumbnails", stopped)
    kept = tmp_path / "hashes"
    with pytest.raises(KeyboardInterrupt):
        find_duplicates([str(root), str(other)], hashes_dir=kept, **QUIET)
    (album,) = [d for d in kept.iterdir()]
    assert sorted(p.name for p in album.glob("part-*")) == ["part-000000000000.npz", "part-000000000008.npz"]
    monkeypatch.setattr(dup, "_thumbnails", partial(stopped, after=99))
    starts.clear()
    assert find_duplicates([str(root), str(other)], hashes_dir=kept, **QUIET) == {**plain, "seconds": ANY}
    assert starts == [(28, 16), (2, 0)]  # the album from its first unfinished part, the other folder whole
    starts.clear()
    again = find_duplicates([str(other), str(root)], radius=4, hashes_dir=kept, **QUIET)
    assert starts == [] and again == {**find_duplicates([str(other), str(root)], radius=4, **QUIET), "seconds": ANY}
    assert len(list(kept.iterdir())) == 2  # one folder per collection

    (album / "part-000000000008.npz").write_bytes(b"damaged")
    res = CliRunner().invoke(cli, ["duplicates", str(root), "--hashes", str(kept)])
    assert res.exit_code == 2 and res.output == (f"hashindex: error: --hashes {album}/part-000000000008.npz: not a "
                                                 "readable part of kept hashes (") + res.output.split(" (", 1)[1]
    assert res.output.endswith("; move it away and rerun\n")
    res = CliRunner().invoke(cli, ["duplicates", str(root), "--hashes", str(other / "again.jpg")])
    assert res.exit_code == 2 and res.output == (f"hashindex: error: --hashes {other / 'again.jpg'}: not a directory "
                                                 "(expected a folder to keep the hashes in)\n")


def test_kept_hashes_are_kept_per_crop_spec_and_read_back_checked(cropped, tmp_path):
    """Each --crops spec keeps its own folder (its crop hashes differ); a part kept before crop boxes existed
    (no crop arrays) still serves --crops none; a part whose arrays have the wrong shape is a one-line error."""
    kept = tmp_path / "hashes"
    runs = {c: find_duplicates([str(cropped)], crops=c, hashes_dir=kept, **QUIET) for c in ("none", "centre")}
    assert len(list(kept.iterdir())) == 2
    for crops, result in runs.items():
        assert find_duplicates([str(cropped)], crops=crops, **QUIET) == {**result, "seconds": ANY}
    (plain,) = [d for d in kept.iterdir() if json.loads((d / "collection.json").read_text())["crops"] == "none"]
    (part,) = plain.glob("part-*.npz")
    with np.load(part) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(part, **{k: v for k, v in arrays.items() if not k.startswith("crop_")})  # as kept before crop boxes
    assert find_duplicates([str(cropped)], crops="none", hashes_dir=kept, **QUIET) == {**runs["none"], "seconds": ANY}
    np.savez(part, **{**arrays, "crop_hashes": np.zeros((len(arrays["positions"]), 3, 8), np.uint8)})
    res = CliRunner().invoke(cli, ["duplicates", str(cropped), "--crops", "none", "--hashes", str(kept)])
    assert res.exit_code == 2 and res.output.startswith(f"hashindex: error: --hashes {part}: holds hashes of shapes ")
    assert res.output.endswith("with 0 crop boxes each; move it away and rerun\n") and res.output.count("\n") == 1
    np.savez(part, **arrays)
    flipped = bytearray(part.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # inside an array: the zip member's CRC fails (zipfile's error, no ValueError)
    part.write_bytes(bytes(flipped))
    res = CliRunner().invoke(cli, ["duplicates", str(cropped), "--crops", "none", "--hashes", str(kept)])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert res.output.startswith(f"hashindex: error: --hashes {part}: not a readable part of kept hashes (Bad CRC-32 ")
    res = CliRunner().invoke(cli, ["duplicates", str(cropped), "--crops", "squares"])
    assert res.exit_code == 2 and res.output == ("hashindex: error: --crops 'squares': expected 'none' or families of "
                                                 "crop boxes joined by commas, of centre, sides, square, uneven, "
                                                 "corners (e.g. 'centre,square')\n")


def test_the_widest_largest_copy_is_kept_whatever_the_order(tmp_path):
    """--keep largest (the default): of a photo, its crop, the same crop enlarged (more pixels than the photo)
    and a half-size copy, listed crops first, the photo is kept: it is the one the crops are cut from (by the
    view each matched in), then the one with the most pixels; --keep first keeps the crop, as listed."""
    photo = _photos(3)[1]
    w, h = photo.size
    crop = photo.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    crop.save(tmp_path / "a_crop.jpg", quality=88)
    crop.resize((w * 2, h * 2), Image.BICUBIC).save(tmp_path / "b_crop_big.jpg", quality=88)
    photo.save(tmp_path / "c_photo.jpg", quality=88)
    photo.resize((w // 2, h // 2), Image.BILINEAR).save(tmp_path / "d_half.jpg", quality=88)
    largest = find_duplicates([str(tmp_path)], **QUIET)
    (group,) = largest["groups"]
    assert [(r["path"], r["keep"]) for r in group] == [("a_crop.jpg", False), ("b_crop_big.jpg", False),
                                                       ("c_photo.jpg", True), ("d_half.jpg", False)]
    assert [r["match"].split(" cut ")[0] for r in group] == ["whole", "whole", "this", "this"]
    assert redundant_paths(largest["groups"]) == [str(tmp_path / n) for n in ("a_crop.jpg", "b_crop_big.jpg",
                                                                               "d_half.jpg")]
    first = find_duplicates([str(tmp_path)], keep="first", **QUIET)
    assert redundant_paths(first["groups"]) == [str(tmp_path / n) for n in ("b_crop_big.jpg", "c_photo.jpg",
                                                                             "d_half.jpg")]
    res = CliRunner().invoke(cli, ["-q", "duplicates", str(tmp_path), "--out", str(tmp_path / "g.csv")])
    assert res.exit_code == 0 and "c_photo.jpg  (id 2, kept)" in res.output
    rows = list(csv.DictReader(open(tmp_path / "g.csv")))
    assert [r["keep"] for r in rows] == ["0", "0", "1", "0"]
    with pytest.raises(HashindexError, match="keep='biggest': expected one of largest, first"):
        find_duplicates([str(tmp_path)], keep="biggest", **QUIET)
