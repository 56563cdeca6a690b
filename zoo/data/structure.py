"""The in-memory structure record every reader produces, and the collate that batches records."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import torch

from .. import keys
from .errors import DataError

TargetValue = Union[float, np.ndarray]

# Targets with one row per atom (concatenated in a batch); every other target is per structure.
PER_ATOM_TARGETS = frozenset({keys.FORCES, keys.POS_RELAXED, keys.ATOMIC_ENERGY, keys.ATOMIC_PROPERTY})

MAX_Z = 118


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """One molecule, frame or periodic slab in canonical units (Å, eV, eV/Å; QM9 as in keys).

    Fields cannot be reassigned; arrays are normalised to fixed dtypes but not copied when they
    already have them, so a reader can hand out views into one large array.
    """

    species: np.ndarray  # [n] int64 atomic numbers
    positions: np.ndarray  # [n, 3] float64, Å
    cell: np.ndarray | None = None  # [3, 3] float64, rows are lattice vectors
    pbc: np.ndarray | None = None  # [3] bool; all False when not given
    tags: np.ndarray | None = None  # [n] int64 (OC20: 0 subsurface, 1 surface, 2 adsorbate)
    fixed: np.ndarray | None = None  # [n] bool
    targets: Mapping[str, TargetValue] = dataclasses.field(default_factory=dict)
    units: Mapping[str, str] = dataclasses.field(default_factory=dict)
    name: str = ""
    index: int = -1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        species = np.asarray(self.species)
        if species.dtype != np.int64:
            if species.dtype.kind == "f" and not np.all(species == np.round(species)):
                raise DataError(f"structure {self.label}: atomic numbers are not integers")
            species = species.astype(np.int64)
        set_(self, "species", species)
        positions = np.asarray(self.positions, dtype=np.float64)
        n = species.shape[0] if species.ndim == 1 else -1
        if species.ndim != 1 or positions.shape != (n, 3):
            raise DataError(
                f"structure {self.label}: species {species.shape} and positions {positions.shape} "
                "do not describe n atoms as [n] and [n, 3]"
            )
        set_(self, "positions", positions)
        if self.cell is not None:
            cell = np.asarray(self.cell, dtype=np.float64).reshape(-1)
            if cell.shape != (9,):
                raise DataError(f"structure {self.label}: cell must have 9 entries, got {cell.size}")
            set_(self, "cell", cell.reshape(3, 3))
        pbc = np.zeros(3, dtype=bool) if self.pbc is None else np.asarray(self.pbc, dtype=bool).reshape(-1)
        if pbc.size == 1:
            pbc = np.repeat(pbc, 3)
        if pbc.shape != (3,):
            raise DataError(f"structure {self.label}: pbc must have 3 entries")
        if pbc.any() and self.cell is None:
            raise DataError(f"structure {self.label}: periodic but no cell given")
        set_(self, "pbc", pbc)
        for field, dtype in (("tags", np.int64), ("fixed", bool)):
            value = getattr(self, field)
            if value is not None:
                value = np.asarray(value).reshape(-1).astype(dtype, copy=False)
                if value.shape != (n,):
                    raise DataError(f"structure {self.label}: {field} has {value.size} entries for {n} atoms")
                set_(self, field, value)
        targets = {}
        for key, value in self.targets.items():
            if isinstance(value, float):
                targets[key] = value
            elif isinstance(value, (int, np.floating, np.integer)) or np.ndim(value) == 0:
                targets[key] = float(value)
            else:
                value = np.asarray(value, dtype=np.float64)
                if key in PER_ATOM_TARGETS and value.shape[0] != n:
                    raise DataError(
                        f"structure {self.label}: per-atom target {key!r} has {value.shape[0]} rows for {n} atoms"
                    )
                targets[key] = value
        set_(self, "targets", targets)
        set_(self, "units", dict(self.units))
        set_(self, "index", int(self.index))

    @property
    def label(self) -> str:
        """Name for messages: the name if set, else the index."""
        return self.name or f"#{self.index}"

    @property
    def n_atoms(self) -> int:
        return int(self.species.shape[0])

    def check(self, source: str) -> Structure:
        """Raise DataError naming ``source`` if coordinates, cell or elements are unusable."""
        bad = ~np.isfinite(self.positions).all(axis=1)
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: structure {self.label} has a non-finite (NaN/inf) coordinate at atom {atom}; "
                "fix or drop this structure in the file"
            )
        if self.cell is not None and not np.isfinite(self.cell).all():
            raise DataError(f"{source}: structure {self.label} has a non-finite cell; fix the file")
        if self.species.size and (self.species.min() < 1 or self.species.max() > MAX_Z):
            raise DataError(f"{source}: structure {self.label} has atomic numbers outside 1..{MAX_Z}; fix the file")
        return self

    def to_atoms(self):
        """This structure as an ``ase.Atoms`` (targets go to ``info``/``arrays``, not a calculator)."""
        import ase
        import ase.constraints

        atoms = ase.Atoms(
            numbers=self.species,
            positions=self.positions,
            cell=self.cell if self.cell is not None else np.zeros((3, 3)),
            pbc=self.pbc,
        )
        if self.tags is not None:
            atoms.set_tags(self.tags)
        if self.fixed is not None and self.fixed.any():
            atoms.set_constraint(ase.constraints.FixAtoms(indices=np.flatnonzero(self.fixed)))
        for key, value in self.targets.items():
            if key in PER_ATOM_TARGETS:
                atoms.arrays[key] = np.array(value)
            else:
                atoms.info[key] = value
        if self.name:
            atoms.info["name"] = self.name
        atoms.info[keys.INDEX] = self.index
        return atoms


def collate(
    structures: Sequence[Structure],
    targets: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Concatenate structures into one network batch (no neighbour list; ``zoo.graph`` adds it).

    Keys follow ``zoo.keys``: pos [N,3], species [N], batch [N], natoms [G], cell [G,3,3] (zeros
    where a structure has no cell), pbc [G,3], tags [N] (zeros if absent), fixed [N] bool,
    index [G], then every target: per-structure ones stacked to [G] or [G,k], per-atom ones
    (``PER_ATOM_TARGETS``) concatenated to [N,...]. ``targets`` picks target names (default: those
    of the first structure, which every structure must then have). Floats become ``dtype``
    (default ``torch.get_default_dtype()``).
    """
    if len(structures) == 0:
        raise DataError("collate got no structures; pass at least one")
    dtype = dtype or torch.get_default_dtype()
    g = len(structures)
    natoms = np.fromiter((s.species.shape[0] for s in structures), dtype=np.int64, count=g)
    total = int(natoms.sum())
    pos = np.concatenate([s.positions for s in structures]) if total else np.zeros((0, 3))
    species = np.concatenate([s.species for s in structures]) if total else np.zeros(0, np.int64)
    cell = np.zeros((g, 3, 3))
    pbc = np.zeros((g, 3), dtype=bool)
    index = np.empty(g, dtype=np.int64)
    for i, s in enumerate(structures):
        if s.cell is not None:
            cell[i] = s.cell
        pbc[i] = s.pbc
        index[i] = s.index
    tags, fixed = _per_atom_flags(structures, natoms, total)
    batch = {
        keys.POSITIONS: torch.from_numpy(pos).to(dtype),
        keys.SPECIES: torch.from_numpy(species),
        keys.BATCH: torch.repeat_interleave(torch.arange(g), torch.from_numpy(natoms)),
        keys.NUM_ATOMS: torch.from_numpy(natoms),
        keys.CELL: torch.from_numpy(cell).to(dtype),
        keys.PBC: torch.from_numpy(pbc),
        keys.TAGS: torch.from_numpy(tags) if tags is not None else torch.zeros(total, dtype=torch.int64),
        keys.FIXED: torch.from_numpy(fixed) if fixed is not None else torch.zeros(total, dtype=torch.bool),
        keys.INDEX: torch.from_numpy(index),
    }
    names = list(structures[0].targets) if targets is None else list(targets)
    for name in names:
        batch[name] = torch.from_numpy(_stacked_target(structures, name)).to(dtype)
    return batch


