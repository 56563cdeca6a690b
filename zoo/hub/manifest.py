"""sha256 manifests of model directories: what `publish` uploads beside the files and what `pull` checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping, Union

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "equizoo-manifest/1"


class IntegrityError(ValueError):
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
    return sorted(p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)


def hash_files(model_dir: Union[str, Path]) -> Dict[str, dict]:
    """{file: {"sha256", "size"}} of the directory's model files."""
    model_dir = Path(model_dir)
    return {name: {"sha256": sha256_file(model_dir / name), "size": (model_dir / name).stat().st_size} for name in model_files(model_dir)}


def write_manifest(model_dir: Union[str, Path], name: str) -> Dict[str, dict]:
    """Hash the model files and write `manifest.json` atomically; returns the file table."""
    model_dir = Path(model_dir)
    files = hash_files(model_dir)
    doc = {"format": MANIFEST_FORMAT, "name": name, "files": files}
    from zoo.io import atomic_write_text

    atomic_write_text(model_dir / MANIFEST, json.dumps(doc, indent=2) + "\n")
    return files


def read_manifest(model_dir: Union[str, Path]) -> Dict[str, str]:
    """{file: sha256} from a directory's manifest.json; IntegrityError if it is missing or malformed."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{path.parent} has no {MANIFEST}, so its files cannot be verified; publish it with `equizoo publish` (or pin it in the registry)")
    try:
        doc = json.loads(path.read_text())
        return {k: str(v["sha256"]) for k, v in doc["files"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{path} is malformed ({exc}); the download is damaged, pull again with --force") from None


def verify_files(model_dir: Union[str, Path], expected: Mapping[str, str], what: str) -> None:
    """Check every expected file exists with its sha256; IntegrityError naming the first bad file."""
    model_dir = Path(model_dir)
    for name, digest in sorted(expected.items()):
        path = model_dir / name
        if not path.is_file():
            raise IntegrityError(f"{what}: file {name} is missing from {model_dir}; pull again with --force")
        got = sha256_file(path)
        if got != digest:
            raise IntegrityError(
                f"{what}: sha256 mismatch for {name}: expected {digest}, got {got} ({path.resolve()}); "
                f"the local copy is corrupted or was changed: pull again with --force (or delete it from the cache)"
            )
