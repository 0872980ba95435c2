"""Training: a real short run, resume after interruption, user errors through the CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hashindex import HashindexError, load_model
from hashindex.checkpoint import read_checkpoint
from hashindex.cli import cli
from hashindex.model import NINHash
from hashindex.training import TrainConfig, train as train_run
from tests.conftest import CIFAR_TEST, CIFAR_TRAIN, image_bytes, load_tool, make_mixed_folder, make_tar, need


def test_tiny_model_is_usable(tiny_model):
    model = load_model(tiny_model)
    assert model.bits == 48 and len(model.class_names) == 10
    ckpt = read_checkpoint(tiny_model)
    assert "train_state" not in ckpt and ckpt["epochs"] == 1
    assert 0 <= ckpt["accuracy"] <= 1 and 0 < ckpt["map"] <= 1
    assert ckpt["train_data"].startswith("tar ") and ckpt["torch_version"] == str(torch.__version__)


class Interrupt(Exception):
    pass


def _stop_after_epoch(n):
    def log(line):
        if line.startswith(f"epoch {n}/"):
            raise Interrupt
    return log


def test_resume_equals_uninterrupted(tmp_path):
    from hashindex.training import TrainConfig, train as run

    need(CIFAR_TRAIN)
    opts = dict(data=str(CIFAR_TRAIN), limit=160, epochs=2, batch_size=32, workers=0, bits=16, input_size=16)
    full = tmp_path / "full.pt"
    run(TrainConfig(out=str(full), **opts), progress=False, log=lambda s: None)
    part = tmp_path / "part.pt"
    with pytest.raises(Interrupt):
        run(TrainConfig(out=str(part), **opts), progress=False, log=_stop_after_epoch(1))
    half = read_checkpoint(part)
    assert half["epochs"] == 1 and "train_state" in half
    with pytest.raises(HashindexError, match="already exists"):
        run(TrainConfig(out=str(part), **opts), progress=False, log=lambda s: None)
    with pytest.raises(HashindexError, match="bits=16"):
        run(TrainConfig(out=str(part), **{**opts, "bits": 32}), resume=True)
    with pytest.raises(HashindexError, match="binary_weight=0.0"):
        run(TrainConfig(out=str(part), **{**opts, "binary_weight": 1.0}), resume=True)
    with pytest.raises(HashindexError, match="label_smoothing=0.0"):
        run(TrainConfig(out=str(part), **{**opts, "label_smoothing": 0.1}), resume=True)
    with pytest.raises(HashindexError, match="trivial_augment=False"):
        run(TrainConfig(out=str(part), **{**opts, "trivial_augment": True}), resume=True)
    run(TrainConfig(out=str(part), **opts), resume=True, progress=False, log=lambda s: None)
    a, b = read_checkpoint(full), read_checkpoint(part)
    assert b["epochs"] == 2 and "train_state" not in b
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-5), k
    with pytest.raises(HashindexError, match="finished checkpoint"):
        run(TrainConfig(out=str(part), **opts), resume=True, progress=False)


def test_cli_train_and_errors(tmp_path):
    need(CIFAR_TRAIN)
    runner = CliRunner()
    bad = runner.invoke(cli, ["train", "--data", "/no/such/path", "--out", str(tmp_path / "m.pt")])
    assert bad.exit_code == 2
    assert bad.output.strip() == "hashindex: error: --data /no/such/path: no such file or directory"
    # a training set with a corrupt JPEG inside: skipped, counted, training goes on
    members = {f"t/{c}/{i}.jpg": image_bytes(seed=i + 10 * k) for k, c in enumerate("ab") for i in range(12)}
    members["t/a/broken.jpg"] = image_bytes(seed=99)[:200]
    tar = make_tar(tmp_path / "t.tar", members)
    out = tmp_path / "m.pt"
    ok = runner.invoke(cli, ["-q", "train", "--data", str(tar), "--bits", "12", "--epochs", "1",
                             "--workers", "0", "--out", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    assert "1 skipped (1 truncated)" in ok.output
    assert '"truncated": 1' in ok.output
    assert load_model(out).bits == 12
    again = runner.invoke(cli, ["train", "--data", str(tar), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    cuda = runner.invoke(cli, ["train", "--data", str(tar), "--out", str(tmp_path / "c.pt"), "--device", "cuda"])
    if not torch.cuda.is_available():
        assert cuda.exit_code == 2 and "CUDA is not available" in cuda.output
    held = runner.invoke(cli, ["-q", "train", "--data", str(tar), "--bits", "12", "--epochs", "1", "--workers", "0",
                               "--val-every", "4", "--out", str(tmp_path / "held.pt")])
    assert held.exit_code == 0, held.output
    assert "train: 18 images, 2 classes, val: 6 images; 1 skipped" in held.output  # 24 readable + 1 broken
    ckpt = read_checkpoint(tmp_path / "held.pt")
    assert ckpt["accuracy"] is not None and ckpt["train_data"].endswith("(every=4:train)")
    assert ckpt["map_protocol"].startswith("mAP@all, 6 val queries vs 18 training images")
    for extra, message in [(["--val-every", "4", "--val", str(tar)], "--val-every 4: give either --val or --val-every, not both"),
                           (["--val-every", "99"], "--val-every 99: expected 2 to 25 (the images of --data)"),
                           (["--bits", "10"], "--bits 10: expected a multiple of 4 (e.g. 12, 24, 32, 48, 64)")]:
        res = runner.invoke(cli, ["train", "--data", str(tar), "--out", str(tmp_path / "x.pt")] + extra)
        assert res.exit_code == 2 and res.output.strip() == f"hashindex: error: {message}"  # before decoding
    for extra in (["--lr", "-1"], ["--weight-decay", "-0.1"]):  # (--lr -1 was a ValueError's traceback)
        res = runner.invoke(cli, ["train", "--data", str(tar), "--out", str(tmp_path / "x.pt")] + extra)
        assert res.exit_code == 2 and f"Invalid value for '{extra[0]}'" in res.output
    with pytest.raises(HashindexError, match=r"lr=0\.0, weight_decay=0\.0005: expected a learning rate > 0"):
        train_run(TrainConfig(data=str(tar), out=str(tmp_path / "x.pt"), lr=0.0), progress=False)
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    (unlabelled / "x.png").write_bytes(image_bytes("PNG"))
    res = runner.invoke(cli, ["train", "--data", str(unlabelled), "--out", str(tmp_path / "u.pt")])
    assert res.exit_code == 2 and "needs labelled images" in res.output
    single = tmp_path / "single" / "cats"  # one class: its cross-entropy is 0 from the start, nothing to learn
    single.mkdir(parents=True)
    for i in range(4):
        (single / f"{i}.png").write_bytes(image_bytes("PNG", seed=i))
    res = runner.invoke(cli, ["train", "--data", str(single.parent), "--out", str(tmp_path / "s.pt")])
    assert res.exit_code == 2 and res.output.strip() == (
        f"hashindex: error: --data {single.parent}: its images hold one class (cats); the codes are learned from "
        "class labels, so training needs images of at least 2 classes")
    assert not (tmp_path / "s.pt").exists()


def test_integer_labels_train_as_numbered_classes(tmp_path):
    """A Caffe list ('path label', DLBHC's train-file.txt) has integer labels and no names: it trains, with the
    classes '0' to the largest label, and the model's predictions are those labels."""
    from hashindex.data import open_source

    need(CIFAR_TEST)
    src = open_source(CIFAR_TEST).subset(40)
    lines = []
    for i in range(len(src)):
        (tmp_path / f"{i}.jpg").write_bytes(src.read_bytes(i))
        lines.append(f"{i}.jpg {int(src.labels[i]) % 3}")  # three classes, numbered
    (tmp_path / "train-file.txt").write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(cli, ["-q", "train", "--data", str(tmp_path / "train-file.txt"), "--val-every", "4",
                                   "--epochs", "1", "--bits", "16", "--input-size", "16", "--workers", "0",
                                   "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 0, res.output
    ckpt = read_checkpoint(tmp_path / "m.pt")
    assert ckpt["class_names"] == ["0", "1", "2"] and ckpt["accuracy"] is not None
    assert ckpt["state_dict"]["classifier.weight"].shape[0] == 3


def test_a_stray_file_beside_the_class_folders_does_not_block_training(tmp_path):
    """A README (or .DS_Store) in a photo folder's root is a counted skip, not an unlabelled image; an image
    there is one, and the error names it."""
    make_mixed_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "README.txt").write_text("my photos\n")
    (tmp_path / "imgs" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    args = ["-q", "train", "--data", str(tmp_path / "imgs"), "--bits", "12", "--epochs", "1", "--workers", "0",
            "--input-size", "32", "--out", str(tmp_path / "m.pt")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "9 images, 2 classes; 6 skipped" in res.output
    (tmp_path / "imgs" / "stray.png").write_bytes(image_bytes("PNG"))
    res = CliRunner().invoke(cli, args[:-1] + [str(tmp_path / "m2.pt")])
    assert res.exit_code == 2 and "; stray.png is an image without a class" in res.output
    assert not (tmp_path / "m2.pt").exists()


def test_cli_info(tiny_model, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["info", str(tiny_model), "--json"])
    assert res.exit_code == 0 and '"bits": 48' in res.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    res = runner.invoke(cli, ["info", str(junk)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not a hashindex checkpoint" in res.output


def test_transfer_weights_copies_what_fits():
    from hashindex.checkpoint import compute_model_id
    from hashindex.model import NINHash
    from hashindex.transfer import transfer_weights

    init = read_checkpoint("nin-cifar10-48")
    fresh = NINHash(48, 3)
    before = fresh.classifier.weight.detach().clone()
    assert transfer_weights(fresh, init, ["a", "b", "c"]) == ["trunk", "latent"]
    state = fresh.state_dict()
    for k, v in init["state_dict"].items():
        if not k.startswith("classifier."):
            assert torch.equal(state[k], v), k  # trunk (with BN statistics), normalisation, hash layer
    assert torch.equal(fresh.classifier.weight, before)  # other classes: classifier left as initialised
    shorter = NINHash(32, 10)
    assert transfer_weights(shorter, init, init["class_names"]) == ["trunk"]
    assert not torch.equal(shorter.latent.weight[:, :4], init["state_dict"]["latent.weight"][:32, :4])
    same = NINHash(48, 10)
    assert transfer_weights(same, init, init["class_names"]) == ["trunk", "latent", "classifier"]
    assert compute_model_id(same.state_dict(), 48) == init["model_id"]  # nothing left out


def test_cli_fine_tune_from_shipped_model(tiny_model, tmp_path):
    need(CIFAR_TEST)
    runner = CliRunner()
    out = tmp_path / "ft.pt"
    args = ["-q", "train", "--data", str(CIFAR_TEST), "--val", str(CIFAR_TEST), "--limit", "300",
            "--val-limit", "200", "--epochs", "1", "--bits", "48", "--workers", "0", "--out", str(out)]
    res = runner.invoke(cli, args + ["--init", "nin-cifar10-48", "--lr", "0.01", "--json"])
    assert res.exit_code == 0, res.output
    ckpt = read_checkpoint(out)
    assert ckpt["init"]["model"] == "nin-cifar10-48" and ckpt["init"]["copied"] == ["trunk", "latent", "classifier"]
    # one epoch on 300 images: from the trained model it classifies; from scratch (tiny_model) it barely does
    scratch = read_checkpoint(tiny_model)["accuracy"]
    assert ckpt["accuracy"] > 0.7 and ckpt["accuracy"] > scratch + 0.3, (ckpt["accuracy"], scratch)
    shown = runner.invoke(cli, ["info", str(out), "--json"])
    assert '"fine_tuned_from": "nin-cifar10-48 (model ' in shown.output
    missing = runner.invoke(cli, args + ["--init", "/no/model.pt", "--overwrite"])
    assert missing.exit_code == 2 and missing.output.startswith("hashindex: error: --init /no/model.pt: no such checkpoint")
    grey = runner.invoke(cli, args + ["--init", "nin-cifar10-48", "--channels", "1", "--overwrite"])
    assert grey.exit_code == 2 and grey.output.count("\n") == 1
    assert "--init nin-cifar10-48: a 3-channel model, but --channels 1" in grey.output


def test_code_terms_values():
    from hashindex.recipe import code_terms

    half_on = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    assert [float(t) for t in code_terms(half_on)] == [-0.25, 0.0, 0.125]  # bits 1, 2: constant
    assert [float(t) for t in code_terms(torch.full((3, 4), 0.5))] == [0.0, 0.0, 0.0]
    assert [float(t) for t in code_terms(torch.ones(2, 4))] == [-0.25, 0.25, 0.25]
    per_bit = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    assert [float(t) for t in code_terms(per_bit)] == [-0.25, 0.0, 0.0]


def test_ssdh_terms_change_the_codes(tmp_path):
    """The binary term drives the latent activations away from the 0.5 threshold, the balance term
    drives each code towards half its bits on, the bit-balance term each bit towards half the images.
    Measured with batch statistics, as the terms see them: two short epochs leave batch norm's running
    statistics unsettled."""
    from hashindex.training import TrainConfig, train as run
    from hashindex.data import load_arrays, open_source

    need(CIFAR_TRAIN)
    # at 16 px (a quarter of the 32-px net's work): the terms act on the latent layer whatever the input size
    opts = dict(data=str(CIFAR_TRAIN), limit=256, epochs=2, batch_size=32, workers=0, bits=16, lr=0.05, input_size=16)
    margins, balance, bit_balance = {}, {}, {}
    images, _, _ = load_arrays(open_source(str(CIFAR_TRAIN), "--data").subset(256), 16, 3, 0, False)
    for name, weights in {"plain": {}, "binary": {"binary_weight": 4.0},
                          "balance": {"balance_weight": 50.0}, "bit_balance": {"bit_balance_weight": 50.0}}.items():
        out = tmp_path / f"{name}.pt"
        run(TrainConfig(out=str(out), **opts, **weights), progress=False, log=lambda s: None)
        last = read_checkpoint(out)["history"][-1]
        margins[name] = last["latent_margin"]
        assert (last["loss"] == last["class_loss"]) == (name == "plain")
        info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)
        assert info["loss"] == {"plain": "cross-entropy", "binary": "cross-entropy + binary 4",
                                "balance": "cross-entropy + balance 50",
                                "bit_balance": "cross-entropy + bit balance 50"}[name]
        assert info["latent_margin"] == last["latent_margin"]
        net = load_model(out).net.train()
        with torch.no_grad():
            latent = net(torch.from_numpy(images[:128]))[1].float().numpy()
        balance[name] = float(np.abs(latent.mean(axis=1) - 0.5).mean())
        bit_balance[name] = float(np.abs(latent.mean(axis=0) - 0.5).mean())
    assert margins["binary"] > margins["plain"] + 0.05, margins
    assert balance["balance"] < balance["plain"] / 2, balance
    assert bit_balance["bit_balance"] < bit_balance["plain"] / 2, bit_balance


def test_latent_stats_tool(tiny_model):
    """tools/latent_stats.py reports what a direct computation on the same images gives."""
    import subprocess
    import sys
    from pathlib import Path

    from hashindex.data import load_arrays, open_source

    need(CIFAR_TEST)
    tool = Path(__file__).resolve().parents[1] / "tools" / "latent_stats.py"
    res = subprocess.run([sys.executable, str(tool), str(tiny_model), "--data", str(CIFAR_TEST), "--limit", "100",
                          "--json"], capture_output=True, text=True, check=True)
    r = json.loads(res.stdout)[str(tiny_model)]
    model = load_model(tiny_model)
    images, _, _ = load_arrays(open_source(str(CIFAR_TEST), "--data").subset(100), model.input_size, 3, 0, False)
    latent, _, _ = model.forward_numpy(images)
    on = latent > 0.5
    assert r["items"] == 100 and r["margin"] == pytest.approx(float(np.abs(latent - 0.5).mean()), rel=1e-6)
    assert r["constant_bits"] == sum(len(set(on[:, k])) == 1 for k in range(48))
    assert r["bit_on_share_deviation"] == pytest.approx(float(np.abs(on.mean(0) - 0.5).mean()))


def test_ensemble_accuracy_tool(tiny_model):
    """tools/ensemble_accuracy.py: members, subsets and the ensemble with mirror images are what a direct
    computation of the logits on the same images gives."""
    from hashindex.data import load_arrays, open_source

    need(CIFAR_TEST)
    tool = load_tool("ensemble_accuracy")
    m = str(tiny_model)
    r = tool.accuracies([m, m], str(CIFAR_TEST), workers=0, limit=100, subsets=(1,), mirror=True)
    model = load_model(tiny_model)
    source = open_source(str(CIFAR_TEST), "val").subset(100)
    source.remap_labels(model.class_names)
    x, y, _ = load_arrays(source, model.input_size, 3, 0, False)
    z = model.forward_numpy(x)[2]
    zm = model.forward_numpy(np.ascontiguousarray(x[..., ::-1]))[2]
    direct = float((z.argmax(1) == y).mean())
    assert r[m] == r["ensemble"] == r["ensemble of 0"] == r["ensemble of 1"] == pytest.approx(direct)
    assert r["ensemble with mirrors"] == pytest.approx(float(((z + zm).argmax(1) == y).mean()))
    right = tool.correctness([m, m], str(CIFAR_TEST), workers=0, limit=100)
    assert (right[m] == (z.argmax(1) == y)).all()
    paired = tool.paired_with_first(right)  # the model against itself: right and wrong on the same images
    assert list(paired) == ["ensemble"] and paired["ensemble"]["diff"] == 0 and not paired["ensemble"]["significant"]


def test_gpu_carry_report(tmp_path, monkeypatch):
    """tools/gpu_train.py --pack says whether the tree and the packed data fit one device call, and when not,
    names the largest finished checkpoints (not in-progress ones, not the shipped weights) to move aside."""
    import subprocess

    tool = load_tool("gpu_train")
    repo = tmp_path / "repo"
    for name, size in (("checkpoints/a.pt", 3_000_000), ("checkpoints/b.pt", 2_000_000),
                       ("checkpoints/in-progress/c.pt", 5_000_000), ("code.py", 500_000),
                       (".gpudata/train.tar.gz", 4_000_000)):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"x" * size)
    (repo / ".gitignore").write_text(".gpudata/\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    line = tool.carry_report(repo / ".gpudata", repo)
    assert "tree 10.5 MB + " in line and " 4.0 MB = 14.5 MB, within" in line
    monkeypatch.setattr(tool, "CARRY_LIMIT", 12_000_000)
    line = tool.carry_report(repo / ".gpudata", repo)
    assert "over one call's 12.0 MB by 2.50 MB" in line
    assert "e.g. checkpoints/a.pt (3.0 MB), checkpoints/b.pt (2.0 MB) (git status shows them deleted" in line
    line = tool.carry_report(repo / ".gpudata", repo, reads={"a.pt"})  # rows that read a.pt: the others go
    assert "checkpoints these rows do not read out of the tree for it, e.g. checkpoints/in-progress/c.pt (5.0 MB), " \
           "checkpoints/b.pt (2.0 MB) (git" in line

    reads = tool.row_reads(["cifar10-48-e200-fm5", "cifar10-24-init-kd"])  # the real rows' blocks
    assert {"cifar10-48-e100-kd2.pt", "cifar10-48-e100-kd-cutout.pt", "cifar10-48-e200-kd.pt",
            "cifar10-48-e200-fm5.pt", "cifar10-24-init-kd.pt", "cifar10-48-e100-kd-scratch.pt"} <= reads
    assert "cifar10-48-e200-ckd5.pt" not in reads and "cifar10-12-init-kd.pt" not in reads
    with pytest.raises(SystemExit, match="--for-rows: no row cifar10-48-e300"):
        tool.row_reads(["cifar10-48-e300"])


def test_constant_bits_and_final_map():
    """Bits the same for every training image are counted (train warns about them)."""
    from hashindex.codes import code_statistics
    from hashindex.model import pack_codes
    from hashindex.training import _final_map

    rng = np.random.default_rng(0)
    latent = rng.random((50, 16))
    latent[:, 2], latent[:, 7], latent[:, 15] = 0.9, 0.1, 0.6
    assert code_statistics(pack_codes(latent), 16)["constant_bits"] == 3
    torch.manual_seed(0)
    x = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    y = np.arange(40) % 3
    m, protocol, constant = _final_map(NINHash(16, 3), x, y, x[:10], y[:10], torch.device("cpu"), True)
    assert 0 < m <= 1 and "10 val queries vs 40" in protocol and 0 <= constant <= 16
    assert _final_map(NINHash(16, 3), x, y, None, None, torch.device("cpu"), True) == (None, "no validation set", None)


def test_cutout_zeroes_one_square_per_image():
    """augment(cutout=s): each image gets one zeroed square of side s (clipped at the border), nothing else."""
    from hashindex.recipe import augment

    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = augment(x.clone(), torch.Generator().manual_seed(0), pad=0, flip=False, cutout=8)
    zero = (out == 0).all(dim=1)  # (N, H, W): all channels zeroed
    assert ((out == 0) | (out == 200)).all() and (zero == (out == 0).any(dim=1)).all()
    for mask in zero:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8  # side 8, at least half of it inside
        assert mask.sum() == len(rows) * len(cols)  # one rectangle: the square, clipped
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()
    assert zero.sum(dim=(1, 2)).float().mean() > 40  # most squares lie wholly inside (64 pixels)
    assert torch.equal(augment(x.clone(), torch.Generator().manual_seed(0), 0, False, 0), x)  # off: unchanged


def test_label_smoothing_and_cutout_train_and_are_recorded(tmp_path):
    from hashindex.training import TrainConfig, train as run

    need(CIFAR_TRAIN)
    opts = dict(data=str(CIFAR_TRAIN), limit=128, epochs=1, batch_size=32, workers=0, bits=16)
    out = tmp_path / "ls.pt"
    lines = []
    run(TrainConfig(out=str(out), label_smoothing=0.1, cutout=8, **opts), progress=False, log=lines.append)
    assert lines[-1] == f"wrote {out}: model {read_checkpoint(out)['model_id']}, no validation set"
    ck = read_checkpoint(out)
    assert ck["train_args"]["label_smoothing"] == 0.1 and ck["train_args"]["cutout"] == 8
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)
    assert info["loss"] == "cross-entropy (label smoothing 0.1)"
    r = CliRunner().invoke(cli, ["train", "--data", str(CIFAR_TRAIN), "--out", str(tmp_path / "x.pt"),
                                 "--label-smoothing", "1"])
    assert r.exit_code == 2 and "--label-smoothing" in r.output


def test_derive_test_flip(tiny_model, tmp_path):
    """`hashindex derive --test-flip`: same weights, new id, codes of the averaged views, its own accuracy;
    an unfinished checkpoint or an existing --out is refused in one line."""
    from hashindex.data import open_source

    from PIL import Image

    need(CIFAR_TEST)
    src = open_source(CIFAR_TEST).subset(60)
    images = np.stack([src.read_array(i, 32, 3) for i in range(60)])
    val = tmp_path / "val"
    for i, (img, label) in enumerate(zip(images, src.labels)):
        (val / src.class_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(val / src.class_names[label] / f"{i}.png")
    runner = CliRunner()
    out = tmp_path / "flip.pt"
    res = runner.invoke(cli, ["-q", "derive", str(tiny_model), "--test-flip", "--out", str(out),
                              "--val", str(val), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    plain, flip = load_model(tiny_model, bf16=False), load_model(out, bf16=False)
    assert flip.test_flip and not plain.test_flip
    assert summary["model_id"] == flip.model_id != plain.model_id == summary["derived_from"]
    logits = load_model(out).forward_numpy(images)[2]  # default precision, as derive measures
    assert summary["accuracy"] == pytest.approx(float((logits.argmax(1) == src.labels).mean()), abs=1 / 60)
    latent, feature, _ = flip.forward_numpy(images)
    _, f0, _ = plain.forward_numpy(images)
    _, f1, _ = plain.forward_numpy(images[..., ::-1].copy())
    assert np.allclose(feature, (f0 + f1) / 2, atol=1e-4)
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert info["inference"].startswith("test-time flip") and str(tiny_model) in info["derived_from"]
    back = tmp_path / "back.pt"
    assert runner.invoke(cli, ["-q", "derive", str(out), "--no-test-flip", "--out", str(back)]).exit_code == 0
    assert load_model(back).model_id == plain.model_id  # switching back gives the original id
    res = runner.invoke(cli, ["derive", str(tiny_model), "--test-flip", "--out", str(out)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "already exists (pass --overwrite" in res.output
    ckpt = read_checkpoint(tiny_model)
    unfinished = tmp_path / "unfinished.pt"
    torch.save({**{k: v for k, v in ckpt.items() if k != "path"}, "train_state": {}}, unfinished)
    res = runner.invoke(cli, ["derive", str(unfinished), "--test-flip", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "unfinished checkpoint" in res.output


def test_derive_test_shift_averages_ten_views(tiny_model, tmp_path):
    """`derive --test-shift 2` on a flip model: the feature is the mean over the image, its 4 diagonal
    shifts by 2 px (zero fill) and their mirror images, computed here view by view; own id; bad values refused."""
    import torch.nn.functional as F

    from hashindex.checkpoint import compute_model_id

    runner = CliRunner()
    flip, ten = tmp_path / "flip.pt", tmp_path / "ten.pt"
    assert runner.invoke(cli, ["-q", "derive", str(tiny_model), "--test-flip", "--out", str(flip)]).exit_code == 0
    res = runner.invoke(cli, ["-q", "derive", str(flip), "--test-shift", "2", "--out", str(ten), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["test_flip"] is True and summary["test_shift"] == 2  # the flip was kept
    plain, model = load_model(tiny_model, bf16=False), load_model(ten, bf16=False)
    assert model.test_shift == 2 and model.model_id == summary["model_id"]
    assert len({model.model_id, load_model(flip).model_id, plain.model_id}) == 3
    s = plain.input_size
    x = torch.randint(0, 256, (6, 3, s, s), dtype=torch.uint8)
    padded = F.pad(x, (2, 2, 2, 2))
    views = [padded[..., 2 + dy:s + 2 + dy, 2 + dx:s + 2 + dx] for dy, dx in [(0, 0), (2, 2), (-2, -2), (2, -2), (-2, 2)]]
    views += [v.flip(3) for v in views]
    expected = np.mean([plain.forward_numpy(v.contiguous())[1] for v in views], axis=0)
    assert np.allclose(model.forward_numpy(x)[1], expected, atol=1e-4)
    info = json.loads(runner.invoke(cli, ["info", str(ten), "--json"]).output)
    assert info["inference"] == "10 views: the image and its 4 diagonal shifts by 2 px, each with its mirror image"
    ckpt = read_checkpoint(ten)
    assert compute_model_id(ckpt["state_dict"], ckpt["bits"], True, 2) == ckpt["model_id"]
    torch.save({**{k: v for k, v in ckpt.items() if k != "path"}, "test_shift": 0}, tmp_path / "tampered.pt")
    with pytest.raises(HashindexError, match="corrupt checkpoint"):  # the option changed without the id
        read_checkpoint(tmp_path / "tampered.pt")
    res = runner.invoke(cli, ["derive", str(flip), "--test-shift", "5", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "--test-shift 5: expected 0 to 4 pixels (a quarter of the model's 16-px input)" in res.output
    res = runner.invoke(cli, ["derive", str(flip), "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "derive: nothing to change (give --test-flip, --test-shift and/or --adapt-codes)" in res.output


def test_train_with_test_flip(tmp_path):
    """`train --test-flip` writes a checkpoint that encodes with the averaged views; `--init` passes it on."""
    from hashindex.checkpoint import compute_model_id

    need(CIFAR_TRAIN)
    out = tmp_path / "f.pt"
    args = ["-q", "train", "--data", str(CIFAR_TRAIN), "--limit", "64", "--batch-size", "32", "--bits", "16",
            "--workers", "0", "--out", str(out)]
    res = CliRunner().invoke(cli, args + ["--epochs", "1", "--test-flip"])
    assert res.exit_code == 0, res.output
    ckpt = read_checkpoint(out)
    assert ckpt["test_flip"] is True and ckpt["model_id"] == compute_model_id(ckpt["state_dict"], 16, True)
    assert load_model(out).net.test_flip
    # fine-tuning keeps the option of the model it starts from, unless told otherwise
    for extra, want in (([], True), (["--no-test-flip"], False)):
        ft = tmp_path / f"ft{len(extra)}.pt"
        res = CliRunner().invoke(cli, args[:-1] + [str(ft), "--epochs", "1", "--init", str(out), *extra])
        assert res.exit_code == 0, res.output
        assert read_checkpoint(ft)["test_flip"] is want


def test_time_left_reads_in_minutes_then_hours():
    from hashindex.training import time_left

    assert time_left(0, 100.0) == ""
    assert time_left(1, 5.0) == ", ~1 min left"  # never "0 min" while an epoch is left
    assert time_left(10, 150.0) == ", ~25 min left"
    assert time_left(128, 130.0) == ", ~4 h 37 min left" and time_left(3, 1200.0) == ", ~1 h 00 min left"


def test_the_pace_left_follows_the_last_epochs():
    """After slow epochs (the cores shared) the estimate follows the last three epochs, not the run's mean."""
    from hashindex.training import recent_pace

    assert recent_pace([0.0, 100.0]) == 100.0  # one epoch so far: its time
    ends = [0.0, 1500.0, 3000.0, 4500.0, 5000.0, 5500.0, 6000.0]  # three epochs of 1,500 s, then three of 500 s
    assert recent_pace(ends) == 500.0 and recent_pace(ends, window=6) == 1000.0
    assert recent_pace(ends[:5]) == (5000.0 - 1500.0) / 3


def test_history_records_each_epochs_last_learning_rate_and_plots(tmp_path):
    """A history row's lr is the one its epoch's last step ran at (a finished cosine run ends near 0; the end of
    the last epoch used to read as the averaging phase's swa_lr, 0.02); `info --plot` draws the history."""
    from hashindex.recipe import lr_at
    from hashindex.training import TrainConfig, train as run

    need(CIFAR_TRAIN)
    cfg = TrainConfig(data=str(CIFAR_TRAIN), out=str(tmp_path / "m.pt"), limit=64, epochs=2, batch_size=32,
                      workers=0, bits=16, lr=0.05, input_size=16)
    lines = []
    run(cfg, progress=False, log=lines.append)
    history = read_checkpoint(cfg.out)["history"]
    assert [row["lr"] for row in history] == [lr_at(cfg, 0.5), lr_at(cfg, 1.5)]  # 2 steps an epoch
    epochs = [line for line in lines if line.startswith("epoch ")]  # the time left, until the last epoch
    assert epochs[0].endswith(" min left)") and epochs[1].endswith(" img/s)")
    result = CliRunner().invoke(cli, ["info", cfg.out, "--plot", str(tmp_path / "curves.png"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plot"] == str(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(cli, ["info", str(tmp_path), "--plot", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "--plot" in bad.output and "not from an image collection" in bad.output
    assert not (tmp_path / "x.png").exists()


def test_a_run_the_memory_cannot_hold_is_refused_before_decoding(tmp_path, monkeypatch):
    """Past the free memory the kernel's OOM killer ends the run, or another process on the machine (a
    224-px run of 100 images here took 23 GB before it was killed): refused in one line, with what fits."""
    need(CIFAR_TEST)
    from hashindex import recipe, training

    monkeypatch.setattr(training, "_load_data", lambda *a: pytest.fail("decoded before the check"))
    monkeypatch.setattr(recipe, "free_memory", lambda device: 2**30)  # 1 GiB free
    args = ["train", "--data", str(CIFAR_TEST), "--limit", "200", "--epochs", "1", "--out", str(tmp_path / "m.pt"),
            "--no-bf16"]  # (float32 on every CPU: 7,000 bytes a pixel in a training step)
    got = CliRunner().invoke(cli, args + ["--input-size", "64", "--batch-size", "128"])
    assert got.exit_code == 2 and got.output.strip() == (
        "hashindex: error: --batch-size 128: a training step at --input-size 64 takes about 3.4 GiB, and the cpu "
        "has 1.0 GiB free beside the decoded images (--batch-size 33 fits, or an --input-size under 64)")
    got = CliRunner().invoke(cli, args + ["--input-size", "1024"])  # the images fit (0.6 GiB); no step does
    assert got.exit_code == 2 and got.output.strip().endswith(
        "takes about 875.0 GiB, and the cpu has 0.4 GiB free beside the decoded images (an --input-size under 1024)")
    monkeypatch.setattr(recipe, "free_memory", lambda device: 2**29)
    got = CliRunner().invoke(cli, args + ["--input-size", "1024"])
    assert got.exit_code == 2 and got.output.strip() == (
        "hashindex: error: --input-size 1024: the 200 images decoded at that size take 0.6 GiB in memory, and this "
        "machine has 0.5 GiB free (an --input-size under 1024, or --limit)")
    assert not (tmp_path / "m.pt").exists()


def test_a_trunk_learning_slower_than_the_head(tiny_model, tmp_path):
    """train(init=..., trunk_lr=F): the trunk's parameters step at F times each step's learning rate, the hash
    layer and classifier at the full rate (discriminative fine-tuning): at F = 1e-6 one epoch leaves the trunk's
    weights where the init model had them while the head moves as far as at F = 1. The fraction is checked, and
    it needs an init model."""
    from hashindex.training import TrainConfig, train as run

    need(CIFAR_TEST)
    opts = dict(data=str(CIFAR_TEST), limit=256, epochs=1, batch_size=64, workers=0, bits=48, input_size=16,
                init=str(tiny_model))
    runs = {}
    for fraction in (1e-6, 1.0):
        out = tmp_path / f"tl{fraction:g}.pt"
        run(TrainConfig(out=str(out), trunk_lr=fraction, **opts), progress=False, log=lambda s: None)
        runs[fraction] = read_checkpoint(out)
    before = read_checkpoint(tiny_model)["state_dict"]

    def moved(ckpt, prefix):
        return max((ckpt["state_dict"][k].float() - before[k].float()).abs().max().item()
                   for k in before if k.startswith(prefix) and k.endswith(".weight"))
    assert runs[1e-6]["init"]["copied"] == ["trunk", "latent", "classifier"]
    assert moved(runs[1e-6], "trunk.") < 1e-5 < 1e-3 < moved(runs[1.0], "trunk.")
    assert moved(runs[1e-6], "latent.") > 1e-3 and moved(runs[1e-6], "classifier.") > 1e-3
    assert runs[1e-6]["train_args"]["trunk_lr"] == 1e-6
    info = json.loads(CliRunner().invoke(cli, ["info", str(tmp_path / "tl1e-06.pt"), "--json"]).output)
    assert info["fine_tuned_from"].endswith("; copied trunk, latent, classifier; trunk at 1e-06 x lr)")
    for cfg, message in [(TrainConfig(out=str(tmp_path / "a.pt"), trunk_lr=0, **opts), "trunk_lr=0: expected"),
                         (TrainConfig(out=str(tmp_path / "b.pt"), trunk_lr=0.1, data=str(CIFAR_TEST), limit=64),
                          "trunk_lr=0.1: the trunk learns slower than the head only when it was trained before")]:
        with pytest.raises(HashindexError, match=message):
            run(cfg, progress=False, log=lambda s: None)
    r = CliRunner().invoke(cli, ["train", "--data", str(CIFAR_TEST), "--out", str(tmp_path / "c.pt"),
                                 "--trunk-lr", "0.5"])
    assert r.exit_code == 2 and r.output == ("hashindex: error: --trunk-lr 0.5: the trunk learns slower than the head "
                                             "only when it was trained before; give --init MODEL, or --trunk-lr 1\n")


def test_resized_crops_against_a_direct_computation():
    """crop_scale=S: each image a random box of S to 1 of its area, aspect 3/4 to 4/3 where the image allows,
    inside the image; resampled bilinearly to the input size, as torch's own bilinear resize of the box gives it
    (the whole image's box: the image itself)."""
    import torch.nn.functional as F

    from hashindex.recipe import augment, crop_boxes, resized_crops

    boxes = crop_boxes(20_000, 32, torch.Generator().manual_seed(0), 0.3)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / 32 ** 2
    assert (boxes >= 0).all() and (boxes <= 32 + 1e-4).all()
    assert area.min() >= 0.3 - 1e-4 and area.max() <= 1 + 1e-4 and 0.55 < area.mean() < 0.66
    unclipped = (w < 32 - 1e-3) & (h < 32 - 1e-3)
    assert ((w / h)[unclipped] > 0.75 - 1e-4).all() and ((w / h)[unclipped] < 4 / 3 + 1e-4).all()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(resized_crops(x, torch.tensor([[0.0, 0, 32, 32]] * 3)), x)
    for box, region in (([8.0, 0, 24, 32], (slice(None), slice(8, 24))),
                        ([0.0, 16, 32, 32], (slice(16, 32), slice(None)))):
        want = F.interpolate(x[:, :, region[0], region[1]].float(), size=(32, 32), mode="bilinear",
                             align_corners=False).round().clamp(0, 255)
        got = resized_crops(x, torch.tensor([box] * 3)).float()
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # (the borders: torch clamps, roi_align not)
        assert torch.equal(got[inner], want[inner]), box
    off = augment(x.clone(), torch.Generator().manual_seed(1), pad=0, flip=False, scale=0.5)
    assert off.shape == x.shape and off.dtype == torch.uint8 and not torch.equal(off, x)


def test_crop_scale_trains_is_recorded_and_checked(tmp_path):
    from hashindex.training import TrainConfig, train as run

    need(CIFAR_TRAIN)
    opts = dict(data=str(CIFAR_TRAIN), limit=128, epochs=1, batch_size=32, workers=0, bits=16)
    out = tmp_path / "cs.pt"
    run(TrainConfig(out=str(out), crop_scale=0.35, **opts), progress=False, log=lambda s: None)
    assert read_checkpoint(out)["train_args"]["crop_scale"] == 0.35
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)
    assert info["augmentation"] == "resized crop (0.35-1 of the area) + flip"
    with pytest.raises(HashindexError, match="crop_scale=1: expected 0"):
        run(TrainConfig(out=str(tmp_path / "x.pt"), crop_scale=1, **opts), progress=False, log=lambda s: None)
    r = CliRunner().invoke(cli, ["train", "--data", str(CIFAR_TRAIN), "--out", str(tmp_path / "y.pt"),
                                 "--crop-scale", "1"])
    assert r.exit_code == 2 and "--crop-scale" in r.output


def test_a_small_run_from_scratch_is_told_of_init_and_json_stays_parseable(tmp_path):
    """train on a small set from random weights: a note names --init and the shipped model (16 points of mAP on
    photos, measured); with --json the summary alone is on stdout (the progress lines on stderr), so a script can
    parse it. Fine-tuned, or on a large set, no note."""
    from hashindex import DEFAULT_MODEL
    from hashindex.transfer import SMALL_SET, scratch_note

    need(CIFAR_TEST)
    out = tmp_path / "s.pt"
    r = CliRunner().invoke(cli, ["train", "--data", str(CIFAR_TEST), "--limit", "64", "--epochs", "1", "--bits", "16",
                                 "--workers", "0", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model_id"] == read_checkpoint(out)["model_id"]
    assert f"note: training from random weights on 64 images; from the shipped model (--init {DEFAULT_MODEL})" \
        in r.stderr
    assert scratch_note(SMALL_SET) is None and scratch_note(100, width=2) is None
    lines = []
    train_run(TrainConfig(data=str(CIFAR_TEST), out=str(tmp_path / "f.pt"), limit=64, epochs=1, workers=0,
                          init=DEFAULT_MODEL), progress=False, log=lines.append)
    assert not [line for line in lines if line.startswith("note:")]
