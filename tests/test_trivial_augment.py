"""TrivialAugment on a batch (hashindex.trivial_augment): each operation against PIL's, the draws from the run's
generator, and the training option recorded (its resume check is in tests/test_train.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from hashindex.recipe import augment
from hashindex.trivial_augment import OPS, apply_trivial


def _image(seed: int = 0) -> np.ndarray:
    """A 32x32 RGB picture with gradients, edges and noise (every operation has something to change)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([(yy * 8) % 256, (xx * 7 + yy) % 256, 128 + 40 * np.sin(xx / 3) + rng.normal(0, 20, (32, 32))], -1)
    return img.clip(0, 255).astype(np.uint8)


def _ours(img: np.ndarray, op: str, strength: float) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    out = apply_trivial(x, torch.tensor([OPS.index(op)]), torch.tensor([float(strength)]))
    return out[0].permute(1, 2, 0).numpy().astype(int)


@pytest.mark.parametrize("factor", [0.3, 1.7])
@pytest.mark.parametrize("op, enhance", [("brightness", ImageEnhance.Brightness), ("color", ImageEnhance.Color),
                                         ("contrast", ImageEnhance.Contrast), ("sharpness", ImageEnhance.Sharpness)])
def test_enhancements_match_pil(op, enhance, factor):
    """Strength s is PIL's enhancement factor 1 + s; rounding may differ by one level."""
    img = _image()
    want = np.asarray(enhance(Image.fromarray(img)).enhance(factor)).astype(int)
    got = _ours(img, op, factor - 1)
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - img.astype(int)).max() > 10  # it did change the image


def test_pixel_operations_match_pil():
    img = _image(1)
    pil = Image.fromarray(img)
    assert np.array_equal(_ours(img, "posterize", 3), np.asarray(ImageOps.posterize(pil, 3)))
    assert np.array_equal(_ours(img, "solarize", 100), np.asarray(ImageOps.solarize(pil, 100)))
    assert np.array_equal(_ours(img, "equalize", 0), np.asarray(ImageOps.equalize(pil)))
    assert np.abs(_ours(img, "autocontrast", 0) - np.asarray(ImageOps.autocontrast(pil)).astype(int)).max() <= 1
    flat = np.full((32, 32, 3), 90, np.uint8)  # one value per channel: equalize and autocontrast leave it alone
    assert np.array_equal(_ours(flat, "equalize", 0), flat) and np.array_equal(_ours(flat, "autocontrast", 0), flat)


def test_geometric_operations_move_pixels_exactly():
    img = _image(2)
    shifted = _ours(img, "translate_x", 5)
    assert np.array_equal(shifted[:, :27], img[:, 5:]) and (shifted[:, 27:] == 0).all()  # zeros come in
    assert np.array_equal(_ours(img, "translate_y", -3)[3:], img[:-3])
    assert np.array_equal(_ours(img, "rotate", 90), np.rot90(img, 1))
    assert np.array_equal(_ours(img, "rotate", -90), np.rot90(img, -1))
    assert np.array_equal(_ours(img, "shear_x", 0), img)
    pil = Image.fromarray(img)
    for s in (0.5, -0.99):  # about the top-left corner, as PIL's (the original implementation's)
        for op, coeffs in (("shear_x", (1, s, 0, 0, 1, 0)), ("shear_y", (1, 0, 0, s, 1, 0))):
            assert np.array_equal(_ours(img, op, s), np.asarray(pil.transform((32, 32), Image.AFFINE, coeffs))), op


def test_batch_draws_come_from_the_generator():
    """The same generator state gives the same batch (resume and every device draw alike); each image gets one
    operation, so about 13 in 14 change; shapes, dtype and a one-channel batch are kept."""
    x = torch.from_numpy(np.stack([_image(i) for i in range(256)])).permute(0, 3, 1, 2).contiguous()

    def trivial_augment(images, g):  # TrivialAugment alone, as training draws and applies it
        return augment(images, g, pad=0, flip=False, trivial=True)

    a = trivial_augment(x, torch.Generator().manual_seed(5))
    b = trivial_augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    assert not torch.equal(a, trivial_augment(x, torch.Generator().manual_seed(6)))
    changed = (a != x).flatten(1).any(1).float().mean()
    assert 0.8 < changed < 1.0  # identity (1 in 14) and weak draws leave some images as they were
    grey = trivial_augment(x[:, :1].contiguous(), torch.Generator().manual_seed(5))
    assert grey.shape == (256, 1, 32, 32)
    assert len(OPS) == 14


def test_training_option_is_recorded(tmp_path):
    from click.testing import CliRunner

    from hashindex.checkpoint import read_checkpoint
    from hashindex.cli import cli
    from tests.conftest import CIFAR_TRAIN, need

    need(CIFAR_TRAIN)
    out = tmp_path / "ta.pt"
    r = CliRunner().invoke(cli, ["-q", "train", "--data", str(CIFAR_TRAIN), "--limit", "96", "--epochs", "1",
                                 "--batch-size", "32", "--workers", "0", "--bits", "16", "--trivial-augment",
                                 "--cutout", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert read_checkpoint(out)["train_args"]["trivial_augment"] is True
    info = CliRunner().invoke(cli, ["info", str(out)]).output
    assert "augmentation: crop (4 px padding) + flip + TrivialAugment + cutout 8" in info


def test_a_batch_is_each_image_on_its_own():
    """The whole-batch computation keeps, for every image, exactly what its own operation gives it alone."""
    from hashindex.trivial_augment import draw, strengths

    x = torch.from_numpy(np.stack([_image(i) for i in range(64)])).permute(0, 3, 1, 2).contiguous()
    op, m, sign = draw(64, torch.Generator().manual_seed(1))
    s = strengths(op, m, sign, 32)
    batch = apply_trivial(x, op, s)
    for i in range(64):
        assert torch.equal(batch[i:i + 1], apply_trivial(x[i:i + 1], op[i:i + 1], s[i:i + 1])), OPS[op[i]]
    assert set(op.tolist()) == set(range(len(OPS)))  # every operation was in the batch
