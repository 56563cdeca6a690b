"""Parity with the authors' reference code: converted reference weights reproduce its float64 outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from zoo import keys
from zoo.convert import load_reference
from zoo.graph import periodic_graph, radius_graph

CASES = {
    "qm9_nonlinear_l2": "qm9-l2",
    "qm9_linear_l2": "qm9-l2-linear",
    "qm9_dotproduct_l2": "qm9-l2-dot",
    "md17_l2": "md17-l2",
    "md17_l3": "md17-l3",
    "oc20_l1": "oc20-l1",
    "oc20_l1_aux": "oc20-l1-aux",
}
TOL = 1e-9


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("case,variant", CASES.items())
def test_reference_parity(golden_dir, case, variant):
    model = load_reference(golden_dir / f"{case}.weights.safetensors", variant, dtype=torch.float64)
    io = load_file(str(golden_dir / f"{case}.io.safetensors"))
    index = json.loads((golden_dir / ("index_oc20.json" if "oc20" in case else "index_all.json")).read_text())[case]
    assert sum(p.numel() for p in model.parameters()) == index["n_params_trainable"]
    reference_energy = io["energy"].flatten()

    runs = []
    if case.startswith("oc20"):
        pos, species, batch, cell = io["pos"], io["atomic_numbers"], io["batch"], io["cell"]
        stored = io["edge_index"]
        stored_shift = torch.einsum("ei,eij->ej", io["cell_offsets"].double(), cell[batch[stored[1]]])
        runs.append(("stored graph", stored, stored_shift))
        own, offsets, own_shift = periodic_graph(
            pos, cell, torch.ones(len(cell), 3, dtype=torch.bool), batch, model.r_max
        )
        assert own.shape[1] == index["n_edges"]
        runs.append(("equizoo graph", own, own_shift))
        extra = {"tags": io["tags"]}
    else:
        pos, species, batch = io["pos"], io["z"], io["batch"]
        runs.append(("equizoo graph", radius_graph(pos, batch, model.r_max), None))
        extra = {}

    for label, edge_index, shift in runs:
        out = model(pos, species, edge_index, batch, edge_shift=shift, **extra)
        assert _rel(out[model.output_key], reference_energy) <= TOL, label
        assert torch.allclose(
            out[model.atomic_key].new_zeros(len(reference_energy)).index_add(0, batch, out[model.atomic_key]),
            out[model.output_key],
            rtol=1e-12,
            atol=1e-12,
        )
        if "forces" in io:
            assert _rel(out[keys.FORCES], io["forces"]) <= TOL, label
        if "aux_displacement" in io:
            assert _rel(out[keys.AUX_DISPLACEMENT], io["aux_displacement"]) <= TOL, label


def test_reference_checkpoint_formats(golden_dir, tmp_path):
    """torch.save'd reference dicts (DDP 'module.' prefix, 'state_dict' key) load with weights_only."""
    state = load_file(str(golden_dir / "qm9_linear_l2.weights.safetensors"))
    path = tmp_path / "best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    io = load_file(str(golden_dir / "qm9_linear_l2.io.safetensors"))
    model = load_reference(path, "qm9-l2-linear", dtype=torch.float64)
    out = model(io["pos"], io["z"], radius_graph(io["pos"], io["batch"], 5.0), io["batch"])
    assert _rel(out[keys.PROPERTY], io["energy"].flatten()) <= TOL


def test_wrong_variant_is_a_clear_error(golden_dir):
    from zoo.convert import ConversionError

    with pytest.raises(ConversionError, match="qm9-l2-dot"):
        load_reference(golden_dir / "qm9_linear_l2.weights.safetensors", "qm9-l2-dot")
