"""The index directory, end to end: its layout, index kinds, build, append and remove, and the searcher.

Only this package opens an index's files (`layout`). `build` / `append` /
`remove` write an INDEX_DIR; `Index.load` opens one and `Index.in_memory` builds one
over arrays with the same code.
"""

from .appending import append
from .builder import build
from .removing import remove
from ..codes import pad_codes
from .kinds import (BINARY_KINDS, RERANK_KINDS, BinaryParts, default_params, make_binary_index,
                    make_rerank_index, new_float_store, padded_bytes)
from .layout import (BINARY_FILE, HEAD_FILE, INDEX_JSON, RERANK_FILE, TABLE_FILE, binary_files, describe_index,
                     moved_aside, read_index_meta, rerank_signal)
from .pool import DEFAULT_CANDIDATES, FINE_BUDGET, MISSING, TIE_CAP, default_pool
from .searcher import Index, SearchResult
from .subset import Only, SubsetIndex, restrict
from .tuning import choose_signal, head_for

__all__ = ["BINARY_FILE", "BINARY_KINDS", "DEFAULT_CANDIDATES", "FINE_BUDGET", "default_pool", "HEAD_FILE", "INDEX_JSON", "MISSING",
           "RERANK_FILE", "RERANK_KINDS", "TABLE_FILE", "TIE_CAP", "BinaryParts", "Index", "Only", "SearchResult",
           "SubsetIndex", "restrict",
           "append", "binary_files", "build", "choose_signal", "default_params", "describe_index", "head_for",
           "make_binary_index", "make_rerank_index", "moved_aside", "new_float_store", "pad_codes", "padded_bytes",
           "read_index_meta", "remove", "rerank_signal"]
