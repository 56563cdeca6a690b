"""The one forward-input builder: structures -> the network's forward arguments with the neighbour graph at
r_max (built on the CPU in float64, then moved to the device and dtype). Predict, eval, bench, the ASE
calculator, export checks and the LAMMPS example all build their inputs here."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from zoo import keys
from zoo.data import Structure, collate
from zoo.graph import attach_graph

FORWARD_KEYS = ("pos", "species", "edge_index", "batch", "edge_shift", "tags")  # ZooModel.forward's tensors


def forward_inputs(batch: dict, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float64) -> dict:
    """Forward arguments (FORWARD_KEYS) of a collated batch with its graph, on `device`; floats in `dtype`."""
    return {
        "pos": batch[keys.POSITIONS].to(device=device, dtype=dtype),
        "species": batch[keys.SPECIES].to(device),
        "edge_index": batch[keys.EDGE_INDEX].to(device),
        "batch": batch[keys.BATCH].to(device),
        "edge_shift": batch[keys.EDGE_SHIFT].to(device=device, dtype=dtype),
        "tags": batch[keys.TAGS].to(device),
    }


def structure_inputs(
    structures: Sequence[Structure],
    r_max: float,
    max_neighbors: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[dict, int]:
    """(forward arguments, number of structures) of `structures` with their neighbour graph at `r_max`."""
    batch = attach_graph(collate(structures, targets=[], dtype=torch.float64), r_max, max_neighbors)
    return forward_inputs(batch, device, dtype), len(structures)
