"""Inputs of prediction: paths, globs, `file@selection`, ase.Atoms or Structures -> Items, and the checks
that say why a model cannot take a structure (elements, cell, tags, atoms on top of each other)."""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch

from zoo.data import DataError, Structure, read_structures, structure_from_atoms
from zoo.errors import UseError
from zoo.graph import neighbour_graph, periodic_cell_problem
from zoo.spec import ModelSpec, element_names

MIN_DISTANCE = 0.1  # Å: atoms closer than this are a broken structure (forces would be meaningless)


@dataclasses.dataclass
class Item:
    """One input structure and, after a run, its outputs (or the reason it has none)."""

    source: str
    frame: int
    structure: Optional[Structure]
    name: str = ""
    formula: str = ""
    n_atoms: int = 0
    error: str = ""
    values: dict = dataclasses.field(default_factory=dict)
    per_atom: dict = dataclasses.field(default_factory=dict)
    stress: Optional[np.ndarray] = None

    @property
    def ok(self) -> bool:
        return not self.error


def _formula(numbers) -> str:
    from ase.symbols import Symbols

    return Symbols(np.asarray(numbers, dtype=int)).get_chemical_formula() if len(numbers) else ""


def _item(source: str, frame: int, structure: Optional[Structure], error: str = "", atoms=None) -> Item:
    numbers = structure.species if structure is not None else (atoms.numbers if atoms is not None else [])
    name = structure.name if structure is not None and structure.name else ""
    if not name and structure is not None and structure.index >= 0 and source.endswith((".lmdb", ".aselmdb")):
        name = f"sid {structure.index}"
    return Item(source, frame, structure, name=name, formula=_formula(numbers), n_atoms=len(numbers), error=error)


def _frame_numbers(index: str, count: int) -> list[int]:
    """Frame numbers in the file of the structures an ASE-style `index` selected (positions if unknown)."""
    from ase.io.formats import string2index

    selected = string2index(index)
    if isinstance(selected, int):
        return [selected] if selected >= 0 else [0]
    start, step = selected.start or 0, selected.step or 1
    if start < 0 or step < 0:
        return list(range(count))
    return [start + k * step for k in range(count)]


def _read_file(path: Path, index: str = ":") -> list[Item]:
    """The structures of a file (ASE `index` selection); one that cannot be read is an error item, the
    others still come back."""
    try:
        structures = read_structures(path, index=index)
        return [_item(str(path), f, s) for f, s in zip(_frame_numbers(index, len(structures)), structures)]
    except DataError as exc:
        first_error = str(exc)
    except (IndexError, ValueError) as exc:
        raise UseError(
            f"{path}@{index}: bad frame selection ({exc}); use ASE syntax such as file.extxyz@0 or file.extxyz@:10"
        ) from None
    import ase.io

    try:
        frames = ase.io.read(path, index=index)
        frames = frames if isinstance(frames, list) else [frames]
    except Exception:  # noqa: BLE001 - any reader failure: report the reader's own message for the file
        return [Item(str(path), -1, None, error=first_error)]
    items = []
    for i, atoms in zip(_frame_numbers(index, len(frames)), frames):
        try:
            items.append(_item(str(path), i, structure_from_atoms(atoms, index=i, source=f"{path} (frame {i})")))
        except DataError as exc:
            items.append(_item(str(path), i, None, str(exc), atoms=atoms))
    return items


