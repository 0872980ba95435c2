"""Supervised training of the NIN hashing net (`hashindex train`).

A plain loop in the style of torchvision's reference classification script:
SGD + Nesterov momentum + weight decay, linear warm-up then cosine (or step)
decay, random-crop + flip augmentation, per-epoch validation. The training
set is decoded once into memory (32x32 inputs: 150 MB for CIFAR-10), which
on a 2-core machine is far cheaper than decoding every epoch.

``binary_weight`` and ``balance_weight`` add the code terms of SSDH (Yang, Lin
& Chen, TPAMI 2018, the follow-up of DLBHC) to the classification loss: one
pushes the sigmoid activations towards 0 or 1, so thresholding at 0.5 loses
little; the other asks each code to have about half its bits on. That does not
stop a bit from being constant over all images (measured: 21 of 48 bits were);
``bit_balance_weight`` asks each bit to be on for about half the images of a
batch instead. All are off by default (plain DLBHC training, as the shipped
model was trained).

``init`` starts from a trained checkpoint instead of random weights (fine-tuning,
as DLBHC fine-tunes a pretrained net): the trunk and its input normalisation always,
the hash layer when the code length matches, the classifier when the classes match too.

Every epoch the checkpoint at ``out`` is rewritten atomically with the
optimizer state, so ``--resume`` continues an interrupted run exactly: the
shuffling, augmentation and dropout of epoch e are seeded by (seed, e).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .averaging import WeightAverage, bn_sample, recompute_batchnorm
from .data import BadImage, ImageSource, SkipLog, load_arrays, open_source
from .distill import distill_loss, open_teacher, teacher_logits
from .errors import HashindexError
from .metrics import code_statistics, mean_average_precision
from .model import (NINHash, atomic_torch_save, autocast_for, build_meta, pack_codes, precision_of, read_checkpoint,
                    resolve_device)


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
    bf16: bool | None = None  # bf16 autocast: None where faster (model.uses_bf16), True/False force it
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
    teacher: str | None = None  # distil from this model's posteriors (Hinton et al. 2015; distill.py)
    distill_weight: float = 0.5  # loss = (1 - w) cross-entropy + w distillation
    distill_temperature: float = 4.0


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at a fractional epoch (stateless, so resume needs no scheduler state).

    The schedule spans the epochs before the averaging phase; that phase runs at swa_lr.
    """
    main = cfg.epochs - cfg.swa_epochs
    if progress >= main:
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


