"""The one exception type for user mistakes.

Anything a user can cause (a wrong path, a file that is not a checkpoint, a
bad flag) raises `HashindexError` with a one-line message naming the file or
flag and what was expected. The CLI prints it and exits non-zero; a traceback
means a bug in hashindex, not in the user's input.
"""


class HashindexError(Exception):
    """A user-facing error: bad input, not a bug."""
