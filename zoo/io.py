"""Atomic file writes (a temporary sibling, the usual file mode, one rename; symlinks are written through)
and the one progress bar of long work."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(executable: bool = False) -> int:
    """The mode `open()` would give a new file under the current umask (0644 under umask 022)."""
    return (0o777 if executable else 0o666) & ~current_umask()


def destination(path: PathLike) -> Path:
    """The file a write to `path` must replace: the target of a symlink (so the link stays), else `path`."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: Optional[str] = None, executable: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path`; when the block succeeds it gets the usual mode (an existing
    file's own mode when it is replaced) and is renamed over `path`; when it fails it is removed."""
    target = destination(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = (target.stat().st_mode & 0o7777) if target.is_file() else default_mode(executable)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=target.suffix if suffix is None else suffix, dir=target.parent
    )
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: PathLike, write: Callable[[str], Any], executable: bool = False) -> Path:
    """Call `write(tmp_path)` on a temporary sibling of `path`, then rename it into place."""
    with atomic_path(path, executable=executable) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (flushed to disk before the rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def make_temp_dir(parent: PathLike, prefix: str) -> Path:
    """A new temporary directory in `parent` with the usual directory mode (mkdtemp alone makes it 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    tmp.chmod(default_mode(executable=True))
    return tmp


def replace_dir(out_dir: PathLike, write: Callable[[Path], Any]) -> Path:
    """Run `write(tmp_dir)` in a temporary sibling and move the result to `out_dir` in one rename,
    replacing what was there only once the new contents are complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir.parent, f".{out_dir.name}.")
    try:
        write(tmp)
        if out_dir.exists():
            backup = make_temp_dir(out_dir.parent, f".{out_dir.name}.old.")
            os.replace(out_dir, backup / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, out_dir)
    finally:
        remove_tree(tmp)
    return out_dir


def remove_tree(path: PathLike) -> None:
    """Remove a temporary directory if it is still there."""
    if os.path.isdir(path):
        shutil.rmtree(path)


def unwritable_reason(path: PathLike) -> Optional[str]:
    """Why a file cannot be written at `path` (a directory there, no permission, a file where a folder
    must be), or None; checked before long work so that it does not fail at the end."""
    target = destination(path)
    if target.is_dir():
        return f"{path} is a directory; give a file name"
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory, so {path} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to write in {parent}; choose another output location"
    return None


def progress_bar(total: int, description: str):
    """A started-later rich progress bar on stderr with one task; returns (bar, task id)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    room = max(12, console.width - 50)  # the bar (20), counts and times take the rest: the line fits the terminal
    if len(description) > room:
        description = description[: room - 1] + "…"
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )  # fmt: skip
    task = bar.add_task(description, total=total)
    return bar, task
