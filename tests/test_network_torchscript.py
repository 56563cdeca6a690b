"""TorchScript round trips (script, save, load, run) equal eager for every variant; dtypes; CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from structures import oc20_adslab, qm9_molecule

from zoo import keys
from zoo.graph import periodic_graph, radius_graph
from zoo.models import build_model, get_variant, list_variants


def _inputs(name: str, dtype: torch.dtype, device: str = "cpu") -> dict:
    if get_variant(name).periodic:
        atoms = oc20_adslab()
        z = torch.from_numpy(atoms.numbers).long()
        pos = torch.from_numpy(atoms.positions).to(dtype)
        cell = torch.from_numpy(np.asarray(atoms.cell)).to(dtype)
        batch = torch.zeros(len(z), dtype=torch.long)
        edge_index, _, shift = periodic_graph(pos, cell[None], torch.ones(1, 3, dtype=torch.bool), batch, 5.0)
        extra = {"edge_shift": shift, "tags": torch.from_numpy(atoms.get_tags()).long()}
    else:
        z1, p1 = qm9_molecule(5000)
        z2, p2 = qm9_molecule(100001)
        z, pos = torch.cat([z1, z2]), torch.cat([p1, p2]).to(dtype)
        batch = torch.cat([torch.zeros(len(z1)), torch.ones(len(z2))]).long()
        edge_index = radius_graph(pos, batch, 5.0)
        extra = {}
    args = {"pos": pos, "species": z, "edge_index": edge_index, "batch": batch, **extra}
    return {k: v.to(device) for k, v in args.items()}


@pytest.mark.parametrize("name", list_variants())
def test_torchscript_round_trip_matches_eager(name, tmp_path):
    torch.manual_seed(3)
    model = build_model(name).double().eval()
    model.compute_forces = True
    inputs = _inputs(name, torch.float64)
    eager = model(**inputs)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path), _extra_files={"variant": name})
    extra = {"variant": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert extra["variant"] in (name, name.encode())
    with torch.jit.optimized_execution(False):  # skip profiling passes: same numbers, faster first call
        scripted = loaded(**inputs)
    assert set(scripted) == set(eager)
    for key in eager:
        torch.testing.assert_close(scripted[key], eager[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["qm9-l2", "md17-l3", "oc20-l1-aux"])
def test_float32_and_float64_agree(name):
    torch.manual_seed(3)
    model = build_model(name).eval()
    out32 = model.float()(**_inputs(name, torch.float32))
    out64 = model.double()(**_inputs(name, torch.float64))
    for key in out64:
        assert out32[key].dtype == torch.float32
        torch.testing.assert_close(out32[key].double(), out64[key], rtol=1e-4, atol=1e-4)


def test_training_mode_forces_are_differentiable():
    torch.manual_seed(3)
    model = build_model("md17-l2").train()
    out = model(**_inputs("md17-l2", torch.float32))
    loss = out[keys.FORCES].pow(2).mean() + out[keys.ENERGY].abs().mean()
    loss.backward()
    grad = model.blocks[0].attn.sep_act.dtp_rad.net[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["qm9-l2", "md17-l2", "oc20-l1"])
def test_cuda_matches_cpu(name):
    torch.manual_seed(3)
    model = build_model(name).double().eval()
    cpu = model(**_inputs(name, torch.float64))
    gpu = model.cuda()(**_inputs(name, torch.float64, "cuda"))
    for key in cpu:
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-9, atol=1e-9)
