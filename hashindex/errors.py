"""The one exception type for user mistakes.

Anything a user can cause (a wrong path, a file that is not a checkpoint, a
bad argument) raises `HashindexError` with a one-line message naming the file
or argument and what was expected, in Python terms: ``k=0: expected a
positive number of results``, ``shard_dir=/x: no such directory``. The CLI
rewrites the names into its flags (``--k 0``, ``SHARD_DIR /x``) and the
service answers them as a status with that line; a traceback means a bug in
hashindex, not in the user's input.
"""

import zipfile

# What reading a damaged .npz raises: BadZipFile (a flipped byte, by the member's CRC; measured: not a
# ValueError, so a reader catching only those printed a traceback), EOFError (cut short), ValueError (a mangled
# .npy header), KeyError (an array missing), TypeError (a scalar where an array was), OSError.
NPZ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


class HashindexError(Exception):
    """A user-facing error: bad input, not a bug."""


class BusyError(HashindexError):
    """Another writer holds the output's lock (a build, append, removal, extraction or batch job of the same
    output is running): nothing is wrong with the request, and it can be retried once that writer is done
    (the service answers 409)."""
