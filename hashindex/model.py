"""The hashing network, and the model that encodes images with it (the checkpoint file: checkpoint.py).

Network In Network (Lin et al. 2014, the CIFAR-10 net) with batch norm after
every convolution, global average pooling to a 192-d feature, then the latent
hash layer of DLBHC (Lin et al. 2015): Linear(192 -> K) + sigmoid, whose
outputs thresholded at 0.5 are the K-bit code, then Linear(K -> classes).

``test_flip`` (a property of a checkpoint, part of its model id): at inference
the pooled feature is the mean of the image's and its mirror image's, the
test-time augmentation of the flip the net was trained with. Measured on the
shipped 48-bit model (CIFAR-10 test set): accuracy 0.8734 -> 0.8816, for twice
the trunk's work per image (docs/RESULTS.md, "Test-time flip"). ``test_shift`` s
(also part of the id) adds the four diagonal shifts by s pixels (zero fill, as
the training crops) of each view: with the flip, the classic 10 views, +0.3
accuracy over the flip alone for 5x its work ("Ten views").

Codes are packed with ``np.packbits(..., bitorder="little")``: bit j of byte i
is latent unit 8*i + j, the order Faiss's ``real_to_binary`` and binary
indexes use. The re-ranking feature is the 192-d pooled feature; beside it, `encode_fields` gives the
*mid feature*: the output of the second mlpconv block averaged over the image (192-d), which carries to
classes the net never saw better than the last layer (zero-shot P@10 on flowers 0.39 -> 0.55 as the
fine stage, docs/RESULTS.md "Zero-shot: which layer"; the ``mid`` signal of hashindex/signals.py).

A model *adapted* to a collection (`hashindex derive --adapt-codes DATA`, hashindex/derive.py) takes its codes
from a code head instead of the latent layer: the signs of its mid feature, centred and projected by ITQ
(Gong & Lazebnik 2011) fitted on the collection's images. The net's classes carry little to classes it was not
trained on (zero-shot Hamming mAP on flowers 0.25, chance 0.21), its mid feature more: the adapted codes reach
0.32, and a pool of 2.6 % of the collection re-ranked by `mid` ranks as well as a re-rank of all of it (mAP@all
0.318 against 0.313; from the latent codes that pool gives 0.256: docs/RESULTS.md, "Codes adapted to a
collection"). The latent layer and classifier stay
(the posterior signal, accuracy); the code head is in the weights, so in the model id.

``width`` (`train --width`) multiplies the hidden channels of every block, leaving block 2's and block 3's
outputs at 192: a wider net is a teacher for the codes' net (3.0M parameters at width 2 against 1.0M; 3.1x a
training step on 2 CPU cores, about the same speed on an H200, whose NIN step is bound by launches), and it
extracts, indexes and teaches as any model (docs/RESULTS.md, "The GPU path").

Weights are saved, read and identified (``model_id``) by hashindex/checkpoint.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .codes import input_digests
from .devices import autocast_for, free_memory, precision_of, resolve_device
from .errors import HashindexError

ARCH = "nin-hash"
ARCH_VERSION = 1
FEATURE_DIM = 192
MID_DIM = 192  # channels of block 2's output: the mid feature
# channel multipliers of the hidden layers (`width`): 1 is the NIN of the paper, the codes' net; a wider net is a
# teacher (train --width 2, then --teacher): its features keep 192 dimensions, so it extracts and indexes alike
WIDTHS = (1, 2, 3, 4)


def check_bits(bits: int) -> None:
    """A code length the hash layer is built with (a multiple of 4: codes are packed and shown in hex), else a
    one-line HashindexError."""
    if bits < 4 or bits % 4:
        raise HashindexError(f"bits={bits}: expected a multiple of 4 (e.g. 12, 24, 32, 48, 64)")


def check_width(width: int) -> None:
    """A width the net is built at (`WIDTHS`), else a one-line HashindexError."""
    if width not in WIDTHS:
        raise HashindexError(f"width={width}: expected one of {', '.join(map(str, WIDTHS))}")


def _mlpconv(cin: int, widths: tuple[int, int, int], kernel: int) -> list[nn.Module]:
    """One NIN mlpconv block: a kxk conv then two 1x1 convs, each conv-BN-ReLU."""
    layers: list[nn.Module] = []
    for i, cout in enumerate(widths):
        k = kernel if i == 0 else 1
        layers += [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
        cin = cout
    return layers


# Memory of one image in a pass of the width-1 net, in bytes per input pixel (it grows with the pixels): the
# slope of `train`'s and `extract`'s peak RSS between two batch sizes on the CPU (tools/memory_per_image.py;
# docs/RESULTS.md "Memory per image"): `extract` 750-760 B under bf16 and 1,430-1,470 in float32, `train` 4,570-
# 5,170 and 6,610-6,920, at 64 and 224 px. So at 224 px a batch of 256 encodes in ~10 GB and a training batch of
# 128 takes ~32 GB under bf16: past this machine's 24 GB, where the OOM killer ended the run (or the largest
# other process).
ACTIVATION_BYTES_PER_PIXEL = {(False, True): 800, (False, False): 1500, (True, True): 5000, (True, False): 7000}
MEMORY_SHARE = 0.5  # of the free memory, what an inference pass's batch may take (the rest: everything else)


def activation_bytes(input_size: int, *, training: bool, bf16: bool, width: int = 1) -> int:
    """About how many bytes one image's pass takes at ``input_size`` px (`ACTIVATION_BYTES_PER_PIXEL`)."""
    return ACTIVATION_BYTES_PER_PIXEL[(training, bf16)] * input_size * input_size * width


