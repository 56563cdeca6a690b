"""What every use of a model needs to know about it (ModelSpec), read once from its config.json:
targets with units, r_max, neighbour cap, element types, periodic, tags, dtype, training elements."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import torch

from zoo.artifact import model_config
from zoo.device import DTYPES
from zoo.errors import UseError
from zoo.models.zoo_model import TargetInfo, ZooModel


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What every use needs to know about a model, whatever backend runs it; read once from config.json."""

    name: str
    source: str
    targets: tuple[TargetInfo, ...]
    energy_target: str
    r_max: float
    max_neighbors: Optional[int]
    type_numbers: tuple[int, ...]
    periodic: bool
    needs_tags: bool
    variants: tuple[str, ...]
    dtype: torch.dtype
    elements: Optional[tuple[int, ...]] = (
        None  # atomic numbers of the training data (config metadata.elements); None: unknown
    )

    @classmethod
    def from_config(cls, config: dict, source: str) -> ModelSpec:
        """From a model directory's config.json (or the `config_json` of an export)."""
        networks = config["networks"]
        first = next(iter(networks.values()))
        energy = [name for name, c in networks.items() if c.get("forces")]
        elements = (config.get("metadata") or {}).get("elements")
        return cls(
            name=str(config.get("name") or "model"),
            source=str(source),
            targets=tuple(TargetInfo.from_dict(t) for t in config["targets"]),
            energy_target=energy[0] if energy else "",
            r_max=float(first["r_max"]),
            max_neighbors=first.get("max_neighbors"),
            type_numbers=tuple(int(z) for z in first["type_numbers"]),
            periodic=bool(first.get("periodic", False)),
            needs_tags=int(first.get("num_tags", 0)) > 0,
            variants=tuple(str(c["name"]) for c in networks.values()),
            dtype=DTYPES[str(config.get("dtype", "float32"))],
            elements=tuple(sorted(int(z) for z in elements)) if elements else None,
        )

    @classmethod
    def from_model(cls, model: ZooModel, name: str = "", source: str = "<in memory>") -> ModelSpec:
        return cls.from_config(model_config(model, name or None), source)

    def target(self, name: str) -> TargetInfo:
        for t in self.targets:
            if t.name == name:
                return t
        raise UseError(f"model {self.name} has no target {name!r}; it predicts {[t.name for t in self.targets]}")

    @property
    def type_names(self) -> list[str]:
        return element_names(self.type_numbers)

    def unseen_elements(self, species: Iterable[int]) -> list[int]:
        """Atomic numbers in `species` that the model's training data did not contain ([] when unknown)."""
        if self.elements is None:
            return []
        return sorted(set(int(z) for z in species) - set(self.elements))


def element_names(numbers: Iterable[int]) -> list[str]:
    """Chemical symbols of atomic numbers (`Z0` for a number without one)."""
    from ase.data import chemical_symbols

    return [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}" for z in numbers]
