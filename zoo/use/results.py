"""Results of prediction: outputs split per structure, a table with units in the column names, and the
CSV / JSON / extxyz files (written atomically)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from zoo import keys
from zoo._version import __version__
from zoo.artifact import read_config
from zoo.data import Structure
from zoo.errors import UseError
from zoo.io import atomic_write
from zoo.spec import ModelSpec
from zoo.use.inputs import Item

OUTPUT_FORMATS = {".csv": "csv", ".json": "json", ".extxyz": "extxyz", ".xyz": "extxyz"}
VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")


def check_output(path: Union[str, os.PathLike], formats: dict, what: str = "output") -> str:
    """The format of an output file from its suffix (`formats`: suffix -> format), checked with the
    writability of its location before any work; UseError naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        known = ", ".join(sorted(formats))
        raise UseError(
            f"{what} {path}: unknown file type {suffix or '(no suffix)'!r}; use a file name ending in {known}"
        )
    from zoo.io import unwritable_reason

    reason = unwritable_reason(path)
    if reason:
        raise UseError(f"{what} {path}: {reason}")
    return formats[suffix]


CAVEAT_PHRASE = (
    "less accurate than the paper"  # what the card of a briefly trained model says (zoo.registry descriptions)
)


def model_caveat(info: ModelSpec) -> str:
    """One line for under a prediction table when the model's card says it is far less accurate than the
    paper: its recorded test error ("" for other models or without a card)."""
    folder = Path(info.source)
    folder = folder.parent if folder.is_file() else folder
    card = folder / "README.md"
    if not card.is_file() or CAVEAT_PHRASE not in card.read_text(encoding="utf-8", errors="replace"):
        return ""
    try:
        results = ((read_config(folder).get("metadata") or {}).get("evaluation") or {}).get("results") or []
    except ValueError:
        results = []
    test = [r for r in results if str(r.get("split", "")).startswith("test")]
    measured = ", ".join(f"{r['quantity']} {r['metric']} {r['value']:.3g} {r['unit']}" for r in test[:2])
    error = f" (its card: {test[0]['split']} {measured})" if test else ""
    return f"{info.name} is a small model trained briefly on a CPU, far less accurate than the paper{error}; for trying the tools, not for science"


def _is_3d_periodic(s: Structure) -> bool:
    return bool(s.pbc.all()) and s.cell is not None and abs(np.linalg.det(s.cell)) > 1e-9


def outputs_per_structure(
    out: dict, structures: Sequence[Structure], info: ModelSpec
) -> list[tuple[dict, dict, Optional[np.ndarray]]]:
    """Split a batch's outputs: (values by target, per-atom arrays, stress 3x3 or None) per structure."""
    host = {k: v.to("cpu", torch.float64).numpy() for k, v in out.items()}
    offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in structures])])
    rows = []
    for g, s in enumerate(structures):
        a, b = offsets[g], offsets[g + 1]
        values = {t.name: float(host[t.name][g]) for t in info.targets}
        per_atom = {}
        stress = None
        if info.energy_target:
            if keys.FORCES in host:
                per_atom[keys.FORCES] = host[keys.FORCES][a:b]
            atomic = "atomic_" + info.energy_target
            if atomic in host:
                per_atom[atomic] = host[atomic][a:b]
            if keys.VIRIAL in host and _is_3d_periodic(s):
                stress = -host[keys.VIRIAL][g] / abs(np.linalg.det(s.cell))
        rows.append((values, per_atom, stress))
    return rows


def column(name: str, unit: str) -> str:
    """A column name with its unit, e.g. `energy [eV]`."""
    return f"{name} [{unit}]" if unit else name


def per_atom_units(info: ModelSpec) -> dict[str, str]:
    if not info.energy_target:
        return {}
    t = info.target(info.energy_target)
    return {keys.FORCES: t.forces_unit or f"{t.unit}/Å", "atomic_" + t.name: t.unit}


