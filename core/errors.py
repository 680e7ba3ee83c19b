"""Errors that mean "the artist's input is wrong", as opposed to a bug in keyprop.

The CLI turns a :class:`KeypropInputError` into one line on stderr and exit code 2
(see ARCHITECTURE.md, "Contracts"); anything else is a bug and keeps its traceback.
So the message must stand on its own: which file or frame, what is wrong, and what
was expected.
"""

from __future__ import annotations

import os

__all__ = ["KeypropInputError"]


class KeypropInputError(ValueError):
    """Bad input: a missing, unreadable or inconsistent file, frame or setting.

    The message is a single line that names the file (or pattern and frame) and the
    problem. Subclasses ``ValueError`` so callers that only know the standard
    library still catch it.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        # Keep the message one line even when an OS error text contains newlines.
        message = " ".join(str(message).split())
        if path is not None:
            message = f"{os.fspath(path)}: {message}"
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
