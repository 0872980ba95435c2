"""The checkpoint file (model.pt): its one reader and writer.

A checkpoint is one ``torch.save`` file holding the weights and everything needed to use them (see
`CHECKPOINT_KEYS`); its ``model_id`` is a hash of the architecture and weights, which shards and indexes record so
that codes from different models are never mixed. Read with ``weights_only=True`` (a checkpoint cannot run code)
and checked against its id on every read. Shipped models live in hashindex/weights/ and are named by file stem.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import HashindexError
from .files import atomic_path
from .model import ARCH, ARCH_VERSION, HashModel, NINHash, max_test_shift

if TYPE_CHECKING:
    from .signals import Head

FORMAT = "hashindex-checkpoint"
WEIGHTS_DIR = Path(__file__).parent / "weights"

CHECKPOINT_KEYS = (
    "format", "format_version", "arch", "arch_version", "model_id", "bits", "num_classes",
    "class_names", "input_size", "channels", "mean", "std", "resize", "train_data",
    "epochs", "epochs_planned", "accuracy", "map", "torch_version", "hashindex_version",
    "train_args", "history", "init", "test_flip", "test_shift", "derived_from", "state_dict",
    "width",
)


def compute_model_id(state_dict: dict[str, torch.Tensor], bits: int, test_flip: bool = False,
                     test_shift: int = 0) -> str:
    """Content hash of architecture + weights (+ the test views, which change every code): the same
    weights and options give the same id. Without test views the id is what it was before the options."""
    views = ("/test_flip" if test_flip else "") + (f"/test_shift{test_shift}" if test_shift else "")
    h = hashlib.sha256(f"{ARCH}/{ARCH_VERSION}/{bits}{views}".encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def build_meta(net: NINHash, **info: Any) -> dict[str, Any]:
    """Checkpoint dict for a network (weights moved to CPU, model id computed)."""
    from . import __version__

    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
             for k, v in net.state_dict().items()}
    meta = {
        "format": FORMAT, "format_version": 1, "arch": ARCH, "arch_version": ARCH_VERSION,
        "model_id": compute_model_id(state, net.bits, net.test_flip, net.test_shift), "bits": net.bits,
        "test_flip": net.test_flip, "test_shift": net.test_shift,
        **({"width": net.width} if net.width != 1 else {}),  # absent: 1, as every checkpoint before widths
        "num_classes": net.num_classes, "channels": net.channels,
        "mean": (net.mean.flatten() / 255).tolist(), "std": (net.std.flatten() / 255).tolist(),
        "resize": "squash", "torch_version": str(torch.__version__), "hashindex_version": __version__,
        "state_dict": state,
    }
    meta.update(info)
    return meta


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file beside path, then rename it into place.

    Through a Python file object: given a path, torch's own writer reports a full disk as RuntimeError
    ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598", measured writing to /dev/full);
    through Python it is OSError(ENOSPC), which the CLI says in one line (and a training run keeps its last
    checkpoint)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def resolve_model_path(name_or_path: str | Path, arg: str = "model") -> Path:
    """A checkpoint path, or the name of a model shipped in hashindex/weights/."""
    p = Path(name_or_path)
    if p.is_dir():
        raise HashindexError(f"{arg}={name_or_path}: a directory; expected a checkpoint file (hashindex train writes "
                             f"one) or a shipped model's name{shipped_hint()}")
    if p.exists():
        return p
    shipped = shipped_path(str(name_or_path))
    if shipped is not None:
        return shipped
    raise HashindexError(f"{arg}={name_or_path}: no such checkpoint file{shipped_hint()}")


def shipped_path(name: str) -> Path | None:
    """The checkpoint of the model shipped as ``name`` in hashindex/weights/, or None."""
    shipped = WEIGHTS_DIR / f"{name}.pt"
    return shipped if shipped.is_file() else None


def shipped_hint() -> str:
    """' (shipped models: a, b)' for an error message, or '' when none is installed."""
    names = sorted(f.stem for f in WEIGHTS_DIR.glob("*.pt")) if WEIGHTS_DIR.exists() else []
    return f" (shipped models: {', '.join(names)})" if names else ""


def find_model_for(model_id: str, recorded: str | None = None) -> Path:
    """The checkpoint whose model id is ``model_id``, for queries without --model: the file the shards were
    extracted with where ``recorded`` (their manifest's or the index's `model`) still holds it, else a shipped
    one. A recorded file moved, replaced or damaged since is passed over (loading reads weights only)."""
    try:
        if recorded and Path(recorded).is_file() and read_checkpoint(recorded)["model_id"] == model_id:
            return Path(recorded)
    except (HashindexError, OSError, ValueError):  # (ValueError: a path with a NUL byte, as an edited file may hold)
        pass
    for path in sorted(WEIGHTS_DIR.glob("*.pt")) if WEIGHTS_DIR.exists() else []:
        if read_checkpoint(path)["model_id"] == model_id:
            return path
    raise HashindexError(f"model=None: needed to encode images (no shipped model has id {model_id}; give the "
                         "checkpoint the index's shards were extracted with)")


def saved_by_torch(path: Path) -> bool:
    """The file starts as torch.save's files do: a zip archive, or a legacy pickle (protocol 2+)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise HashindexError(f"{path}: cannot read ({e.strerror})") from None
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def read_checkpoint(path: str | Path, arg: str = "model") -> dict[str, Any]:
    """Load and validate a checkpoint dict; one-line HashindexError (naming arg) if it is not one."""
    path = resolve_model_path(path, arg)
    if not saved_by_torch(path):
        if path.suffix.lower() == ".onnx":  # `hashindex export`'s output: for other runtimes, not for hashindex
            raise HashindexError(f"{path}: an exported ONNX model; hashindex encodes with the checkpoint it was "
                                 f"exported from (`hashindex info {path}` names its model id)")
        raise HashindexError(f"{path}: not a hashindex checkpoint (not a file torch.save writes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoint files
        first = str(e).strip().splitlines()[0].split(". ")[0][:120] if str(e).strip() else type(e).__name__
        if "central directory" in first:  # a zip whose end is missing: torch.save's file, cut short
            first = "the file ends early: a copy cut short?"
        raise HashindexError(f"{path}: not a hashindex checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise HashindexError(f"{path}: not a hashindex checkpoint (no '{FORMAT}' header)")
    if ckpt.get("arch") != ARCH or ckpt.get("arch_version") != ARCH_VERSION:
        raise HashindexError(
            f"{path}: architecture {ckpt.get('arch')} v{ckpt.get('arch_version')} is not supported "
            f"(this hashindex reads {ARCH} v{ARCH_VERSION})"
        )
    if not isinstance(ckpt.get("test_flip", False), bool):
        raise HashindexError(f"{path}: test_flip is {ckpt['test_flip']!r}, expected true or false")
    shift, most = ckpt.get("test_shift", 0), max_test_shift(ckpt["input_size"])
    if type(shift) is not int or not 0 <= shift <= most:
        raise HashindexError(f"{path}: test_shift is {shift!r}, expected 0 to {most} pixels")
    if compute_model_id(ckpt["state_dict"], ckpt["bits"], ckpt.get("test_flip", False), shift) != ckpt["model_id"]:
        raise HashindexError(f"{path}: weights do not match the recorded model id (corrupt checkpoint)")
    ckpt["path"] = str(path)
    return ckpt


def checkpoint_head(ckpt: dict[str, Any]) -> "Head":
    """The layers above the pooled feature (latent, classifier) as numpy arrays, for the fine stage."""
    from .signals import Head

    sd = ckpt["state_dict"]
    return Head(*(sd[k].detach().float().cpu().numpy() for k in
                  ("latent.weight", "latent.bias", "classifier.weight", "classifier.bias")),
                multi_label=bool(ckpt.get("multi_label", False)), accuracy=validation_accuracy(ckpt),
                adapted_codes="code_proj" in sd)


def validation_accuracy(ckpt: dict[str, Any]) -> float | None:
    """The model's validation accuracy: its own, or (a `derive` copy not measured again) its original's,
    which differs by the test views' few tenths of a point; None when never measured."""
    for value in (ckpt.get("accuracy"), (ckpt.get("derived_from") or {}).get("accuracy")):
        if isinstance(value, (int, float)) and 0 < value <= 1:
            return float(value)
    return None


def net_from_checkpoint(ckpt: dict[str, Any]) -> NINHash:
    net = NINHash(ckpt["bits"], ckpt["num_classes"], ckpt["channels"], ckpt["mean"], ckpt["std"],
                  test_flip=ckpt.get("test_flip", False), test_shift=ckpt.get("test_shift", 0),
                  adapted_codes="code_proj" in ckpt["state_dict"], width=ckpt.get("width", 1))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def load_model(path: str | Path, device: str = "cpu", bf16: bool | None = None, arg: str = "model") -> HashModel:
    """Load a checkpoint (path or shipped name) ready to encode images (bf16: see uses_bf16; arg: what
    errors call it)."""
    ckpt = read_checkpoint(path, arg)
    net = net_from_checkpoint(ckpt)
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")}
    return HashModel(net, meta, bf16=bf16).to(device)
