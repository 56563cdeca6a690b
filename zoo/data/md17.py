"""MD17, revised MD17 and MD22 readers (sGDML npz, rMD17 npz, MDBENCHGNN npz, extxyz).

All energies become eV and forces eV/Å (constants in :mod:`zoo.data.units`); the original unit is
kept in the dataset manifest. Splits: the reference's 950/50/rest from
``default_rng(1).permutation(n)``, the official rMD17 index files, or MDBENCHGNN's own files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import keys
from .errors import DataError
from .splits import permutation_split, read_index_file
from .structure import Structure
from .units import KCAL_PER_MOL_TO_EV, energy_factor, force_factor, length_factor

MD17_URL = "http://www.quantum-machine.org/gdml/data/npz/"
MD17_FILES = {
    "aspirin": "md17_aspirin.npz",
    "benzene": "md17_benzene2017.npz",
    "ethanol": "md17_ethanol.npz",
    "malonaldehyde": "md17_malonaldehyde.npz",
    "naphthalene": "md17_naphthalene.npz",
    "salicylic_acid": "md17_salicylic.npz",
    "toluene": "md17_toluene.npz",
    "uracil": "md17_uracil.npz",
}
MD17_SPLIT = (950, 50)

RMD17_URL = "https://figshare.com/ndownloader/files/23950376"  # rmd17.tar.bz2, doi:10.6084/m9.figshare.12672038
RMD17_FILES = {
    "aspirin": "rmd17_aspirin.npz",
    "azobenzene": "rmd17_azobenzene.npz",
    "benzene": "rmd17_benzene.npz",
    "ethanol": "rmd17_ethanol.npz",
    "malonaldehyde": "rmd17_malonaldehyde.npz",
    "naphthalene": "rmd17_naphthalene.npz",
    "paracetamol": "rmd17_paracetamol.npz",
    "salicylic_acid": "rmd17_salicylic.npz",
    "toluene": "rmd17_toluene.npz",
    "uracil": "rmd17_uracil.npz",
}

MD22_URL = "http://www.quantum-machine.org/gdml/repo/datasets/"
MD22_FILES = {
    "Ac-Ala3-NHMe": "md22_Ac-Ala3-NHMe.npz",
    "DHA": "md22_DHA.npz",
    "stachyose": "md22_stachyose.npz",
    "AT-AT": "md22_AT-AT.npz",
    "AT-AT-CG-CG": "md22_AT-AT-CG-CG.npz",
    "buckyball-catcher": "md22_buckyball-catcher.npz",
    "double-walled_nanotube": "md22_double-walled_nanotube.npz",
}
# training-set sizes of the MD22 paper (Chmiela et al., Sci. Adv. 2023); Equiformer never used MD22
MD22_TRAIN_SIZES = {
    "Ac-Ala3-NHMe": 6000,
    "DHA": 8000,
    "stachyose": 8000,
    "AT-AT": 3000,
    "AT-AT-CG-CG": 2000,
    "buckyball-catcher": 600,
    "double-walled_nanotube": 800,
}

# MDBENCHGNN converted MD17 from kcal/mol with this truncated factor (checked frame by frame
# against the original ethanol npz: ratio 0.04336 to 1e-15); readers rescale to the exact one.
MDBENCHGNN_KCAL_TO_EV = 0.04336
MDBENCHGNN_SPLITS = ("train", "val", "test")


def md17_split(n: int, train: int = MD17_SPLIT[0], val: int = MD17_SPLIT[1], seed: int = 1) -> dict[str, np.ndarray]:
    """The reference split: ``default_rng(1).permutation(n)``; train [:950], val [950:1000], test rest."""
    return permutation_split(n, train, val, seed)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    _npz_names(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc}); download it again") from None


def _require(data: dict, names: tuple[str, ...], path: Path, kind: str) -> None:
    missing = [k for k in names if k not in data]
    if missing:
        raise DataError(f"{path}: missing arrays {missing} for the {kind} format; found {sorted(data)}")


def _frames(
    path: Path,
    z: np.ndarray,
    positions: np.ndarray,
    energy: np.ndarray | None,
    forces: np.ndarray | None,
    energy_scale: float,
    force_scale: float,
    length_scale: float = 1.0,
    first_index: int = 0,
) -> list[Structure]:
    """Build one Structure per frame, sharing converted arrays (no per-frame copies)."""
    z = np.asarray(z).reshape(-1).astype(np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    n = z.shape[0]
    if positions.ndim != 3 or positions.shape[1:] != (n, 3):
        raise DataError(f"{path}: positions have shape {positions.shape}, expected (frames, {n}, 3)")
    frames = positions.shape[0]
    if frames == 0:
        raise DataError(f"{path}: contains no frames")
    if length_scale != 1.0:
        positions = positions * length_scale
    bad = ~np.isfinite(positions).reshape(frames, -1).all(axis=1)
    if bad.any():
        frame = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: frame {frame} has a non-finite (NaN/inf) coordinate; remove it or re-download the file"
        )
    if z.min() < 1 or z.max() > 118:
        raise DataError(f"{path}: atomic numbers outside 1..118; fix the file")
    if energy is not None:
        energy = np.asarray(energy, dtype=np.float64).reshape(-1)
        if energy.shape[0] != frames:
            raise DataError(f"{path}: {energy.shape[0]} energies for {frames} frames")
        energy = energy * energy_scale
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != positions.shape:
            raise DataError(f"{path}: forces {forces.shape} do not match positions {positions.shape}")
        forces = forces * force_scale
    units = {}
    if energy is not None:
        units[keys.ENERGY] = "eV"
    if forces is not None:
        units[keys.FORCES] = "eV/Å"
    out = []
    for i in range(frames):
        targets = {}
        if energy is not None:
            targets[keys.ENERGY] = float(energy[i])
        if forces is not None:
            targets[keys.FORCES] = forces[i]
        out.append(Structure(species=z, positions=positions[i], targets=targets, units=units, index=first_index + i))
    return out


def _text(value) -> str:
    value = np.asarray(value)
    item = value.item() if value.ndim == 0 else value.reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else str(item)


def read_sgdml_npz(
    path: str | os.PathLike, energy_unit: str | None = None, length_unit: str | None = None
) -> list[Structure]:
    """Read an sGDML dataset npz (MD17, MD22, CCSD(T) sets: ``R z E F``).

    Units: the file's ``e_unit``/``r_unit`` entries when present, else kcal/mol and Å (MD17/MD22).
    """
    path = Path(path)
    data = _load_npz(path)
    _require(data, ("R", "z"), path, "sGDML (R z E F)")
    e_unit = energy_unit or (_text(data["e_unit"]) if "e_unit" in data else "kcal/mol")
    r_unit = length_unit or (_text(data["r_unit"]) if "r_unit" in data else "Å")
    return _frames(
        path,
        data["z"],
        data["R"],
        data.get("E"),
        data.get("F"),
        energy_factor(e_unit),
        force_factor(e_unit, r_unit),
        length_factor(r_unit),
    )


def read_rmd17_npz(path: str | os.PathLike) -> list[Structure]:
    """Read a revised-MD17 npz (``nuclear_charges coords energies forces``, kcal/mol and Å)."""
    path = Path(path)
    data = _load_npz(path)
    _require(data, ("nuclear_charges", "coords"), path, "rMD17")
    return _frames(
        path,
        data["nuclear_charges"],
        data["coords"],
        data.get("energies"),
        data.get("forces"),
        KCAL_PER_MOL_TO_EV,
        KCAL_PER_MOL_TO_EV,
    )


def read_mdbenchgnn_npz(path: str | os.PathLike, exact: bool = True, first_index: int = 0) -> list[Structure]:
    """Read an MDBENCHGNN npz (``pos energy forces atomic_numbers cell pbc``, eV and eV/Å).

    ``exact``: undo MDBENCHGNN's truncated 0.04336 eV per kcal/mol, so energies equal the original
    kcal/mol values times the exact factor (as from the sGDML files).
    """
    path = Path(path)
    data = _load_npz(path)
    _require(data, ("pos", "atomic_numbers"), path, "MDBENCHGNN")
    scale = KCAL_PER_MOL_TO_EV / MDBENCHGNN_KCAL_TO_EV if exact else 1.0
    return _frames(
        path,
        data["atomic_numbers"],
        data["pos"],
        data.get("energy"),
        data.get("forces"),
        scale,
        scale,
        first_index=first_index,
    )


def read_mdbenchgnn(root: str | os.PathLike, exact: bool = True) -> dict[str, list[Structure]]:
    """Read one MDBENCHGNN molecule folder: ``train.npz``, ``val.npz``, ``test.npz``."""
    root = Path(root)
    out = {}
    first = 0
    for split in MDBENCHGNN_SPLITS:
        file = root / f"{split}.npz"
        if not file.is_file():
            raise DataError(f"split file {file} not found; an MDBENCHGNN folder needs train.npz, val.npz and test.npz")
        out[split] = read_mdbenchgnn_npz(file, exact, first_index=first)
        first += len(out[split])
    return out


def read_md_npz(path: str | os.PathLike) -> list[Structure]:
    """Read any of the three MD npz layouts, recognised by their array names."""
    path = Path(path)
    names = _npz_names(path)
    if {"R", "z"} <= names:
        return read_sgdml_npz(path)
    if {"nuclear_charges", "coords"} <= names:
        return read_rmd17_npz(path)
    if {"pos", "atomic_numbers"} <= names:
        return read_mdbenchgnn_npz(path)
    raise DataError(
        f"{path}: unknown npz layout (arrays {sorted(names)}); expected sGDML 'R z E F', rMD17 "
        "'nuclear_charges coords energies forces' or MDBENCHGNN 'pos energy forces atomic_numbers'"
    )


def _npz_names(path: Path) -> set[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; download it again")
    try:
        with np.load(path, allow_pickle=False) as data:
            return set(data.files)
    except Exception as exc:
        raise DataError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc}); download it again") from None


def read_rmd17_splits(split_dir: str | os.PathLike, split: int = 1, n: int | None = None) -> dict[str, np.ndarray]:
    """Official rMD17 split ``split`` (1..5): ``index_train_0N.csv`` and ``index_test_0N.csv``."""
    split_dir = Path(split_dir)
    if not 1 <= split <= 5:
        raise DataError(f"rMD17 split must be 1..5, got {split}")
    return {
        "train": read_index_file(split_dir / f"index_train_{split:02d}.csv", n),
        "test": read_index_file(split_dir / f"index_test_{split:02d}.csv", n),
    }
