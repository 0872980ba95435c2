"""A model as one ONNX file: the encoder, runnable without torch or hashindex (ONNX Runtime from C++, Java,
C#, JavaScript or Python; an inference server; a phone).

The graph takes the net's input, uint8 (N, C, S, S) pixels as `hashindex.data.as_net_input` makes them (the
whole image squashed to S x S, bilinear; RGB, or greyscale for a one-channel model), normalises them itself,
averages the model's test views, and outputs, by name (`OUTPUTS`): the codes (N, ceil(K/8)) uint8 packed as
the index stores them (Faiss bit order), the latent activations they are thresholded from (N, K), the pooled
and mid features (N, 192 each: what the fine stage ranks by) and the class logits. It runs in float32 with each
batch norm folded into its convolution, so its outputs are `HashModel`'s in float32 (``bf16=False``) to float
rounding; a code differs only in a bit whose activation is within rounding of 0.5 (an AVX-512 machine's
default bf16 trunk is further off: 1-2 bits in 1.5 % of CIFAR-10 images, 4.6 % of flowers photos,
tools/bench_onnx.py). The checkpoint's metadata (model id, bits, classes, input size, views) travels in the
file's metadata_props with the SHA-256 of its graph, checked whenever hashindex reads it (`read_onnx_meta`).

Every export is run once by ONNX Runtime on check images and compared with the torch model before the file
is written, when onnxruntime is installed (``pip install 'hashindex[onnx]'``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import HashindexError
from .files import atomic_write_bytes
from .model import HashModel, fold_batch_norm, views_description

OUTPUTS = ("codes", "latent", "features", "mid_features", "logits")
META_PREFIX = "hashindex."  # metadata_props keys: hashindex.model_id, hashindex.bits, ...
CHECK_IMAGES = 64  # images each export is checked on: half noise, half smooth (a photo's low frequencies)
TOLERANCE = 1e-4  # the largest difference a float output may show between torch and ONNX Runtime (measured 5e-6)
INSTALL = "pip install 'hashindex[onnx]'"


class Encoder(nn.Module):
    """What the ONNX graph computes: uint8 images -> `OUTPUTS`, from a float32 copy of the net with its batch
    norms folded (the caller's model is left as it is)."""

    def __init__(self, model: HashModel):
        super().__init__()
        net = copy.deepcopy(model.net).cpu().float().eval()
        net.trunk = fold_batch_norm(net.trunk)
        self.net = net
        self.pad = -model.bits % 8  # zero bits up to a whole byte, as np.packbits pads
        self.register_buffer("place", 2 ** torch.arange(8, dtype=torch.int32))  # Faiss order: bit 0 the lowest

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latent, feature, logits, middle = self.net.code_outputs(images, mid=True)
        bits = nn.functional.pad((latent > 0.5).to(torch.int32), (0, self.pad))
        codes = (bits.unflatten(1, (-1, 8)) * self.place).sum(-1).to(torch.uint8)
        return codes, latent, feature, middle, logits


def onnx_meta(model: HashModel) -> dict[str, str]:
    """The checkpoint's facts a consumer of the file needs, as metadata_props strings."""
    from . import __version__

    facts = {
        "model_id": model.model_id, "bits": model.bits, "input_size": model.input_size,
        "channels": model.channels, "class_names": json.dumps(model.class_names),
        "views": views_description(model.test_flip, model.test_shift), "outputs": ",".join(OUTPUTS),
        # how logits become class probabilities: per-class sigmoids for a net trained on label sets, else softmax
        "posterior": "sigmoid" if model.meta.get("multi_label") else "softmax",
        "input": f"uint8 (N, {model.channels}, {model.input_size}, {model.input_size}) pixels, the whole image "
                 "squashed (bilinear), as hashindex.data.as_net_input makes them",
        "hashindex_version": __version__,
    }
    return {META_PREFIX + k: str(v) for k, v in facts.items()}


def check_images(model: HashModel, n: int = CHECK_IMAGES) -> np.ndarray:
    """Images to compare the two runtimes on (seeded): uniform noise, and noise upscaled from 4x4 (smooth
    regions, where a photo's activations lie)."""
    rng = np.random.default_rng(0)
    c, s = model.channels, model.input_size
    noise = rng.integers(0, 256, (n - n // 2, c, s, s), dtype=np.uint8)
    coarse = torch.from_numpy(rng.random((n // 2, c, 4, 4), dtype=np.float32) * 255)
    smooth = nn.functional.interpolate(coarse, size=(s, s), mode="bilinear").round().to(torch.uint8).numpy()
    return np.concatenate([noise, smooth])


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """How far ONNX Runtime's outputs are from torch's: the largest difference of each float output, and the
    code bits that differ, each of which must be one whose activation is within `TOLERANCE` of 0.5."""
    diffs = {name: float(np.abs(outputs[name] - reference[name]).max(initial=0.0)) for name in OUTPUTS[1:]}
    k = reference["latent"].shape[1]
    bits = np.unpackbits(outputs["codes"] ^ reference["codes"], axis=1, count=k, bitorder="little")
    near = np.abs(reference["latent"] - 0.5) <= TOLERANCE
    return {"images": len(reference["codes"]), "max_abs_diff": diffs, "bits_differing": int(bits.sum()),
            "ok": max(diffs.values()) <= TOLERANCE and bool(near[bits.astype(bool)].all())}


def reference_outputs(model: HashModel, images: np.ndarray) -> dict[str, np.ndarray]:
    """`OUTPUTS` of the torch model in float32 on the CPU (a copy: the caller's device and precision stay)."""
    with torch.inference_mode():
        out = Encoder(model)(torch.from_numpy(images))
    return {name: t.numpy() for name, t in zip(OUTPUTS, out)}


class OnnxEncoder:
    """An exported model run by ONNX Runtime on the CPU (one session, kept): images -> `OUTPUTS` by name."""

    def __init__(self, source: bytes | str | Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUTS, self.session.run(list(OUTPUTS), {"images": images})))


def export_bytes(model: HashModel, opset: int | None = None) -> bytes:
    """The ONNX file of ``model`` (weights inside; the batch size free), metadata set."""
    for package in ("onnx", "onnxscript"):  # what torch's exporter needs
        try:
            importlib.import_module(package)
        except ImportError:
            raise HashindexError(f"export needs the {package} package: {INSTALL}") from None
    encoder = Encoder(model).eval()
    example = torch.zeros((2, model.channels, model.input_size, model.input_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch")
    # traced with gradients on: under inference mode the net would fold its batch norms again mid-trace
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(encoder, (example,), None, dynamo=True, opset_version=opset,
                                    input_names=["images"], output_names=list(OUTPUTS),
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    proto = program.model_proto
    proto.doc_string = f"hashindex model {model.model_id}: {model.bits}-bit codes of images (see metadata_props)"
    for key, value in {**onnx_meta(model), META_PREFIX + "graph_sha256": graph_digest(proto)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def export_onnx(model: HashModel | str | Path, out: str | Path, *, opset: int | None = None, check: bool = True,
                overwrite: bool = False) -> dict[str, Any]:
    """Write ``model`` (loaded, a checkpoint file or a shipped name) as one ONNX file at ``out`` (atomically,
    after ONNX Runtime's outputs on `check_images` matched torch's; ``check=False``, or onnxruntime absent, skips
    that). Returns a summary: path, bytes, model id, outputs and the check's figures (None when not checked)."""
    if not isinstance(model, HashModel):
        from .checkpoint import load_model

        model = load_model(model)
    out = Path(out)
    if out.is_dir():
        raise HashindexError(f"out={out}: a folder (expected a file to write, such as {out / 'model.onnx'})")
    if out.exists() and not overwrite:
        raise HashindexError(f"out={out}: already exists (overwrite=True replaces it)")
    if not out.parent.is_dir():
        raise HashindexError(f"out={out}: {out.parent} is not a folder")
    data = export_bytes(model, opset)
    checked = None
    if check and _has_onnxruntime():
        images = check_images(model)
        checked = compare(OnnxEncoder(data)(images), reference_outputs(model, images))
        if not checked["ok"]:
            raise HashindexError(f"out={out}: not written, ONNX Runtime's outputs differ from the model's "
                                 f"({json.dumps(checked)})")
    atomic_write_bytes(out, data)
    return {"path": str(out), "bytes": len(data), "model_id": model.model_id, "bits": model.bits,
            "outputs": list(OUTPUTS), "check": checked}


def graph_digest(proto) -> str:
    """SHA-256 of a model's graph (its operators and weights; not the metadata that records it), serialized
    deterministically: recorded at export, checked on every read (`read_onnx_meta`)."""
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def read_onnx_meta(path: str | Path) -> dict[str, Any]:
    """The hashindex facts of an exported file (`onnx_meta`), typed back: bits, input size and channels as
    ints, class names as a list; its graph checked against the SHA-256 recorded at export (a changed or
    damaged file is refused)."""
    try:
        import onnx
    except ImportError:
        raise HashindexError(f"path={path}: reading an ONNX file needs the onnx package: {INSTALL}") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ... on a file that is not a model
        raise HashindexError(f"path={path}: not an ONNX model ({type(e).__name__})") from None
    facts = {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    if "model_id" not in facts:
        raise HashindexError(f"path={path}: an ONNX model, but not one hashindex exported (no {META_PREFIX}model_id)")
    if "graph_sha256" not in facts:
        raise HashindexError(f"path={path}: no SHA-256 of its graph recorded (exported by an earlier version; "
                             "export it again)")
    if facts["graph_sha256"] != graph_digest(proto):
        raise HashindexError(f"path={path}: its graph does not match the SHA-256 recorded when it was exported "
                             "(changed or damaged since; export it again)")
    try:
        for key in ("bits", "input_size", "channels"):
            facts[key] = int(facts[key])
        facts["class_names"] = json.loads(facts["class_names"])
        facts["outputs"] = facts["outputs"].split(",")
    except (KeyError, ValueError) as e:  # (metadata edited by hand: the digest covers the graph, not it)
        raise HashindexError(f"path={path}: its hashindex metadata is malformed ({type(e).__name__}: {e})") from None
    return facts


def describe_onnx(path: Path) -> dict[str, Any]:
    """`hashindex info` of an exported file: what it is, its size and its facts."""
    if not path.is_file():
        raise HashindexError(f"path={path}: no such file")
    return {"kind": "onnx model", "path": str(path), "bytes": path.stat().st_size, **read_onnx_meta(path)}


def _has_onnxruntime() -> bool:
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True