def _per_atom_flags(structures: Sequence[Structure], natoms: np.ndarray, total: int) -> tuple:
    """Concatenated tags [N] and fixed flags [N] (zeros for structures without them), each None when no
    structure has any."""
    tags = np.zeros(total, dtype=np.int64) if any(s.tags is not None for s in structures) else None
    fixed = np.zeros(total, dtype=bool) if any(s.fixed is not None for s in structures) else None
    if tags is not None or fixed is not None:
        starts = np.concatenate([[0], np.cumsum(natoms)[:-1]])
        for s, a, n in zip(structures, starts, natoms):
            if tags is not None and s.tags is not None:
                tags[a : a + n] = s.tags
            if fixed is not None and s.fixed is not None:
                fixed[a : a + n] = s.fixed
    return tags, fixed


def _stacked_target(structures: Sequence[Structure], name: str) -> np.ndarray:
    """Target `name` of every structure: per-atom ones concatenated, per-structure ones stacked (float64)."""
    try:
        values = [s.targets[name] for s in structures]
    except KeyError:
        missing = next(s for s in structures if name not in s.targets)
        raise DataError(
            f"collate: structure {missing.label} has no target {name!r} while others do; "
            "pass targets=[...] with names every structure has"
        ) from None
    if name in PER_ATOM_TARGETS:
        return np.concatenate(values)
    return np.asarray(values, dtype=np.float64)
