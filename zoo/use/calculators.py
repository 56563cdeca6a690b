"""An ASE calculator for equizoo models: energy, per-atom energies, forces and (3D-periodic) stress.

    from zoo.use.calculators import EquiformerCalculator
    atoms.calc = EquiformerCalculator("path/to/model_dir", dtype="float64")      # or a ZooModel, a registry name
    atoms.calc = EquiformerCalculator.from_torchscript("model.torchscript.pt")   # an exported file
    atoms.calc = EquiformerCalculator(model_dir, device="cuda", backend="compile", cuda_graphs=True)  # fast MD

Forces are -dE/dx and stress is -virial / volume (virial = -dE/dstrain), both from autograd inside the
model, so they are consistent with the energy; usable in ASE MD and relaxations (also with cell filters).
The neighbour list is rebuilt on every call unless `skin` > 0: then a list with cutoff r_max + skin is
kept while no atom has moved more than skin / 2 (and cell, pbc and numbers are unchanged), and the edges
within r_max are selected from it on each call, which gives exactly the graph a rebuild would.
OC20 models take their tags from `atoms` (see zoo.use.inputs.oc20_tags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import CalculationFailed, Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from zoo import keys
from zoo.data import DataError, Structure
from zoo.data.units import energy_factor
from zoo.errors import UseError
from zoo.graph import neighbour_graph
from zoo.use.inputs import check_structure
from zoo.use.predict import model_inputs
from zoo.use.runner import Runner, load_runner


def _fixed_mask(atoms) -> Optional[np.ndarray]:
    from ase.constraints import FixAtoms

    fixed = [c for c in atoms.constraints if isinstance(c, FixAtoms)]
    if not fixed:
        return None
    mask = np.zeros(len(atoms), dtype=bool)
    for c in fixed:
        mask[c.index] = True
    return mask


class EquiformerCalculator(Calculator):
    """ASE calculator around an equizoo model (any spec zoo.use.runner.load_runner accepts).

    `dtype="float64"` is recommended for MD and tight relaxations. The model must predict a potential
    energy with forces (an MD17-style force field); for any other model `target` must name the output to
    report as ASE's energy explicitly (e.g. an OC20 model's adsorption energy), since a QM9 gap in eV is
    not a potential energy. Energies are converted to eV when the model uses another energy unit.
    Structures with elements outside the model's training data raise unless `allow_unseen_elements`.
    `backend="compile"` runs torch.compile, `cuda_graphs=True` replays CUDA graphs on padded inputs (small
    systems on a GPU; see zoo.accel).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model=None,
        *,
        device="auto",
        dtype=None,
        backend: str = "eager",
        cuda_graphs: bool = False,
        skin: float = 0.0,
        target: Optional[str] = None,
        allow_unseen_elements: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if skin < 0:
            raise UseError(f"skin must be >= 0 Å, got {skin}")
        self.runner: Runner = load_runner(
            model,
            backend=backend,
            device=device,
            dtype=dtype,
            allow_unseen_elements=allow_unseen_elements,
            cuda_graphs=cuda_graphs,
        )
        info = self.runner.info
        target = target or info.energy_target
        if not target:
            raise UseError(
                f"model {info.name} predicts {', '.join(t.name + ' [' + t.unit + ']' for t in info.targets)}, not a potential energy with forces; "
                "an ASE calculator needs a force-field model (e.g. EquiformerCalculator('equiformer-md17-ethanol-l2-small-cpu')), "
                f"or name the output to report as energy explicitly with target= (one of {[t.name for t in info.targets]})"
            )
        self.target = info.target(target)
        try:
            self.to_ev = energy_factor(self.target.unit)
        except DataError:
            raise UseError(
                f"model {info.name}: target {target!r} is in {self.target.unit!r}, not an energy unit ASE can use"
            ) from None
        self.has_forces = target == info.energy_target
        self.skin = float(skin)
        self._neighbours = None
        self.rebuilds = 0

    @classmethod
    def from_torchscript(cls, path: Union[str, Path], **kwargs) -> EquiformerCalculator:
        """A calculator running an exported TorchScript file (`model.torchscript.pt`)."""
        path = Path(path)
        if not path.is_file():
            raise UseError(
                f"{path}: no such TorchScript file; export one with `equizoo export MODEL_DIR --format torchscript`"
            )
        return cls(path, backend="torchscript", **kwargs)

    # -------------------------------------------------------------------------------------------------
    def _structure(self, atoms) -> Structure:
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        periodic = bool(atoms.pbc.any())
        needs_tags = self.runner.info.needs_tags
        structure = Structure(
            species=atoms.numbers,
            positions=atoms.positions,
            cell=cell if periodic or np.any(cell) else None,
            pbc=atoms.pbc if periodic else None,
            tags=atoms.get_tags() if needs_tags and "tags" in atoms.arrays else None,
            fixed=_fixed_mask(atoms) if needs_tags else None,
        )
        checked, reason = check_structure(structure, self.runner.info, self.runner.allow_unseen_elements)
        if checked is None:
            raise CalculationFailed(f"EquiformerCalculator: {atoms.get_chemical_formula()}: {reason}")
        return checked

    def _inputs(self, structure: Structure, system_changes) -> dict:
        runner, info = self.runner, self.runner.info
        if self.skin == 0.0:
            self.rebuilds += 1
            return model_inputs([structure], info, runner.device, runner.dtype)[0]
        pos = torch.from_numpy(structure.positions)
        cached = self._neighbours
        if (
            cached is None
            or any(change in system_changes for change in ("numbers", "cell", "pbc"))
            or cached["pos"].shape != pos.shape
            or float((pos - cached["pos"]).norm(dim=1).max()) > 0.5 * self.skin
        ):
            cached = self._build_neighbours(structure, pos)
        src, dst = cached["edge_index"]
        vec = pos.index_select(0, src) - pos.index_select(0, dst) + cached["shift"]
        keep = torch.linalg.vector_norm(vec, dim=1) < info.r_max
        edge_index = cached["edge_index"][:, keep]
        if (
            info.max_neighbors is not None
            and edge_index.shape[1]
            and int(torch.bincount(edge_index[1]).max()) > info.max_neighbors
        ):
            return model_inputs([structure], info, runner.device, runner.dtype)[0]
        return {
            "pos": pos.to(device=runner.device, dtype=runner.dtype),
            "species": torch.from_numpy(structure.species).to(runner.device),
            "edge_index": edge_index.to(runner.device),
            "batch": torch.zeros(structure.n_atoms, dtype=torch.long, device=runner.device),
            "edge_shift": cached["shift"][keep].to(device=runner.device, dtype=runner.dtype),
            "tags": torch.from_numpy(
                structure.tags if structure.tags is not None else np.zeros(structure.n_atoms, np.int64)
            ).to(runner.device),
        }

    def _build_neighbours(self, structure: Structure, pos: torch.Tensor) -> dict:
        cutoff = self.runner.info.r_max + self.skin
        batch = torch.zeros(structure.n_atoms, dtype=torch.long)
        cell = torch.from_numpy(structure.cell).unsqueeze(0) if structure.pbc.any() else None
        edge_index, _, shift = neighbour_graph(pos, cell, torch.from_numpy(structure.pbc).unsqueeze(0), batch, cutoff)
        self._neighbours = {"pos": pos.clone(), "edge_index": edge_index, "shift": shift}
        self.rebuilds += 1
        return self._neighbours

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if ("forces" in properties or "stress" in properties) and not self.has_forces:
            raise PropertyNotImplementedError(
                f"model {self.runner.info.name} predicts no forces; only energy is available"
            )
        structure = self._structure(self.atoms)
        stress = self.has_forces and bool(structure.pbc.all())
        if "stress" in properties and not stress:
            raise PropertyNotImplementedError("stress needs a structure periodic in all three directions")
        out = self.runner(self._inputs(structure, system_changes), 1, virial=stress)
        name = self.target.name
        energy = float(out[name][0]) * self.to_ev
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = out["atomic_" + name].to("cpu", torch.float64).numpy() * self.to_ev
        if self.has_forces:
            self.results["forces"] = out[keys.FORCES].to("cpu", torch.float64).numpy() * self.to_ev
        if stress and keys.VIRIAL in out:
            virial = out[keys.VIRIAL][0].to("cpu", torch.float64).numpy() * self.to_ev
            self.results["stress"] = full_3x3_to_voigt_6_stress(-virial / abs(np.linalg.det(structure.cell)))


__all__ = ["EquiformerCalculator"]
