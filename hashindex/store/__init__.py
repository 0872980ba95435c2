"""The shard store: HDF5 shards of codes, features, ids, labels and paths.

This is the contract between extraction and everything after it; the layout
is documented in docs/FORMAT.md. A shard directory holds ``shard-NNNNN.h5``
files and a ``manifest.json`` that lists only complete shards (with their
SHA-256), so a reader never sees a shard still being written.

Codes and features are stored contiguous and uncompressed: they do not
compress (codes are near-random bits) and a contiguous dataset can be
memory-mapped with numpy at its file offset, which is how large stores are
read without loading them.

The package is the one owner of the format: `manifest` (manifest.json, skipped.txt), `shards` (the shard
files, `ShardSet`), `arrays` (a shard directory from arrays; `hashindex info`'s summary).
"""

from .arrays import describe_shards, write_arrays
from .manifest import (FORMAT, FORMAT_VERSION, HEAD_FILE, MANIFEST, MANIFEST_SCHEMA, SKIPPED, manifest_problem,
                       new_manifest, save_manifest, shard_attrs, shard_name, source_spec, write_skipped)
from .shards import (FIELDS, ShardData, ShardSet, memmap_dataset, read_shard, shard_entry, targets, write_head,
                     write_shard)

__all__ = ["FIELDS", "FORMAT", "FORMAT_VERSION", "HEAD_FILE", "MANIFEST", "MANIFEST_SCHEMA", "SKIPPED", "ShardData",
           "ShardSet", "describe_shards", "manifest_problem", "memmap_dataset", "new_manifest", "read_shard",
           "save_manifest", "shard_attrs", "shard_entry", "shard_name", "source_spec", "targets", "write_arrays",
           "write_head", "write_shard", "write_skipped"]