def fitting_batch(batch_size: int, per_image: int, device: torch.device) -> int:
    """``batch_size``, or fewer images where that many would take more than `MEMORY_SHARE` of the memory free on
    ``device`` (an inference pass in smaller batches gives the same outputs; one the machine cannot hold ends
    with the kernel's OOM killer, which may end another process instead)."""
    free = free_memory(device)
    if free is None:
        return batch_size
    return max(1, min(batch_size, int(free * MEMORY_SHARE) // max(per_image, 1)))


FOLD_BATCH_NORM = True  # False: inference runs the trunk as trained (the baseline of tools/bench_fold.py)


def fold_batch_norm(trunk: nn.Sequential) -> nn.Sequential:
    """An inference copy of a trunk with each BatchNorm (eval statistics: a per-channel scale and shift) folded
    into the convolution before it, as weights scaled per output channel and a bias; the BatchNorm becomes an
    Identity, so layer positions (``mid_end``) stay. The same function up to float rounding."""
    layers = list(trunk)
    out: list[nn.Module] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.BatchNorm2d) and i and isinstance(layers[i - 1], nn.Conv2d):
            out[-1] = fuse_conv_bn_eval(layers[i - 1], layer)  # (a copy of the conv)
            out.append(nn.Identity())
        else:
            out.append(copy.deepcopy(layer))  # (no tensors but a conv's: the copy shares no mode with the trunk)
    return nn.Sequential(*out).eval().requires_grad_(False)


class NINHash(nn.Module):
    """NIN trunk + sigmoid latent hash layer + classifier.

    Takes uint8 images (N, C, H, W) and normalises them itself, so the
    normalisation travels with the weights.
    """

    def __init__(self, bits: int, num_classes: int, channels: int = 3,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 dropout: float = 0.3, test_flip: bool = False, test_shift: int = 0, adapted_codes: bool = False,
                 width: int = 1):
        super().__init__()
        self.test_flip, self.test_shift, self.adapted_codes = test_flip, test_shift, adapted_codes
        check_bits(bits)
        check_width(width)
        self.width = width
        self.bits, self.num_classes, self.channels = bits, num_classes, channels
        mean = mean or [0.5] * channels
        std = std or [0.25] * channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        w = width  # the hidden channels; block 2's and block 3's outputs (mid and pooled feature) stay 192-d
        self.trunk = nn.Sequential(
            *_mlpconv(channels, (192 * w, 160 * w, 96 * w), 5),
            nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(dropout),
            *_mlpconv(96 * w, (192 * w, 192 * w, MID_DIM), 5),
            nn.AvgPool2d(3, stride=2, padding=1), nn.Dropout(dropout),
            *_mlpconv(MID_DIM, (192 * w, FEATURE_DIM), 3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        # block 2 ends where its pooling begins: the mid feature is the trunk's output up to there, averaged
        self.mid_end = next(i for i, m in enumerate(self.trunk) if isinstance(m, nn.AvgPool2d))
        self.latent = nn.Linear(FEATURE_DIM, bits)
        self.classifier = nn.Linear(bits, num_classes)
        if adapted_codes:  # the code head (`code_activations`), set by derive; absent otherwise (ids unchanged)
            self.register_buffer("code_mean", torch.zeros(MID_DIM))
            self.register_buffer("code_proj", torch.zeros(MID_DIM, bits))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Small latent weights keep sigmoids off saturation at the start; larger
        # classifier weights let the gradient reach the trunk through the
        # sigmoid (std 0.05 there left the first epoch at chance on CIFAR-10).
        nn.init.normal_(self.latent.weight, std=0.05)
        nn.init.zeros_(self.latent.bias)
        nn.init.normal_(self.classifier.weight, std=0.3)
        nn.init.zeros_(self.classifier.bias)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images -> (class logits, latent sigmoid activations, 192-d feature).

        The latent and classifier layers run in float32 even under autocast, so
        a code bit does not flip on bf16 rounding of the last layer. With
        ``test_flip`` or ``test_shift``, outside training, the feature is the mean over the test views.
        """
        feature, _ = self.embed(images)
        logits, latent = self.hash_layers(feature)
        return logits, latent, feature

    def embed(self, images: torch.Tensor, mid: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 images -> (192-d pooled feature, mid feature or None); each the mean over the test views
        outside training."""
        if self.training or not (self.test_flip or self.test_shift):
            return self._pooled(images, mid)
        return self._mean_over_views(images, mid)

    def hash_layers(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled feature -> (class logits, latent sigmoid activations), in float32."""
        with torch.autocast(feature.device.type, enabled=False):
            latent = torch.sigmoid(self.latent(feature.float()))
            return self.classifier(latent), latent

    def code_activations(self, middle: torch.Tensor) -> torch.Tensor:
        """An adapted model's code head: mid features -> activations thresholded at 0.5 into its code bits
        (the sigmoid of the centred, projected mid feature: a bit is its sign), in float32."""
        with torch.autocast(middle.device.type, enabled=False):
            return torch.sigmoid((middle.float() - self.code_mean) @ self.code_proj)

    def code_outputs(self, images: torch.Tensor, mid: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """uint8 images -> (latent activations the codes are thresholded from, pooled feature, class logits, mid
        feature or None) over the test views: an adapted model's activations are its code head's
        (`code_activations`), whatever ``mid``. What encoding and the exported graph (`export`) both run."""
        feature, middle = self.embed(images, mid or self.adapted_codes)
        logits, latent = self.hash_layers(feature)
        if self.adapted_codes:
            latent = self.code_activations(middle)
        return latent, feature, logits, middle if mid else None

    def inference_bytes(self, input_size: int, bf16: bool) -> int:
        """About how many bytes one image's inference pass takes (`activation_bytes`); a test flip runs each
        image's mirror in the same batch, twice the images."""
        return activation_bytes(input_size, training=False, bf16=bf16, width=self.width) * (2 if self.test_flip else 1)

    def view_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (float32) of the uint8 images exactly as given, one view whatever the model's test
        views: what a teacher says of the augmented image a student sees (`distill.ConsistentTeacher`)."""
        return self.hash_layers(self._pooled(images)[0])[0]

    def _pooled(self, images: torch.Tensor, mid: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.normalize(images).contiguous(memory_format=torch.channels_last)
        trunk = self.running_trunk()
        if not mid:
            return trunk(x).float(), None
        x = trunk[:self.mid_end](x)
        return trunk[self.mid_end:](x).float(), x.mean((2, 3)).float()

    def running_trunk(self) -> nn.Sequential:
        """The trunk a forward pass runs: while training or taking gradients the trunk itself; for inference
        (eval mode, no gradients) a copy with each batch norm folded into the convolution before it
        (`fold_batch_norm`), made on first use and again whenever the trunk's tensors change (an optimiser
        step, load_state_dict, a move to another device). Folding saves a pass over every conv's output:
        0.72-0.80x the teacher's forward time on 2 AVX-512 cores, bf16 (docs/RESULTS.md 'Batch norm folded')."""
        if self.training or torch.is_grad_enabled() or not FOLD_BATCH_NORM:
            return self.trunk
        tensors = (*self.trunk.parameters(), *self.trunk.buffers())
        # tensors made under inference_mode keep no version counter: folded anew each pass (~ms), never stale
        key = None if any(t.is_inference() for t in tensors) else tuple((t.data_ptr(), t._version) for t in tensors)
        cached = self.__dict__.get("_folded")
        if key is None or cached is None or cached[0] != key:
            self.__dict__["_folded"] = cached = (key, fold_batch_norm(self.trunk))  # not a submodule: never saved
        return cached[1]

    def _mean_over_views(self, images: torch.Tensor, mid: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean pooled feature (and mid feature) over the image, its four diagonal shifts by ``test_shift``
        pixels (if set) and each one's mirror image (if ``test_flip``): one trunk pass per shift, mirrors in
        the same batch, so memory grows by 2x at most, not by the number of views."""
        s = self.test_shift
        shifts = [(0, 0)] + ([(s, s), (-s, -s), (s, -s), (-s, s)] if s else [])
        total: list[torch.Tensor] | None = None
        for dy, dx in shifts:
            view = shift_images(images, dy, dx)
            out = self._pooled(torch.cat([view, view.flip(3)]) if self.test_flip else view, mid)
            out = [_add_halves(f) if self.test_flip else f for f in out if f is not None]
            total = out if total is None else [t + f for t, f in zip(total, out)]
        means = [t / (len(shifts) * (2 if self.test_flip else 1)) for t in total]
        return means[0], means[1] if mid else None


def _add_halves(f: torch.Tensor) -> torch.Tensor:
    """The first half of a batch plus its second (a view's outputs plus its mirrors'), by the batch's shape
    rather than a count in Python, so an exported graph keeps its batch size free (`export`)."""
    pair = f.unflatten(0, (2, -1))
    return pair[0] + pair[1]


def shift_images(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """uint8 images moved by (dy, dx) pixels, the uncovered border zero (black, as the training crops pad)."""
    if not (dy or dx):
        return images
    p = max(abs(dy), abs(dx))
    h, w = images.shape[-2:]
    return F.pad(images, (p, p, p, p))[..., p + dy:p + dy + h, p + dx:p + dx + w]


def max_test_shift(input_size: int) -> int:
    """The largest test shift a model of this input size takes: a quarter of its side."""
    return input_size // 4


def views_description(test_flip: bool, test_shift: int) -> str:
    """How a model encodes an image, in words (info, derive)."""
    if test_shift:
        return (f"{10 if test_flip else 5} views: the image and its 4 diagonal shifts by {test_shift} px"
                + (", each with its mirror image" if test_flip else ""))
    return "test-time flip (each image averaged with its mirror image)" if test_flip else "single view"


def pack_codes(latent: np.ndarray) -> np.ndarray:
    """Threshold sigmoid activations at 0.5 and pack bits, Faiss bit order."""
    return np.packbits(latent > 0.5, axis=1, bitorder="little")


def unpack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of pack_codes: (N, bytes) uint8 -> (N, bits) uint8 of 0/1."""
    return np.unpackbits(codes, axis=1, count=bits, bitorder="little")


@dataclass
class HashModel:
    """A loaded checkpoint: the network plus what is needed to use it."""

    net: NINHash
    meta: dict[str, Any]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool | None = None  # None: bf16 where it is the faster choice (uses_bf16)

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    @property
    def bits(self) -> int:
        return self.meta["bits"]

    @property
    def input_size(self) -> int:
        return self.meta["input_size"]

    @property
    def channels(self) -> int:
        return self.meta["channels"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def test_flip(self) -> bool:
        return self.meta.get("test_flip", False)

    @property
    def test_shift(self) -> int:
        return self.meta.get("test_shift", 0)

    @property
    def code_bytes(self) -> int:
        return (self.bits + 7) // 8

    @property
    def precision(self) -> str:
        """How the trunk runs: "bfloat16" (autocast) or "float32"; the hash layer is float32 either way."""
        return precision_of(self.device, self.bf16)

    def to(self, device: str | torch.device) -> "HashModel":
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.net.to(self.device)
        if self.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)
        return self

    @torch.inference_mode()
    def forward_numpy(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 (N,C,H,W) -> (latent float32 N,K, feature float32 N,192, logits N,classes)."""
        latent, feature, logits, _ = self._forward_arrays(images, False)
        return latent, feature, logits

    @torch.inference_mode()
    def _forward_arrays(self, images, mid: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """`forward_numpy`'s arrays, and the mid feature (N, 192) when ``mid``. The latent activations are those
        the codes are thresholded from: an adapted model's code head's (`NINHash.code_activations`)."""
        self.net.eval()
        x = torch.as_tensor(images).to(self.device, non_blocking=True)
        with autocast_for(self.device, self.bf16):
            arrays = self.net.code_outputs(x, mid)
        return tuple(a.float().cpu().numpy() if a is not None else None for a in arrays)  # type: ignore[return-value]

    def encode(self, images, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Images -> (packed codes N x ceil(K/8) uint8, features N x 192 float32).

        ``images``: image files (paths or bytes) or PIL image(s), an HW/HWC uint8 array, or a batch as NHWC /
        NCHW uint8 (numpy or torch); any size: read and resized as extraction does (`hashindex.data.as_net_input`),
        so a file's code equals the one extraction stores. A file that cannot be read or decoded raises
        HashindexError naming it.

        >>> model = load_model("nin-cifar10-48")
        >>> codes, features = model.encode(["cat.jpg", "dog.png"])   # doctest: +SKIP
        """
        fields = self.encode_fields(images, batch_size, mid=False)
        return fields["codes"], fields["features"]

    def encode_fields(self, images, batch_size: int = 512, mid: bool = True) -> dict[str, np.ndarray]:
        """Images (as `encode` takes them) -> the arrays a shard stores for them, by field name: "codes",
        "features", "input_digests" (`codes.input_digests` of the net inputs: which items are the same pixels)
        and, with ``mid``, "mid_features" (N x 192 float32, block 2's output averaged)."""
        from .data.images import BadImage, as_net_input

        try:
            images = as_net_input(images, self.input_size, self.channels)
        except BadImage as e:
            raise HashindexError(f"images: an image cannot be used ({e})") from None
        parts: dict[str, list[np.ndarray]] = {"codes": [], "features": [], "mid_features": []}
        per_image = self.net.inference_bytes(self.input_size, self.precision == "bfloat16")
        batch_size = fitting_batch(batch_size, per_image, self.device)
        for start in range(0, len(images), batch_size):
            latent, feature, _, middle = self._forward_arrays(images[start:start + batch_size], mid)
            parts["codes"].append(pack_codes(latent))
            parts["features"].append(feature)
            if mid:
                parts["mid_features"].append(middle)
        empty = {"codes": np.zeros((0, self.code_bytes), np.uint8),
                 "features": np.zeros((0, FEATURE_DIM), np.float32), "mid_features": np.zeros((0, MID_DIM), np.float32)}
        out = {name: np.concatenate(arrays) if arrays else empty[name] for name, arrays in parts.items()
               if mid or name != "mid_features"}
        return {**out, "input_digests": input_digests(images)}

    def encode_images(self, images: list, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """PIL images -> (codes, features) (`encode` takes them too)."""
        return self.encode(list(images), batch_size)
