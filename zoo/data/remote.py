"""Downloads into the equizoo cache: checksum verification and resume of partial files."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import DataError

CACHE_ENV = "EQUIZOO_CACHE"
Progress = Callable[[str, int, "int | None"], None]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$EQUIZOO_CACHE``, else ``~/.cache/equizoo``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "equizoo"


def file_hash(path: str | os.PathLike, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha256: str | None, md5: str | None) -> str | None:
    """Return None if the file matches the given digests, else a description of the mismatch."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_hash(path, algorithm)
            if actual.lower() != expected.lower():
                return f"{algorithm} {actual} != expected {expected}"
    return None


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request.

    An existing ``dest`` that matches the checksums is reused. After the transfer the file is
    checked against ``sha256``/``md5`` (when given); a mismatch deletes it and raises DataError.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and _verify(dest, sha256, md5) is None:
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    response = _open_range(url, dest, have, timeout)
    if response is not None:
        with response:
            _append_body(response, url, part, have, progress, chunk_size)
    mismatch = _verify(part, sha256, md5)
    if mismatch:
        part.unlink()
        raise DataError(f"download of {url} is corrupt ({mismatch}); the partial file was removed, run again")
    os.replace(part, dest)
    return dest


def _open_range(url: str, dest: Path, have: int, timeout: float):
    """The HTTP response for `url` from byte `have` on (a Range request when resuming); None when the
    server says the partial file is already complete (416)."""
    request = urllib.request.Request(url, headers={"User-Agent": "equizoo"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return None
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the URL or try later") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"download of {url} failed ({exc}); check the network or download it by hand to {dest}"
        ) from None


def _append_body(response, url: str, part: Path, have: int, progress, chunk_size: int) -> None:
    """Write the response body to `part` (appended when the server resumed with 206), reporting progress;
    a short or interrupted transfer is a DataError that says how to resume."""
    resumed = response.status == 206
    length = response.headers.get("Content-Length")
    total = (int(length) + (have if resumed else 0)) if length else None
    done = have if resumed else 0
    name = part.name[: -len(".part")]
    with open(part, "ab" if resumed else "wb") as fh:
        try:
            while chunk := response.read(chunk_size):
                fh.write(chunk)
                done += len(chunk)
                if progress:
                    progress(f"downloading {name}", done, total)
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(
                f"download of {url} was interrupted after {done} bytes ({exc}); run again to resume from {part}"
            ) from None
    if total is not None and done != total:
        raise DataError(f"download of {url} stopped at {done} of {total} bytes; run again to resume from {part}")
