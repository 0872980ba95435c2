"""The shipped model and the demo, end to end."""

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from hashindex import load_model
from hashindex.cli import cli
from hashindex.data import open_source
from tests.conftest import CIFAR_TEST, need


def test_shipped_model_loads_by_name_and_is_good():
    model = load_model("nin-cifar10-48")
    assert model.bits == 48 and model.code_bytes == 6 and len(model.class_names) == 10
    assert model.meta["epochs"] == model.meta["epochs_planned"] and model.meta["accuracy"] > 0.85
    need(CIFAR_TEST)
    src = open_source(CIFAR_TEST).subset(500)
    images = np.stack([src.read_array(i, 32, 3) for i in range(len(src))])
    _, _, logits = model.forward_numpy(images)
    assert (logits.argmax(1) == src.labels).mean() > 0.8  # real weights classify real images


def test_demo_end_to_end(tmp_path):
    need(CIFAR_TEST)
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["-q", "demo", "--data", str(CIFAR_TEST), "--out", str(out),
                                   "--limit", "2000", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    for key in ("index", "metrics", "pr_curve", "precision_at_k", "results_grid"):
        assert Path(summary["files"][key]).exists(), key
    assert summary["map"] > 0.6  # 200 held-out queries vs 1,800 images, shipped 48-bit model
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["queries"] == 200 and metrics["database"] == 1800
