"""Dataset statistics the training recipes need: target mean/std, atoms and degree per structure."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .errors import DataError
from .store import PreparedDataset


def _degree_counts(positions: torch.Tensor, cutoff: float) -> int:
    """Ordered neighbour pairs within ``cutoff`` in a batch [B, n, 3] of equal-size molecules."""
    dist = torch.cdist(positions, positions)
    n = positions.shape[1]
    return int((dist < cutoff).sum()) - positions.shape[0] * n


def _periodic_degree(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> int:
    """Neighbour pairs within ``cutoff`` including periodic images (enough images to cover it)."""
    basis = np.array(cell, dtype=np.float64)
    for axis in range(3):
        if not pbc[axis] and not np.any(basis[axis]):
            basis[axis] = np.cross(basis[(axis + 1) % 3], basis[(axis + 2) % 3])
            basis[axis] /= np.linalg.norm(basis[axis]) or 1.0
    try:
        inv = np.linalg.inv(basis)
    except np.linalg.LinAlgError:
        raise DataError("a periodic structure has a singular cell; fix its lattice vectors") from None
    heights = 1.0 / np.linalg.norm(inv, axis=0)
    reps = [int(math.ceil(cutoff / h)) if p else 0 for h, p in zip(heights, pbc)]
    shifts = np.array(
        [
            (i, j, k)
            for i in range(-reps[0], reps[0] + 1)
            for j in range(-reps[1], reps[1] + 1)
            for k in range(-reps[2], reps[2] + 1)
        ]
    )
    pos = torch.from_numpy(positions)
    images = torch.from_numpy(positions[None] + (shifts @ cell)[:, None]).reshape(-1, 3)
    return int((torch.cdist(pos, images) < cutoff).sum()) - positions.shape[0]


def compute_statistics(
    dataset: PreparedDataset,
    split: str | None = "train",
    targets: Sequence[str] | None = None,
    cutoff: float = 5.0,
    max_structures: int | None = None,
) -> dict:
    """Mean/std of targets, average atoms and average degree within ``cutoff`` over ``split``.

    std is the unbiased (n-1) one, as ``torch.std`` in the reference; NaN (missing) values are
    skipped. Per-atom targets (forces) are pooled over atoms and components. The degree counts
    ordered pairs i != j with |r_ij| < cutoff (images included for periodic cells), per atom.
    ``max_structures`` takes the first structures of the split only, for a quick estimate.
    """
    view = dataset.split(split) if split else dataset
    if max_structures is not None:
        view = view.subset(np.arange(min(max_structures, len(view))))
    if len(view) == 0:
        raise DataError(f"{dataset.path}: split {split!r} is empty; nothing to compute statistics on")
    natoms = view.natoms
    out: dict = {
        "dataset": dataset.name,
        "split": split,
        "n_structures": len(view),
        "avg_num_atoms": float(natoms.mean()),
        "cutoff": cutoff,
        "targets": {},
    }
    names = dataset.target_names if targets is None else list(targets)
    info = dataset.manifest["targets"]
    for name in names:
        if name not in info:
            raise DataError(f"{dataset.path}: no target {name!r}; available: {', '.join(dataset.target_names)}")
        if info[name]["per_atom"]:
            values = _gather_per_atom(view, name).reshape(-1, 1)
        else:
            values = view.target(name).reshape(len(view), -1)
        values = values[~np.isnan(values).any(axis=1)]
        entry: dict = {"count": int(values.shape[0]), "unit": dataset.units[name], "mean": None, "std": None}
        if values.shape[0]:
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
            vector = not info[name]["per_atom"] and len(info[name]["shape"]) > 0
            entry["mean"] = mean.tolist() if vector else float(mean[0])
            entry["std"] = std.tolist() if vector else float(std[0])
        out["targets"][name] = entry
    out["avg_degree"] = average_degree(view, cutoff)
    return out


def _gather_per_atom(view: PreparedDataset, name: str, chunk: int = 4096) -> np.ndarray:
    parts = [
        view.collate(np.arange(start, min(start + chunk, len(view))), [name], torch.float64)[name].numpy()
        for start in range(0, len(view), chunk)
    ]
    return np.concatenate(parts)


def average_degree(view: PreparedDataset, cutoff: float = 5.0, chunk: int = 4096) -> float:
    """Average number of neighbours within ``cutoff`` per atom (no self-loops) over ``view``."""
    natoms = view.natoms
    has_pbc = "pbc" in view._arrays
    total_pairs = 0
    if has_pbc:
        pbc_flags = np.asarray(view._arrays["pbc"])[view.global_indices].any(axis=1)
    else:
        pbc_flags = np.zeros(len(view), dtype=bool)
    for i in np.flatnonzero(pbc_flags):
        s = view[int(i)]
        total_pairs += _periodic_degree(s.positions, s.cell, s.pbc, cutoff)
    molecular = np.flatnonzero(~pbc_flags)
    for n in np.unique(natoms[molecular]):
        members = molecular[natoms[molecular] == n]
        for start in range(0, members.size, chunk):
            idx = members[start : start + chunk]
            pos = view.collate(idx, targets=[], dtype=torch.float64)["pos"].reshape(idx.size, int(n), 3)
            total_pairs += _degree_counts(pos, cutoff)
    return total_pairs / float(natoms.sum())
