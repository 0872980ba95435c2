"""Stochastic weight averaging: the running mean, the BatchNorm pass, and `train --swa-epochs` end to end."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hashindex import HashindexError
from hashindex.averaging import WeightAverage, recompute_batchnorm
from hashindex.checkpoint import read_checkpoint
from hashindex.cli import cli
from hashindex.recipe import lr_at
from hashindex.training import TrainConfig, train as run
from tests.conftest import CIFAR_TRAIN, need


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def test_weight_average_is_the_mean_of_the_snapshots_and_resumes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    avg = WeightAverage(net)
    snaps = []
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        snaps.append(_params(net))
        avg.update(net)
    for i, p in enumerate(avg.net.parameters()):
        assert torch.allclose(p, torch.stack([s[i] for s in snaps]).mean(0), atol=1e-6)
    resumed = WeightAverage(net, avg.state())
    assert resumed.n == 3
    resumed.update(net)  # a 4th snapshot equal to the 3rd
    for i, p in enumerate(resumed.net.parameters()):
        assert torch.allclose(p, (torch.stack([s[i] for s in snaps]).sum(0) + snaps[2][i]) / 4, atol=1e-6)


def test_recompute_batchnorm_measures_the_mean_over_the_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    net.eval()
    images = np.random.default_rng(0).normal(2.0, 3.0, (40, 3, 5, 5)).astype(np.float32)
    batches = [torch.from_numpy(images[s:s + 10]) for s in range(0, 40, 10)]
    recompute_batchnorm(net, batches, torch.device("cpu"), bf16=False)
    with torch.no_grad():
        act = net[0](torch.from_numpy(images))
    bn = net[1]
    assert torch.allclose(bn.running_mean, act.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, act.var(dim=(0, 2, 3)), rtol=0.1)  # mean of per-batch variances
    assert not net.training and bn.momentum == 0.1  # the net is left as it was found


def test_lr_schedule_ends_in_the_constant_averaging_phase():
    cfg = TrainConfig(data="", out="", epochs=10, swa_epochs=4, swa_lr=0.03, lr=0.1)
    assert lr_at(cfg, 6.0) == lr_at(cfg, 9.9) == 0.03
    assert lr_at(cfg, 5.99) < 0.001  # the cosine reaches ~0 at the end of the 6 epochs before
    assert lr_at(cfg, 3.5) == pytest.approx(0.05, abs=1e-9)  # halfway through the cosine of epochs 1..6
    cont = TrainConfig(data="", out="", epochs=3, swa_epochs=3, swa_lr=0.01)
    assert lr_at(cont, 0.0) == 0.01  # a pure averaging run has no warm-up
    plain = TrainConfig(data="", out="", epochs=10)
    assert lr_at(plain, 9.99) < 1e-4  # without averaging, the schedule is unchanged
    assert lr_at(plain, 10.0) < 1e-9  # and ends at the cosine's 0 (was swa_lr: a finished run's last row said 0.02)


def test_swa_run_averages_the_epochs_and_resumes_exactly(tmp_path, monkeypatch):
    """The finished model's weights = the mean of the SGD weights at the end of each averaging epoch;
    an interrupted run resumes to the same average."""
    need(CIFAR_TRAIN)
    opts = dict(data=str(CIFAR_TRAIN), limit=160, epochs=3, swa_epochs=2, batch_size=32, workers=0, bits=16,
                val_every=4, input_size=16)
    full = tmp_path / "full.pt"
    seen = []  # the weights handed to the average at the end of each averaging epoch
    update = WeightAverage.update
    monkeypatch.setattr(WeightAverage, "update", lambda self, net: (seen.append({k: v.clone() for k, v in net.state_dict().items()}),
                                                            update(self, net)))
    run(TrainConfig(out=str(full), **opts), progress=False, log=lambda s: None)
    monkeypatch.undo()
    part = tmp_path / "part.pt"
    snaps = []
    for stop in (2, 3):  # after epoch 2, then 3: the SGD weights of each averaging epoch
        def log(line, stop=stop):
            if line.startswith(f"epoch {stop}/"):
                raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            run(TrainConfig(out=str(part), **opts), resume=stop > 2, progress=False, log=log)
        snaps.append(read_checkpoint(part))
        if stop == 2:  # resuming with other averaging is refused
            with pytest.raises(HashindexError, match="trained with swa_epochs=2, not 0"):
                run(TrainConfig(out=str(part), **{**opts, "swa_epochs": 0}), resume=True)
    # epoch 3 finished the run before the interrupt: its file holds the average, not the SGD weights
    assert snaps[0]["train_state"]["swa"]["n"] == 1 and "train_state" not in snaps[1]
    final = read_checkpoint(full)
    assert len(seen) == 2
    for k, v in final["state_dict"].items():
        assert torch.allclose(snaps[1]["state_dict"][k], v, atol=1e-5), k  # resume = uninterrupted
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm statistics are measured again, not averaged
        assert torch.allclose(seen[0][k], snaps[0]["state_dict"][k], atol=1e-5), k  # = the SGD weights of epoch 2
        assert torch.allclose(v, (seen[0][k] + seen[1][k]) / 2, atol=1e-5), k
    w = "trunk.0.weight"
    assert not torch.allclose(seen[0][w], seen[1][w])  # two different steps were averaged
    hist = final["history"]
    assert [r.get("swa_n") for r in hist] == [None, 1, 2]
    assert "sgd_val_acc" in hist[2] and final["accuracy"] == hist[2]["val_acc"]
    assert final["train_args"]["swa_epochs"] == 2
    info = json.loads(CliRunner().invoke(cli, ["info", str(full), "--json"]).output)
    assert info["weights"] == "average of the last 2 epochs (SWA at lr 0.02)"


def test_swa_errors(tmp_path):
    with pytest.raises(HashindexError, match=r"swa_epochs=5: expected 0 to epochs=3"):
        run(TrainConfig(data="x", out=str(tmp_path / "m.pt"), epochs=3, swa_epochs=5))
    with pytest.raises(HashindexError, match=r"swa_lr=0: expected a learning rate > 0"):
        run(TrainConfig(data="x", out=str(tmp_path / "m.pt"), epochs=3, swa_epochs=1, swa_lr=0))
    r = CliRunner().invoke(cli, ["train", "--data", "x", "--out", str(tmp_path / "m.pt"), "--swa-lr", "0"])
    assert r.exit_code == 2 and "--swa-lr" in r.output


def test_weight_average_tool_writes_the_mean_as_a_checkpoint_of_its_own(tiny_model, tmp_path):
    from hashindex.checkpoint import load_model
    from tests.conftest import load_tool

    tool = load_tool("weight_average")
    a = load_model(tiny_model, bf16=False)
    b = load_model(tiny_model, bf16=False)
    with torch.no_grad():
        for p in b.net.parameters():
            p.add_(1.0)
    c = load_model(tiny_model, bf16=False)
    net = tool.averaged([a.net, b.net, c.net], [1 / 3] * 3)
    for pa, pn in zip(a.net.parameters(), net.parameters()):
        assert torch.allclose(pn, pa + 1 / 3, atol=1e-5)  # (x + (x + 1) + x) / 3
    out = tmp_path / "soup.pt"
    model_id = tool.write_average(net, str(tiny_model), ["a.pt", "b.pt", "c.pt"], [1 / 3] * 3, 0.5, str(out))
    soup = read_checkpoint(out)  # the model id checked against the weights on read
    original = read_checkpoint(tiny_model)
    assert soup["model_id"] == model_id != original["model_id"]
    assert soup["accuracy"] == 0.5 and soup["derived_from"]["model_id"] == original["model_id"]
    assert "b.pt" in soup["derived_from"]["model"] and soup["class_names"] == original["class_names"]
