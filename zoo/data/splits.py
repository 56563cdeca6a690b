"""Dataset splits as the Equiformer reference makes them, and split files from disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError


def permutation_split(n: int, train: int, val: int, seed: int = 1, test: int | None = None) -> dict[str, np.ndarray]:
    """TorchMD-Net ``make_splits``: one ``default_rng(seed).permutation(n)`` cut into train/val/test.

    train = perm[:train], val = perm[train:train+val], test = the rest (or the next ``test``).
    """
    if train + val > n:
        raise DataError(f"split sizes train={train} + val={val} exceed the {n} structures available")
    perm = np.random.default_rng(seed).permutation(n)
    end = n if test is None else min(n, train + val + test)
    return {"train": perm[:train], "val": perm[train : train + val], "test": perm[train + val : end]}


def fraction_split(
    n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 1
) -> dict[str, np.ndarray]:
    """Random split by fractions (train, val, test) from ``default_rng(seed).permutation(n)``."""
    train = int(round(fractions[0] * n))
    val = int(round(fractions[1] * n))
    return permutation_split(n, train, min(val, n - train), seed)


def read_index_file(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """Read a split file with one integer index per line (e.g. rMD17 ``index_train_01.csv``).

    ``n``: number of structures, to check that every index is in range.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"split file {path} not found; put the official split files there "
            "(for rMD17: the 'splits' folder of rmd17.tar.bz2) or choose another split"
        )
    values = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip().strip(",")
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{path}:{lineno}: expected one integer index per line, got {text!r}") from None
            if value != int(value):
                raise DataError(f"{path}:{lineno}: index {text!r} is not an integer")
            values.append(int(value))
    if not values:
        raise DataError(f"split file {path} is empty; re-extract the split files")
    out = np.asarray(values, dtype=np.int64)
    if n is not None and (out.min() < 0 or out.max() >= n):
        raise DataError(f"split file {path} has indices outside 0..{n - 1}; does it belong to this dataset?")
    return out
