"""Sharpness-aware minimization (`train --sam`): the gradient it leaves against a direct computation, batch norm's
statistics untouched by its second pass, and a short run that records it and resumes to the uninterrupted
weights."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from hashindex import HashindexError
from hashindex.checkpoint import read_checkpoint
from hashindex.cli import cli
from hashindex.recipe import sharpness_aware
from hashindex.training import TrainConfig, train as run
from tests.conftest import CIFAR_TRAIN, need
from tests.test_train import Interrupt, _stop_after_epoch


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def test_the_gradient_is_taken_at_the_worst_nearby_weights():
    x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), torch.randn(16, 2)
    net = _net()
    loss = lambda: torch.nn.functional.mse_loss(net(x), y)  # noqa: E731
    weights = [p.detach().clone() for p in net.parameters()]
    stats = net[1].running_mean.clone()
    loss().backward()
    after_first = net[1].running_mean.clone()
    g1 = [p.grad.clone() for p in net.parameters()]
    sharpness_aware(net, 0.05, loss)
    # directly: the gradient at w + rho g / |g|, on a copy of the net
    ref = _net()
    norm = torch.sqrt(sum((g ** 2).sum() for g in g1))
    with torch.no_grad():
        for p, w, g in zip(ref.parameters(), weights, g1):
            p.copy_(w + 0.05 * g / norm)
    torch.nn.functional.mse_loss(ref(x), y).backward()
    for p, r, w in zip(net.parameters(), ref.parameters(), weights):
        assert torch.allclose(p.grad, r.grad, atol=1e-6) and torch.equal(p.detach(), w)  # weights moved back
    assert not torch.equal(after_first, stats) and torch.equal(net[1].running_mean, after_first)
    assert net[1].momentum == 0.1  # restored


def test_sam_trains_is_recorded_and_resumes(tmp_path):
    """A run resumed after its first epoch ends at the uninterrupted run's weights; SAM trains other weights than
    plain SGD; a change of --sam on resume and a negative one are refused in one line."""
    need(CIFAR_TRAIN)
    opts = dict(data=str(CIFAR_TRAIN), limit=96, epochs=2, batch_size=32, workers=0, bits=16, input_size=16,
                sam=0.05)
    full, part, plain = tmp_path / "full.pt", tmp_path / "part.pt", tmp_path / "plain.pt"
    run(TrainConfig(out=str(full), **opts), progress=False, log=lambda s: None)
    with pytest.raises(Interrupt):
        run(TrainConfig(out=str(part), **opts), progress=False, log=_stop_after_epoch(1))
    with pytest.raises(HashindexError, match="sam=0.05"):
        run(TrainConfig(out=str(part), **{**opts, "sam": 0.1}), resume=True)
    run(TrainConfig(out=str(part), **opts), resume=True, progress=False, log=lambda s: None)
    a, b = read_checkpoint(full), read_checkpoint(part)
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-5), k
    assert b["train_args"]["sam"] == 0.05
    info = CliRunner().invoke(cli, ["info", str(part), "--json"]).output
    assert '"weights": "last SGD step, SAM rho 0.05"' in info
    run(TrainConfig(out=str(plain), **{**opts, "sam": 0.0}), progress=False, log=lambda s: None)
    assert not torch.allclose(read_checkpoint(plain)["state_dict"]["latent.weight"], a["state_dict"]["latent.weight"])
    with pytest.raises(HashindexError, match="sam=-1"):
        run(TrainConfig(out=str(tmp_path / "neg.pt"), **{**opts, "sam": -1.0}), progress=False)
    r = CliRunner().invoke(cli, ["train", "--data", str(CIFAR_TRAIN), "--out", str(tmp_path / "x.pt"), "--sam", "-1"])
    assert r.exit_code == 2 and "--sam" in r.output and "Traceback" not in r.output
