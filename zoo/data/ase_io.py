"""Any ASE-readable file (xyz, extxyz, sdf, cif, pdb, traj, json, ASE db) to Structures.

:func:`read_structures` is the one entry point for prediction inputs: it also recognises the
original QM9 xyz files, MD17/rMD17/MD22 npz files and OC20 LMDB / fairchem ``.aselmdb`` files and
hands them to their readers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import keys
from .errors import DataError
from .structure import Structure
from .units import energy_factor, length_factor


def _fixed_mask(atoms) -> np.ndarray | None:
    from ase.constraints import FixAtoms

    if not atoms.constraints:
        return None
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.index] = True
    return mask


def structure_from_atoms(
    atoms,
    energy_unit: str = "eV",
    length_unit: str = "Å",
    name: str = "",
    index: int = -1,
    source: str = "<atoms>",
) -> Structure:
    """Convert one ``ase.Atoms`` (with optional calculator results) to a Structure in eV and Å.

    Energy, forces and stress are taken from the attached calculator's results, else from
    ``info['energy']`` / ``arrays['forces']``; FixAtoms constraints become ``fixed``.
    """
    ef, lf = energy_factor(energy_unit), length_factor(length_unit)
    results = dict(getattr(atoms.calc, "results", None) or {})
    targets: dict = {}
    units: dict = {}
    energy = results.get("energy", atoms.info.get("energy"))
    if energy is not None:
        targets[keys.ENERGY], units[keys.ENERGY] = float(energy) * ef, "eV"
    forces = results.get("forces", atoms.arrays.get("forces"))
    if forces is not None:
        targets[keys.FORCES], units[keys.FORCES] = np.asarray(forces, dtype=np.float64) * (ef / lf), "eV/Å"
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        targets[keys.STRESS], units[keys.STRESS] = stress * (ef / lf**3), "eV/Å^3"
    cell = np.asarray(atoms.cell[:], dtype=np.float64) * lf
    has_cell = bool(np.any(cell))
    return Structure(
        species=atoms.numbers,
        positions=atoms.positions * lf,
        cell=cell if has_cell else None,
        pbc=atoms.pbc if has_cell else None,
        tags=atoms.get_tags() if "tags" in atoms.arrays else None,
        fixed=_fixed_mask(atoms),
        targets=targets,
        units=units,
        name=name or str(atoms.info.get("name", "")),
        index=index,
    ).check(source)


def _is_qm9_xyz(path: Path) -> bool:
    if path.suffix != ".xyz":
        return False
    with open(path, "rb") as fh:
        fh.readline()
        return fh.readline().startswith(b"gdb ")


def read_structures(
    path: str | os.PathLike,
    index: str | int = ":",
    format: str | None = None,
    energy_unit: str = "eV",
    length_unit: str = "Å",
) -> list[Structure]:
    """Read every structure of ``path`` (or those selected by ``index``, ASE syntax).

    ``energy_unit``/``length_unit`` state the file's units when the format does not (extxyz has no
    unit field: MD17 extxyz files are usually kcal/mol, rMD17 ones eV or meV); values are
    converted to eV and Å. npz, LMDB and QM9 files carry their units and ignore these.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; give a file with at least one structure")
    suffix = path.suffix.lower()
    if format is None and suffix == ".npz":
        from .md17 import read_md_npz

        return _select(read_md_npz(path), index)
    if format is None and suffix in (".lmdb", ".aselmdb"):
        from .oc20 import read_aselmdb, read_oc20_lmdb

        return _select(read_aselmdb(path) if suffix == ".aselmdb" else read_oc20_lmdb(path), index)
    if format is None and _is_qm9_xyz(path):
        from .qm9 import read_qm9_xyz

        return _select([read_qm9_xyz(path)], index)
    import ase.io

    try:
        frames = ase.io.read(path, index=index, format=format)
    except KeyError as exc:
        raise DataError(f"{path}: unknown element symbol {exc.args[0]!r}; fix the file") from None
    except StopIteration:
        raise DataError(f"{path}: no structures found; is the file complete?") from None
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read as {format or 'an ASE format'} ({type(exc).__name__}: {exc}); "
            "the file may be truncated or in another format (pass format=...)"
        ) from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DataError(f"{path}: no structures found; is the file complete?")
    return [
        structure_from_atoms(a, energy_unit, length_unit, index=i, source=f"{path} (frame {i})")
        for i, a in enumerate(frames)
    ]


def _select(structures: list[Structure], index: str | int) -> list[Structure]:
    if index == ":":
        return structures
    if isinstance(index, int):
        return [structures[index]]
    from ase.io.formats import string2index

    selected = string2index(index)
    return structures[selected] if isinstance(selected, slice) else [structures[selected]]


def write_structures(path: str | os.PathLike, structures: list[Structure], format: str | None = None) -> None:
    """Write structures with ASE (energies/forces as extxyz info/arrays, in eV and Å)."""
    import ase.io

    ase.io.write(path, [s.to_atoms() for s in structures], format=format)
