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
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .devices import autocast_for, free_memory, uses_bf16
from .distill import distill_loss
from .errors import HashindexError
from .model import NINHash, activation_bytes, check_bits, check_width
from .runtime import check_workers
from .trivial_augment import apply_trivial, draw as draw_trivial, strengths


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
    trunk_lr: float = 1.0  # with init: the trunk's learning rate as a fraction of lr (the new head learns at lr)
    warmup_epochs: float = 1.0
    input_size: int = 32
    channels: int | None = None  # None: 1 for greyscale sources, else 3
    flip: bool = True
    crop_pad: int = 4
    # with s > 0: each training image a random box of s to 1 of its area (aspect 3/4 to 4/3) resized to the input
    # (the Inception crop, Szegedy et al. 2015) instead of the padded shift; 0: off
    crop_scale: float = 0.0
    dropout: float = 0.3
    width: int = 1  # hidden channels x width (model.WIDTHS): 2 and more train a teacher, 1 the codes' NIN
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
    trivial_augment: bool = False  # one random operation per image at a random strength (trivial_augment.py)
    mixup: float = 0.0  # each batch blended with itself reversed, weight ~ Beta(a, a) (Zhang et al. 2018); 0: off
    test_flip: bool | None = None  # average each image with its mirror image at inference; None: as init (else off)
    swa_epochs: int = 0  # the last n epochs run at swa_lr and their weights are averaged (Izmailov et al. 2018)
    swa_lr: float = 0.02
    # sharpness-aware minimization: each step descends on the worst loss within this radius of the weights, one
    # more forward and backward pass a step (Foret et al. 2021; `sharpness_aware`); 0: off
    sam: float = 0.0
    # distil from this model's posteriors, or from an ensemble's: a tuple of models (Hinton et al. 2015; distill.py)
    teacher: str | tuple[str, ...] | None = None
    distill_weight: float = 0.5  # loss = (1 - w) cross-entropy + w distillation
    distill_temperature: float = 4.0
    # the teachers see each augmented batch (their logits of that very view), not the un-augmented images once:
    # "consistent" teaching (Beyer et al., CVPR 2022); costs a teacher's forward pass a step per teacher
    consistent_teacher: bool = False


def check_config(cfg: TrainConfig) -> None:
    """The settings that only make sense together (averaging phase, distillation) are consistent."""
    check_bits(cfg.bits)  # before any image is decoded
    check_width(cfg.width)
    check_workers(cfg.workers)
    if not cfg.lr > 0 or not cfg.weight_decay >= 0:  # (torch's optimiser would say so only after decoding)
        raise HashindexError(f"lr={cfg.lr}, weight_decay={cfg.weight_decay}: expected a learning rate > 0 and a "
                             "weight decay >= 0")
    if not 0 <= cfg.swa_epochs <= cfg.epochs:
        raise HashindexError(f"swa_epochs={cfg.swa_epochs}: expected 0 to epochs={cfg.epochs}")
    if cfg.swa_epochs and not cfg.swa_lr > 0:
        raise HashindexError(f"swa_lr={cfg.swa_lr}: expected a learning rate > 0")
    if not 0 < cfg.trunk_lr <= 1:
        raise HashindexError(f"trunk_lr={cfg.trunk_lr}: expected a fraction of lr in (0, 1]")
    if cfg.trunk_lr != 1 and not cfg.init:
        raise HashindexError(f"trunk_lr={cfg.trunk_lr}: the trunk learns slower than the head only when it was "
                             "trained before; give init=MODEL, or trunk_lr=1")
    if not 0 <= cfg.crop_scale < 1:
        raise HashindexError(f"crop_scale={cfg.crop_scale}: expected 0 (off) or the smallest share of an image's "
                             "area a crop keeps, under 1 (0.25-0.5 usual)")
    if not cfg.sam >= 0:
        raise HashindexError(f"sam={cfg.sam}: expected 0 (off) or a radius > 0, e.g. 0.05")
    if not cfg.mixup >= 0:
        raise HashindexError(f"mixup={cfg.mixup}: expected 0 (off) or a Beta parameter > 0, e.g. 0.2 or 1")
    if cfg.consistent_teacher and not cfg.teacher:
        raise HashindexError("consistent_teacher=True: give the teacher (teacher=MODEL) it applies to")
    if cfg.teacher and not (0 <= cfg.distill_weight <= 1 and cfg.distill_temperature > 0):
        raise HashindexError(f"distill_weight={cfg.distill_weight}, distill_temperature={cfg.distill_temperature}: "
                             "expected a weight from 0 to 1 and a temperature > 0")