@dataclasses.dataclass
class PredictionSet:
    """The items of one prediction run with the model that made them; writes CSV, JSON and extxyz."""

    info: ModelSpec
    backend: str
    device: str
    dtype: str
    items: list[Item]

    @property
    def n_failed(self) -> int:
        return sum(not item.ok for item in self.items)

    @property
    def errors(self) -> list[tuple[str, int, str]]:
        """(file, frame, reason) of every structure without results."""
        return [(item.source, item.frame, item.error) for item in self.items if not item.ok]

    def units(self) -> dict[str, str]:
        """Unit of every output column."""
        out = {column(t.name, t.unit): t.unit for t in self.info.targets}
        if any(item.stress is not None for item in self.items):
            unit = f"{self.info.target(self.info.energy_target).unit}/Å^3"
            out.update({column(f"stress_{c}", unit): unit for c in VOIGT})
        out.update({column(k, u): u for k, u in per_atom_units(self.info).items()})
        return out

    def frame(self, per_atom: bool = True):
        """One row per input structure: file, frame, name, formula, n_atoms, status, error, the targets
        with units in the column names, Voigt stress where computed, and (if `per_atom`) per-atom arrays."""
        import pandas as pd

        has_stress = any(item.stress is not None for item in self.items)
        atom_units = per_atom_units(self.info) if per_atom else {}
        rows = []
        for item in self.items:
            row: dict[str, Any] = {
                "file": item.source, "frame": item.frame, "name": item.name, "formula": item.formula,
                "n_atoms": item.n_atoms, "status": "ok" if item.ok else "error", "error": item.error,
            }  # fmt: skip
            for t in self.info.targets:
                row[column(t.name, t.unit)] = item.values.get(t.name, math.nan)
            if has_stress:
                unit = f"{self.info.target(self.info.energy_target).unit}/Å^3"
                voigt = _voigt(item.stress) if item.stress is not None else [math.nan] * 6
                for c, v in zip(VOIGT, voigt):
                    row[column(f"stress_{c}", unit)] = v
            for name, unit in atom_units.items():
                row[column(name, unit)] = item.per_atom.get(name)
            rows.append(row)
        frame = pd.DataFrame(rows)
        frame.attrs.update(model=self.info.name, backend=self.backend, device=self.device, dtype=self.dtype)
        return frame

    def to_atoms(self) -> list:
        """ase.Atoms of the structures with results: energy/forces/stress/energies as calculator results
        (eV, eV/Å), other targets in `info`, `info['units']` naming every unit."""
        import ase
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for item in self.items:
            if not item.ok:
                continue
            s = item.structure
            atoms = ase.Atoms(
                numbers=s.species,
                positions=s.positions,
                cell=s.cell if s.cell is not None else np.zeros((3, 3)),
                pbc=s.pbc,
            )
            if s.tags is not None:
                atoms.set_tags(s.tags)
            atoms.info.update(source_file=item.source, source_frame=item.frame)
            if item.name:
                atoms.info["name"] = item.name
            results, units = {}, {}
            for t in self.info.targets:
                key = "energy" if t.name == self.info.energy_target else t.name
                units[key] = t.unit
                if key == "energy":
                    results["energy"] = item.values[t.name]
                else:
                    atoms.info[t.name] = item.values[t.name]
            if self.info.energy_target:
                atom_units = per_atom_units(self.info)
                if keys.FORCES in item.per_atom:
                    results["forces"], units["forces"] = item.per_atom[keys.FORCES], atom_units[keys.FORCES]
                if "atomic_" + self.info.energy_target in item.per_atom:
                    results["energies"], units["energies"] = (
                        item.per_atom["atomic_" + self.info.energy_target],
                        units["energy"],
                    )
                if item.stress is not None:
                    results["stress"], units["stress"] = np.asarray(_voigt(item.stress)), f"{units['energy']}/Å^3"
            atoms.info["units"] = " ".join(f"{k}={v}" for k, v in units.items())
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            out.append(atoms)
        return out

    def to_json(self) -> dict:
        frame = self.frame()
        return {
            "model": self.info.name,
            "model_source": self.info.source,
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
            "equizoo_version": __version__,
            "units": self.units(),
            "n_structures": len(self.items),
            "n_failed": self.n_failed,
            "structures": [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict(orient="records")],
        }

    def write(self, path: Union[str, os.PathLike], fmt: Optional[str] = None) -> Path:
        """Write `csv` (one row per structure, per-atom arrays left out), `json` (everything) or `extxyz`
        (structures with results); the format follows the suffix unless given. Atomic (temp + rename)."""
        path = Path(path)
        fmt = fmt or check_output(path, OUTPUT_FORMATS)
        if fmt not in ("csv", "json", "extxyz"):
            raise UseError(f"{path}: unknown output format {fmt!r}; use csv, json or extxyz")
        if fmt == "csv":
            return atomic_write(path, lambda tmp: self.frame(per_atom=False).to_csv(tmp, index=False))
        if fmt == "json":
            return atomic_write(
                path, lambda tmp: Path(tmp).write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
            )
        import ase.io

        atoms = self.to_atoms()
        if not atoms:
            raise UseError(f"{path}: no structure has results, nothing to write as extxyz")
        return atomic_write(path, lambda tmp: ase.io.write(tmp, atoms, format="extxyz"))


def _voigt(stress: np.ndarray) -> list[float]:
    s = np.asarray(stress)
    return [float(s[0, 0]), float(s[1, 1]), float(s[2, 2]), float(s[1, 2]), float(s[0, 2]), float(s[0, 1])]


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
