"""hashindex: image retrieval with learned binary hash codes.

Pipeline, one module (or small package) per stage, imports running down it:
data -> model -> checkpoint -> training / store -> extraction -> index -> provenance -> metrics -> evaluation ->
query / batch -> report / grids -> cli / serve.
The CLI (``hashindex ...``) and the service are thin layers over these functions.

This facade names the Python API; each name is imported on first use, so
``import hashindex`` (and ``hashindex --help``) does not load torch. No name
here is also a module of the package: ``hashindex.train`` is the function,
the stage is ``hashindex.training``.
"""

from __future__ import annotations

from typing import Any, Callable

__version__ = "0.1.0"
# The shipped model the demo and examples use: cifar10-48-ckd6-sam with test-time flip (taught by an ensemble of
# six nets, sharpness-aware steps; docs/RESULTS.md, "Training recipe"); the earlier models, "nin-cifar10-48-v3"
# (born-again), "nin-cifar10-48-v2" (100 epochs) and "nin-cifar10-48" (30 epochs), stay loadable by their names.
DEFAULT_MODEL = "nin-cifar10-48-v4"

_LAZY = {  # public name -> (module, attribute)
    "HashindexError": ("errors", "HashindexError"),
    "BusyError": ("errors", "BusyError"),
    "HashModel": ("model", "HashModel"),
    "load_model": ("checkpoint", "load_model"),
    "TrainConfig": ("training", "TrainConfig"),
    "ShardSet": ("store", "ShardSet"),
    "extract": ("extraction", "extract"),
    "Index": ("index", "Index"),
    "SearchResult": ("index", "SearchResult"),
    "build": ("index", "build"),
    "append": ("index", "append"),
    "remove": ("index", "remove"),
    "Only": ("index", "Only"),
    "restrict": ("index", "restrict"),
    "evaluate": ("evaluation", "evaluate"),
    "find_duplicates": ("duplicates", "find_duplicates"),
    "verify": ("verification", "verify"),
    "batch_search": ("batch", "batch_search"),
    "export_onnx": ("export", "export_onnx"),
    "read_results": ("batch", "read_results"),
}


def train(data: str, out: str, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log: Callable[[str], None] = print, **options: Any) -> dict:
    """Train the NIN hashing net; options are `TrainConfig` fields (bits, epochs, ...); ``log`` gets the
    progress lines (per epoch), as `extract`'s and `build`'s do."""
    from .training import TrainConfig, train as run

    return run(TrainConfig(data=data, out=out, **options), resume=resume, overwrite=overwrite, progress=progress,
               log=log)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hashindex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["DEFAULT_MODEL", "HashindexError", "HashModel", "Index", "Only", "SearchResult", "ShardSet", "TrainConfig",
           "append", "build", "evaluate", "export_onnx", "extract", "find_duplicates", "load_model", "remove",
           "restrict", "train", "__version__"]
