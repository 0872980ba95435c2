"""`hashindex info`: what a checkpoint, shard directory or index holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import HashindexError


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """Summary of a checkpoint: what it is, how it was trained, how good it is."""
    from .model import read_checkpoint, views_description

    ckpt = read_checkpoint(path)
    params = sum(t.numel() for t in ckpt["state_dict"].values())
    out = {
        "kind": "checkpoint", "path": ckpt["path"], "model_id": ckpt["model_id"],
        "arch": f"{ckpt['arch']} v{ckpt['arch_version']}", "bits": ckpt["bits"],
        "classes": len(ckpt["class_names"]), "class_names": ckpt["class_names"],
        "input": f"{ckpt['channels']}x{ckpt['input_size']}x{ckpt['input_size']} ({ckpt['resize']})",
        "train_data": ckpt["train_data"],
        "epochs": f"{ckpt['epochs']}/{ckpt['epochs_planned']}",
        "fine_tuned_from": _init_line(ckpt.get("init")),
        "inference": views_description(ckpt.get("test_flip", False), ckpt.get("test_shift", 0)),
        "derived_from": _derived_line(ckpt.get("derived_from")),
        "loss": _loss_line(ckpt.get("train_args") or {}),
        "weights": _weights_line(ckpt.get("train_args") or {}),
        "latent_margin": (ckpt.get("history") or [{}])[-1].get("latent_margin"),
        "finished": "train_state" not in ckpt,
        "accuracy": ckpt["accuracy"], "map": ckpt["map"], "map_protocol": ckpt.get("map_protocol", ""),
        "parameters": params, "torch_version": ckpt["torch_version"],
    }
    return out


CODE_TERMS = (("binary_weight", "binary"), ("balance_weight", "balance"), ("bit_balance_weight", "bit balance"))


def _loss_line(train_args: dict[str, Any]) -> str:
    """The training loss: cross-entropy (label-smoothed, if it was), its share against distillation from a
    teacher (if there was one), plus the code terms that had a weight."""
    smoothing = train_args.get("label_smoothing")
    line = f"cross-entropy (label smoothing {smoothing:g})" if smoothing else "cross-entropy"
    if train_args.get("teacher"):
        w = train_args["distill_weight"]
        line = (f"{1 - w:g} x {line} + {w:g} x distillation from {train_args['teacher']} "
                f"(temperature {train_args['distill_temperature']:g})")
    terms = [f"{name} {train_args[key]:g}" for key, name in CODE_TERMS if train_args.get(key)]
    return line + (" + " + ", ".join(terms) if terms else "")


def _weights_line(train_args: dict[str, Any]) -> str:
    """'last SGD step', or the averaging of the last epochs (train --swa-epochs)."""
    n = train_args.get("swa_epochs")
    return f"average of the last {n} epochs (SWA at lr {train_args['swa_lr']:g})" if n else "last SGD step"


def _init_line(init: dict[str, Any] | None) -> str | None:
    """'nin-cifar10-48 (model 19cc..., copied trunk, latent)' for a fine-tuned checkpoint."""
    if not init:
        return None
    return f"{init['model']} (model {init['model_id']}; copied {', '.join(init['copied'])})"


def _derived_line(derived: dict[str, Any] | None) -> str | None:
    """'nin-cifar10-48 (model 19cc...; accuracy 0.8734 without test flip)' for a derived checkpoint."""
    if not derived:
        return None
    from .model import views_description

    views = views_description(derived["test_flip"], derived.get("test_shift", 0))
    acc = f"; accuracy {derived['accuracy']:.4f}, {views}" if derived.get("accuracy") is not None else ""
    return f"{derived['model']} (model {derived['model_id']}{acc})"


def _index_code_statistics(directory: Path) -> dict[str, Any]:
    """Bucket sizes, entropy and bit balance of an index's codes (read from its table)."""
    from .index.layout import read_index_meta, read_table
    from .metrics import code_statistics

    return code_statistics(read_table(directory, ("codes",))["codes"], read_index_meta(directory)["bits"])


def describe(path: str | Path) -> dict[str, Any]:
    """Dispatch on what PATH is."""
    p = Path(path)
    if p.is_dir():
        from .index import INDEX_JSON
        from .store import MANIFEST

        if (p / MANIFEST).exists():
            from .store import describe_shards

            return describe_shards(p)
        if (p / INDEX_JSON).exists():
            from .index import describe_index

            return describe_index(p) | {"codes": _index_code_statistics(p)}
        raise HashindexError(f"{p}: a folder, but neither a shard directory (manifest.json) nor an index (index.json)")
    return describe_checkpoint(path)
