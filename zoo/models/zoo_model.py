"""A deployable model: one or more Equiformer networks plus the normalisation that turns their raw
outputs into physical quantities.

Training works on standardised targets (the reference trains QM9 on (y - mean) / std, MD17 on energies
standardised the same way with forces scaled by the energy std, OC20 on normalised relaxed energies);
`ZooModel` applies `physical = mean + std * raw` inside its forward, so every export (TorchScript for C++
and LAMMPS, ONNX, AOTInductor) speaks physical units. QM9 bundles one network per target so that one
model predicts all its properties.
"""

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from zoo import keys
from zoo.models.equiformer import Equiformer


@dataclass(frozen=True)
class TargetInfo:
    """One predicted quantity: output name, unit and the affine map from the network's raw output.

    `mean` is per structure (its per-atom share mean / n_atoms goes into the per-atom output); forces and
    virials of an energy target are scaled by `std` only. `aux_scale` scales the IS2RS displacement head.
    """

    name: str
    unit: str
    mean: float = 0.0
    std: float = 1.0
    description: str = ""
    forces_unit: Optional[str] = None
    aux_scale: Optional[float] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TargetInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown target keys {unknown}; known: {sorted(known)}")
        return cls(**d)


class ZooModel(torch.nn.Module):
    """Networks (one per target) sharing one graph; forward returns physical outputs by target name.

    Output keys: each target name ([G]) and `atomic_<name>` ([N]); for the energy target (the one whose
    network was built with forces) also `forces` when `compute_forces` and `virial` when `compute_virial`;
    `aux_displacement` for networks with the IS2RS head. Same forward arguments as `Equiformer`.
    """

    compute_forces: bool
    compute_virial: bool
    energy_target: str

    def __init__(self, networks: Dict[str, Equiformer], targets: List[TargetInfo]) -> None:
        super().__init__()
        names = [t.name for t in targets]
        if sorted(names) != sorted(networks):
            raise ValueError(f"targets {names} do not match networks {sorted(networks)}")
        configs = [net.config for net in networks.values()]
        for attr in ("r_max", "type_numbers", "periodic", "num_tags"):
            if len({getattr(c, attr) for c in configs}) != 1:
                raise ValueError(
                    f"all networks of one model must share {attr}; got {[getattr(c, attr) for c in configs]}"
                )
        self.networks = torch.nn.ModuleDict({t.name: networks[t.name] for t in targets})
        self.targets = list(targets)
        self._mean: Dict[str, float] = {t.name: float(t.mean) for t in targets}
        self._std: Dict[str, float] = {t.name: float(t.std) for t in targets}
        self._aux_scale: Dict[str, float] = {
            t.name: float(t.aux_scale if t.aux_scale is not None else 1.0) for t in targets
        }
        energy = [name for name, net in networks.items() if net.config.forces]
        if len(energy) > 1:
            raise ValueError(f"at most one network may predict forces, got {energy}")
        self.energy_target = energy[0] if energy else ""
        self.compute_forces = bool(energy)
        self.compute_virial = False
        self.r_max = configs[0].r_max
        self.type_numbers = list(configs[0].type_numbers)
        self.periodic = configs[0].periodic
        self.needs_tags = configs[0].num_tags > 0
        self.num_layers = max(c.num_layers for c in configs)

    def extra_repr(self) -> str:
        return ", ".join(f"{t.name} [{t.unit}]" for t in self.targets)

    def target(self, name: str) -> TargetInfo:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"model has no target {name!r}; targets: {[t.name for t in self.targets]}")

    def forward(
        self,
        pos: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        edge_shift: Optional[torch.Tensor] = None,
        tags: Optional[torch.Tensor] = None,
        num_graphs: int = -1,
    ) -> Dict[str, torch.Tensor]:
        if num_graphs < 0:
            num_graphs = int(batch.max().item()) + 1 if batch.numel() > 0 else 0
        counts = torch.zeros(num_graphs, dtype=pos.dtype, device=pos.device).index_add(
            0, batch, torch.ones_like(batch, dtype=pos.dtype)
        )
        per_atom_share = (1.0 / counts.clamp(min=1.0)).index_select(0, batch)
        out: Dict[str, torch.Tensor] = {}
        for name, net in self.networks.items():
            is_energy = name == self.energy_target
            raw = net(
                pos, species, edge_index, batch, edge_shift, tags, num_graphs,
                compute_forces=is_energy and self.compute_forces, compute_virial=is_energy and self.compute_virial,
            )  # fmt: skip
            mean = self._mean[name]
            std = self._std[name]
            out[name] = raw[net.output_key] * std + mean
            out["atomic_" + name] = raw[net.atomic_key] * std + mean * per_atom_share
            if keys.FORCES in raw:
                out[keys.FORCES] = raw[keys.FORCES] * std
            if keys.VIRIAL in raw:
                out[keys.VIRIAL] = raw[keys.VIRIAL] * std
            if keys.AUX_DISPLACEMENT in raw:
                out[keys.AUX_DISPLACEMENT] = raw[keys.AUX_DISPLACEMENT] * self._aux_scale[name]
        return out


def wrap(network: Equiformer, target: Optional[TargetInfo] = None) -> ZooModel:
    """A single network as a ZooModel (raw outputs unless `target` gives a normalisation and unit)."""
    if target is None:
        target = TargetInfo(
            name=network.output_key, unit="raw", description="raw network output (no normalisation known)"
        )
    return ZooModel({target.name: network}, [target])
