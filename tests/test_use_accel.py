"""Accelerated runners: padding to capacity buckets leaves the real outputs unchanged (what CUDA graphs
replay), the compiled runner is checked against eager when made and drives predict and the calculator,
and bad requests (CUDA graphs without CUDA) fail with one clear error. The CUDA-graph capture itself
runs only where a GPU is (marked cuda)."""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest
import torch
from clihelpers import run_cli
from test_use_support import REPO, SMALL_L1, md17_model, model_dir, oc20_model, qm9_model

from zoo import accel
from zoo.calculators import EquiformerCalculator
from zoo.data import read_structures
from zoo.errors import UseError
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel
from zoo.use.predict import Predictor, model_inputs
from zoo.use.runner import load_runner

ASPIRIN = REPO / "examples" / "aspirin_md17.extxyz"
OC20 = REPO / "examples" / "oc20_adslab.json"
QM9 = REPO / "examples" / "qm9_molecules.extxyz"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_buckets_grow_in_quarter_steps():
    assert [accel.bucket(n) for n in (0, 1, 8, 9, 16, 17, 21, 33, 100, 1000)] == [
        8,
        8,
        8,
        10,
        16,
        20,
        24,
        40,
        112,
        1024,
    ]
    for n in range(1, 5000):
        b = accel.bucket(n)
        assert n <= b <= max(8, 1.25 * n)
    assert accel.capacity_for(21, 400, 1) == (24, 448, 2)


def _padded_vs_plain(model, structures, virial=False, extra=(0, 0, 0)):
    info_model = model
    from zoo.spec import ModelSpec

    info = ModelSpec.from_model(info_model)
    inputs, n = model_inputs(structures, info, torch.device("cpu"), torch.float64)
    model.compute_virial = virial
    try:
        plain = {k: v.detach() for k, v in model(**inputs, num_graphs=n).items()}
        cap = accel.capacity_for(inputs["pos"].shape[0], inputs["edge_index"].shape[1], n)
        cap = tuple(c + x for c, x in zip(cap, extra))
        padded_inputs = accel.pad_inputs(inputs, n, cap, info.type_numbers[0], 0.5 * info.r_max)
        assert padded_inputs["pos"].shape[0] == cap[0] and padded_inputs["edge_index"].shape[1] == cap[1]
        padded = accel.unpad_outputs(model(**padded_inputs, num_graphs=cap[2]), inputs["pos"].shape[0], n)
    finally:
        model.compute_virial = False
    return plain, padded


def _assert_same(plain, padded):
    assert set(plain) == set(padded)
    for k in plain:
        assert padded[k].shape == plain[k].shape, k
        scale = float(plain[k].abs().max())
        assert float((padded[k] - plain[k]).abs().max()) <= 1e-12 * max(scale, 1.0), k


def test_padding_atoms_and_edges_contribute_exactly_nothing():
    frames = read_structures(ASPIRIN)[:2]
    plain, padded = _padded_vs_plain(md17_model(), frames)
    _assert_same(plain, padded)
    assert {"energy", "atomic_energy", "forces"} <= set(plain)
    # much more padding than a bucket adds, several empty padding structures
    _assert_same(*_padded_vs_plain(md17_model(), frames[:1], extra=(40, 700, 3)))


def test_padding_keeps_periodic_virials_tags_and_every_qm9_target():
    slab = read_structures(OC20)
    _assert_same(*_padded_vs_plain(oc20_model(), slab))
    torch.manual_seed(0)
    force_field = (
        ZooModel({"energy": build_model("oc20-l1", **SMALL_L1, forces=True)}, [TargetInfo("energy", "eV")])
        .double()
        .eval()
    )
    plain, padded = _padded_vs_plain(force_field, slab, virial=True)
    _assert_same(plain, padded)
    assert plain["virial"].shape == (1, 3, 3) and plain["forces"].shape == (slab[0].n_atoms, 3)
    molecules = read_structures(QM9)[:3]
    plain, padded = _padded_vs_plain(qm9_model(), molecules)
    _assert_same(plain, padded)
    assert {"mu", "homo", "gap"} <= set(plain)


def test_pad_inputs_refuses_a_capacity_without_room():
    frames = read_structures(ASPIRIN)[:1]
    model = md17_model()
    from zoo.spec import ModelSpec

    inputs, n = model_inputs(frames, ModelSpec.from_model(model), torch.device("cpu"), torch.float64)
    with pytest.raises(ValueError, match="too small"):
        accel.pad_inputs(inputs, n, (21, 10_000, 2), 1, 2.5)


def test_cuda_graphs_without_cuda_is_one_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UseError, match="--cuda-graphs needs a CUDA device"):
        load_runner(model_dir("md17"), device="cpu", cuda_graphs=True)
    with pytest.raises(UseError, match="cannot be combined"):
        load_runner(model_dir("md17"), backend="torchscript", cuda_graphs=True)
    proc = run_cli("predict", ASPIRIN, "--model", model_dir("md17"), "--cuda-graphs", "-o", tmp_path / "out.csv")
    assert proc.returncode == 2 and "--cuda-graphs needs a CUDA device" in proc.stderr
    assert not (tmp_path / "out.csv").exists()


