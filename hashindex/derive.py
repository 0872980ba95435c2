"""`hashindex derive`: a copy of a finished checkpoint with other inference options (test views).

The weights stay; every code changes, so the copy gets its own model id and
shards of the two never mix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_torch_save, compute_model_id, net_from_checkpoint, read_checkpoint
from .data import load_arrays, open_source
from .devices import resolve_device
from .errors import HashindexError
from .model import max_test_shift
from .training import check_new_checkpoint, val_accuracy


def derive(model: str, out: str, test_flip: bool | None = None, val: str | None = None, overwrite: bool = False,
           device: str = "cpu", progress: bool = True, test_shift: int | None = None) -> dict[str, Any]:
    """Write a copy of a finished checkpoint with its inference options (test views) changed.

    ``test_flip``, ``test_shift``: None keeps the model's. The weights are the
    same but every code changes, so the copy gets its own model id and shards of
    the two never mix. Accuracy and mAP measured for the original move to
    ``derived_from``; with ``val`` the copy's accuracy is measured.
    """
    if test_flip is None and test_shift is None:
        raise HashindexError("derive: nothing to change (give test_flip= and/or test_shift=)")
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
            "accuracy": ckpt["accuracy"], "derived_from": ckpt["derived_from"]["model_id"]}
