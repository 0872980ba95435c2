"""Supervised training of the NIN hashing net (`hashindex train`).

A plain loop in the style of torchvision's reference classification script:
SGD + Nesterov momentum + weight decay, linear warm-up then cosine (or step)
decay, random-crop + flip augmentation, per-epoch validation. The recipe
(`TrainConfig`, the schedule, augmentation, loss terms and one epoch of SGD)
is `hashindex.recipe`; this module runs it: data, net, validation, checkpoints.
The training set is decoded once into memory (32x32 inputs: 150 MB for
CIFAR-10), which on a 2-core machine is far cheaper than decoding every epoch.

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
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .averaging import WeightAverage, bn_sample, recompute_batchnorm
from .checkpoint import atomic_torch_save, build_meta, read_checkpoint
from .data import BadImage, ImageSource, SkipLog, load_arrays, open_source, warn_shared_folder_names
from .devices import autocast_for, precision_of, resolve_device, uses_bf16
from .distill import ConsistentTeacher, check_teacher_ids, ensemble_logits, open_teacher, teacher_names
from .errors import HashindexError
from .codes import code_statistics
from .metrics import mean_average_precision
from .model import NINHash, fitting_batch, pack_codes
from .recipe import TrainConfig, augment, check_config, check_memory, param_groups, run_epoch
from .targets import one_hot_sets
from .transfer import init_channels, scratch_note, transfer_weights


@torch.inference_mode()
def predict(net: NINHash, images: np.ndarray, device: torch.device, bf16: bool | None,
            batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, packed codes) for uint8 images."""
    net.eval()
    preds, codes = [], []
    batch_size = fitting_batch(batch_size, net.inference_bytes(images.shape[-1], uses_bf16(device, bf16)), device)
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(images[s:s + batch_size]).to(device)
        with autocast_for(device, bf16):
            logits, latent, _ = net(x)
        preds.append(logits.argmax(1).cpu().numpy())
        codes.append(pack_codes(latent.float().cpu().numpy()))
    return np.concatenate(preds), np.concatenate(codes)


def time_left(epochs: int, seconds_each: float) -> str:
    """", ~2 h 05 min left" for a run's remaining epochs at ``seconds_each`` (`recent_pace`); "" when none is
    left. A 200-epoch CPU row runs for days of sessions: how long is the first thing its log is read for."""
    if epochs <= 0:
        return ""
    minutes = round(epochs * seconds_each / 60)
    return f", ~{minutes // 60} h {minutes % 60:02d} min left" if minutes >= 60 else f", ~{max(minutes, 1)} min left"


def recent_pace(ends: list[float], window: int = 3) -> float:
    """Seconds an epoch over the last ``window`` epochs (validation and checkpoint included), from the times
    the run (re)started and each epoch ended. Not the mean since the start: a shared machine's speed changes
    within a session (session 46: 30-38 img/s while another run shared the cores, then 95 alone), and the
    estimate of what is left should follow the pace the run has now."""
    last = ends[-window - 1:]
    return (last[-1] - last[0]) / (len(last) - 1)


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
                "binary_weight", "balance_weight", "bit_balance_weight", "label_smoothing", "cutout", "trivial_augment",
                "mixup", "swa_epochs", "swa_lr", "teacher", "distill_weight", "distill_temperature",
                "consistent_teacher", "width", "sam", "trunk_lr", "crop_scale"):
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
    what = (f"data={data}: training needs labelled images (class subfolders, a labelled list, Parquet rows with a "
            "label column, IDX, CIFAR or STL-10 files)")
    if not src.class_names:
        raise HashindexError(what)
    present = (np.flatnonzero(src.label_sets.any(axis=0)) if src.multi_label
               else np.unique(src.labels[src.labels >= 0]))
    if len(present) < 2:  # cross-entropy of one class is 0 from the start: the codes would learn nothing
        only = f" ({src.class_names[present[0]]})" if len(present) and present[0] < len(src.class_names) else ""
        raise HashindexError(f"data={data}: its images hold one class{only}; the codes are learned from class "
                             "labels, so training needs images of at least 2 classes")
    for i in (int(i) for i in np.flatnonzero(src.labels < 0) if int(i) not in src.unread):
        try:
            src.read(i)
        except BadImage:
            continue
        raise HashindexError(f"{what}; {src.paths[i]} is an image without a class (one in a folder's root has none)")


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
        warn_shared_folder_names(vsrc, "val")
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


