"""The network's hyperparameters as data: every published variant is one `EquiformerConfig`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ase.data import chemical_symbols

ATTENTIONS = ("mlp_nonlinear", "mlp_linear", "dot_product")
RADIAL_BASES = ("gaussian", "bessel", "exp_normal")
OUTPUTS = ("property", "energy")


@dataclass(frozen=True)
class EquiformerConfig:
    """Hyperparameters of an Equiformer network (names follow the paper; irreps are e3nn strings).

    `type_numbers[t]` is the atomic number of embedding type t (QM9: H C N O F; MD17/OC20: Z itself, with
    64 / 84 types as in the reference). `avg_num_nodes` and `avg_degree` are the reference's fixed
    normalisation constants (sum pooling / sqrt(avg_num_nodes); edge-degree embedding / sqrt(avg_degree)).
    `cg_float32` rounds the depthwise tensor products' Clebsch-Gordan coefficients (paths with l > 0) to
    float32, as stored in the e3nn 0.4.4 buffers of the authors' checkpoints: set by the converter so that a
    converted model reproduces the reference bit for bit in float64.
    """

    name: str
    description: str
    num_layers: int
    irreps_node_embedding: str
    irreps_sh: str
    irreps_head: str
    num_heads: int
    irreps_mlp_mid: str
    irreps_feature: str
    type_numbers: tuple[int, ...]
    avg_num_nodes: float
    avg_degree: float
    irreps_pre_attn: Optional[str] = None
    attention: str = "mlp_nonlinear"
    radial_basis: str = "gaussian"
    num_basis: int = 128
    radial_hidden: tuple[int, ...] = (64, 64)
    r_max: float = 5.0
    max_neighbors: Optional[int] = None
    alpha_drop: float = 0.0
    drop_path: float = 0.0
    num_tags: int = 0
    aux_head: bool = False
    periodic: bool = False
    output: str = "property"
    forces: bool = False
    cg_float32: bool = False
    paper_params: Optional[int] = None
    reference: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.radial_basis not in RADIAL_BASES:
            raise ValueError(f"radial_basis must be one of {RADIAL_BASES}, got {self.radial_basis!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.num_layers < 1 or self.num_heads < 1:
            raise ValueError("num_layers and num_heads must be positive")
        if self.r_max <= 0:
            raise ValueError(f"r_max must be positive, got {self.r_max}")

    @property
    def lmax(self) -> int:
        from e3nn import o3

        return o3.Irreps(self.irreps_node_embedding).lmax

    @property
    def type_names(self) -> list[str]:
        return [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}" for z in self.type_numbers]

    def replace(self, **changes: Any) -> EquiformerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["type_numbers"] = list(self.type_numbers)
        d["radial_hidden"] = list(self.radial_hidden)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> EquiformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Equiformer config keys {unknown}; known keys: {sorted(known)}")
        d = dict(d)
        for key in ("type_numbers", "radial_hidden"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