@torch.inference_mode()
def predict(net: NINHash, images: np.ndarray, device: torch.device, bf16: bool | None,
            batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, packed codes) for uint8 images."""
    net.eval()
    preds, codes = [], []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(images[s:s + batch_size]).to(device)
        with autocast_for(device, bf16):
            logits, latent, _ = net(x)
        preds.append(logits.argmax(1).cpu().numpy())
        codes.append(pack_codes(latent.float().cpu().numpy()))
    return np.concatenate(preds), np.concatenate(codes)


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] over (a sample of) the training images."""
    sample = images[:: max(1, len(images) // 10000)].astype(np.float32) / 255
    return sample.mean(axis=(0, 2, 3)).tolist(), (sample.std(axis=(0, 2, 3)) + 1e-3).tolist()


def _load_resume(cfg: TrainConfig) -> dict[str, Any] | None:
    """The unfinished checkpoint at cfg.out to continue from, after checking it matches."""
    ckpt = read_checkpoint(cfg.out)
    if "train_state" not in ckpt:
        raise HashindexError(f"resume=True: {cfg.out} is a finished checkpoint ({ckpt['epochs']} epochs); "
                             "nothing to resume (use overwrite=True to train again)")
    old = ckpt["train_state"]["config"]
    defaults = TrainConfig(data="", out="")  # keys older checkpoints lack had these values
    for key in ("data", "bits", "input_size", "seed", "limit", "batch_size", "init", "val_every",
                "binary_weight", "balance_weight", "bit_balance_weight", "label_smoothing", "cutout",
                "swa_epochs", "swa_lr", "teacher", "distill_weight", "distill_temperature"):
        was = old.get(key, getattr(defaults, key))
        if was != getattr(cfg, key):
            raise HashindexError(f"resume=True: {cfg.out} was trained with {key}={was!r}, "
                                 f"not {getattr(cfg, key)!r}")
    return ckpt


def _test_flip(cfg: TrainConfig, ckpt: dict[str, Any] | None, init: dict[str, Any] | None) -> bool:
    """Whether the new model averages an image with its mirror image: as asked, else as the run being
    resumed or the model fine-tuned from (a user fine-tuning a flip model keeps its better codes)."""
    was = (ckpt or init or {}).get("test_flip", False)
    if ckpt is not None and cfg.test_flip is not None and cfg.test_flip != was:
        raise HashindexError(f"resume=True: {cfg.out} was trained with test_flip={was!r}, not {cfg.test_flip!r}")
    return was if cfg.test_flip is None else cfg.test_flip


def _check_labelled(src: ImageSource, data: str) -> None:
    """Every image training will read has a label. An unlabelled item that does not decode (a README or a
    .DS_Store beside the class folders) is a counted skip, not an error that blocks a photo folder; only
    unlabelled items are decoded (few, or the first is an image)."""
    what = f"data={data}: training needs labelled images (class subfolders, a labelled list, IDX or CIFAR batches)"
    if not src.class_names:
        raise HashindexError(what)
    for i in (int(i) for i in np.flatnonzero(src.labels < 0) if int(i) not in src.unread):
        try:
            src.read(i)
        except BadImage:
            continue
        raise HashindexError(f"{what}; {src.paths[i]} is an image without a class (one in a folder's root has none)")


def _init_channels(cfg: TrainConfig, init: dict[str, Any]) -> int:
    """Input channels of a fine-tuning run: the init model's, unless --channels says otherwise."""
    channels = cfg.channels or init["channels"]
    if channels != init["channels"]:
        raise HashindexError(f"init={cfg.init}: a {init['channels']}-channel model, but channels="
                             f"{channels}; omit channels= to train with {init['channels']}")
    return channels


def transfer_weights(net: NINHash, init: dict[str, Any], class_names: list[str]) -> list[str]:
    """Copy what fits from a checkpoint into a fresh net; returns the parts copied.

    The trunk (with its input normalisation) always fits; the hash layer when the
    code length is the same; the classifier when the classes are the same too.
    """
    parts = ["trunk"]
    if init["bits"] == net.bits:
        parts.append("latent")
        if init["class_names"] == class_names:
            parts.append("classifier")
    prefixes = tuple(f"{p}." for p in parts) + ("mean", "std")
    state = {k: v for k, v in init["state_dict"].items() if k.startswith(prefixes)}
    result = net.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return parts


def _split_sources(cfg: TrainConfig, src: ImageSource) -> tuple[ImageSource, ImageSource | None]:
    """(training images, validation images): --val, or every n-th image held out of --data, or none."""
    if cfg.val and cfg.val_every:
        raise HashindexError(f"val_every={cfg.val_every}: give either val= or val_every=, not both")
    if cfg.val_every is not None and not 2 <= cfg.val_every <= len(src):
        raise HashindexError(f"val_every={cfg.val_every}: expected 2 to {len(src)} (the images of data=)")
    if cfg.val_every:
        vsrc, src = src.split_every(cfg.val_every, ("val", "train"))
    elif cfg.val:
        vsrc = open_source(cfg.val, "val", split="test", follow_links=cfg.follow_links)
        vsrc.remap_labels(src.class_names)
    else:
        return src, None
    return src, vsrc.subset(cfg.val_limit) if cfg.val_limit else vsrc


def check_new_checkpoint(out: Path, overwrite: bool, hint: str = "overwrite=True to replace it") -> None:
    """``out`` may be written: not a directory, and new unless ``overwrite`` (else the error gives ``hint``)."""
    if out.is_dir():
        raise HashindexError(f"out={out}: is a directory, expected a checkpoint file path")
    if out.exists() and not overwrite:
        raise HashindexError(f"out={out}: already exists (pass {hint})")


def _check_out(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    out = Path(cfg.out)
    check_new_checkpoint(out, resume or overwrite, "resume=True to continue it or overwrite=True")
    if resume and not out.exists():
        raise HashindexError(f"resume=True: {out} does not exist yet; start without resume=True")


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log=print) -> dict[str, Any]:
    """Train (or resume) and write the checkpoint; returns its summary figures."""
    _check_out(cfg, resume, overwrite)
    if not 0 <= cfg.swa_epochs <= cfg.epochs:
        raise HashindexError(f"swa_epochs={cfg.swa_epochs}: expected 0 to epochs={cfg.epochs}")
    if cfg.swa_epochs and not cfg.swa_lr > 0:
        raise HashindexError(f"swa_lr={cfg.swa_lr}: expected a learning rate > 0")
    if cfg.teacher and not (0 <= cfg.distill_weight <= 1 and cfg.distill_temperature > 0):
        raise HashindexError(f"distill_weight={cfg.distill_weight}, distill_temperature={cfg.distill_temperature}: "
                             "expected a weight from 0 to 1 and a temperature > 0")
    ckpt = _load_resume(cfg) if resume else None
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    skips = SkipLog()
    src = open_source(cfg.data, "data", follow_links=cfg.follow_links)
    if cfg.limit:
        src = src.subset(cfg.limit)
    src, vsrc = _split_sources(cfg, src)
    _check_labelled(src, cfg.data)
    init = read_checkpoint(cfg.init, "init") if cfg.init and ckpt is None else None
    if ckpt is not None:
        channels = ckpt["channels"]
    elif init is not None:
        channels = _init_channels(cfg, init)
    else:
        channels = cfg.channels or (1 if src.greyscale else 3)
    teacher = (open_teacher(cfg.teacher, src.class_names, channels, cfg.input_size, cfg.device, cfg.bf16)
               if cfg.teacher and ckpt is None else None)
    train_x, train_y, _ = load_arrays(src, cfg.input_size, channels, cfg.workers, progress, skips)
    unlabelled = int((train_y < 0).sum())  # what _check_labelled could not see (a prepared store's items)
    if unlabelled:
        raise HashindexError(f"data={cfg.data}: {unlabelled} of the images have no class")
    val_x = val_y = None
    if vsrc is not None:
        val_x, val_y, _ = load_arrays(vsrc, cfg.input_size, channels, cfg.workers, progress, skips)
    if len(train_x) == 0:
        raise HashindexError(f"data={cfg.data}: no readable images ({skips.summary()})")
    log(f"train: {len(train_x)} images, {len(src.class_names)} classes"
        + (f", val: {len(val_x)} images" if val_x is not None else "") + f"; {skips.summary()}")

    mean, std = _channel_stats(train_x)
    net = NINHash(cfg.bits, len(src.class_names), channels, mean, std, cfg.dropout, _test_flip(cfg, ckpt, init))
    init_info = ckpt.get("init") if ckpt is not None else None
    if init is not None:
        parts = transfer_weights(net, init, src.class_names)
        init_info = {"model": cfg.init, "model_id": init["model_id"], "copied": parts}
        log(f"init: {', '.join(parts)} from {cfg.init} (model {init['model_id']})")
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["train_state"]["optimizer"])
        history = ckpt["history"]
        start_epoch = ckpt["epochs"]
        log(f"resuming {cfg.out} at epoch {start_epoch + 1}/{cfg.epochs}")
    net.to(device, memory_format=torch.channels_last)
    precision = precision_of(device, cfg.bf16)
    log(f"device: {device}, {precision}")
    avg = (WeightAverage(net, ckpt["train_state"].get("swa") if ckpt is not None else None)
           if cfg.swa_epochs else None)

    info = {"class_names": src.class_names, "input_size": cfg.input_size,
            "train_data": src.description, "train_args": asdict(cfg), "epochs_planned": cfg.epochs,
            "init": init_info}
    steps = math.ceil(len(train_x) / cfg.batch_size)
    if start_epoch >= cfg.epochs:
        raise HashindexError(f"resume=True: {cfg.out} has {start_epoch} epochs already (epochs={cfg.epochs})")
    x_all, y_all = torch.from_numpy(train_x), torch.from_numpy(train_y.astype(np.int64))
    soft = None  # the teacher's logits for each training image (kept in the checkpoint for resume)
    if cfg.teacher:
        soft = ckpt["train_state"]["teacher_logits"] if ckpt is not None else \
            torch.from_numpy(teacher_logits(teacher, train_x, progress))
    acc = None
    for epoch in range(start_epoch, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout
        net.train()
        perm = torch.randperm(len(x_all), generator=g)
        t0, seen, correct, loss_sum, class_sum, margin_sum, distill_sum = time.time(), 0, 0, 0.0, 0.0, 0.0, 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step in bar:
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = augment(x_all[idx], g, cfg.crop_pad, cfg.flip, cfg.cutout).to(device, non_blocking=True)
            y = y_all[idx].to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch + step / steps)
            with autocast_for(device, cfg.bf16):
                logits, latent, _ = net(x)
            loss = class_loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if soft is not None:
                distill = distill_loss(logits.float(), soft[idx].to(device), cfg.distill_temperature)
                loss = (1 - cfg.distill_weight) * class_loss + cfg.distill_weight * distill
                distill_sum += float(distill.detach()) * len(y)
            if cfg.binary_weight or cfg.balance_weight or cfg.bit_balance_weight:
                binary, balance, bit_balance = code_terms(latent.float())
                loss = (loss + cfg.binary_weight * binary + cfg.balance_weight * balance
                        + cfg.bit_balance_weight * bit_balance)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
            class_sum += float(class_loss.detach()) * len(y)
            margin_sum += float((latent.detach().float() - 0.5).abs().mean()) * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        wall = time.time() - t0
        row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
               "img_per_s": seen / wall, "wall_s": wall, "lr": lr_at(cfg, epoch + 1),
               "class_loss": class_sum / seen, "latent_margin": margin_sum / seen, "precision": precision}
        if soft is not None:
            row["distill_loss"] = distill_sum / seen
        model = net  # the net this epoch would ship: the SGD weights, or their average
        if avg is not None and epoch >= cfg.epochs - cfg.swa_epochs:
            model = _average_epoch(avg, net, cfg, train_x, g, device, row, val_x, val_y)
        if val_x is not None:
            acc = row["val_acc"] = val_accuracy(model, val_x, val_y, device, cfg.bf16)
        history.append(row)
        done = epoch + 1 == cfg.epochs
        score, protocol, constant = (_final_map(model, train_x, train_y, val_x, val_y, device, cfg.bf16)
                                     if done else (None, "", None))
        meta = build_meta(model if done else net, **info, epochs=epoch + 1, accuracy=acc, map=score,
                          map_protocol=protocol, history=history)
        if not done:
            meta["train_state"] = {"optimizer": opt.state_dict(), "config": asdict(cfg)}
            if soft is not None:
                meta["train_state"]["teacher_logits"] = soft
            if avg is not None and avg.n:
                meta["train_state"]["swa"] = avg.state()
        atomic_torch_save(meta, cfg.out)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} train_acc {row['train_acc']:.4f}"
            + (f" val_acc {acc:.4f}" if acc is not None else "")
            + (f" (average of {row['swa_n']}; last weights {row['sgd_val_acc']:.4f})" if "sgd_val_acc" in row else "")
            + f" latent_margin {row['latent_margin']:.3f} ({row['img_per_s']:.0f} img/s)")
    summary = {"out": str(cfg.out), "model_id": meta["model_id"], "epochs": cfg.epochs,
               "accuracy": acc, "map": meta["map"], "skipped": dict(skips.counts),
               "train_images": len(train_x), "constant_bits": constant}
    log(f"wrote {cfg.out}: model {meta['model_id']}, val_acc {acc}, mAP {meta['map']}")
    if constant:
        logging.getLogger("hashindex").warning(
            f"{constant} of {cfg.bits} code bits are the same for every training image and carry nothing "
            "(--bit-balance-weight asks each bit to be on for half the images)")
    return summary


