"""AOTInductor packages (`equizoo export --format aoti`) in LAMMPS (`pair_style equiformer`) and in the C++
example, compared with the Python model and with the TorchScript path on a real MD17 aspirin frame.

AOTInductor compilation is slow on 2 cores, so ONE small float64 package (md17-l2 with 2 blocks, l <= 1
and narrow irreps, scalar C++ via cpp.simdlen=1) is compiled per session and reused by every test here.
The plugin (test_deploy_lammps's fixture, cached on disk) and the C++ example (conftest) are built once.
Metadata-level refusals (another torch version, another device) are tested on copies of that package
whose metadata record is rewritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_deploy_cpp import run_example, write_xyz
from test_deploy_lammps import (  # noqa: F401 - aspirin, plugin and workdir are fixtures shared with the LAMMPS tests
    ELEMENTS,
    _check_against_python,
    _maxwell,
    aspirin,
    export,
    make_model,
    periodic_cell_atoms,
    plugin,
    python_reference,
    read_dump,
    run_lmp,
    run_python_module,
    script,
    thermo_rows,
    workdir,
)

from zoo.lammps.build import mpirun_executable
from zoo.lammps.inputs import write_data

# md17-l2 with 2 blocks (make_model), shrunk so that the AOTInductor build stays short
TINY = dict(irreps_sh="1x0e+1x1e", irreps_node_embedding="16x0e+8x1e", irreps_head="8x0e+4x1e", num_heads=2,
            irreps_mlp_mid="32x0e+16x1e", irreps_feature="32x0e", num_basis=8, radial_hidden=(16, 16))  # fmt: skip


@pytest.fixture(autouse=True)
def _one_torch_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def aoti_model(aspirin, workdir):
    """(eager model, model.pt2, model.torchscript.pt): the same narrow float64 weights in both formats."""
    from zoo.export.aoti import export_aoti

    pos, z = aspirin
    model = make_model(torch.float64, seed=1, **TINY)
    torch.set_num_threads(1)
    pt2 = workdir / "tiny64.pt2"
    result = export_aoti(
        model, pt2, "cpu", inductor_configs={"cpp.simdlen": 1}
    )  # checked against eager on real structures
    assert result.max_abs_error <= result.tolerance
    return model, pt2, export(model, workdir / "tiny64.torchscript.pt", pos, z)


def _with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of a package whose stored metadata record differs in `changes` (the compiled code is kept)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        found = False
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("_metadata.json"):
                meta = json.loads(data)
                assert set(changes) <= set(meta), sorted(meta)
                meta.update(changes)
                data = json.dumps(meta).encode()
                found = True
            zout.writestr(info, data)
    assert found, "no metadata record in the package"
    return dst


def test_package_carries_the_lammps_metadata(aoti_model, aspirin):
    """The package itself holds what LAMMPS and C++ read (no side files), and runs like eager in Python."""
    from zoo.export.aoti import load_aoti

    model, pt2, _ = aoti_model
    runner = load_aoti(pt2)
    meta = runner.metadata
    assert meta["format"] == "equizoo-aoti/1" and meta["device"] == "cpu" and meta["torch_version"] == torch.__version__
    assert (
        float(meta["r_max"]) == model.r_max and meta["model_dtype"] == "float64" and meta["energy_target"] == "energy"
    )
    assert meta["type_numbers"].split(",") == [str(t) for t in model.type_numbers] and set(ELEMENTS) <= set(
        meta["type_names"].split(",")
    )
    assert (
        meta["targets"] == "energy" and meta["units"] == "eV" and meta["periodic"] == "0" and meta["num_layers"] == "2"
    )
    assert meta["variant"] == "md17-l2"
    assert json.loads(meta["config_json"])["targets"][0]["name"] == "energy"
    assert meta["inputs"].split(",")[-1] == "energy_weight" and {"forces", "virial"} <= set(meta["outputs"].split(","))
    pos, z = aspirin
    ref = python_reference(model, pos, z)
    from zoo.graph import radius_graph

    p = torch.tensor(pos)
    b = torch.zeros(len(z), dtype=torch.long)
    out = runner(pos=p, species=torch.tensor(z).long(), edge_index=radius_graph(p, b, model.r_max), batch=b)
    assert abs(out["energy"].item() - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"].numpy(), ref["forces"], rtol=0, atol=1e-10 * np.abs(ref["forces"]).max())


def _run0(path: Path, plugin: Path, cwd: Path, nprocs: int) -> tuple[float, dict, np.ndarray]:
    body = "\n".join(
        [
            "compute eatom all pe/atom",
            "dump d all custom 1 out.dump id x y z fx fy fz c_eatom",
            "dump_modify d format float %.17g",
            "thermo_style custom step pe press pxx pyy pzz pxy pxz pyz",
            "thermo_modify format float %.17g",
            "run 0",
        ]
    )
    _, out = run_lmp(script("aspirin.data", path, plugin, body=body), cwd, nprocs=nprocs)
    if nprocs > 1:
        assert "ghost cutoff raised to" in out  # the multi-rank path: ghost atoms are graph nodes of weight 0
    assert "AOTInductor package" in out if path.suffix == ".pt2" else "TorchScript model" in out
    row = thermo_rows(out)[0]
    dump = read_dump(cwd / "out.dump")
    return row["PotEng"], row, dump


@pytest.mark.parametrize("nprocs", [1, 2])
def test_lammps_package_matches_python(nprocs, plugin, aspirin, aoti_model, tmp_path):
    """Aspirin frame, CPU .pt2, float64: LAMMPS energy, per-atom energies and forces equal the Python model's
    to the bounds of the TorchScript path (energy 1e-10 relative), on one rank and on two; the pressure tensor
    equals the TorchScript run's."""
    if nprocs > 1 and mpirun_executable() is None:
        pytest.skip("no mpirun")
    pos, z = aspirin
    model, pt2, ts = aoti_model
    write_data(tmp_path / "aspirin.data", pos, z, ELEMENTS)
    energy, row, dump = _run0(pt2, plugin, tmp_path, nprocs)
    np.testing.assert_array_equal(np.stack([dump["x"], dump["y"], dump["z"]], 1), pos)
    ref = python_reference(model, pos, z)
    forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], 1)
    rel_e = abs(energy - ref["energy"]) / abs(ref["energy"])
    rel_f = np.abs(forces - ref["forces"]).max() / np.abs(ref["forces"]).max()
    assert rel_e <= 1e-10, (energy, ref["energy"])
    assert rel_f <= 1e-8, rel_f
    np.testing.assert_allclose(dump["c_eatom"], ref["atomic_energy"], rtol=1e-10, atol=0)
    _, ts_row, _ = _run0(ts, plugin, tmp_path, nprocs)
    press = np.array([row[k] for k in ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")])
    ts_press = np.array([ts_row[k] for k in ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")])
    np.testing.assert_allclose(press, ts_press, rtol=0, atol=1e-8 * np.abs(ts_press).max())
    print(
        f"\nLAMMPS (.pt2, {nprocs} rank(s)) vs Python, aspirin float64: energy rel {rel_e:.1e}, forces max rel {rel_f:.1e}, "
        f"pressure tensor vs TorchScript max rel {np.abs(press - ts_press).max() / np.abs(ts_press).max():.1e}"
    )


def test_lammps_package_periodic_virial(plugin, aoti_model, tmp_path):
    """A triclinic cell shorter than 2 r_max (periodic images as edges with shifts, one rank): energy, forces
    and the virial from the package equal the Python periodic graph's."""
    model, pt2, _ = aoti_model
    pos, z, cell = periodic_cell_atoms()
    write_data(tmp_path / "periodic.data", pos, z, ELEMENTS, cell=cell)
    res = run_python_module(
        script(str(tmp_path / "periodic.data"), pt2, plugin, boundary="p p p", body="run 0"), tmp_path
    )
    _, _, w_lmp, w_py = _check_against_python(res, model, z)
    print(
        f"\nperiodic cell (.pt2): LAMMPS vs Python virial max rel {np.abs(w_lmp - w_py).max() / np.abs(w_py).max():.1e}"
    )


def test_nve_drift_equals_torchscript(plugin, aspirin, aoti_model, tmp_path):
    """NVE, 100 steps of 0.5 fs of aspirin from 300 K with the .pt2 and with the TorchScript file of the same
    model: the same total energy at every thermo step, hence the same drift."""
    pos, z = aspirin
    _, pt2, ts = aoti_model
    vel, _ = _maxwell(z, 300.0, seed=4)
    write_data(tmp_path / "md.data", pos, z, ELEMENTS, velocities=vel)
    body = "\n".join(
        [
            "timestep 0.0005",
            "fix 1 all nve",
            "thermo_style custom step pe ke etotal",
            "thermo_modify format float %.17g",
            "thermo 10",
            "run 100",
        ]
    )
    etot = {}
    for name, path in (("aoti", pt2), ("torchscript", ts)):
        _, out = run_lmp(script("md.data", path, plugin, body=body), tmp_path)
        rows = thermo_rows(out)
        assert [r["Step"] for r in rows] == list(range(0, 101, 10))
        etot[name] = np.array([r["TotEng"] for r in rows])
    drift = {k: float(np.abs(v - v[0]).max()) for k, v in etot.items()}
    np.testing.assert_allclose(etot["aoti"], etot["torchscript"], rtol=1e-10, atol=0)
    assert abs(drift["aoti"] - drift["torchscript"]) <= 1e-7, drift
    print(
        f"\nNVE 100 x 0.5 fs aspirin: max |dE_tot| .pt2 {drift['aoti']:.6e} eV, TorchScript {drift['torchscript']:.6e} eV, "
        f"max |E_tot(.pt2) - E_tot(TS)| {np.abs(etot['aoti'] - etot['torchscript']).max():.1e} eV"
    )


@pytest.mark.parametrize("case", ["torch_version", "device", "explicit_device"])
def test_lammps_refuses_a_package_built_elsewhere(case, plugin, aspirin, aoti_model, tmp_path):
    """A package for another torch version or device type is refused by name, before its code is loaded."""
    pos, z = aspirin
    _, pt2, _ = aoti_model
    write_data(tmp_path / "a.data", pos, z, ELEMENTS)
    options = ""
    if case == "torch_version":
        path = _with_metadata(pt2, tmp_path / "other-torch.pt2", torch_version="2.99.0+cu130")
        expect = [f"compiled with torch 2.99.0+cu130 but this plugin runs libtorch {torch.__version__.split('+')[0]}"]
    elif case == "device":
        path = _with_metadata(pt2, tmp_path / "cuda.pt2", device="cuda")
        expect = ["was built for cuda"]
    else:
        path, options = pt2, "device cuda"
        expect = ["device mismatch", "built for cpu but pair_style asks for cuda"]
    rc, out = run_lmp(script("a.data", path, plugin, pair_options=options, body="run 0"), tmp_path, check=False)
    assert rc != 0 and "ERROR" in out
    for text in expect + ["compiled for one device type and one torch version", "--format aoti --device"]:
        assert text in out, out[-2000:]


def test_python_runner_refuses_a_package_built_elsewhere(aoti_model, tmp_path):
    """zoo's own runner reads the stored metadata before loading the compiled code, like LAMMPS and C++."""
    from zoo.export.aoti import load_aoti
    from zoo.export.trace import ExportError

    other = _with_metadata(aoti_model[1], tmp_path / "other.pt2", torch_version="2.99.0+cu130")
    with pytest.raises(
        ExportError,
        match=rf"compiled with torch 2\.99\.0\+cu130 but this is torch {re.escape(torch.__version__)};.*one torch version",
    ):
        load_aoti(other)
    cuda = _with_metadata(aoti_model[1], tmp_path / "cuda.pt2", device="cuda")
    with pytest.raises(ExportError, match="built for cuda and cannot run on cpu;.*--device cpu.cuda"):
        load_aoti(cuda)


def test_cpp_example_runs_the_package(example_binary, aspirin, aoti_model, tmp_path):
    """examples/cpp with the .pt2 prints the same energy and forces as Python (and as with TorchScript)."""
    pos, z = aspirin
    model, pt2, ts = aoti_model
    write_xyz(tmp_path / "aspirin.xyz", z, pos)
    energy, symbols, forces = run_example(example_binary, pt2, tmp_path / "aspirin.xyz")
    ref = python_reference(model, pos, z)
    assert len(symbols) == len(z)
    rel_e = abs(energy - ref["energy"]) / abs(ref["energy"])
    rel_f = np.abs(forces - ref["forces"]).max() / np.abs(ref["forces"]).max()
    assert rel_e <= 1e-10 and rel_f <= 1e-10, (rel_e, rel_f)
    e_ts, _, f_ts = run_example(example_binary, ts, tmp_path / "aspirin.xyz")
    assert abs(e_ts - energy) <= 1e-10 * abs(energy)
    np.testing.assert_allclose(forces, f_ts, rtol=0, atol=1e-10 * np.abs(f_ts).max())
    print(f"\nC++ example (.pt2) vs Python: energy {energy:.12f} eV (rel {rel_e:.1e}), forces max rel {rel_f:.1e}")


def test_cpp_example_refuses_a_package_for_another_torch(example_binary, aspirin, aoti_model, tmp_path):
    pos, z = aspirin
    path = _with_metadata(aoti_model[1], tmp_path / "old.pt2", torch_version="2.9.1+cpu")
    write_xyz(tmp_path / "aspirin.xyz", z, pos)
    proc = subprocess.run([str(example_binary), str(path), str(tmp_path / "aspirin.xyz")], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert re.search(r"compiled with torch 2\.9\.1\+cpu but this program runs libtorch 2\.\d+\.\d+", proc.stderr), (
        proc.stderr
    )
    assert "export it on this machine" in proc.stderr


def test_cli_example_runs_a_package(plugin, aoti_model, tmp_path):
    """`equizoo lammps example model.pt2` writes an input that runs the package."""
    from typer.testing import CliRunner

    from zoo.cli import app

    out_dir = tmp_path / "example"
    res = CliRunner().invoke(
        app,
        [
            "lammps",
            "example",
            str(aoti_model[1]),
            "--out",
            str(out_dir),
            "--steps",
            "4",
            "--molecule",
            "CH3CH2OH",
            "--plugin",
            str(plugin),
        ],
    )
    assert res.exit_code == 0, res.output
    inp = (out_dir / "in.equiformer").read_text()
    assert re.search(rf"pair_coeff +\* \* {re.escape(str(aoti_model[1]))} ", inp)
    _, out = run_lmp(inp, out_dir)
    assert "AOTInductor package" in out
    rows = thermo_rows(out)
    assert [r["Step"] for r in rows] == [0, 4] and all(np.isfinite(r["TotEng"]) for r in rows)


def test_model_card_states_the_compile_rule(aoti_model, tmp_path):
    """The card of a model directory holding the package says for which device and torch it was compiled."""
    from zoo.artifact import save_model_dir
    from zoo.cards import render_card
    from zoo.export.report import ExportResult, write_exports

    model, pt2, _ = aoti_model
    model_dir = save_model_dir(model, tmp_path / "model", name="tiny")
    shutil.copy(pt2, model_dir / "model.pt2")
    record = ExportResult(
        "aoti", model_dir / "model.pt2", "float64", "cpu", 0.0, 1e-9, 1.0, torch.__version__
    ).to_dict()
    write_exports(model_dir, {"aoti": record})
    text = " ".join(str(render_card(model_dir)).split())
    assert f"`model.pt2` is an AOTInductor package compiled for cpu with torch {torch.__version__}" in text
    assert (
        "it runs only on that device type and with that torch version" in text
        and "--format aoti --device cpu|cuda" in text
    )
    assert "pair_coeff * * model.pt2" in text and "Which file where" in text


def test_plugin_build_checks_the_torch_version(plugin):
    """The build compiles against headers of the torch it links (both versions named otherwise), and the
    plugin carries that version (the C++ also asserts it against the headers at compile time)."""
    import dataclasses

    from zoo.lammps.build import BuildError, check_torch_versions, find_toolchain, torch_header_version

    tc = find_toolchain()
    assert torch_header_version(tc.torch_dir) == torch.__version__.split("+")[0]
    check_torch_versions(tc)
    with pytest.raises(
        BuildError,
        match=rf"headers in .* are torch {re.escape(torch.__version__.split('+')[0])} but Python imports torch 2\.99\.0",
    ):
        check_torch_versions(dataclasses.replace(tc, torch_version="2.99.0"))
    info = json.loads((plugin.parent / "build.json").read_text())
    assert f'-DEQUIZOO_TORCH_VERSION="{torch.__version__}"' in info["command"]


def test_export_cli_documents_formats_and_the_compile_rule():
    from typer.testing import CliRunner

    from zoo.cli import app

    res = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "ONE device type" in text and "ONE torch version" in text and "LAMMPS" in text and "ONNX Runtime" in text


@pytest.mark.cuda
def test_cuda_package_matches_eager(aspirin, tmp_path):
    """A CUDA package of the narrow model: built, checked against eager on the GPU, and refused on CPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from zoo.export.aoti import export_aoti, load_aoti
    from zoo.export.trace import ExportError
    from zoo.graph import radius_graph

    pos, z = aspirin
    model = make_model(torch.float64, seed=1, **TINY)
    path = tmp_path / "cuda.pt2"
    export_aoti(model.to("cuda"), path, "cuda")
    runner = load_aoti(path, "cuda")
    assert runner.metadata["device"] == "cuda"
    model.to("cpu")
    ref = python_reference(model, pos, z)
    p = torch.tensor(pos)
    b = torch.zeros(len(z), dtype=torch.long)
    out = runner(pos=p, species=torch.tensor(z).long(), edge_index=radius_graph(p, b, model.r_max), batch=b)
    assert abs(out["energy"].item() - ref["energy"]) <= 1e-9 * abs(ref["energy"])
    np.testing.assert_allclose(
        out["forces"].cpu().numpy(), ref["forces"], rtol=0, atol=1e-9 * np.abs(ref["forces"]).max()
    )
    with pytest.raises(ExportError, match="built for cuda"):
        load_aoti(path, "cpu")
