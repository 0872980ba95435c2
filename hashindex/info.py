"""`hashindex info`: what a checkpoint, shard directory, index, batch results file or image collection holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .errors import HashindexError


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """Summary of a checkpoint: what it is, how it was trained, how good it is."""
    from .checkpoint import read_checkpoint
    from .model import views_description

    ckpt = read_checkpoint(path, arg="path")
    params = sum(t.numel() for t in ckpt["state_dict"].values())
    out = {
        "kind": "checkpoint", "path": ckpt["path"], "model_id": ckpt["model_id"],
        "arch": f"{ckpt['arch']} v{ckpt['arch_version']}" + (f", width {ckpt['width']}" if "width" in ckpt else ""),
        "bits": ckpt["bits"],
        "classes": len(ckpt["class_names"]), "class_names": ckpt["class_names"],
        "input": f"{ckpt['channels']}x{ckpt['input_size']}x{ckpt['input_size']} ({ckpt['resize']})",
        "train_data": ckpt["train_data"],
        "epochs": f"{ckpt['epochs']}/{ckpt['epochs_planned']}",
        "fine_tuned_from": _init_line(ckpt.get("init"), (ckpt.get("train_args") or {}).get("trunk_lr", 1.0)),
        "inference": views_description(ckpt.get("test_flip", False), ckpt.get("test_shift", 0)),
        "derived_from": _derived_line(ckpt.get("derived_from")),
        "codes": _codes_line(ckpt.get("adapted_codes")),
        "loss": _loss_line(ckpt.get("train_args") or {}, ckpt.get("multi_label", False)),
        "augmentation": _augmentation_line(ckpt.get("train_args") or {}),
        "weights": _weights_line(ckpt.get("train_args") or {}),
        "latent_margin": (ckpt.get("history") or [{}])[-1].get("latent_margin"),
        "finished": "train_state" not in ckpt,
        "accuracy": ckpt["accuracy"], "map": ckpt["map"], "map_protocol": ckpt.get("map_protocol", ""),
        "parameters": params, "torch_version": ckpt["torch_version"],
    }
    return out


def _codes_line(adapted: dict[str, Any] | None) -> str:
    """Where the codes come from: the latent layer, or a code head adapted to a collection (derive)."""
    if not adapted:
        return "the latent layer"
    return (f"a code head adapted to {adapted['data']}: {adapted['method'].upper()} on the {adapted['feature']} "
            f"feature of {adapted['images']} images")


CODE_TERMS = (("binary_weight", "binary"), ("balance_weight", "balance"), ("bit_balance_weight", "bit balance"))


def _loss_line(train_args: dict[str, Any], multi_label: bool = False) -> str:
    """The training loss: cross-entropy (label-smoothed, if it was; per class, binary, for label sets), its
    share against distillation from a teacher (if there was one), plus the code terms that had a weight."""
    smoothing = train_args.get("label_smoothing")
    line = "binary cross-entropy per class (label sets)" if multi_label else "cross-entropy"
    line = f"{line} (label smoothing {smoothing:g})" if smoothing else line
    if train_args.get("teacher"):
        w = train_args["distill_weight"]
        from .distill import teacher_names

        names = teacher_names(train_args["teacher"])
        source = names[0] if len(names) == 1 else f"the ensemble of {', '.join(names)} (logits averaged)"
        seen = ", seeing each augmented batch" if train_args.get("consistent_teacher") else ""
        line = (f"{1 - w:g} x {line} + {w:g} x distillation from {source} "
                f"(temperature {train_args['distill_temperature']:g}{seen})")
    terms = [f"{name} {train_args[key]:g}" for key, name in CODE_TERMS if train_args.get(key)]
    return line + (" + " + ", ".join(terms) if terms else "")


def _augmentation_line(train_args: dict[str, Any]) -> str:
    """What each training image went through: 'crop (4 px padding) + flip + TrivialAugment + cutout 16 + mixup 0.2'."""
    if not train_args:
        return ""
    crop = (f"resized crop ({train_args['crop_scale']:g}-1 of the area)" if train_args.get("crop_scale") else
            f"crop ({train_args['crop_pad']} px padding)" if train_args.get("crop_pad") else "")
    parts = [crop,
             "flip" if train_args.get("flip") else "", "TrivialAugment" if train_args.get("trivial_augment") else "",
             f"cutout {train_args['cutout']}" if train_args.get("cutout") else "",
             f"mixup {train_args['mixup']:g}" if train_args.get("mixup") else ""]
    return " + ".join(p for p in parts if p) or "none"


def _weights_line(train_args: dict[str, Any]) -> str:
    """'last SGD step', or the averaging of the last epochs (train --swa-epochs); ', SAM rho 0.05' where each step
    was sharpness-aware (train --sam)."""
    n, rho = train_args.get("swa_epochs"), train_args.get("sam")
    line = f"average of the last {n} epochs (SWA at lr {train_args['swa_lr']:g})" if n else "last SGD step"
    return line + (f", SAM rho {rho:g}" if rho else "")


def _init_line(init: dict[str, Any] | None, trunk_lr: float = 1.0) -> str | None:
    """'nin-cifar10-48 (model 19cc...; copied trunk, latent; trunk at 0.1 x lr)' for a fine-tuned checkpoint."""
    if not init:
        return None
    slower = f"; trunk at {trunk_lr:g} x lr" if trunk_lr != 1 else ""
    return f"{init['model']} (model {init['model_id']}; copied {', '.join(init['copied'])}{slower})"


def _derived_line(derived: dict[str, Any] | None) -> str | None:
    """'nin-cifar10-48 (model 19cc...; accuracy 0.8734 without test flip)' for a derived checkpoint."""
    if not derived:
        return None
    from .model import views_description

    views = views_description(derived["test_flip"], derived.get("test_shift", 0))
    acc = f"; accuracy {derived['accuracy']:.4f}, {views}" if derived.get("accuracy") is not None else ""
    return f"{derived['model']} (model {derived['model_id']}{acc})"


def _index_code_statistics(directory: Path, bits: int) -> dict[str, Any]:
    """Bucket sizes, entropy and bit balance of an index's codes (read from its table)."""
    from .index.layout import read_table
    from .codes import code_statistics

    return code_statistics(read_table(directory, ("codes",))["codes"], bits)