def val_accuracy(net: NINHash, x: np.ndarray, y: np.ndarray, device: torch.device, bf16: bool | None) -> float:
    """Share of the labelled images ``x`` whose predicted class is ``y``."""
    preds, _ = predict(net, x, device, bf16)
    return float((preds == y).mean())


def _average_epoch(avg: WeightAverage, net: NINHash, cfg: TrainConfig, train_x: np.ndarray,
                   g: torch.Generator, device: torch.device, row: dict[str, float],
                   val_x: np.ndarray | None, val_y: np.ndarray | None) -> NINHash:
    """End of an averaging epoch: fold the weights into the average, measure its BatchNorm statistics
    again (on 10,000 training images, augmented as in training) and note in ``row`` how the last SGD
    weights do on their own."""
    avg.update(net)
    sample = torch.from_numpy(bn_sample(train_x))
    batches = (augment(sample[s:s + 500].clone(), g, cfg.crop_pad, cfg.flip, cfg.cutout)
               for s in range(0, len(sample), 500))
    recompute_batchnorm(avg.net, batches, device, cfg.bf16)
    row["swa_n"] = avg.n
    if val_x is not None:
        row["sgd_val_acc"] = val_accuracy(net, val_x, val_y, device, cfg.bf16)
    return avg.net


def _final_map(net: NINHash, train_x, train_y, val_x, val_y, device, bf16,
               ) -> tuple[float | None, str, int | None]:
    """mAP@all of val queries against the training set as database (DLBHC protocol), and the number
    of code bits that are constant over the training set."""
    if val_x is None:
        return None, "no validation set", None
    _, db_codes = predict(net, train_x, device, bf16)
    _, q_codes = predict(net, val_x, device, bf16)
    m = mean_average_precision(q_codes, val_y, db_codes, train_y)
    return (m, f"mAP@all, {len(val_x)} val queries vs {len(train_x)} training images, Hamming ranking, "
            "ties in database order", code_statistics(db_codes, net.bits)["constant_bits"])
