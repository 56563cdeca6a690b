"""The one base of every equizoo error: the message names the input and says what to do next.

Each area keeps its own class (DataError, ArtifactError, ExportError, HubError, ...) deriving from ZooError
and from the built-in type it has always been (ValueError, RuntimeError, LookupError), so both
`except ZooError` (the CLI's one handler) and the older `except ValueError` keep working.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base of all equizoo errors: expected failures with a message meant for the user (no traceback)."""

    exit_code = 2  # what the command line exits with (2: bad input, nothing was done)


class UseError(ZooError, ValueError):
    """Bad input to predict / eval / bench / the calculator: the message names the input and says what to do."""
