"""Knowledge distillation (`train --teacher`): the loss against a direct numpy computation; a run that
records the teacher's logits, mixes the two losses as asked and resumes without the teacher file; one-line
errors for a teacher that does not fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hashindex import HashindexError, load_model
from hashindex.checkpoint import read_checkpoint
from hashindex.cli import cli
from hashindex.data import load_arrays, open_source
from hashindex.distill import distill_loss
from hashindex.training import TrainConfig, train as run
from tests.conftest import CIFAR_TRAIN, image_bytes, make_tar, need
from tests.test_train import Interrupt, _stop_after_epoch


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distill_loss_equals_a_direct_computation(temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(7, 10)) * 3, rng.normal(size=(7, 10)) * 3
    p, q = _softmax(teacher / temperature), _softmax(student / temperature)
    want = (p * (np.log(p) - np.log(q))).sum(axis=1).mean() * temperature ** 2
    got = distill_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert float(got) == pytest.approx(want, rel=1e-9)
    assert float(distill_loss(torch.tensor(teacher), torch.tensor(teacher), temperature)) == pytest.approx(0, abs=1e-12)


def test_train_with_a_teacher_records_mixes_and_resumes(tiny_model, tmp_path):
    need(CIFAR_TRAIN)
    teacher = tmp_path / "teacher.pt"  # a copy: it is moved below, and other workers read the shared model
    shutil.copyfile(tiny_model, teacher)
    opts = dict(data=str(CIFAR_TRAIN), limit=160, epochs=2, batch_size=32, workers=0, bits=16, input_size=16,
                teacher=str(teacher), distill_weight=0.75, distill_temperature=2.0)  # the teacher's input size
    part = tmp_path / "part.pt"
    with pytest.raises(Interrupt):
        run(TrainConfig(out=str(part), **opts), progress=False, log=_stop_after_epoch(1))
    # the teacher's logits of the (un-augmented) training images are kept for --resume
    images, _, _ = load_arrays(open_source(str(CIFAR_TRAIN)).subset(160), 16, 3, 0, False)
    kept = read_checkpoint(part)["train_state"]["teacher_logits"]
    assert kept.shape == (160, 10)
    assert np.allclose(kept.numpy(), load_model(tiny_model).forward_numpy(images)[2], atol=1e-4)
    with pytest.raises(HashindexError, match="distill_weight=0.75"):
        run(TrainConfig(out=str(part), **{**opts, "distill_weight": 0.5}), resume=True)
    moved = tmp_path / "moved.pt"  # the teacher file is not read again on resume
    teacher.rename(moved)
    run(TrainConfig(out=str(part), **opts), resume=True, progress=False, log=lambda s: None)
    history = read_checkpoint(part)["history"]
    for row in history:  # the loss is the mix asked for (both are means over the same images)
        assert row["loss"] == pytest.approx(0.25 * row["class_loss"] + 0.75 * row["distill_loss"], rel=1e-6)
        assert row["distill_loss"] > 0
    info = json.loads(CliRunner().invoke(cli, ["info", str(part), "--json"]).output)
    assert info["loss"] == f"0.25 x cross-entropy + 0.75 x distillation from {teacher} (temperature 2)"


def test_an_ensemble_of_teachers_teaches_its_averaged_logits(tiny_model, tmp_path):
    """--teacher repeated: the teachers' logits averaged (the geometric mean of their posteriors at any
    temperature, against numpy), recorded as the ensemble, named by info; resume asks for the same ensemble."""
    from hashindex.derive import derive

    need(CIFAR_TRAIN)
    mirror = tmp_path / "mirror.pt"  # the same weights with test flip: other logits
    derive(str(tiny_model), str(mirror), test_flip=True, progress=False)
    out = tmp_path / "ens.pt"
    res = CliRunner().invoke(cli, ["-q", "train", "--data", str(CIFAR_TRAIN), "--limit", "96", "--epochs", "2",
                                   "--batch-size", "32", "--workers", "0", "--bits", "16", "--input-size", "16",
                                   "--teacher", str(tiny_model), "--teacher", str(mirror), "--out", str(out)])
    assert res.exit_code == 0, res.output
    images, _, _ = load_arrays(open_source(str(CIFAR_TRAIN)).subset(96), 16, 3, 0, False)
    one, two = load_model(tiny_model).forward_numpy(images)[2], load_model(mirror).forward_numpy(images)[2]
    assert not np.allclose(one, two, atol=1e-3)
    ckpt = read_checkpoint(out)
    assert ckpt["train_args"]["teacher"] == (str(tiny_model), str(mirror))
    for t in (1.0, 4.0):  # softmax of the mean logits = the normalised geometric mean of the posteriors
        geo = np.sqrt(_softmax(one / t) * _softmax(two / t))
        assert np.allclose(_softmax((one + two) / 2 / t), geo / geo.sum(axis=1, keepdims=True), atol=1e-6)
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)
    assert info["loss"] == (f"0.5 x cross-entropy + 0.5 x distillation from the ensemble of {tiny_model}, {mirror} "
                            "(logits averaged) (temperature 4)")
    part = tmp_path / "part.pt"
    opts = dict(data=str(CIFAR_TRAIN), limit=96, epochs=2, batch_size=32, workers=0, bits=16, input_size=16,
                teacher=(str(tiny_model), str(mirror)))
    with pytest.raises(Interrupt):
        run(TrainConfig(out=str(part), **opts), progress=False, log=_stop_after_epoch(1))
    kept = read_checkpoint(part)["train_state"]["teacher_logits"].numpy()
    assert np.allclose(kept, (one + two) / 2, atol=1e-4)
    with pytest.raises(HashindexError, match="was trained with teacher="):
        run(TrainConfig(out=str(part), **{**opts, "teacher": str(tiny_model)}), resume=True)


def test_a_consistent_teacher_sees_each_augmented_batch(tiny_model, tmp_path):
    """--consistent-teacher: the targets are the teachers' one-view logits of the very batch the student sees
    (a teacher's test views do not count), nothing but their ids is kept, a resume equals the uninterrupted
    run and is refused in one line when a teacher file now holds another model; info says how it was taught."""
    from hashindex.derive import derive
    from hashindex.distill import ConsistentTeacher

    need(CIFAR_TRAIN)
    mirror = tmp_path / "mirror.pt"  # the same weights with test flip: one view of an image, the same logits
    derive(str(tiny_model), str(mirror), test_flip=True, progress=False)
    images, _, _ = load_arrays(open_source(str(CIFAR_TRAIN)).subset(64), 16, 3, 0, False)
    x = torch.from_numpy(images)
    tiny, flip = load_model(tiny_model), load_model(mirror)
    got = ConsistentTeacher([tiny.net], torch.device("cpu"), None)(x.flip(3))  # a flipped batch, as augmentation does
    assert torch.allclose(got, torch.from_numpy(tiny.forward_numpy(images[..., ::-1].copy())[2]), atol=1e-4)
    assert torch.allclose(ConsistentTeacher([flip.net], torch.device("cpu"), None)(x.flip(3)), got, atol=1e-5)
    assert not np.allclose(got.numpy(), flip.forward_numpy(images)[2], atol=1e-3)  # its two views: other logits

    teacher = tmp_path / "teacher.pt"
    shutil.copyfile(tiny_model, teacher)
    opts = dict(data=str(CIFAR_TRAIN), limit=96, epochs=2, batch_size=32, workers=0, bits=16, input_size=16,
                teacher=str(teacher), consistent_teacher=True)
    full, part = tmp_path / "full.pt", tmp_path / "part.pt"
    run(TrainConfig(out=str(full), **opts), progress=False, log=lambda s: None)
    with pytest.raises(Interrupt):
        run(TrainConfig(out=str(part), **opts), progress=False, log=_stop_after_epoch(1))
    state = read_checkpoint(part)["train_state"]
    assert state["teacher_ids"] == [tiny.model_id] and "teacher_logits" not in state
    with pytest.raises(HashindexError, match="consistent_teacher=True"):
        run(TrainConfig(out=str(part), **{**opts, "consistent_teacher": False}), resume=True)
    shutil.copyfile(mirror, teacher)  # the file now holds another model
    with pytest.raises(HashindexError, match=f"was taught by models {tiny.model_id}, the teacher files now hold "):
        run(TrainConfig(out=str(part), **opts), resume=True, progress=False, log=lambda s: None)
    shutil.copyfile(tiny_model, teacher)
    run(TrainConfig(out=str(part), **opts), resume=True, progress=False, log=lambda s: None)
    a, b = read_checkpoint(full), read_checkpoint(part)
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-5), k
    for row in b["history"]:
        assert row["distill_loss"] > 0
        assert row["loss"] == pytest.approx(0.5 * row["class_loss"] + 0.5 * row["distill_loss"])
    info = json.loads(CliRunner().invoke(cli, ["info", str(part), "--json"]).output)
    assert info["loss"] == (f"0.5 x cross-entropy + 0.5 x distillation from {teacher} "
                            "(temperature 4, seeing each augmented batch)")
    with pytest.raises(HashindexError, match="consistent_teacher=True: give the teacher"):
        run(TrainConfig(data=str(CIFAR_TRAIN), out=str(tmp_path / "no.pt"), consistent_teacher=True), progress=False)


def test_a_teacher_that_does_not_fit_is_refused_in_one_line(tiny_model, tmp_path):
    need(CIFAR_TRAIN)
    runner = CliRunner()
    base = ["-q", "train", "--limit", "40", "--epochs", "1", "--workers", "0", "--input-size", "16",
            "--out", str(tmp_path / "s.pt"), "--data"]
    res = runner.invoke(cli, [*base, str(CIFAR_TRAIN), "--teacher", str(tiny_model), "--input-size", "28"])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "--teacher " in res.output and "a 3x16px model, but the student trains at 3x28px" in res.output
    two = make_tar(tmp_path / "two.tar", {f"{c}/{i}.jpg": image_bytes(seed=i) for i, c in enumerate(["cat", "dog"] * 3)})
    res = runner.invoke(cli, [*base, str(two), "--teacher", str(tiny_model)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "are not the training data's ['cat', 'dog']" in res.output
    res = runner.invoke(cli, [*base, str(CIFAR_TRAIN), "--teacher", str(tmp_path / "none.pt")])
    assert res.exit_code == 2 and "--teacher " in res.output and "no such checkpoint file" in res.output
    res = runner.invoke(cli, [*base, str(CIFAR_TRAIN), "--teacher", str(tiny_model), "--distill-weight", "1.5"])
    assert res.exit_code == 2 and "--distill-weight" in res.output
    res = runner.invoke(cli, [*base, str(CIFAR_TRAIN), "--consistent-teacher"])
    assert res.exit_code == 2 and res.output == ("hashindex: error: --consistent-teacher: give the teacher "
                                                 "(--teacher MODEL) it applies to\n"), res.output
    with pytest.raises(HashindexError, match="distill_temperature=0"):
        run(TrainConfig(data=str(CIFAR_TRAIN), out=str(tmp_path / "t.pt"), teacher=str(tiny_model),
                        input_size=16, distill_temperature=0), progress=False)
    assert not (tmp_path / "s.pt").exists() and not (tmp_path / "t.pt").exists()


def test_a_wider_net_trains_loads_and_teaches(tiny_model, tmp_path):
    """--width 2: twice the hidden channels (about 4x the multiply-adds of block 2), the pooled and mid features
    192-d as the codes' net's, so it extracts alike; recorded in the checkpoint (absent at width 1: ids of older
    checkpoints unchanged), refused on resume or as --init for another width, and a teacher for a width-1 student."""
    need(CIFAR_TRAIN)
    opts = dict(data=str(CIFAR_TRAIN), limit=96, epochs=1, batch_size=32, workers=0, bits=16, input_size=16)
    wide = tmp_path / "wide.pt"
    res = CliRunner().invoke(cli, ["-q", "train", "--data", str(CIFAR_TRAIN), "--limit", "96", "--epochs", "1",
                                   "--batch-size", "32", "--workers", "0", "--bits", "16", "--input-size", "16",
                                   "--width", "2", "--out", str(wide)])
    assert res.exit_code == 0, res.output
    ckpt, narrow = read_checkpoint(wide), read_checkpoint(tiny_model)
    assert ckpt["width"] == 2 and "width" not in narrow
    assert ckpt["state_dict"]["trunk.0.weight"].shape[0] == 384  # 192 x 2 filters in the first conv
    model = load_model(wide)
    images, _, _ = load_arrays(open_source(str(CIFAR_TRAIN)).subset(8), 16, 3, 0, False)
    fields = model.encode_fields(images)
    assert fields["features"].shape == (8, 192) and fields["mid_features"].shape == (8, 192)
    assert fields["codes"].shape == (8, 2)
    info = json.loads(CliRunner().invoke(cli, ["info", str(wide), "--json"]).output)
    assert info["arch"] == "nin-hash v1, width 2" and info["parameters"] > 2.5 * sum(
        t.numel() for t in narrow["state_dict"].values())
    student = tmp_path / "student.pt"
    run(TrainConfig(out=str(student), teacher=str(wide), consistent_teacher=True, **opts), progress=False,
        log=lambda s: None)
    assert "width" not in read_checkpoint(student)
    with pytest.raises(HashindexError, match=f"init={wide}: a width-2 net"):
        run(TrainConfig(out=str(tmp_path / "x.pt"), init=str(wide), **opts), progress=False, log=lambda s: None)
    with pytest.raises(HashindexError, match="width=5: expected one of 1, 2, 3, 4"):
        run(TrainConfig(out=str(tmp_path / "y.pt"), width=5, **opts), progress=False)
    part = tmp_path / "part.pt"
    with pytest.raises(Interrupt):
        run(TrainConfig(out=str(part), width=2, **{**opts, "epochs": 2}), progress=False, log=_stop_after_epoch(1))
    with pytest.raises(HashindexError, match="was trained with width=2"):
        run(TrainConfig(out=str(part), **{**opts, "epochs": 2}), resume=True)
