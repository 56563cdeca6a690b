"""sha256 manifests of model directories: what `publish` uploads beside the files and what `pull` checks,
and the verified directories `pull` hands out (only files whose sha256 was checked)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Dict, Mapping, Union

from zoo.errors import ZooError
from zoo.io import replace_dir
from zoo.registry import FILE_NAME

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "equizoo-manifest/1"


class IntegrityError(ZooError, ValueError):
    """A file's sha256 (or the set of files) differs from what was published."""


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_files(model_dir: Union[str, Path]) -> list[str]:
    """The files a model directory publishes: regular top-level files, no hidden ones, not the manifest."""
    model_dir = Path(model_dir)
    return sorted(
        p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST
    )


def hash_files(model_dir: Union[str, Path]) -> Dict[str, dict]:
    """{file: {"sha256", "size"}} of the directory's model files."""
    model_dir = Path(model_dir)
    return {
        name: {"sha256": sha256_file(model_dir / name), "size": (model_dir / name).stat().st_size}
        for name in model_files(model_dir)
    }


def write_manifest(model_dir: Union[str, Path], name: str) -> Dict[str, dict]:
    """Hash the model files and write `manifest.json` atomically; returns the file table."""
    model_dir = Path(model_dir)
    files = hash_files(model_dir)
    doc = {"format": MANIFEST_FORMAT, "name": name, "files": files}
    from zoo.io import atomic_write_text

    atomic_write_text(model_dir / MANIFEST, json.dumps(doc, indent=2) + "\n")
    return files


def check_file_name(name: str, what: str) -> str:
    """`name` if it is a plain file name of a model directory (letters, digits, '.', '_', '-'; no path
    separators, no '..', not absolute, not hidden); IntegrityError otherwise, so that nothing a manifest or
    registry names can reach outside the directory it describes."""
    if not isinstance(name, str) or not FILE_NAME.match(name) or name in (".", ".."):
        raise IntegrityError(
            f"{what} names the file {name!r}, which is not a plain file name inside the model directory "
            "(absolute paths, '..', sub-folders and hidden files are refused); the manifest or registry entry is not trustworthy"
        )
    return name


def read_manifest(model_dir: Union[str, Path]) -> Dict[str, str]:
    """{file: sha256} from a directory's manifest.json; IntegrityError if it is missing, malformed, or
    names anything but a plain file of that directory."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise IntegrityError(
            f"{path.parent} has no {MANIFEST}, so its files cannot be verified; publish it with `equizoo publish` (or pin it in the registry)"
        )
    try:
        doc = json.loads(path.read_text())
        files = {k: str(v["sha256"]) for k, v in doc["files"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is malformed ({exc}); the download is damaged, pull again with --force") from None
    for name in files:
        check_file_name(name, f"manifest {path}")
    return files


def verify_files(model_dir: Union[str, Path], expected: Mapping[str, str], what: str) -> None:
    """Check every expected file exists with its sha256; IntegrityError naming the first bad file."""
    model_dir = Path(model_dir)
    for name, digest in sorted(expected.items()):
        path = model_dir / check_file_name(name, what)
        if not path.is_file():
            raise IntegrityError(f"{what}: file {name} is missing from {model_dir}; pull again with --force")
        got = sha256_file(path)
        if got != digest:
            raise IntegrityError(
                f"{what}: sha256 mismatch for {name}: expected {digest}, got {got} ({path.resolve()}); "
                f"the local copy is corrupted or was changed: pull again with --force (or delete it from the cache)"
            )


def verified_dir(src: Union[str, Path], expected: Mapping[str, str], what: str, views: Union[str, Path]) -> Path:
    """A directory holding exactly the files of `expected`, each with its sha256 checked.

    `src` itself when it holds nothing else (but its manifest.json, a list of hashes that no backend
    loads); otherwise a copy of just those files under `views`
    (keyed by the file table, re-verified on every call), so that no backend can pick up a file that no
    hash covers (an export the Hub, a cache or a user put beside the verified ones)."""
    src = Path(src)
    names = {check_file_name(n, what) for n in expected}
    if src.is_dir() and {p.name for p in src.iterdir()} - {MANIFEST} == names - {
        MANIFEST
    }:  # a manifest is read, never loaded
        verify_files(src, expected, what)
        return src
    missing = sorted(n for n in names if not (src / n).is_file())
    if missing:
        raise IntegrityError(f"{what}: file {missing[0]} is missing from {src}; pull again with --force")
    key = hashlib.sha256(json.dumps(sorted(expected.items())).encode()).hexdigest()[:24]
    view = Path(views) / key
    if view.is_dir() and {p.name for p in view.iterdir()} == names:
        verify_files(view, expected, f"{what} (verified copy in {view})")
        return view

    def copy_verified(tmp: Path) -> None:
        for name in names:
            shutil.copyfile(src / name, tmp / name)  # follows the Hub cache's symlinks into its blobs
        verify_files(tmp, expected, what)  # the copies themselves, not the files they came from

    replace_dir(view, copy_verified)
    return view
