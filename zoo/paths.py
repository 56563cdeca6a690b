"""Where the folders outside the package are: releases/ and recipes/ through $EQUIZOO_RELEASES and
$EQUIZOO_RECIPES, else those of a source checkout the package is imported from (an editable install);
an ordinary install has neither, and whoever needs one says so with the variable to set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

RELEASES_ENV = "EQUIZOO_RELEASES"
RECIPES_ENV = "EQUIZOO_RECIPES"
SHARED_DATA_ENV = "EQUIZOO_SHARED_DATA"
_CHECKOUT = Path(__file__).resolve().parents[1]


def checkout_root() -> Optional[Path]:
    """The source checkout this package is imported from (an editable install), else None: in an
    ordinary install nothing of the repository lies beside the package."""
    pyproject = _CHECKOUT / "pyproject.toml"
    try:
        ours = pyproject.is_file() and 'name = "equizoo"' in pyproject.read_text(encoding="utf-8")
    except OSError:
        ours = False
    return _CHECKOUT if ours else None


def _checkout_dir(name: str) -> Optional[Path]:
    root = checkout_root()
    return root / name if root is not None and (root / name).is_dir() else None


def checkout_releases_dir() -> Optional[Path]:
    """`releases/` of the source checkout, if this is one and it has that folder."""
    return _checkout_dir("releases")


def releases_dir() -> Optional[Path]:
    """Where local releases are read and written: $EQUIZOO_RELEASES, else the source checkout's
    `releases/` (None when neither exists)."""
    env = os.environ.get(RELEASES_ENV, "").strip()
    return Path(env).expanduser() if env else checkout_releases_dir()


def recipes_dir() -> Optional[Path]:
    """The training recipes: $EQUIZOO_RECIPES, else the source checkout's `recipes/` (None when neither)."""
    env = os.environ.get(RECIPES_ENV, "").strip()
    return Path(env).expanduser() if env else _checkout_dir("recipes")


def shared_data_dir() -> Optional[Path]:
    """Sample data beside the repository: $EQUIZOO_SHARED_DATA, else ../shared/data of a source checkout."""
    env = os.environ.get(SHARED_DATA_ENV)
    root = checkout_root()
    path = Path(env) if env else (root.parent / "shared" / "data" if root is not None else None)
    return path if path is not None and path.is_dir() else None
