"""The one console pair of the `equizoo` command line (stdout for results, stderr for errors) and its `fail`."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def error_line(message: str) -> None:
    """Print MESSAGE as the command line's one-line error on stderr."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit with CODE (2: bad input, nothing was done)."""
    error_line(message)
    raise typer.Exit(code)
