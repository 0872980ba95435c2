"""The training recipe: what a run is configured with and what one epoch of it does.

`TrainConfig` holds every choice of a run (it is stored in the checkpoint);
`lr_at` is its learning-rate schedule, `augment` its augmentation, `code_terms`
SSDH's terms on the hash layer, and `run_epoch` one pass of SGD over the
training images with them. `hashindex.training` runs the epochs: data, net,
validation, checkpoints and resume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .distill import distill_loss
from .errors import HashindexError
from .devices import autocast_for
from .model import NINHash


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint)."""

    data: str
    out: str
    val: str | None = None
    bits: int = 48
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "step" (x0.1 at 50% and 75%)
    warmup_epochs: float = 1.0
    input_size: int = 32
    channels: int | None = None  # None: 1 for greyscale sources, else 3
    flip: bool = True
    crop_pad: int = 4
    dropout: float = 0.3
    limit: int | None = None
    val_limit: int | None = None
    val_every: int | None = None  # hold out every n-th image of data for validation
    follow_links: bool = False  # read symlinks that lead out of a folder (counted skips otherwise)
    device: str = "cpu"
    bf16: bool | None = None  # bf16 autocast: None where faster (devices.uses_bf16), True/False force it
    workers: int = 2
    seed: int = 0
    init: str | None = None  # checkpoint path or shipped name to fine-tune from
    binary_weight: float = 0.0  # SSDH: reward latent activations far from 0.5
    balance_weight: float = 0.0  # SSDH: half of each code's bits on
    bit_balance_weight: float = 0.0  # each bit on for half of a batch's images
    label_smoothing: float = 0.0  # cross-entropy against (1 - e) one-hot + e uniform (Szegedy et al. 2016)
    cutout: int = 0  # zero a random square of this side in each training image (DeVries & Taylor 2017)
    test_flip: bool | None = None  # average each image with its mirror image at inference; None: as init (else off)
    swa_epochs: int = 0  # the last n epochs run at swa_lr and their weights are averaged (Izmailov et al. 2018)
    swa_lr: float = 0.02
    # distil from this model's posteriors, or from an ensemble's: a tuple of models (Hinton et al. 2015; distill.py)
    teacher: str | tuple[str, ...] | None = None
    distill_weight: float = 0.5  # loss = (1 - w) cross-entropy + w distillation
    distill_temperature: float = 4.0


def check_config(cfg: TrainConfig) -> None:
    """The settings that only make sense together (averaging phase, distillation) are consistent."""
    if not 0 <= cfg.swa_epochs <= cfg.epochs:
        raise HashindexError(f"swa_epochs={cfg.swa_epochs}: expected 0 to epochs={cfg.epochs}")
    if cfg.swa_epochs and not cfg.swa_lr > 0:
        raise HashindexError(f"swa_lr={cfg.swa_lr}: expected a learning rate > 0")
    if cfg.teacher and not (0 <= cfg.distill_weight <= 1 and cfg.distill_temperature > 0):
        raise HashindexError(f"distill_weight={cfg.distill_weight}, distill_temperature={cfg.distill_temperature}: "
                             "expected a weight from 0 to 1 and a temperature > 0")


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at a fractional epoch (stateless, so resume needs no scheduler state).

    The schedule spans the epochs before the averaging phase; that phase runs at swa_lr.
    """
    main = cfg.epochs - cfg.swa_epochs
    if cfg.swa_epochs and progress >= main:  # (without averaging, the end of training is the cosine's 0)
        return cfg.swa_lr
    if progress < cfg.warmup_epochs:
        return cfg.lr * (progress + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** (int(progress >= 0.5 * main) + int(progress >= 0.75 * main)))
    t = (progress - cfg.warmup_epochs) / max(main - cfg.warmup_epochs, 1e-9)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(t, 1.0)))


def code_terms(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Code terms of a batch of sigmoid activations h in [0, 1]^K (N images x K bits).

    binary = -mean (h - 0.5)^2 (lowest, -0.25, when every h is 0 or 1; SSDH);
    balance = mean over images of (mean over bits of h - 0.5)^2 (SSDH);
    bit_balance = mean over bits of (mean over images of h - 0.5)^2.
    Averaged over bits, not summed as in the paper, so one weight suits every K.
    """
    binary = -(latent - 0.5).pow(2).mean()
    balance = (latent.mean(dim=1) - 0.5).pow(2).mean()
    bit_balance = (latent.mean(dim=0) - 0.5).pow(2).mean()
    return binary, balance, bit_balance


