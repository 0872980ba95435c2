"""hashindex: image retrieval with learned binary hash codes.

Pipeline, one module per stage:
data -> model -> train / extract -> store -> index -> search -> evaluate.
The CLI (``hashindex ...``) is a thin layer over these functions.
"""

__version__ = "0.1.0"

from .errors import HashindexError  # noqa: E402
from .model import HashModel, load_model  # noqa: E402
from .store import ShardSet  # noqa: E402
from .train import TrainConfig  # noqa: E402


def train(data: str, out: str, resume: bool = False, overwrite: bool = False,
          progress: bool = True, **options) -> dict:
    """Train the NIN hashing net; options are `TrainConfig` fields (bits, epochs, ...)."""
    from .train import train as _train

    return _train(TrainConfig(data=data, out=out, **options), resume=resume,
                  overwrite=overwrite, progress=progress)


def extract(model, data, out, **options) -> dict:
    """Encode a collection into HDF5 shards; see `hashindex.extract.extract`."""
    from .extract import extract as _extract

    return _extract(model, data, out, **options)


__all__ = ["extract", "HashindexError", "HashModel", "TrainConfig", "load_model", "train", "ShardSet", "__version__"]
