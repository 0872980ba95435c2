"""A small declarative checker for the JSON files hashindex writes (manifest.json, index.json).

Their readers used to index into them directly, so a hand-edited or damaged file raised a KeyError,
TypeError or AssertionError deep in a stage. Every reader now validates the whole document first
against the schema documented in docs/FORMAT.md and reports the first problem as one line naming
the key (``shards[1].rows: expected an integer >= 0, got "abc"``). Stdlib only: the owners of the
formats (store/manifest.py, index/layout.py) hold the schemas; this module only knows how to walk them.

Spec grammar: a type or tuple of types (``int`` never accepts ``bool``); a dict of keys to specs
(a key ending in ``?`` may be absent; keys not named are allowed, for forward compatibility);
``[spec]`` a list of items; ``Map(spec)`` a dict of names to values; ``Nullable(spec)``;
``Check(spec, predicate, "what it must be")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Check", "Map", "Nullable", "SchemaError", "validate", "plain_name", "nonneg", "positive", "hex_digest"]


class SchemaError(ValueError):
    """The first place where a document departs from its schema (``where``: a key path)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where or 'top level'}: {problem}")
        self.where, self.problem = where, problem


@dataclass(frozen=True)
class Map:
    values: Any


@dataclass(frozen=True)
class Nullable:
    spec: Any


@dataclass(frozen=True)
class Check:
    spec: Any
    ok: Callable[[Any], bool]
    what: str


_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
          dict: "an object", type(None): "null"}


def _describe(types: tuple[type, ...]) -> str:
    return " or ".join(_NAMES.get(t, t.__name__) for t in types)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else '"' + value + '"'
    return text if len(text) <= 40 else text[:37] + "..."


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not an integer count
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def validate(doc: Any, spec: Any, where: str = "") -> None:
    """Raise SchemaError at the first value of ``doc`` that does not match ``spec``."""
    if isinstance(spec, Nullable):
        if doc is not None:
            validate(doc, spec.spec, where)
    elif isinstance(spec, Check):
        try:
            validate(doc, spec.spec, where)
        except SchemaError as e:
            if e.where != where:
                raise
            raise SchemaError(where, f"expected {spec.what}, got {_show(doc)}") from None
        if not spec.ok(doc):
            raise SchemaError(where, f"expected {spec.what}, got {_show(doc)}")
    elif isinstance(spec, Map):
        validate(doc, dict, where)
        for key, value in doc.items():
            validate(value, spec.values, f"{where}.{key}" if where else str(key))
    elif isinstance(spec, dict):
        validate(doc, dict, where)
        for key, sub in spec.items():
            optional, name = key.endswith("?"), key.rstrip("?")
            path = f"{where}.{name}" if where else name
            if name not in doc:
                if not optional:
                    raise SchemaError(path, "missing")
                continue
            validate(doc[name], sub, path)
    elif isinstance(spec, list):
        validate(doc, list, where)
        for i, item in enumerate(doc):
            validate(item, spec[0], f"{where}[{i}]")
    else:
        types = spec if isinstance(spec, tuple) else (spec,)
        if not _is(doc, types):
            raise SchemaError(where, f"expected {_describe(types)}, got {_show(doc)}")


def _plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


nonneg = Check(int, lambda v: v >= 0, "an integer >= 0")
positive = Check(int, lambda v: v > 0, "an integer > 0")
plain_name = Check(str, _plain, "a file name inside the directory (no path)")
hex_digest = Check(str, lambda v: re.fullmatch(r"[0-9a-f]{64}", v) is not None, "a SHA-256 hex digest")
