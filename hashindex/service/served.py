"""What both servers serve: an opened index and the model that encodes its image queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..index import Index
from .params import upload_array


class Served:
    """An index opened once, its model (given, or found by the index's model id) checked against it."""

    def __init__(self, index_dir: str | Path, model: str | None = None, device: str = "cpu",
                 name: str | None = None):
        from ..model import find_model_for, load_model

        self.opened_with = (str(index_dir), model, device)  # what a reload opens again
        self.index = Index.load(index_dir)
        self.model = load_model(model if model else find_model_for(self.index.model_id), device)
        self.index.check_model(self.model.model_id)
        self.name = name or Path(index_dir).name

    def info(self) -> dict[str, Any]:
        """What is served: GET / and /indexes/NAME."""
        binary = self.index.meta["binary"]
        tuning = binary.get("tuning")
        return {"name": self.name, "index": str(self.index.dir), "items": self.index.count, "bits": self.index.bits,
                "model_id": self.index.model_id, "binary": binary["kind"],
                "coarse_recall_at_10": tuning["recall"] if tuning else (1.0 if binary["kind"] == "flat" else None),
                "rerank": self.index.meta["rerank"]["kind"], "signal": self.index.signal,
                "class_names": self.index.class_names}

    def image_array(self, data: bytes) -> np.ndarray:
        """An upload's bytes as the net's input (`params.upload_array`: pixel cap, one-line 400s)."""
        return upload_array(data, self.model.input_size, self.model.channels)
