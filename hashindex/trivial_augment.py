"""TrivialAugment (Müller & Hutter, ICCV 2021), wide magnitudes, on a whole uint8 batch at once.

Each image gets one operation drawn uniformly from 14 and a magnitude drawn uniformly from 31 bins (signed
operations flip their sign with probability 1/2), as torchvision's ``TrivialAugmentWide`` does per image. Here
the draws come from the run's CPU generator (so a resumed epoch draws the same) and every operation is computed
for the whole batch tensor wherever it lives, each image keeping its own: torchvision's per-image transform
would cost a call per image (128 per step), which a GPU spends on launch overhead and a 2-core CPU on Python.
Each operation matches PIL's (the original implementation's): shears about the top-left corner, rotations
about the centre, nearest neighbour, zeros coming in (tests/test_trivial_augment.py). Training draws with
`draw` and `strengths` (recipe.draw_augment, a whole epoch at once) and applies with `apply_trivial`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
BINS = 31
GEOMETRIC = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}
SIGNED = GEOMETRIC | {"brightness", "color", "contrast", "sharpness"}
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


def _magnitude(op: str, m: torch.Tensor, side: int) -> torch.Tensor:
    """The operation's strength for magnitude fractions m in [0, 1] (TrivialAugmentWide's ranges)."""
    if op in ("shear_x", "shear_y"):
        return 0.99 * m
    if op in ("translate_x", "translate_y"):
        return m * side  # up to the whole side (TrivialAugmentWide: 32 px, for its 32-px images)
    if op == "rotate":
        return 135.0 * m
    if op == "posterize":
        return 8 - (6 * m).round()  # bits kept, 8 to 2
    if op == "solarize":
        return 255.0 * (1 - m)  # threshold
    return 0.99 * m  # brightness, color, contrast, sharpness: factor 1 + strength


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) luma of float images in [0, 255]; a one-channel image is its own."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, base: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """base + f (x - base), per image factor f: PIL's ImageEnhance."""
    return base + f.view(-1, 1, 1, 1) * (x - base)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, others 1, over 13), border pixels kept, as ImageEnhance.Sharpness:
    a 3x3 box sum plus 4 centres (a pooling, ~10x faster here than the same as a depthwise convolution)."""
    box = F.avg_pool2d(x, 3, stride=1) * 9
    inner = (box + 4 * x[:, :, 1:-1, 1:-1]) / 13
    return F.pad(inner, (1, 1, 1, 1)) + (x - F.pad(x[:, :, 1:-1, 1:-1], (1, 1, 1, 1)))


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel histogram equalisation of uint8 images (PIL's ImageOps.equalize)."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    rows = torch.arange(n * c, device=x.device).view(-1, 1) * 256
    hist = torch.bincount((flat + rows).flatten(), minlength=n * c * 256).view(n * c, 256)
    last = (hist > 0).long() * torch.arange(256, device=x.device)
    last_count = hist.gather(1, last.argmax(1, keepdim=True))  # count of the highest value present
    step = (h * w - last_count) // 255
    before = hist.cumsum(1) - hist  # pixels below each value
    lut = ((before + step // 2) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    return lut.gather(1, flat).reshape(n, c, h, w).to(torch.uint8)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Each channel of each image stretched to 0..255 (a constant channel is left alone)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x)


def _geometric(x: torch.Tensor, op: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Every image through its own affine map (the identity unless its operation moves pixels): one
    affine_grid and one nearest-neighbour grid_sample for the batch, zeros coming in. In affine_grid's
    coordinates (the centre at 0, the sides at -1 and 1) PIL's shear about the corner, x -> x + s y in pixels,
    is x -> x + s y + s."""
    n, side = len(x), x.shape[-1]
    theta = torch.eye(2, 3, device=x.device).repeat(n, 1, 1)
    r = torch.where(op == OPS.index("rotate"), s, 0.0) * (math.pi / 180)
    theta[:, 0, 0] = theta[:, 1, 1] = r.cos()
    theta[:, 0, 1] = torch.where(op == OPS.index("shear_x"), s, -r.sin())
    theta[:, 1, 0] = torch.where(op == OPS.index("shear_y"), s, r.sin())
    theta[:, 0, 2] = torch.where(op == OPS.index("translate_x"), 2 * s / side,
                                 torch.where(op == OPS.index("shear_x"), s, 0.0))
    theta[:, 1, 2] = torch.where(op == OPS.index("translate_y"), 2 * s / side,
                                 torch.where(op == OPS.index("shear_y"), s, 0.0))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="nearest", align_corners=False).to(torch.uint8)


def _pixelwise(x: torch.Tensor, op: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Every image through its own colour or pixel operation (unchanged unless it has one)."""
    per = s.view(-1, 1, 1, 1)
    f = x.float()
    grey = _grey(f)
    # the four enhancements are one blend f -> base + factor (f - base), each image with its own base
    base, factor = f, torch.ones_like(s)
    for name, image_base in (("brightness", 0.0), ("color", grey), ("contrast", grey.mean(dim=(1, 2, 3), keepdim=True)),
                             ("sharpness", _smooth(f))):
        sel = op == OPS.index(name)
        base, factor = torch.where(sel.view(-1, 1, 1, 1), image_base, base), torch.where(sel, 1 + s, factor)
    out = _blend(f, base, factor)
    out = torch.where((op == OPS.index("autocontrast")).view(-1, 1, 1, 1), _autocontrast(f), out)
    out = out.round().clamp(0, 255).to(torch.uint8)
    posterized = x & (255 - (2 ** (8 - per.clamp(2, 8)) - 1)).to(torch.uint8)
    solarized = torch.where(f >= per, 255 - x, x)
    for name, image in (("posterize", posterized), ("solarize", solarized), ("equalize", _equalize(x))):
        out = torch.where((op == OPS.index(name)).view(-1, 1, 1, 1), image, out)
    return out


def apply_trivial(x: torch.Tensor, op: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """uint8 images x (B, C, H, W), image i with operation OPS[op[i]] at strength s[i] (`strengths`); op and s
    on x's device. Every operation is computed for the whole batch and each image keeps its own: no
    per-operation gather, so nothing waits for the GPU (a batch of 32-px images is small work there)."""
    moved = _geometric(x, op, s)
    is_geometric = torch.zeros_like(op, dtype=torch.bool)
    for name in GEOMETRIC:
        is_geometric |= op == OPS.index(name)
    return torch.where(is_geometric.view(-1, 1, 1, 1), moved, _pixelwise(x, op, s))


def draw(b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(operation index, magnitude fraction in [0, 1], sign) of b images, from the CPU generator g."""
    op = torch.randint(0, len(OPS), (b,), generator=g)
    m = torch.randint(0, BINS, (b,), generator=g).float() / (BINS - 1)
    sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    return op, m, sign


def strengths(op: torch.Tensor, m: torch.Tensor, sign: torch.Tensor, side: int) -> torch.Tensor:
    """Each image's strength for its operation: TrivialAugmentWide's range at m, signed where it is signed."""
    s = torch.zeros_like(m)
    for k, name in enumerate(OPS[1:], start=1):
        s = torch.where(op == k, _magnitude(name, m, side) * (sign if name in SIGNED else 1), s)
    return s

