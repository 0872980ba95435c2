"""Which layer of a trained trunk retrieves best on a collection of other classes (zero-shot)?

For each ReLU of the trunk, its output averaged over the image (global average pooling, as the last layer
is) is a feature; each image of a labelled collection queries all the others by cosine similarity
(leave-one-out mAP@all, relevance = same label). Beside them: the same after a square root (a common
normalisation of pooled activations), all layers concatenated (each L2-normalised), and a 4x4x4 RGB colour
histogram as a floor that knows nothing of any class. Measures how far a net trained on CIFAR-10's classes
carries to a user's own photos before any fine-tuning (docs/RESULTS.md, "Zero-shot: which layer").

    python tools/layer_features.py --data ../shared/data/flowers/test.tar --size 32 64
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from hashindex.checkpoint import load_model
from hashindex.data import load_arrays, open_source
from hashindex.metrics import average_precision


def layer_features(net: torch.nn.Module, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Globally average-pooled output of every ReLU of ``net.trunk`` (named 'layerI/C', I its position in
    the trunk, C its channels) and the trunk's own output ('output'), float32 (N, C) each."""
    out: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            h = net.normalize(torch.from_numpy(images[s:s + batch]))
            for i, layer in enumerate(net.trunk):
                h = layer(h)
                if isinstance(layer, torch.nn.ReLU):
                    out.setdefault(f"layer{i}/{h.shape[1]}", []).append(h.mean((2, 3)).numpy())
            out.setdefault("output", []).append(h.numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def colour_histogram(images: np.ndarray, bins: int = 4) -> np.ndarray:
    """(N, bins**3) counts of RGB colours quantised to ``bins`` levels per channel (3-channel images)."""
    q = (images.astype(np.int64) * bins) // 256
    cells = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    return np.stack([np.bincount(c.ravel(), minlength=bins ** 3) for c in cells]).astype(np.float32)


def l2_normalised(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def leave_one_out_map(features: np.ndarray, labels: np.ndarray, chunk: int = 512) -> float:
    """mAP@all of each item querying all the others by cosine similarity (ties in collection order)."""
    f = l2_normalised(features)
    aps = []
    for s in range(0, len(f), chunk):
        sim = f[s:s + chunk] @ f.T
        sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf  # itself: ranked last, then dropped
        order = np.argsort(-sim, axis=1, kind="stable")[:, :-1]
        aps.append(average_precision(labels[order] == labels[s:s + chunk, None]))
    return float(np.concatenate(aps).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nin-cifar10-48-v3")
    ap.add_argument("--data", required=True, help="labelled images (any --data form of hashindex)")
    ap.add_argument("--size", type=int, nargs="+", default=[32], help="input sides to measure at")
    ap.add_argument("--limit", type=int, default=5000, help="at most this many images (evenly spread)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hm = load_model(args.model, "cpu")
    source = open_source(args.data)
    rows = []
    for size in args.size:
        images, labels, _ = load_arrays(source, size, hm.channels, progress=False)
        keep = labels >= 0
        step = max(1, int(keep.sum()) // args.limit)
        images, labels = images[keep][::step], labels[keep][::step]
        feats = layer_features(hm.net, images)
        named = dict(feats)
        named["layers concatenated"] = np.concatenate([l2_normalised(f) for n, f in feats.items()
                                                       if n != "output"], 1)
        if images.shape[1] == 3:
            named["colour histogram 4x4x4"] = colour_histogram(images)
        for name, f in named.items():
            rows.append({"size": size, "feature": name, "dim": f.shape[1], "images": len(labels),
                         "map": leave_one_out_map(f, labels),
                         "map_sqrt": leave_one_out_map(np.sqrt(np.maximum(f, 0)), labels)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"model {hm.model_id}, {args.data}: leave-one-out mAP@all by cosine (square root of the feature beside)")
    print("| size | feature | dim | mAP@all | sqrt |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['feature']} | {r['dim']} | {r['map']:.4f} | {r['map_sqrt']:.4f} |")


if __name__ == "__main__":
    main()
