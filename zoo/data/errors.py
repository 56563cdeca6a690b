"""The one exception type that every reader raises for bad input."""

from __future__ import annotations

import os

from zoo.errors import ZooError


class DataError(ZooError, ValueError):
    """A data file is missing, empty, malformed or unsafe.

    The message always names the file and says what to do about it, so a user never has to read a
    traceback from deep inside numpy, ASE or pickle.
    """


def where(path: str | os.PathLike | None, line: int | None = None) -> str:
    """Format a file (and optional 1-based line) for error messages."""
    if path is None:
        return "<input>"
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
