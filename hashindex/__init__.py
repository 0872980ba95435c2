"""hashindex: image retrieval with learned binary hash codes.

Pipeline, one module per stage:
data -> model -> train / extract -> store -> index -> search -> evaluate.
The CLI (``hashindex ...``) is a thin layer over these functions.

The stage modules ``train``, ``extract``, ``index`` and ``evaluate`` are
imported here first, so that the functions of the same names defined below
(the Python API) are what ``hashindex.train`` etc. refer to.
"""

__version__ = "0.1.0"

from . import evaluate as _evaluate_mod  # noqa: E402,F401
from . import extract as _extract_mod  # noqa: E402
from . import index as _index_mod  # noqa: E402
from . import train as _train_mod  # noqa: E402
from .errors import HashindexError  # noqa: E402
from .model import HashModel, load_model  # noqa: E402
from .search import Index, SearchResult  # noqa: E402
from .store import ShardSet  # noqa: E402
from .train import TrainConfig  # noqa: E402


def train(data: str, out: str, resume: bool = False, overwrite: bool = False,
          progress: bool = True, **options) -> dict:
    """Train the NIN hashing net; options are `TrainConfig` fields (bits, epochs, ...)."""
    return _train_mod.train(TrainConfig(data=data, out=out, **options), resume=resume,
                            overwrite=overwrite, progress=progress)


def extract(model, data, out, **options) -> dict:
    """Encode a collection into HDF5 shards; see `hashindex.extract.extract`."""
    return _extract_mod.extract(model, data, out, **options)


def build(shard_dir, out, **options) -> dict:
    """Build the Faiss indexes of a shard directory; see `hashindex.index.build`."""
    return _index_mod.build(shard_dir, out, **options)


def append(shard_dir, index_dir, **options) -> dict:
    """Add a shard directory's items to a built index; see `hashindex.index.append`."""
    return _index_mod.append(shard_dir, index_dir, **options)


def evaluate(index_dir, queries_dir, **options) -> dict:
    """Retrieval metrics of an index with labelled queries; see `hashindex.evaluate.evaluate`."""
    return _evaluate_mod.evaluate(index_dir, queries_dir, **options)


__all__ = ["HashindexError", "HashModel", "Index", "SearchResult", "ShardSet", "TrainConfig",
           "append", "build", "evaluate", "extract", "load_model", "train", "__version__"]
