"""The `hashindex` command line: a thin click layer over the Python API.

`group` holds the click group and turns library errors into one-line messages
in flags; the commands live in `build_cmds` (train, extract, build), `search_cmds`
(query, verify, eval, demo, info), `serve_cmds` (serve) and `collection_cmds` (duplicates, sync). Importing
this package registers them all; no stage is imported until a command runs.
"""

from __future__ import annotations

from . import build_cmds, collection_cmds, search_cmds, serve_cmds  # noqa: F401  (registers the commands)
from .group import EXIT_USAGE, as_flags, cli

__all__ = ["EXIT_USAGE", "as_flags", "cli", "main"]


def main() -> None:
    cli(prog_name="hashindex")


if __name__ == "__main__":
    main()