def check_memory(cfg: TrainConfig, train: int, val: int, channels: int, device: torch.device) -> None:
    """Refuse, before anything is decoded, a run the machine cannot hold: the decoded images stay in memory
    (uint8) and a training step's activations grow with batch_size x input_size^2 (`model.activation_bytes`);
    past the free memory the kernel's OOM killer ends the run, or another process on the machine."""
    per_image = activation_bytes(cfg.input_size, training=True, bf16=uses_bf16(device, cfg.bf16), width=cfg.width)
    step = min(cfg.batch_size, max(train, 1)) * per_image
    images = train + val
    data = images * channels * cfg.input_size ** 2
    cpu = free_memory(torch.device("cpu"))
    if cpu is not None and data > 0.9 * cpu:
        raise HashindexError(f"input_size={cfg.input_size}: the {images:,} images decoded at that size take "
                             f"{data / 2**30:.1f} GiB in memory, and this machine has {cpu / 2**30:.1f} GiB free "
                             f"(an input_size= under {cfg.input_size}, or limit=)")
    free = free_memory(device) if device.type == "cuda" else None if cpu is None else cpu - data
    if free is not None and step > 0.9 * free:
        fits = int(0.9 * free) // per_image
        raise HashindexError(f"batch_size={cfg.batch_size}: a training step at input_size={cfg.input_size} takes about "
                             f"{step / 2**30:.1f} GiB, and the {device} has {free / 2**30:.1f} GiB free"
                             f"{' beside the decoded images' if device.type == 'cpu' else ''} ("
                             + (f"batch_size={fits} fits, or an input_size= under {cfg.input_size})" if fits else
                                f"an input_size= under {cfg.input_size})"))


