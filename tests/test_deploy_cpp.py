"""The C++ example (examples/cpp): builds with CMake against the torch wheel's libtorch, loads an exported
model, builds the graph of an xyz molecule itself and prints the same energy and forces as Python.

Configure + compile take about 30-45 s of wall time on 2 cores (one translation unit), once per session.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from structures import qm9_molecule

from zoo.graph import radius_graph
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel


@pytest.fixture(autouse=True)
def _one_torch_thread():
    torch.set_num_threads(1)  # beside the single-threaded C++ program on 2 cores
    yield


def run_example(exe: Path, model: Path, xyz: Path) -> tuple[float, list[str], np.ndarray]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(exe), str(model), str(xyz)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    energy = float(re.search(r"^energy: (\S+)", proc.stdout, re.M).group(1))
    start = lines.index(next(ln for ln in lines if ln.startswith("forces:"))) + 1
    rows = [ln.split() for ln in lines[start:] if ln.strip()]
    return energy, [r[0] for r in rows], np.array([[float(v) for v in r[1:4]] for r in rows])


def write_xyz(path: Path, numbers, pos) -> None:
    from ase.data import chemical_symbols

    lines = [str(len(numbers)), "written by test_deploy_cpp"]
    lines += [
        f"{chemical_symbols[int(z)]} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}" for z, p in zip(numbers, pos)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "variant,dtype", [("md17-l2", torch.float64), ("md17-l2", torch.float32), ("qm9-l2", torch.float64)]
)
def test_cpp_example_matches_python(variant, dtype, example_binary, tmp_path):
    from zoo.export.torchscript import export_torchscript

    torch.manual_seed(0)
    z, pos = qm9_molecule(100001)
    if variant == "md17-l2":
        net = build_model(variant, num_layers=2)
        target = TargetInfo("energy", "eV", -1000.0, 0.5, forces_unit="eV/Å")
    else:  # a QM9 network predicting an energy-like property with forces: the example reads metadata, not names
        net = build_model(variant, num_layers=1, output="energy", forces=True)
        target = TargetInfo("U0", "eV", -400.0, 2.0, forces_unit="eV/Å")
    model = ZooModel({target.name: net}, [target]).to(dtype).eval()
    p = pos.to(dtype)
    b = torch.zeros(len(z), dtype=torch.long)
    inputs = dict(pos=p, species=z, edge_index=radius_graph(p, b, model.r_max), batch=b)
    path = export_torchscript(model, tmp_path / "model.torchscript.pt", inputs)
    ref = model(**inputs)
    write_xyz(tmp_path / "mol.xyz", z.tolist(), pos.numpy())

    energy, symbols, forces = run_example(example_binary, path, tmp_path / "mol.xyz")
    assert len(symbols) == len(z)
    e_ref = ref[target.name].item()
    f_ref = ref["forces"].detach().double().numpy()
    # the C++ side reads float64 positions from the file; float32 rounds them like Python's .to(float32)
    rtol = 1e-10 if dtype == torch.float64 else 1e-6
    assert abs(energy - e_ref) <= rtol * abs(e_ref), (energy, e_ref)
    np.testing.assert_allclose(
        forces, f_ref, rtol=0, atol=(1e-10 if dtype == torch.float64 else 1e-5) * np.abs(f_ref).max()
    )
    if dtype == torch.float64 and variant == "md17-l2":
        print(
            f"\nC++ vs Python ({variant}, float64): energy rel {abs(energy - e_ref) / abs(e_ref):.1e}, "
            f"forces max rel {np.abs(forces - f_ref).max() / np.abs(f_ref).max():.1e}"
        )


def test_cpp_example_errors(example_binary, tmp_path):
    from zoo.export.torchscript import export_torchscript

    torch.manual_seed(0)
    model = (
        ZooModel({"energy": build_model("md17-l2", num_layers=1, type_numbers=(1, 6, 8))}, [TargetInfo("energy", "eV")])
        .double()
        .eval()
    )
    path = export_torchscript(model, tmp_path / "m.pt")
    (tmp_path / "nacl.xyz").write_text("2\n\nNa 0 0 0\nCl 2.8 0 0\n")
    (tmp_path / "bad.xyz").write_text("two\n\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cases = [
        ([str(path), str(tmp_path / "nacl.xyz")], "element Na is not known to the model"),
        ([str(path), str(tmp_path / "bad.xyz")], "first line must be the number of atoms"),
        ([str(tmp_path / "missing.pt"), str(tmp_path / "nacl.xyz")], "error:"),
    ]
    for args, expect in cases:
        proc = subprocess.run([str(example_binary), *args], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode != 0 and expect in proc.stderr, proc.stderr