def expand_paths(patterns: Iterable[Union[str, os.PathLike]]) -> list[tuple[Path, str]]:
    """(file, ASE frame selection) for every file named, matched by a glob (`**` recursive) or written as
    `file@selection` (e.g. `traj.extxyz@-1`, `data.lmdb@:100`); raises UseError when nothing matches."""
    out: list[tuple[Path, str]] = []
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        index = ":"
        if not Path(text).exists() and "@" in text:
            text, index = text.rsplit("@", 1)
        path = Path(text)
        if path.exists():
            if path.is_dir():
                raise UseError(f"{path} is a directory; give structure files or a glob such as '{path}/*.xyz'")
            out.append((path, index))
        elif any(c in text for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise UseError(
                    f"no file matches {text!r}; check the pattern (quote it so the shell does not expand it)"
                )
            out.extend((m, index) for m in matches)
        else:
            raise UseError(
                f"{text}: no such file; give structure files (xyz, extxyz, cif, traj, json, db, npz, lmdb, ...)"
            )
    return out


def read_inputs(inputs) -> list[Item]:
    """Items from paths, globs, ase.Atoms, Structures or a list mixing them."""
    if isinstance(inputs, (str, os.PathLike, Structure)) or _is_atoms(inputs):
        inputs = [inputs]
    items: list[Item] = []
    for n, entry in enumerate(inputs):
        if isinstance(entry, Structure):
            items.append(_item("<structures>", n, entry))
        elif _is_atoms(entry):
            try:
                items.append(_item("<atoms>", n, structure_from_atoms(entry, index=n, source=f"atoms #{n}")))
            except DataError as exc:
                items.append(_item("<atoms>", n, None, str(exc), atoms=entry))
        elif isinstance(entry, (str, os.PathLike)):
            for path, index in expand_paths([entry]):
                items.extend(_read_file(path, index))
        else:
            raise UseError(
                f"cannot predict on {type(entry).__name__}; give file paths, ase.Atoms or zoo.data.Structure"
            )
    if not items:
        raise UseError("no input structures given")
    return items


def _is_atoms(obj) -> bool:
    import ase

    return isinstance(obj, ase.Atoms)


def oc20_tags(structure: Structure) -> tuple[Optional[np.ndarray], str]:
    """OC20 tags (0 subsurface, 1 surface, 2 adsorbate) of a structure, or (None, reason).

    Tags in the file are used as OC20 tags when their values lie in 0..2, with one exception: the
    ASE/fairchem convention of 1 = adsorbate, 0 = slab, recognised by FixAtoms on slab atoms only and free
    slab atoms tagged 0, is converted (fixed slab atoms -> 0, free slab atoms -> 1, adsorbate -> 2).
    """
    tags, fixed = structure.tags, structure.fixed
    hint = (
        "OC20 models need per-atom tags (0 subsurface, 1 surface, 2 adsorbate): set them in the file "
        "(ASE atoms.set_tags, the extxyz 'tags' column), or tag the adsorbate 1 and the slab 0 with FixAtoms on the fixed slab atoms"
    )
    if tags is None:
        return None, f"no tags in the input; {hint}"
    values = set(np.unique(tags).tolist())
    if (
        values == {0, 1}
        and fixed is not None
        and fixed.any()
        and not tags[fixed].any()
        and ((tags == 0) & ~fixed).any()
    ):
        return np.where(tags == 1, 2, np.where(fixed, 0, 1)).astype(np.int64), ""
    if values <= {0, 1, 2}:
        return tags, ""
    return None, f"tags {sorted(values)} are not OC20 tags; {hint}"


def check_structure(
    structure: Structure, info: ModelSpec, allow_unseen_elements: bool = False
) -> tuple[Optional[Structure], str]:
    """The structure ready for the model (tags resolved), or (None, why the model cannot handle it).

    The one place that refuses elements outside the model's training data (predict, eval, bench and the
    ASE calculator all come through here): the network embeds them, but what it predicts for them is
    meaningless. `allow_unseen_elements` lets them through."""
    try:
        structure.check(structure.label)
    except DataError as exc:
        return None, str(exc)
    if structure.n_atoms == 0:
        return None, "structure has no atoms"
    unknown = sorted(set(structure.species.tolist()) - set(info.type_numbers))
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in unknown)
        allowed = (
            " ".join(info.type_names)
            if len(info.type_numbers) <= 12
            else f"Z in {min(info.type_numbers)}..{max(info.type_numbers)}"
        )
        return None, f"element(s) {names} not among the model's types ({allowed}); use a model trained on them"
    unseen = info.unseen_elements(structure.species.tolist())
    if unseen and not allow_unseen_elements:
        return None, (
            f"element(s) {', '.join(element_names(unseen))} not in the training data of {info.name} (it saw only "
            f"{' '.join(element_names(info.elements))}), so its prediction would be meaningless; use a model trained on them, "
            "or pass --allow-unseen-elements (Python: allow_unseen_elements=True) to predict anyway"
        )
    if info.periodic and not structure.pbc.any():
        return (
            None,
            "the model is periodic (trained on cells/slabs) but this structure is an isolated molecule without a periodic cell; give a cell and pbc",
        )
    if structure.pbc.any() and abs(np.linalg.det(structure.cell)) < 1e-9:
        return None, "periodic structure with a singular (zero-volume) cell; fix the cell"
    if info.needs_tags:
        tags, reason = oc20_tags(structure)
        if tags is None:
            return None, reason
        if tags is not structure.tags:
            structure = dataclasses.replace(structure, tags=tags)
    problem = geometry_problem(structure, info.r_max)
    if problem:
        return None, problem
    return structure, ""


def geometry_problem(structure: Structure, r_max: float) -> str:
    """Why the geometry cannot be predicted ("" if it can): a periodic cell that is absurd for the cutoff
    (see zoo.graph.periodic_cell_problem), or two atoms (or an atom and a periodic image) closer than
    MIN_DISTANCE. Found with an O(N) neighbour list at MIN_DISTANCE, before any model runs."""
    if structure.pbc.any():
        problem = periodic_cell_problem(structure.cell, structure.pbc, structure.n_atoms, r_max)
        if problem:
            return problem
    pos = torch.from_numpy(structure.positions)
    batch = torch.zeros(structure.n_atoms, dtype=torch.long)
    periodic = bool(structure.pbc.any())
    cell = torch.from_numpy(structure.cell)[None] if periodic else None
    try:
        edges, _, shift = neighbour_graph(pos, cell, torch.from_numpy(structure.pbc)[None], batch, MIN_DISTANCE)
    except ValueError as exc:
        return str(exc)
    if edges.shape[1] == 0:
        return ""
    vec = pos[edges[0]] - pos[edges[1]] + shift
    k = int(torch.argmin(vec.norm(dim=1)))
    src, dst = int(edges[0, k]), int(edges[1, k])
    imaged = shift.shape[0] > 0 and bool(shift[k].any())
    pair = (
        f"atom {dst} and a periodic image of atom {src} are"
        if imaged
        else f"atoms {min(src, dst)} and {max(src, dst)} are"
    )
    return (
        f"{pair} {float(vec[k].norm()):.3g} Å apart, closer than {MIN_DISTANCE} Å; "
        "fix the coordinates (duplicated atom? wrong units?)"
    )
