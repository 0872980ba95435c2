"""Mixup (`train --mixup`): the weights drawn, the blended batch and its loss against a direct numpy
computation, and a short run that records it, teaches through it and resumes to the uninterrupted weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hashindex import HashindexError
from hashindex.checkpoint import read_checkpoint
from hashindex.cli import cli
from hashindex.recipe import class_term, mix, mixup_weights, paired
from hashindex.training import TrainConfig, train as run
from tests.conftest import CIFAR_TRAIN, need
from tests.test_distill import _softmax
from tests.test_train import Interrupt, _stop_after_epoch


def test_mixup_weights_are_beta_draws_kept_over_one_half():
    assert mixup_weights(5, 0.0, torch.Generator().manual_seed(0)) == [1.0] * 5  # off: no blending
    lam = np.array(mixup_weights(4000, 1.0, torch.Generator().manual_seed(0)))
    assert lam.min() >= 0.5 and lam.max() <= 1
    assert lam.mean() == pytest.approx(0.75, abs=0.01)  # Beta(1, 1) is uniform: max(u, 1 - u) has mean 3/4
    assert np.median(mixup_weights(4000, 0.2, torch.Generator().manual_seed(0))) > 0.95  # small alpha: mostly one image
    def draw(seed):
        return mixup_weights(9, 1.0, torch.Generator().manual_seed(seed))
    assert draw(3) == draw(3) and draw(3) != draw(4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_blended_batch_and_its_loss_equal_a_direct_computation(smoothing):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    lam = 0.7
    got = mix(torch.from_numpy(x), lam)
    assert got.dtype == torch.float32
    assert np.allclose(got.numpy(), lam * x + (1 - lam) * x[::-1].astype(np.float64), atol=1e-4)
    assert mix(torch.from_numpy(x), 1.0).dtype == torch.uint8  # lam 1: the batch as it was

    logits, y, c = rng.normal(size=(6, 5)) * 2, rng.integers(0, 5, 6), 5
    one_hot = np.eye(c)[y] * (1 - smoothing) + smoothing / c
    target = lam * one_hot + (1 - lam) * one_hot[::-1]  # each image's label and its partner's, blended
    want = -(target * np.log(_softmax(logits))).sum(axis=1).mean()
    t_logits = torch.tensor(logits)
    got = paired(lambda t: class_term(t_logits, t, smoothing), torch.tensor(y), lam)
    assert float(got) == pytest.approx(want, rel=1e-9)

    sets = (rng.random((6, c)) < 0.4).astype(np.float64)  # label sets: binary cross-entropy per class
    soft = sets * (1 - smoothing) + smoothing / 2
    blend = lam * soft + (1 - lam) * soft[::-1]
    p = 1 / (1 + np.exp(-logits))
    want = -(blend * np.log(p) + (1 - blend) * np.log(1 - p)).sum(axis=1).mean()
    got = paired(lambda t: class_term(t_logits, t, smoothing), torch.tensor(sets), lam)
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_mixup_trains_teaches_is_recorded_and_resumes(tiny_model, tmp_path):
    """A consistent teacher judges the blended images themselves; a run resumed after its first epoch ends at
    the uninterrupted run's weights (the blending weights are drawn from the run's generator); a change of
    --mixup on resume and a negative one are refused in one line."""
    need(CIFAR_TRAIN)
    teacher = tmp_path / "teacher.pt"
    shutil.copyfile(tiny_model, teacher)
    opts = dict(data=str(CIFAR_TRAIN), limit=96, epochs=2, batch_size=32, workers=0, bits=16, input_size=16,
                mixup=1.0, teacher=str(teacher), consistent_teacher=True)
    full, part = tmp_path / "full.pt", tmp_path / "part.pt"
    run(TrainConfig(out=str(full), **opts), progress=False, log=lambda s: None)
    with pytest.raises(Interrupt):
        run(TrainConfig(out=str(part), **opts), progress=False, log=_stop_after_epoch(1))
    with pytest.raises(HashindexError, match="mixup=1.0"):
        run(TrainConfig(out=str(part), **{**opts, "mixup": 0.2}), resume=True)
    run(TrainConfig(out=str(part), **opts), resume=True, progress=False, log=lambda s: None)
    a, b = read_checkpoint(full), read_checkpoint(part)
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-5), k
    for row in b["history"]:
        assert row["distill_loss"] > 0 and 0 <= row["train_acc"] <= 1
        assert row["loss"] == pytest.approx(0.5 * row["class_loss"] + 0.5 * row["distill_loss"])
    assert b["train_args"]["mixup"] == 1.0
    info = json.loads(CliRunner().invoke(cli, ["info", str(part), "--json"]).output)
    assert info["augmentation"] == "crop (4 px padding) + flip + mixup 1"

    plain = tmp_path / "plain.pt"  # without mixup the same run trains other weights
    run(TrainConfig(out=str(plain), **{**opts, "mixup": 0.0}), progress=False, log=lambda s: None)
    assert not torch.allclose(read_checkpoint(plain)["state_dict"]["latent.weight"], a["state_dict"]["latent.weight"])
    with pytest.raises(HashindexError, match="mixup=-1"):
        run(TrainConfig(out=str(tmp_path / "neg.pt"), **{**opts, "mixup": -1.0}), progress=False)
    r = CliRunner().invoke(cli, ["train", "--data", str(CIFAR_TRAIN), "--out", str(tmp_path / "x.pt"), "--mixup", "-1"])
    assert r.exit_code == 2 and "--mixup" in r.output and "Traceback" not in r.output


def test_mixup_with_teacher_logits_computed_once(tiny_model, tmp_path):
    """Without --consistent-teacher the soft targets are the un-augmented images' logits: a blend is scored
    against both images' targets, as against both labels."""
    need(CIFAR_TRAIN)
    out = tmp_path / "kd.pt"
    run(TrainConfig(data=str(CIFAR_TRAIN), out=str(out), limit=64, epochs=1, batch_size=32, workers=0, bits=16,
                    input_size=16, mixup=0.4, teacher=str(tiny_model)), progress=False, log=lambda s: None)
    row = read_checkpoint(out)["history"][0]
    assert row["distill_loss"] > 0 and np.isfinite(row["loss"])
    assert row["loss"] == pytest.approx(0.5 * row["class_loss"] + 0.5 * row["distill_loss"])