class _Arrays(NamedTuple):
    """The decoded training (and validation) images, uint8 (N, C, H, W), and their labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray | None
    val_y: np.ndarray | None


def _name_integer_classes(src: ImageSource) -> None:
    """Integer labels without names (a Caffe list's ``path 3``, a list or ``.cls`` sidecars with numbers) train
    as the classes '0' to the largest label, as a Caffe net's num_output does: the model needs a class list."""
    if not src.class_names and (src.labels >= 0).any():
        src.class_names = [str(i) for i in range(int(src.labels.max()) + 1)]


def _open_sources(cfg: TrainConfig) -> tuple[ImageSource, ImageSource | None]:
    """(training, validation) sources, checked for labels before anything is decoded."""
    src = open_source(cfg.data, "data", follow_links=cfg.follow_links)
    warn_shared_folder_names(src, "data")
    _name_integer_classes(src)
    if cfg.limit:
        src = src.subset(cfg.limit)
    src, vsrc = _split_sources(cfg, src)
    _check_labelled(src, cfg.data)
    if src.multi_label and cfg.teacher:
        raise HashindexError(f"teacher={cfg.teacher}: distillation matches softmax posteriors, and data={cfg.data} "
                             "holds label sets (train a multi-label net without a teacher)")
    return src, vsrc


def _channels(cfg: TrainConfig, src: ImageSource, ckpt: dict[str, Any] | None, init: dict[str, Any] | None) -> int:
    """Input channels: the resumed run's, the init model's, --channels, or what the images are."""
    if ckpt is not None:
        return ckpt["channels"]
    if init is not None:
        return init_channels(cfg, init)
    return cfg.channels or (1 if src.is_greyscale() else 3)


def _load_data(cfg: TrainConfig, src: ImageSource, vsrc: ImageSource | None, channels: int, skips: SkipLog,
               progress: bool, log) -> _Arrays:
    """Decode the training and validation images into memory (once per run: far cheaper than per epoch)."""
    train_x, train_y, _ = load_arrays(src, cfg.input_size, channels, cfg.workers, progress, skips)
    # what _check_labelled could not see (a prepared store's items)
    unlabelled = int((~train_y.any(axis=1)).sum() if train_y.ndim == 2 else (train_y < 0).sum())
    if unlabelled:
        raise HashindexError(f"data={cfg.data}: {unlabelled} of the images have no class")
    val_x = val_y = None
    if vsrc is not None:
        val_x, val_y, _ = load_arrays(vsrc, cfg.input_size, channels, cfg.workers, progress, skips)
    if len(train_x) == 0:
        raise HashindexError(f"data={cfg.data}: no readable images ({skips.summary()})")
    if val_y is not None and val_y.ndim != train_y.ndim:
        if val_y.ndim == 2:
            raise HashindexError(f"val={cfg.val}: holds label sets, data={cfg.data} one class per image "
                                 "(validate a single-label net on single-label images)")
        val_y = one_hot_sets(val_y, train_y.shape[1])  # one class per val image: a set of one
    log(f"train: {len(train_x)} images, {len(src.class_names)} classes" + (" (label sets)" if src.multi_label else "")
        + (f", val: {len(val_x)} images" if val_x is not None else "") + f"; {skips.summary()}")
    return _Arrays(train_x, train_y, val_x, val_y)


def _make_net(cfg: TrainConfig, class_names: list[str], channels: int, train_x: np.ndarray,
              ckpt: dict[str, Any] | None, init: dict[str, Any] | None, log, device: torch.device,
              ) -> tuple[NINHash, torch.optim.Optimizer, list[dict[str, float]], dict[str, Any] | None]:
    """(net, optimizer, history so far, init record): fresh, fine-tuned from ``init`` or resumed, on ``device``."""
    mean, std = _channel_stats(train_x)
    net = NINHash(cfg.bits, len(class_names), channels, mean, std, cfg.dropout, _test_flip(cfg, ckpt, init),
                  width=cfg.width)
    init_info = ckpt.get("init") if ckpt is not None else None
    note = scratch_note(len(train_x), cfg.width) if init is None and ckpt is None else None
    if note:
        log(note)
    if init is not None:
        parts = transfer_weights(net, init, class_names)
        init_info = {"model": cfg.init, "model_id": init["model_id"], "copied": parts}
        log(f"init: {', '.join(parts)} from {cfg.init} (model {init['model_id']})")
    opt = torch.optim.SGD(param_groups(net, cfg.trunk_lr), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    history: list[dict[str, float]] = []
    if ckpt is not None:
        net.load_state_dict(ckpt["state_dict"])
    # on the device before the optimizer's state is loaded, which then follows each parameter there: a run begun
    # on the CPU and resumed on CUDA kept its momentum on the CPU and failed at the first step (H200, 2026-12-04)
    net.to(device, memory_format=torch.channels_last)
    if ckpt is not None:
        opt.load_state_dict(ckpt["train_state"]["optimizer"])
        history = ckpt["history"]
        log(f"resuming {cfg.out} at epoch {ckpt['epochs'] + 1}/{cfg.epochs}")
    return net, opt, history, init_info


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log=print) -> dict[str, Any]:
    """Train (or resume) and write the checkpoint; returns its summary figures."""
    _check_out(cfg, resume, overwrite)
    check_config(cfg)
    ckpt = _load_resume(cfg) if resume else None
    start_epoch = ckpt["epochs"] if ckpt is not None else 0
    if start_epoch >= cfg.epochs:  # known from the checkpoint: said before any image is decoded
        raise HashindexError(f"resume=True: {cfg.out} has {start_epoch} epochs already (epochs={cfg.epochs})")
    device = resolve_device(cfg.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # one input shape throughout: pick the fastest convs
    torch.manual_seed(cfg.seed)

    skips = SkipLog()
    src, vsrc = _open_sources(cfg)
    init = read_checkpoint(cfg.init, "init") if cfg.init and ckpt is None else None
    channels = _channels(cfg, src, ckpt, init)
    teachers = [open_teacher(t, src.class_names, channels, cfg.input_size, cfg.device, cfg.bf16)
                for t in (teacher_names(cfg.teacher) if ckpt is None or cfg.consistent_teacher else ())]
    if ckpt is not None and cfg.consistent_teacher:
        check_teacher_ids(teachers, ckpt["train_state"]["teacher_ids"], cfg.out)
    check_memory(cfg, len(src), len(vsrc) if vsrc is not None else 0, channels, device)
    data = _load_data(cfg, src, vsrc, channels, skips, progress, log)
    net, opt, history, init_info = _make_net(cfg, src.class_names, channels, data.train_x, ckpt, init, log, device)
    precision = precision_of(device, cfg.bf16)
    log(f"device: {device}, {precision}")
    avg = (WeightAverage(net, ckpt["train_state"].get("swa") if ckpt is not None else None)
           if cfg.swa_epochs else None)

    info = {"class_names": src.class_names, "input_size": cfg.input_size,
            "train_data": src.description, "train_args": asdict(cfg), "epochs_planned": cfg.epochs,
            "init": init_info, "multi_label": src.multi_label}
    # label sets train per-class sigmoids (binary cross-entropy, as HashNet and DeepHash-pytorch do on NUS-WIDE
    # and COCO); one class per image, a softmax
    x_all = torch.from_numpy(data.train_x)
    y_all = torch.from_numpy(data.train_y.astype(np.float32 if src.multi_label else np.int64))
    soft = teach = None  # the teachers' logits of each training image (kept for resume), or of each batch
    state: dict[str, Any] = {}  # what a resume needs of them
    if cfg.consistent_teacher:
        teach = ConsistentTeacher([m.net for m in teachers], device, cfg.bf16)
        state["teacher_ids"] = [m.model_id for m in teachers]
    elif cfg.teacher:
        soft = ckpt["train_state"]["teacher_logits"] if ckpt is not None else \
            torch.from_numpy(ensemble_logits(teachers, data.train_x, progress))
        state["teacher_logits"] = soft
    x_all, y_all, soft_dev = resident(device, x_all, y_all, soft)
    acc = constant = None
    ends = [time.time()]  # when the run (re)started, then when each epoch ended: the pace of the last few
    for epoch in range(start_epoch, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout
        row = run_epoch(net, opt, cfg, epoch, x_all, y_all, soft_dev, g, device, precision, progress, teach)
        model = net  # the net this epoch would ship: the SGD weights, or their average
        if avg is not None and epoch >= cfg.epochs - cfg.swa_epochs:
            model = _average_epoch(avg, net, cfg, data.train_x, g, device, row, data.val_x, data.val_y)
        if data.val_x is not None:
            acc = row["val_acc"] = val_accuracy(model, data.val_x, data.val_y, device, cfg.bf16)
        history.append(row)
        meta, constant = _save_epoch(cfg, epoch, net, model, opt, state, avg, data, device,
                                     {**info, "accuracy": acc, "history": history})
        ends.append(time.time())
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} train_acc {row['train_acc']:.4f}"
            + (f" val_acc {acc:.4f}" if acc is not None else "")
            + (f" (average of {row['swa_n']}; last weights {row['sgd_val_acc']:.4f})" if "sgd_val_acc" in row else "")
            + f" latent_margin {row['latent_margin']:.3f} ({row['img_per_s']:.0f} img/s"
            + time_left(cfg.epochs - epoch - 1, recent_pace(ends)) + ")")
    summary = {"out": str(cfg.out), "model_id": meta["model_id"], "epochs": cfg.epochs,
               "accuracy": acc, "map": meta["map"], "skipped": dict(skips.counts),
               "train_images": len(data.train_x), "constant_bits": constant}
    scores = (f"val_acc {acc:.4f}" if acc is not None else "no validation set") + (
        f", mAP {meta['map']:.4f}" if meta["map"] is not None else "")
    log(f"wrote {cfg.out}: model {meta['model_id']}, {scores}")
    if constant:
        logging.getLogger("hashindex").warning(
            f"{constant} of {cfg.bits} code bits are the same for every training image and carry nothing "
            "(--bit-balance-weight asks each bit to be on for half the images)")
    return summary


def resident(device: torch.device, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The training tensors moved to a CUDA device once, when they take under a quarter of its free memory
    (CIFAR-10 at 32 px: 154 MB), so that each step gathers and augments its batch there instead of copying
    it over; otherwise (and on the CPU) left where they are."""
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    if device.type != "cuda" or size > torch.cuda.mem_get_info(device)[0] / 4:
        return tensors
    return tuple(None if t is None else t.to(device) for t in tensors)


def _save_epoch(cfg: TrainConfig, epoch: int, net: NINHash, model: NINHash, opt: torch.optim.Optimizer,
                state: dict[str, Any], avg: WeightAverage | None, data: _Arrays, device: torch.device,
                info: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """Write the checkpoint of epoch ``epoch`` atomically: with the state to resume from while the run
    goes on (``state``: the teachers' logits or ids, beside the optimizer's state and the config); the last
    epoch's holds ``model`` (the SGD weights or their average) and its final mAP.
    Returns (its metadata, the number of constant code bits at the end, else None)."""
    done = epoch + 1 == cfg.epochs
    score, protocol, constant = (_final_map(model, *data, device, cfg.bf16) if done else (None, "", None))
    meta = build_meta(model if done else net, **info, epochs=epoch + 1, map=score, map_protocol=protocol)
    if not done:
        meta["train_state"] = {"optimizer": opt.state_dict(), "config": asdict(cfg), **state}
        if avg is not None and avg.n:
            meta["train_state"]["swa"] = avg.state()
    atomic_torch_save(meta, cfg.out)
    return meta, constant


def val_accuracy(net: NINHash, x: np.ndarray, y: np.ndarray, device: torch.device, bf16: bool | None) -> float:
    """Share of the labelled images ``x`` whose predicted class is ``y`` (with label sets (N, C): is in the
    image's set, the top-1 precision of multi-label classification)."""
    preds, _ = predict(net, x, device, bf16)
    if y.ndim == 2:
        return float(y[np.arange(len(y)), preds].mean())
    return float((preds == y).mean())


def _average_epoch(avg: WeightAverage, net: NINHash, cfg: TrainConfig, train_x: np.ndarray,
                   g: torch.Generator, device: torch.device, row: dict[str, float],
                   val_x: np.ndarray | None, val_y: np.ndarray | None) -> NINHash:
    """End of an averaging epoch: fold the weights into the average, measure its BatchNorm statistics
    again (on 10,000 training images, augmented as in training) and note in ``row`` how the last SGD
    weights do on their own."""
    avg.update(net)
    sample = torch.from_numpy(bn_sample(train_x))
    batches = (augment(sample[s:s + 500].clone(), g, cfg.crop_pad, cfg.flip, cfg.cutout, cfg.trivial_augment,
                       cfg.crop_scale)
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
            "ties in database order" + (", relevant = a shared label" if val_y.ndim == 2 else ""),
            code_statistics(db_codes, net.bits)["constant_bits"])
