"""Knowledge distillation (`train --teacher`): a trained model's class posteriors as soft targets.

Hinton, Vinyals & Dean (2015): besides the labels, the student matches the teacher's posteriors
softened at a temperature T, which say how alike the classes look to the teacher. The teacher is any
checkpoint with the training data's classes and input size, encoding with its own test views, so a
10-view teacher (`derive --test-shift 2`) teaches a one-view student what it sees in ten views. Its
logits are computed once, on the un-augmented training images, and kept in the student's train_state:
`--resume` neither recomputes them nor depends on the teacher file staying the same.

With ``--consistent-teacher`` the teachers see the student's augmented batches instead ("consistent"
teaching, the function matching of Beyer et al., CVPR 2022: the target of a cropped, flipped or distorted
image is what the teacher says of that image, not of the whole original): each teacher's logits of the very
view given, one forward pass a step per teacher (`ConsistentTeacher`); nothing is kept in the checkpoint
but the teachers' model ids, which a resume checks.

Several teachers (``--teacher`` repeated) teach as one ensemble: their logits are averaged, which is the
normalised geometric mean of their posteriors at every temperature (softmax(mean z / T) is proportional to
the product of the softmax(z_i / T) to the 1/n), one of the two ensemble targets Hinton et al. use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_model
from .devices import autocast_for
from .errors import HashindexError
from .model import HashModel, NINHash


def open_teacher(teacher: str, class_names: list[str], channels: int, input_size: int, device: str,
                 bf16: bool | None) -> HashModel:
    """Load the teacher, checked against the student's classes and input before any image is decoded."""
    model = load_model(teacher, device, bf16, arg="teacher")
    if model.class_names != class_names:
        raise HashindexError(f"teacher={teacher}: its classes {model.class_names} are not the training "
                             f"data's {class_names}")
    if (model.channels, model.input_size) != (channels, input_size):
        raise HashindexError(f"teacher={teacher}: a {model.channels}x{model.input_size}px model, but the "
                             f"student trains at {channels}x{input_size}px")
    return model


def teacher_names(teacher: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """The teacher models of a config: none, one (a str) or an ensemble (a sequence)."""
    if not teacher:
        return ()
    return (teacher,) if isinstance(teacher, str) else tuple(teacher)


def ensemble_logits(models: list[HashModel], images: np.ndarray, progress: bool = True) -> np.ndarray:
    """The teachers' logits averaged (N, classes) float32: the geometric-mean ensemble's (module docstring)."""
    return np.mean([teacher_logits(m, images, progress) for m in models], axis=0).astype(np.float32)


def teacher_logits(model: HashModel, images: np.ndarray, progress: bool = True, batch_size: int = 500) -> np.ndarray:
    """The teacher's logits (N, classes) float32 for uint8 images (N, C, H, W), with its own test views."""
    out = [model.forward_numpy(images[s:s + batch_size])[2]
           for s in tqdm(range(0, len(images), batch_size), desc="teacher", disable=not progress, leave=False)]
    return np.concatenate(out).astype(np.float32)


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between posteriors softened at ``temperature``, per image, times T^2 so
    that its gradients keep their scale as T changes (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


class ConsistentTeacher:
    """The teachers as a function of the student's augmented batch: their one-view logits (`NINHash.view_logits`),
    averaged, in float32 on the batch's device, without gradients; the nets kept in eval mode (no dropout, the
    BatchNorm statistics they were trained with)."""

    def __init__(self, nets: list[NINHash], device: torch.device, bf16: bool | None):
        self.nets = [net.to(device).eval() for net in nets]
        self.device, self.bf16 = device, bf16

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_for(self.device, self.bf16):
            return torch.stack([net.view_logits(x).float() for net in self.nets]).mean(0)


def check_teacher_ids(models: list[HashModel], recorded: list[str], out: str) -> None:
    """A consistent run resumed with teachers other than those it began with is refused in one line (their
    logits are computed anew each step, so a changed file would change the targets mid-run)."""
    ids = [m.model_id for m in models]
    if ids != recorded:
        raise HashindexError(f"resume=True: {out} was taught by models {', '.join(recorded)}, the teacher files "
                             f"now hold {', '.join(ids)} (give the same teachers, or train anew)")
