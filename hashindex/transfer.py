"""Fine-tuning from a trained model (`train --init`): what of it a new net takes, and when to suggest it.

The trunk (with its input normalisation) carries to any classes; the hash layer when the code length is the
same; the classifier when the classes are the same too. Starting from the shipped model instead of random
weights was worth 16 points of mAP@all on 2,934 flower photos in the same epochs (docs/RESULTS.md, "Input size
for photographs"), so a small run from scratch says so.
"""

from __future__ import annotations

from typing import Any

from .errors import HashindexError
from .model import NINHash
from .recipe import TrainConfig

SMALL_SET = 10_000  # training images under which a run from random weights is told of --init


def init_channels(cfg: TrainConfig, init: dict[str, Any]) -> int:
    """Input channels of a fine-tuning run: the init model's, unless --channels says otherwise."""
    channels = cfg.channels or init["channels"]
    if channels != init["channels"]:
        raise HashindexError(f"init={cfg.init}: a {init['channels']}-channel model, but channels="
                             f"{channels}; omit channels= to train with {init['channels']}")
    return channels


def transfer_weights(net: NINHash, init: dict[str, Any], class_names: list[str]) -> list[str]:
    """Copy what fits from a checkpoint into a fresh net; returns the parts copied.

    The trunk (with its input normalisation) fits a net of the same width; the hash layer when the
    code length is the same; the classifier when the classes are the same too.
    """
    if init.get("width", 1) != net.width:
        was = init.get("width", 1)
        raise HashindexError(f"init={init.get('path', init['model_id'])}: a width-{was} net, the net to train has "
                             f"width {net.width} (give width={was}, or train from scratch)")
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


def scratch_note(images: int, width: int = 1) -> str | None:
    """The note a run from random weights on a small set prints: the shipped model as a start (a wide teacher has
    no shipped trunk to start from)."""
    from . import DEFAULT_MODEL

    if images >= SMALL_SET or width != 1:
        return None
    return (f"note: training from random weights on {images:,} images; from the shipped model (init={DEFAULT_MODEL}) "
            "the same epochs reached 16 points more mAP on 2,934 photos of other classes (docs/RESULTS.md, 'Input "
            "size for photographs')")