def test_a_compiled_model_that_differs_from_eager_is_refused(monkeypatch):
    class Off(accel.CompiledModel):
        def __init__(self, model, fullgraph=None, backend=None):
            self.model = model  # no torch.compile: only the check is under test

        def __call__(self, **inputs):
            out = dict(self.model(**inputs))
            out["forces"] = out["forces"] * (1 + 1e-3)
            return out

    monkeypatch.setattr(accel, "compile_model", lambda model, fullgraph=None, backend=None: Off(model))
    with pytest.raises(UseError, match="differs from eager on output 'forces'"):
        load_runner(md17_model(torch.float32), backend="compile", device="cpu")


# --- torch.compile ---------------------------------------------------------------------------------
# Dynamo only (the `eager` compile backend): it captures the graphs, guards and dynamic shapes the
# runner relies on; Inductor's code generation takes minutes on two cores and is checked on the GPU.
@pytest.fixture(scope="session")
def compiled():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = TargetInfo("energy", "eV", mean=-17630.0, std=0.2, forces_unit="eV/Å")
    model = ZooModel({"energy": build_model("md17-l2", **dict(SMALL_L1, num_layers=1))}, [target]).float().eval()
    old = os.environ.get(accel.COMPILE_BACKEND_ENV)
    os.environ[accel.COMPILE_BACKEND_ENV] = "eager"
    try:
        runner = load_runner(model, backend="compile", device="cpu")  # checked against eager here
    finally:
        if old is None:
            os.environ.pop(accel.COMPILE_BACKEND_ENV)
        else:
            os.environ[accel.COMPILE_BACKEND_ENV] = old
    return model, runner


def test_compiled_runner_matches_eager_in_predict_and_the_calculator(compiled):
    model, runner = compiled
    assert (
        runner.backend == "compile"
        and isinstance(runner.module, accel.CompiledModel)
        and runner.module.backend == "eager"
    )
    eager = Predictor(model, device="cpu").run(str(ASPIRIN) + "@:2", batch_size=2).frame()
    fast = Predictor(runner).run(str(ASPIRIN) + "@:2", batch_size=2).frame()
    assert list(fast["status"]) == ["ok", "ok"]
    assert np.allclose(fast["energy [eV]"], eager["energy [eV]"], rtol=1e-6, atol=0)
    for a, b in zip(fast["forces [eV/Å]"], eager["forces [eV/Å]"]):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    atoms = ase.io.read(ASPIRIN, index=0)
    atoms.calc = EquiformerCalculator(runner)
    forces = atoms.get_forces()
    atoms.calc = EquiformerCalculator(model, device="cpu")
    assert np.abs(forces - atoms.get_forces()).max() <= 1e-5 * np.abs(forces).max()


# --- CUDA graphs -----------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_runner_replays_buckets_and_matches_eager():
    model = md17_model(torch.float32)
    runner = load_runner(model, device="cuda", cuda_graphs=True)  # checked against eager here
    assert runner.backend == "eager+cuda-graphs"
    eager = load_runner(model, device="cuda")
    frames = read_structures(ASPIRIN)
    info = runner.info
    checked = len(runner.module.graphs)  # the buckets the check against eager captured
    for count in (1, 1, 2, 3, 1):
        inputs, n = model_inputs(frames[:count], info, runner.device, runner.dtype)
        ref, got = eager(inputs, n), runner(inputs, n)
        for name, diff in accel.relative_difference(ref, got).items():
            assert diff <= 1e-5, (name, diff)
    assert (
        len(runner.module.graphs) - checked <= 3
    )  # at most one new capture per size (1, 2, 3 frames), replayed when repeated
    atoms = ase.io.read(ASPIRIN, index=0)
    atoms.calc = EquiformerCalculator(model, device="cuda", cuda_graphs=True, skin=0.5)
    f0 = atoms.get_forces()
    atoms.positions += 0.01
    f1 = atoms.get_forces()
    atoms.calc = EquiformerCalculator(model, device="cuda")
    assert np.abs(f1 - atoms.get_forces()).max() <= 1e-5 * np.abs(f1).max() and not np.allclose(f0, f1)


def test_loaded_models_take_their_weights_as_constants_and_passed_ones_keep_theirs():
    """A runner over a model it loads (eager, or TorchScript made or read there) freezes the weights, so that
    forces trace only the positions; a module passed in may still be trained and is left as it is. Both give
    the same forces."""
    from test_use_support import exported_model_dir

    from zoo.spec import ModelSpec

    frames = read_structures(str(ASPIRIN))[:2]
    passed = md17_model()  # the weights model_dir("md17") saved
    runners = {
        "passed": load_runner(passed, device="cpu"),
        "eager": load_runner(model_dir("md17"), device="cpu"),
        "scripted": load_runner(model_dir("md17"), backend="torchscript", device="cpu"),
        "torchscript file": load_runner(exported_model_dir("md17", "torchscript"), backend="torchscript", device="cpu"),
    }
    assert all(p.requires_grad for p in passed.parameters())
    for name, runner in runners.items():
        frozen = [not p.requires_grad for p in runner.module.parameters()]
        assert frozen and all(frozen) == (name != "passed"), name
    inputs, n = model_inputs(frames, ModelSpec.from_model(passed), torch.device("cpu"), torch.float64)
    reference = runners["passed"](inputs, n)
    for name, runner in runners.items():
        out = runner(inputs, n)
        assert torch.allclose(out["forces"], reference["forces"], rtol=0, atol=1e-12), name
        assert torch.allclose(out["energy"], reference["energy"], rtol=0, atol=1e-10), name