def param_groups(net: NINHash, trunk_lr: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one, or with ``trunk_lr`` < 1 the trunk's at that fraction of each step's
    learning rate (``lr_scale``, which `recipe.run_epoch` applies) beside the hash layer and classifier's."""
    if trunk_lr == 1:
        return [{"params": list(net.parameters())}]
    trunk = [p for name, p in net.named_parameters() if name.startswith("trunk.")]
    ids = {id(p) for p in trunk}
    return [{"params": trunk, "lr_scale": trunk_lr}, {"params": [p for p in net.parameters() if id(p) not in ids]}]


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


def draw_augment(n: int, side: int, g: torch.Generator, pad: int, flip: bool, cutout: int = 0,
                 trivial: bool = False, scale: float = 0.0) -> dict[str, torch.Tensor]:
    """The random choices of augmenting ``n`` images of ``side`` px (one row per image), drawn from the CPU
    generator ``g``: crop offsets (or with ``scale`` a box of each image, `crop_boxes`), flips, TrivialAugment's
    operation and strength, cutout centres."""
    p = {}
    if scale:
        p["box"] = crop_boxes(n, side, g, scale)
    elif pad:
        p["oy"] = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        p["ox"] = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    if flip:
        p["flip"] = torch.rand(n, generator=g) < 0.5
    if trivial:
        op, m, sign = draw_trivial(n, g)
        p["op"], p["strength"] = op, strengths(op, m, sign, side)
    if cutout:
        p["cy"] = torch.randint(0, side, (n,), generator=g)
        p["cx"] = torch.randint(0, side, (n,), generator=g)
    return p


def crop_boxes(n: int, side: int, g: torch.Generator, scale: float) -> torch.Tensor:
    """(n, 4) boxes x0, y0, x1, y1 in pixels of a ``side``-px image: area ``scale`` to 1 of the image's, aspect
    3/4 to 4/3 (log-uniform), clipped to the image, placed uniformly inside it (torchvision's RandomResizedCrop
    draws the same, with retries where ours clips)."""
    area = scale + (1 - scale) * torch.rand(n, generator=g, dtype=torch.float64)
    aspect = torch.exp((torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.log(4 / 3))
    w = (torch.sqrt(area * aspect) * side).clamp(max=side)
    h = (torch.sqrt(area / aspect) * side).clamp(max=side)
    x0 = torch.rand(n, generator=g, dtype=torch.float64) * (side - w)
    y0 = torch.rand(n, generator=g, dtype=torch.float64) * (side - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], 1).float()


def resized_crops(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each uint8 image's box (`crop_boxes`) resampled bilinearly to the image's size (one sample a pixel, at its
    centre: the whole image's box gives the image back)."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    rois = torch.cat([torch.arange(b, device=x.device, dtype=boxes.dtype)[:, None], boxes], 1)
    out = roi_align(x.float(), rois, (h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def apply_augment(x: torch.Tensor, p: dict[str, torch.Tensor], pad: int, cutout: int) -> torch.Tensor:
    """A uint8 batch augmented as ``p`` says (`draw_augment`'s rows for these images, on x's device): random
    crop with zero padding (or a box resized to the input), horizontal flip, TrivialAugment, cutout (a zeroed
    square centred anywhere in the image, clipped at its borders). Nothing here reads a value back from the
    device."""
    b, c, h, w = x.shape
    dev = x.device
    if "box" in p:
        x = resized_crops(x, p["box"])
    elif pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (p["oy"][:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (p["ox"][:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                   rows, cols]
    if "flip" in p:
        x = torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(3), x)
    if "op" in p:
        x = apply_trivial(x, p["op"], p["strength"])
    if cutout:
        ys, xs = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
        cy, cx = p["cy"].view(-1, 1, 1), p["cx"].view(-1, 1, 1)
        hole = ((ys - cy).abs() * 2 < cutout) & ((xs - cx).abs() * 2 < cutout)  # side `cutout` around (cy, cx)
        x = x.masked_fill(hole[:, None], 0)
    return x


def augment(x: torch.Tensor, g: torch.Generator, pad: int, flip: bool, cutout: int = 0,
            trivial: bool = False, scale: float = 0.0) -> torch.Tensor:
    """One uint8 batch augmented with choices drawn now from ``g`` (`draw_augment`, then `apply_augment`)."""
    p = draw_augment(len(x), x.shape[-1], g, pad, flip, cutout, trivial, scale)
    return apply_augment(x, {k: v.to(x.device) for k, v in p.items()}, pad, cutout)


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


def top1_hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many images' top class is their class (with label sets: is one of their labels), a 0-d tensor on
    the logits' device (read once per epoch, not per step: each read waits for the GPU)."""
    top = logits.argmax(1)
    return (y.gather(1, top[:, None]) > 0).sum() if y.ndim == 2 else (top == y).sum()


def mixup_weights(steps: int, alpha: float, g: torch.Generator) -> list[float]:
    """One mixup weight per step, drawn from Beta(alpha, alpha) (1.0 each when alpha is 0: no mixing), from a
    seed drawn from ``g`` so that a resumed run draws the same. Kept at >= 0.5: the image a blend is mostly
    made of is its own (the pairing is symmetric, so this changes nothing but which label is the main one)."""
    if not alpha:
        return [1.0] * steps
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    lam = np.random.default_rng(seed).beta(alpha, alpha, steps)
    return np.maximum(lam, 1 - lam).tolist()


def mix(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Mixup's input: each image blended with the batch's image at the mirrored position (batches are in
    random order, so the partner is random), lam of its own. uint8 in, float32 out (the net normalises both)."""
    return x if lam == 1 else torch.lerp(x.flip(0).float(), x.float(), lam)


def paired(term: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor, lam: float) -> torch.Tensor:
    """A loss term of a mixed batch: lam of it against each image's target plus 1 - lam against its partner's
    (`mix`). Cross-entropy is linear in its target, so this is the loss of the blended targets; the
    distillation term (a KL divergence) differs from that by the teachers' entropy alone, which does not
    depend on the net: the same gradient."""
    return term(target) if lam == 1 else lam * term(target) + (1 - lam) * term(target.flip(0))


def batch_loss(net: NINHash, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None,
               device: torch.device, lam: float = 1.0, soft_lam: float = 1.0,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(loss, class loss, distillation loss or None, logits, latent) of one augmented batch.

    Cross-entropy (label smoothing as configured), mixed with the teacher's soft targets ``soft`` when
    distilling, plus SSDH's code terms when their weights are set. Label sets (``y`` (B, C) float): binary
    cross-entropy per class, the targets smoothed toward 1/2 by the same amount. A mixup batch (``x`` blended
    by `mix` at ``lam``) is scored against both images' labels (`paired`), and against both soft targets at
    ``soft_lam`` (1 when the teachers saw the blend itself: their logits are of that image).
    """
    with autocast_for(device, cfg.bf16):
        logits, latent, _ = net(x)
    loss = class_loss = paired(lambda t: class_term(logits.float(), t, cfg.label_smoothing), y, lam)
    distill = None
    if soft is not None:
        distill = paired(lambda t: distill_loss(logits.float(), t, cfg.distill_temperature), soft.to(device),
                         soft_lam)
        loss = (1 - cfg.distill_weight) * class_loss + cfg.distill_weight * distill
    if cfg.binary_weight or cfg.balance_weight or cfg.bit_balance_weight:
        binary, balance, bit_balance = code_terms(latent.float())
        loss = loss + cfg.binary_weight * binary + cfg.balance_weight * balance + cfg.bit_balance_weight * bit_balance
    return loss, class_loss, distill, logits, latent


def sharpness_aware(net: torch.nn.Module, rho: float, loss_again: Callable[[], torch.Tensor]) -> None:
    """SAM's gradient (Foret et al. 2021), the batch's gradient already in each ``.grad``: move the weights by
    ``rho`` along the normalised gradient (towards the worst loss nearby), take the gradient of ``loss_again()``
    there into ``.grad``, and move back, so the optimizer's step descends on the neighbourhood's worst loss. The
    second pass leaves batch norm's running statistics as the first left them (momentum 0 for it)."""
    params = [p for p in net.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.detach().float().norm(2) for p in params]), 2)
    saved = [p.detach().clone() for p in params]  # put back exactly (adding and taking e away rounds)
    with torch.no_grad():
        for p in params:
            p.add_(p.grad * (rho / (norm + 1e-12)))
            p.grad = None
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        loss_again().backward()
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)


def run_epoch(net: NINHash, opt: torch.optim.Optimizer, cfg: TrainConfig, epoch: int, x_all: torch.Tensor,
              y_all: torch.Tensor, soft: torch.Tensor | None, g: torch.Generator, device: torch.device,
              precision: str, progress: bool = True,
              teach: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """One epoch of SGD: order and augmentation drawn from ``g``, the learning rate set per step by
    `lr_at`; returns the epoch's history row (mean loss terms, training accuracy, speed). The images may
    live on ``device`` already (`training.resident`): then a batch is gathered and augmented there. The
    soft targets are the teachers' logits of each image (``soft``, computed once) or of each augmented batch
    (``teach``: `distill.ConsistentTeacher`). With mixup each batch is blended at its step's weight
    (`mixup_weights`) before the teachers see it; its training accuracy counts the main image's label.

    The running sums stay on the device and are read every 50 steps for the progress bar: each read waits
    for the GPU to finish all the steps queued so far."""
    net.train()
    steps = math.ceil(len(x_all) / cfg.batch_size)
    perm = torch.randperm(len(x_all), generator=g)
    # the epoch's augmentation, drawn at once in the order the images come and moved to where they live in
    # one copy: each copy from (unpinned) CPU memory to a GPU makes the host wait until the GPU has caught up,
    # so copies per step would leave the GPU idle while the host prepares the next step
    place = x_all.device
    choices = {k: v.to(place) for k, v in draw_augment(len(x_all), x_all.shape[-1], g, cfg.crop_pad, cfg.flip,
                                                       cfg.cutout, cfg.trivial_augment, cfg.crop_scale).items()}
    order = perm.to(place)
    lams = mixup_weights(steps, cfg.mixup, g)
    t0, seen = time.time(), 0
    # loss, class loss, hits, latent margin and distillation loss, each summed over the images
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    no_distill = torch.zeros((), device=device)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for step in bar:
        at = slice(step * cfg.batch_size, (step + 1) * cfg.batch_size)
        idx = order[at]
        x = apply_augment(x_all[idx], {k: v[at] for k, v in choices.items()}, cfg.crop_pad, cfg.cutout)
        x = mix(x.to(device, non_blocking=True), lams[step])
        y = y_all[idx].to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch + step / steps) * group.get("lr_scale", 1.0)
        target = teach(x) if teach is not None else None if soft is None else soft[idx]
        losses = partial(batch_loss, net, cfg, x, y, target, device, lams[step],
                         1.0 if teach is not None else lams[step])  # SAM computes them again, elsewhere
        loss, class_loss, distill, logits, latent = losses()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.sam:
            sharpness_aware(net, cfg.sam, lambda: losses()[0])
        opt.step()
        n = len(y)
        seen += n
        with torch.no_grad():
            sums += torch.stack([loss.detach() * n, class_loss.detach() * n, top1_hits(logits, y).float(),
                                 (latent.detach().float() - 0.5).abs().mean() * n,
                                 distill.detach() * n if distill is not None else no_distill])
        if progress and (step % 50 == 0 or step == steps - 1):
            s = sums.tolist()
            bar.set_postfix(loss=f"{s[0] / seen:.3f}", acc=f"{s[2] / seen:.3f}")
    bar.close()
    loss_sum, class_sum, correct, margin_sum, distill_sum = sums.tolist()
    wall = time.time() - t0
    row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
           "img_per_s": seen / wall, "wall_s": wall,
           "lr": lr_at(cfg, epoch + (steps - 1) / steps),  # its last step's: the end of the epoch is the next one's
           "class_loss": class_sum / seen, "latent_margin": margin_sum / seen, "precision": precision}
    if soft is not None or teach is not None:
        row["distill_loss"] = distill_sum / seen
    return row
