"""`hashindex derive`: a copy of a finished checkpoint with other inference options (test views), or with its
codes adapted to a collection (a code head on the mid feature, fitted to the collection's images: model.py).

The trunk's weights stay; every code changes, so the copy gets its own model id
and shards of the two never mix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .baselines import fit
from .checkpoint import atomic_torch_save, compute_model_id, net_from_checkpoint, read_checkpoint
from .data import iter_batches, load_arrays, open_source
from .devices import resolve_device
from .errors import HashindexError
from .model import MID_DIM, HashModel, max_test_shift
from .training import check_new_checkpoint, val_accuracy

ADAPT_SAMPLE = 20_000  # images the code head is fitted on: ITQ on 192-d features settles long before that


def derive(model: str, out: str, test_flip: bool | None = None, val: str | None = None, overwrite: bool = False,
           device: str = "cpu", progress: bool = True, test_shift: int | None = None, adapt_codes: str | None = None,
           adapt_sample: int = ADAPT_SAMPLE) -> dict[str, Any]:
    """Write a copy of a finished checkpoint with its inference options (test views) changed, or its codes
    adapted to a collection.

    ``test_flip``, ``test_shift``: None keeps the model's. ``adapt_codes``: a collection (an image source spec;
    labels not needed) whose images' mid features, up to ``adapt_sample`` of them spread over it, fit the code
    head (ITQ, as many bits as the model's): for a collection of classes the net was not trained on. The weights
    are the same but every code changes, so the copy gets its own model id and shards of the two never mix.
    Accuracy and mAP measured for the original move to ``derived_from``; with ``val`` the copy's accuracy is
    measured.
    """
    if test_flip is None and test_shift is None and adapt_codes is None:
        raise HashindexError("derive: nothing to change (give test_flip=, test_shift= and/or adapt_codes=)")
    if type(adapt_sample) is not int or adapt_sample < 2:
        raise HashindexError(f"adapt_sample={adapt_sample!r}: expected 2 images or more")
    ckpt = read_checkpoint(model)
    if "train_state" in ckpt:
        raise HashindexError(f"model={model}: an unfinished checkpoint ({ckpt['epochs']} of "
                             f"{ckpt['epochs_planned']} epochs); finish it first")
    test_flip = ckpt.get("test_flip", False) if test_flip is None else test_flip
    test_shift = ckpt.get("test_shift", 0) if test_shift is None else test_shift
    most = max_test_shift(ckpt["input_size"])
    if type(test_shift) is not int or not 0 <= test_shift <= most:
        raise HashindexError(f"test_shift={test_shift!r}: expected 0 to {most} pixels "
                             f"(a quarter of the model's {ckpt['input_size']}-px input)")
    check_new_checkpoint(Path(out), overwrite)
    ckpt = {k: v for k, v in ckpt.items() if k != "path"}
    ckpt["derived_from"] = {"model": model, "model_id": ckpt["model_id"], "test_flip": ckpt.get("test_flip", False),
                            "test_shift": ckpt.get("test_shift", 0), "accuracy": ckpt["accuracy"], "map": ckpt["map"]}
    ckpt["test_flip"], ckpt["test_shift"] = test_flip, test_shift
    if adapt_codes is not None:
        ckpt["adapted_codes"] = _adapt(ckpt, adapt_codes, adapt_sample, device, progress)
    ckpt["model_id"] = compute_model_id(ckpt["state_dict"], ckpt["bits"], test_flip, test_shift)
    ckpt["accuracy"], ckpt["map"], ckpt["map_protocol"] = None, None, ""
    if val is not None:
        vsrc = open_source(val, "val", split="test")
        vsrc.remap_labels(ckpt["class_names"])
        x, y, _ = load_arrays(vsrc, ckpt["input_size"], ckpt["channels"], progress=progress)
        dev = resolve_device(device)
        net = net_from_checkpoint(ckpt).to(dev, memory_format=torch.channels_last)
        ckpt["accuracy"] = val_accuracy(net, x, y, dev, None)
    atomic_torch_save(ckpt, out)
    return {"out": out, "model_id": ckpt["model_id"], "test_flip": test_flip, "test_shift": test_shift,
            "accuracy": ckpt["accuracy"], "derived_from": ckpt["derived_from"]["model_id"],
            **({"adapted_codes": ckpt["adapted_codes"]} if adapt_codes is not None else {})}


def _adapt(ckpt: dict[str, Any], data: str, sample: int, device: str, progress: bool) -> dict[str, Any]:
    """Fit the code head to the collection ``data`` (its mid features, with the model's test views, ITQ) into
    ``ckpt``'s weights; returns what the checkpoint records of it."""
    if ckpt["bits"] > MID_DIM:  # ITQ's bits are principal directions of the mid feature: at most its dimensions
        raise HashindexError(f"adapt_codes={data}: a {ckpt['bits']}-bit model; a code head on the mid feature gives "
                             f"at most {MID_DIM} bits")
    source = open_source(data, "adapt_codes")
    picked = source.subset(sample)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("code_")}
    encoder = HashModel(net_from_checkpoint(ckpt), ckpt).to(device)
    batches = iter_batches(picked, ckpt["input_size"], ckpt["channels"], batch_size=256)
    mids = [encoder.encode_fields(images.numpy(), mid=True)["mid_features"]
            for images, _, _ in tqdm(batches, desc="adapt", unit="batch", total=-(-len(picked) // 256),
                                     disable=not progress) if images is not None]
    mids = np.concatenate(mids) if mids else np.zeros((0, 0), np.float32)
    if len(mids) < 2:
        raise HashindexError(f"adapt_codes={data}: {len(mids)} readable image(s); the code head needs 2 or more")
    head = fit("itq", mids, ckpt["bits"])
    ckpt["state_dict"]["code_mean"] = torch.from_numpy(np.ascontiguousarray(head.mean, np.float32))
    ckpt["state_dict"]["code_proj"] = torch.from_numpy(np.ascontiguousarray(head.projection, np.float32))
    return {"data": source.description, "images": len(mids), "feature": "mid", "method": "itq"}