def augment(x: torch.Tensor, g: torch.Generator, pad: int, flip: bool, cutout: int = 0) -> torch.Tensor:
    """Random crop with zero padding, random horizontal flip and cutout (a zeroed square centred anywhere in
    the image, clipped at its borders), on a uint8 batch."""
    b, c, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        m = torch.rand(b, generator=g) < 0.5
        x[m] = x[m].flip(3)
    if cutout:
        cy = torch.randint(0, h, (b, 1, 1), generator=g)
        cx = torch.randint(0, w, (b, 1, 1), generator=g)
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        hole = ((ys - cy).abs() * 2 < cutout) & ((xs - cx).abs() * 2 < cutout)  # side `cutout` around (cy, cx)
        x = x.masked_fill(hole[:, None], 0)
    return x


def class_term(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The classification loss: softmax cross-entropy for class indices, per-class binary cross-entropy for
    label sets (B, C) (each label independent: an image holds any number of them)."""
    if y.ndim == 2:
        # summed over the classes and averaged over the images: per image, the scale of a softmax
        # cross-entropy. Averaged over the classes too (a gradient C times smaller) it learned far slower:
        # val top-1 precision 0.487 against 0.779 after 12 epochs on CIFAR-10 pairs (docs/RESULTS.md)
        per_class = F.binary_cross_entropy_with_logits(logits, y * (1 - smoothing) + smoothing / 2, reduction="none")
        return per_class.sum(axis=1).mean()
    return F.cross_entropy(logits, y, label_smoothing=smoothing)


def top1_hits(logits: torch.Tensor, y: torch.Tensor) -> int:
    """How many images' top class is their class (with label sets: is one of their labels)."""
    top = logits.argmax(1)
    return int((y.gather(1, top[:, None]) > 0).sum() if y.ndim == 2 else (top == y).sum())


def batch_loss(net: NINHash, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(loss, class loss, distillation loss or None, logits, latent) of one augmented batch.

    Cross-entropy (label smoothing as configured), mixed with the teacher's soft targets ``soft`` when
    distilling, plus SSDH's code terms when their weights are set. Label sets (``y`` (B, C) float): binary
    cross-entropy per class, the targets smoothed toward 1/2 by the same amount.
    """
    with autocast_for(device, cfg.bf16):
        logits, latent, _ = net(x)
    loss = class_loss = class_term(logits.float(), y, cfg.label_smoothing)
    distill = None
    if soft is not None:
        distill = distill_loss(logits.float(), soft.to(device), cfg.distill_temperature)
        loss = (1 - cfg.distill_weight) * class_loss + cfg.distill_weight * distill
    if cfg.binary_weight or cfg.balance_weight or cfg.bit_balance_weight:
        binary, balance, bit_balance = code_terms(latent.float())
        loss = loss + cfg.binary_weight * binary + cfg.balance_weight * balance + cfg.bit_balance_weight * bit_balance
    return loss, class_loss, distill, logits, latent


def run_epoch(net: NINHash, opt: torch.optim.Optimizer, cfg: TrainConfig, epoch: int, x_all: torch.Tensor,
              y_all: torch.Tensor, soft: torch.Tensor | None, g: torch.Generator, device: torch.device,
              precision: str, progress: bool = True) -> dict[str, float]:
    """One epoch of SGD: order and augmentation drawn from ``g``, the learning rate set per step by
    `lr_at`; returns the epoch's history row (mean loss terms, training accuracy, speed)."""
    net.train()
    steps = math.ceil(len(x_all) / cfg.batch_size)
    perm = torch.randperm(len(x_all), generator=g)
    t0, seen, correct, loss_sum, class_sum, margin_sum, distill_sum = time.time(), 0, 0, 0.0, 0.0, 0.0, 0.0
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for step in bar:
        idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x = augment(x_all[idx], g, cfg.crop_pad, cfg.flip, cfg.cutout).to(device, non_blocking=True)
        y = y_all[idx].to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch + step / steps)
        loss, class_loss, distill, logits, latent = batch_loss(net, cfg, x, y, None if soft is None else soft[idx],
                                                               device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        correct += top1_hits(logits, y)
        loss_sum += float(loss.detach()) * len(y)
        class_sum += float(class_loss.detach()) * len(y)
        margin_sum += float((latent.detach().float() - 0.5).abs().mean()) * len(y)
        if distill is not None:
            distill_sum += float(distill.detach()) * len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    wall = time.time() - t0
    row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
           "img_per_s": seen / wall, "wall_s": wall,
           "lr": lr_at(cfg, epoch + (steps - 1) / steps),  # its last step's: the end of the epoch is the next one's
           "class_loss": class_sum / seen, "latent_margin": margin_sum / seen, "precision": precision}
    if soft is not None:
        row["distill_loss"] = distill_sum / seen
    return row
