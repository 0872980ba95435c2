"""The click group of the `hashindex` command line, and how library errors become its one-line messages.

User mistakes raise HashindexError, worded in Python terms; `as_flags` rewrites
them in the command line's words and the group prints one line
("hashindex: error: ...") with exit status 2. Anything else is a bug and keeps
its traceback, except what the file system says of a path (a full disk, a folder that cannot be made or
written): one line naming the path, since nothing already written is lost.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys

import click

from ..errors import HashindexError

EXIT_USAGE = 2
# what the file system says of a path, in words (the system's own are terse: "File exists" for a file that
# stands where an output folder is to be made)
PATH_ERRORS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system", errno.ENOENT: "no such file or folder",
               errno.ENOTDIR: "a file stands where a folder is needed",
               errno.EEXIST: "a file stands where a folder is needed",
               errno.EISDIR: "is a folder, where a file is needed", errno.ENAMETOOLONG: "name too long"}


# A Python name and '=' at the start of a word; not after ':' or '#', where it is part of a user's own value
# (``--data x.tar:limit=5`` stays as typed in the error about it).
_ARG = re.compile(r"(?<![\w./=:#-])([a-z][a-z0-9_]*)=(True\b|None\b|(?=[\s,;)]|$))?")


def _long(option: click.Option) -> str:
    """An option's long spelling (``--k`` for ``-k/--k``): the one its error messages use."""
    return max(option.opts, key=len)


def as_flags(message: str, command: click.Command | None) -> str:
    """A library message in Python terms, in the command line's words: ``k=5`` -> ``--k 5``, ``shard_dir=x`` ->
    ``SHARD_DIR x``, ``overwrite=True`` (or a bare ``val=``) -> ``--overwrite``. The running command's parameters first, then any
    command's options (flags mean the same everywhere); other names stay as they are."""
    spelled = {p.name: _long(p) for c in (cli, *cli.commands.values()) for p in c.params if isinstance(p, click.Option)}
    own = [p for p in command.params if isinstance(p, click.Argument)] if command is not None else []
    if [p.name for p in own] == ["path"]:  # info / verify PATH: what other commands call SHARD_DIR or INDEX_DIR
        spelled |= {p.name: own[0].human_readable_name for c in cli.commands.values() for p in c.params
                    if isinstance(p, click.Argument)}
    if command is not None:  # the running command's own words first (its positional arguments too)
        spelled |= {p.name: (_long(p) if isinstance(p, click.Option) else p.human_readable_name)
                    for p in command.params}

    def flag(m: re.Match) -> str:
        name, bare = m.group(1), m.group(2)
        if name not in spelled:
            return m.group(0)
        return spelled[name] if bare is not None else spelled[name] + " "

    return _ARG.sub(flag, message)


class _Group(click.Group):
    """Click group that turns HashindexError (worded in Python terms) into a one-line message in flags."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HashindexError as e:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"hashindex: error: {as_flags(str(e), command)}", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("hashindex: interrupted; rerun the same command to resume", err=True)
            ctx.exit(130)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                where = f" writing {e.filename}" if e.filename else ""
                if e.strerror and e.strerror != os.strerror(e.errno):  # what was needed, where a writer knows it
                    where += f" ({e.strerror})"
                click.echo(f"hashindex: error: no space left on the device{where}; nothing already written is "
                           "lost: free some space and rerun the same command to resume", err=True)
            elif e.errno in PATH_ERRORS and e.filename:
                said = "already exists" if e.errno == errno.EEXIST and os.path.isdir(e.filename) else \
                    PATH_ERRORS[e.errno]
                what = f"moving {e.filename} to {e.filename2}" if e.filename2 else e.filename
                click.echo(f"hashindex: error: {what}: {said}", err=True)
            else:
                raise
            ctx.exit(EXIT_USAGE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hashindex")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or warnings (bars are drawn only on a terminal: "
              "a job's log keeps its summary lines).")
@click.option("--threads", type=click.IntRange(min=1), envvar="HASHINDEX_THREADS", show_envvar=True,
              help="CPU threads for torch and Faiss [default: one per core]. On cores another job keeps busy, "
                   "fewer is faster (docs/RESULTS.md 'Threads on a shared machine').")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, threads: int | None) -> None:
    """Image retrieval with learned binary hash codes (NIN + latent hash layer).

    \b
    Pipeline:  train -> extract -> build -> query / eval
    Example:
      hashindex train --data train.tar --val test.tar --bits 48 --out m.pt
      hashindex info m.pt
    """
    from ..runtime import keep_freed_memory, set_threads

    # bars only on a terminal: a log keeps every redraw (a 6-epoch fine-tune on 9,000 images, piped: 44 KB in its
    # last 12 lines, the epochs' bars around their summary lines)
    ctx.obj = {"progress": not quiet and sys.stderr.isatty()}
    if threads is not None:
        set_threads(threads)
    # a batch job: its peak heap is kept for reuse until it exits (serve's batcher thread would not gain)
    if ctx.invoked_subcommand != "serve":
        keep_freed_memory()
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING,
                        format="hashindex: warning: %(message)s", stream=sys.stderr)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def file_lines(path: str | None, flag: str) -> list[str]:
    """The non-empty lines of a file given to ``flag`` ('-': standard input), or none."""
    if path is None:
        return []
    try:
        text = click.get_text_stream("stdin").read() if path == "-" else open(path, encoding="utf-8-sig").read()
    except (OSError, UnicodeDecodeError) as e:
        raise HashindexError(f"{flag} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    return [line for line in text.splitlines() if line.strip()]


def file_ids(path: str | None, flag: str) -> list[int]:
    """The ids of a file given to ``flag``, one integer per line ('-': standard input), or none."""
    ids = []
    for line in file_lines(path, flag):
        try:
            ids.append(int(line))
        except ValueError:
            raise HashindexError(f"{flag} {path}: {line!r} is not an id (one integer per line)") from None
    return ids