def _index_classes(directory: Path, names: list[str]) -> dict[str, int] | str:
    """Items per class name (what `query --only-class` takes); a multi-label item counts in each of its classes."""
    import numpy as np

    from .index.layout import label_set_classes, read_table

    if label_set_classes(directory):
        counts = read_table(directory, ("label_sets",))["label_sets"].astype(bool).sum(axis=0)
    else:
        labels = read_table(directory, ("labels",))["labels"]
        counts = np.bincount(labels[labels >= 0], minlength=len(names))
    found = {str(names[c]) if c < len(names) else str(c): int(n) for c, n in enumerate(counts) if n}
    return found or "none (unlabelled)"


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def describe_collection(spec: str) -> dict[str, Any]:
    """What extraction or training would read from a ``--data`` spec, before any of it is decoded: the items,
    the skips already known from their names (hidden files, non-image extensions, links), the labels, and the
    input channels training would default to (from up to 16 image headers)."""
    import numpy as np

    from .data import open_source, shared_folder_names
    from .targets import label_counts, set_counts

    source = open_source(spec, arg="path")
    listed = len(source)
    readable = np.setdiff1d(np.arange(listed), np.fromiter(source.unread, np.int64, len(source.unread)))
    labels = source.labels[readable]
    names = source.class_names
    reasons = Counter(reason for reason, _ in source.unread.values())
    return {
        "kind": "images", "source": source.description, "spec": source.spec, "items": listed,
        "images": len(readable), "skipped_by_name": dict(sorted(reasons.items())),
        "labelled": int((labels >= 0).sum()), "classes": len(names) or len(np.unique(labels[labels >= 0])),
        "labels": (set_counts(source.label_sets[readable], names) if source.multi_label
                   else label_counts(labels, names)),
        **({"multi_label": True} if source.multi_label else {}),
        # classes several folders share ('sub' of cats/sub and dogs/sub): `DIR#labels=top|path` names them apart
        **({"shared_folder_names": shared} if (shared := shared_folder_names(source)) else {}),
        # training's default input channels: 1 where the images are grey (their headers, up to 16 of them)
        "channels": 1 if source.is_greyscale() else 3,
        "decoding": "not tried here: extract and train count the files that fail to decode",
    }


def _names_a_collection(path: Path) -> bool:
    """A file that is an image collection (a tar, a list, SVHN's .mat, one image) rather than a checkpoint."""
    from .data.members import is_image_name
    from .data.spec import names_a_collection

    return names_a_collection(path) or is_image_name(path.name)


def _refuse_a_part(p: Path) -> None:
    """A file of a shard directory or an index (a shard, binary.faiss, the table) is described with the whole:
    a one-line error naming the directory to give instead (rather than "not a checkpoint")."""
    from .index import INDEX_JSON
    from .store import MANIFEST

    for marker, what in ((MANIFEST, "shard directory"), (INDEX_JSON, "index")):
        if p.is_file() and (p.parent / marker).is_file():
            raise HashindexError(f"PATH {p}: a file of the {what} {p.parent}: run hashindex info {p.parent}")


def describe(path: str | Path) -> dict[str, Any]:
    """Dispatch on what PATH is: a shard directory, an index, a batch results file, a checkpoint (file or shipped
    name), or else an image collection as ``--data`` reads it (folder, tar, list, brace pattern, ``DIR:test``)."""
    from .batch import describe_results, is_results_file

    p = Path(path)
    if is_results_file(p):
        return describe_results(p)
    if p.is_dir():
        from .index import INDEX_JSON
        from .store import MANIFEST

        if (p / MANIFEST).exists():
            from .store import describe_shards

            return describe_shards(p)
        if (p / INDEX_JSON).exists():
            from .index import describe_index, read_index_meta

            meta = read_index_meta(p)  # once, for the three summaries
            return {**describe_index(p, meta), "classes": _index_classes(p, meta.get("class_names", [])),
                    "codes": _index_code_statistics(p, meta["bits"])}
        return describe_collection(str(path))
    if p.suffix.lower() == ".onnx":
        from .export import describe_onnx

        return describe_onnx(p)
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:  # (a model.pt kept beside an index is still described)
        _refuse_a_part(p)
    from .checkpoint import shipped_hint, shipped_path

    if p.suffix.lower() in CHECKPOINT_SUFFIXES or shipped_path(str(path)) is not None or (
            p.is_file() and not _names_a_collection(p)):
        return describe_checkpoint(path)
    if not p.exists() and not p.suffix and not any(c in str(path) for c in "{:#"):
        from .index import moved_aside, read_index_meta

        if moved_aside(p) is not None:
            read_index_meta(p, "path")  # an error saying where the index a killed write moved aside waits
        raise HashindexError(f"path={path}: no such file or directory, nor a shipped model{shipped_hint()}")
    return describe_collection(str(path))
