"""`zoo.predict` and `equizoo predict` on real structures: outputs, units, per-structure errors, backends,
output files, exit codes and the embedded default model."""

from __future__ import annotations

import json

import ase
import ase.io
import numpy as np
import pandas as pd
import pytest
import torch
from clihelpers import run_cli
from test_use_support import QM9_TEST_TARGETS, REPO, exported_model_dir, model_dir

import zoo
from zoo.artifact import load_model_dir
from zoo.data import read_structures
from zoo.errors import UseError
from zoo.graph import periodic_graph, radius_graph
from zoo.pretrained import DefaultModelMissing, default_model_dir, install_default_model
from zoo.use.inputs import oc20_tags
from zoo.use.predict import Predictor, plan_batches

ASPIRIN_EXAMPLE = REPO / "examples" / "aspirin_md17.extxyz"


pytestmark = pytest.mark.usefixtures("one_thread")


def _direct(model_path, species, positions, cell=None, pbc=None, tags=None):
    """Outputs of the ZooModel on one structure with a graph built here (not through zoo.predict)."""
    model = load_model_dir(model_path)
    pos = torch.tensor(positions, dtype=torch.float64)
    batch = torch.zeros(len(species), dtype=torch.long)
    if pbc is not None and np.any(pbc):
        edge_index, _, shift = periodic_graph(
            pos, torch.tensor(cell)[None], torch.tensor(pbc)[None], batch, model.r_max
        )
    else:
        edge_index, shift = radius_graph(pos, batch, model.r_max), None
    tag_tensor = torch.tensor(tags) if tags is not None else None
    out = model(pos, torch.tensor(species), edge_index, batch, edge_shift=shift, tags=tag_tensor)
    return {k: v.detach().numpy() for k, v in out.items()}


def test_qm9_model_predicts_every_target_with_units(shared_data):
    files = sorted((shared_data / "qm9" / "dsgdb9nsd_xyz_samples").glob("*.xyz"))
    frame = zoo.predict([str(shared_data / "qm9" / "dsgdb9nsd_xyz_samples" / "*.xyz")], model_dir("qm9"), batch_size=4)
    assert len(frame) == len(files) == 20
    assert [c for c in frame.columns if "[" in c] == ["mu [D]", "homo [eV]", "gap [eV]"]
    assert (frame["status"] == "ok").all() and frame["formula"].iloc[0] == "CH4"
    row = frame.set_index("name").loc["dsgdb9nsd_100001"]
    s = read_structures(shared_data / "qm9" / "dsgdb9nsd_xyz_samples" / "dsgdb9nsd_100001.xyz")[0]
    direct = _direct(model_dir("qm9"), s.species, s.positions)
    for t in QM9_TEST_TARGETS:
        assert row[[c for c in frame.columns if c.startswith(t + " [")][0]] == pytest.approx(
            float(direct[t][0]), abs=1e-10
        )


def test_bad_structures_are_reported_and_the_rest_still_run(tmp_path):
    frames = ase.io.read(ASPIRIN_EXAMPLE, index=":")
    nan = frames[1].copy()
    nan.positions[3, 1] = np.nan
    gold = frames[2].copy()
    gold.numbers[0] = 79  # Au: outside the md17 type list (Z < 64)
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [frames[0], nan, gold, frames[3]], format="extxyz")
    result = Predictor(model_dir("md17")).run([path])
    frame = result.frame()
    assert list(frame["status"]) == ["ok", "error", "error", "ok"]
    assert "non-finite" in frame["error"][1] and "atom 3" in frame["error"][1]
    assert "Au" in frame["error"][2] and "not among the model's types" in frame["error"][2]
    assert np.isnan(frame["energy [eV]"][1]) and frame["forces [eV/Å]"][1] is None
    direct = _direct(model_dir("md17"), frames[3].numbers, frames[3].positions)
    assert frame["energy [eV]"][3] == pytest.approx(float(direct["energy"][0]), abs=1e-8)
    np.testing.assert_allclose(frame["forces [eV/Å]"][3], direct["forces"], atol=1e-10)
    np.testing.assert_allclose(frame["atomic_energy [eV]"][3].sum(), frame["energy [eV]"][3], rtol=1e-12)


def test_oc20_tags_from_the_file_and_clear_errors_without_them(shared_data):
    adslab = ase.io.read(shared_data / "oc20" / "oc20_adslab_frame.json")
    no_tags = adslab.copy()
    del no_tags.arrays["tags"]
    molecule = ase.io.read(ASPIRIN_EXAMPLE)
    frame = zoo.predict([adslab, no_tags, molecule], model_dir("oc20"))
    assert list(frame["status"]) == ["ok", "error", "error"]
    assert "no tags" in frame["error"][1] and "0 subsurface, 1 surface, 2 adsorbate" in frame["error"][1]
    assert "periodic" in frame["error"][2]
    fixed = adslab.constraints[0].get_indices()
    expected = np.where(adslab.get_tags() == 1, 2, 1)
    expected[fixed] = 0
    direct = _direct(model_dir("oc20"), adslab.numbers, adslab.positions, adslab.cell[:], adslab.pbc, expected)
    assert frame["energy [eV]"][0] == pytest.approx(float(direct["energy"][0]), abs=1e-10)
    assert list(frame.columns[frame.columns.str.contains(r"\[")]) == ["energy [eV]"]  # adsorption energy only


def test_oc20_tag_conventions():
    from zoo.data import Structure

    pos = np.zeros((4, 3))
    ocp = Structure(species=[29, 29, 6, 8], positions=pos, tags=[0, 1, 2, 2])
    assert oc20_tags(ocp)[0].tolist() == [0, 1, 2, 2]
    fairchem = Structure(species=[29, 29, 6, 8], positions=pos, tags=[0, 0, 1, 1], fixed=[True, False, False, False])
    assert oc20_tags(fairchem)[0].tolist() == [0, 1, 2, 2]
    layers = Structure(species=[29, 29, 6, 8], positions=pos, tags=[3, 4, 0, 0])
    assert oc20_tags(layers)[0] is None and "not OC20 tags" in oc20_tags(layers)[1]


def test_batches_group_by_atom_count():
    batches = plan_batches([5, 30, 6, 29, 4], batch_size=2, max_atoms=40)
    assert batches == [[4, 0], [2, 3], [1]]  # 6 + 29 atoms fit the budget of 40, 29 + 30 do not
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_torchscript_backends_equal_eager(tmp_path, shared_data):
    from zoo.export.torchscript import export_torchscript

    files = [str(ASPIRIN_EXAMPLE), str(shared_data / "oc20" / "oc20_adslab_frame.json")]
    eager = zoo.predict(files, model_dir("md17"))
    scripted = zoo.predict(files, model_dir("md17"), backend="torchscript")
    pd.testing.assert_series_equal(eager["energy [eV]"], scripted["energy [eV]"], atol=1e-9, rtol=0)
    assert np.isfinite(eager["stress_xx [eV/Å^3]"][5]) and np.isnan(eager["stress_xx [eV/Å^3]"][0])
    assert scripted["stress_xx [eV/Å^3]"][5] == pytest.approx(eager["stress_xx [eV/Å^3]"][5], abs=1e-12)
    exported = tmp_path / "exported.pt"
    export_torchscript(load_model_dir(model_dir("md17")), exported)
    from_file = zoo.predict(files[:1], exported)
    np.testing.assert_allclose(np.stack(from_file["forces [eV/Å]"]), np.stack(eager["forces [eV/Å]"][:5]), atol=1e-10)


@pytest.mark.slow
def test_onnx_backend_equals_eager():
    pytest.importorskip("onnxruntime")
    exported = exported_model_dir("md17", "onnx")  # about a minute of CPU to export and check
    eager = zoo.predict(str(ASPIRIN_EXAMPLE), exported)
    onnx = zoo.predict(str(ASPIRIN_EXAMPLE), exported, backend="onnx")
    np.testing.assert_allclose(onnx["energy [eV]"], eager["energy [eV]"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.stack(onnx["forces [eV/Å]"]), np.stack(eager["forces [eV/Å]"]), rtol=0, atol=1e-9)
    with pytest.raises(UseError, match="exported in"):
        Predictor(exported, backend="onnx", dtype="float32")


def test_exported_backends_need_their_files():
    for backend in ("onnx", "aoti"):
        with pytest.raises(UseError, match="equizoo export"):
            Predictor(model_dir("qm9"), backend=backend)
    with pytest.raises(UseError, match="unknown backend"):
        Predictor(model_dir("qm9"), backend="tensorrt")
    with pytest.raises(UseError, match="no such file"):
        zoo.predict("/nonexistent/structures.xyz", model_dir("qm9"))
    with pytest.raises(UseError, match="no_model_dir: no such model directory"):
        zoo.predict(str(ASPIRIN_EXAMPLE), "./no_model_dir")


def test_extxyz_and_json_outputs_round_trip(tmp_path):
    result = Predictor(model_dir("md17")).run(str(ASPIRIN_EXAMPLE))
    result.write(tmp_path / "out.extxyz")
    result.write(tmp_path / "out.json")
    back = ase.io.read(tmp_path / "out.extxyz", index=":")
    frame = result.frame()
    assert len(back) == 5 and back[0].info["units"].startswith("energy=eV forces=eV/Å")
    assert back[2].get_potential_energy() == pytest.approx(frame["energy [eV]"][2], abs=1e-8)
    np.testing.assert_allclose(back[2].get_forces(), frame["forces [eV/Å]"][2], atol=1e-7)
    payload = json.loads((tmp_path / "out.json").read_text())
    assert payload["n_structures"] == 5 and payload["units"]["forces [eV/Å]"] == "eV/Å"
    np.testing.assert_allclose(payload["structures"][4]["forces [eV/Å]"], frame["forces [eV/Å]"][4])


def test_default_model_mechanism(tmp_path, monkeypatch):
    from zoo import pretrained

    monkeypatch.delenv(pretrained.ENV_VAR, raising=False)
    monkeypatch.setattr(pretrained, "PACKAGE_DIR", tmp_path / "missing")
    with pytest.raises(DefaultModelMissing, match="--model"):
        zoo.predict(str(ASPIRIN_EXAMPLE))
    installed = install_default_model(model_dir("md17"), target=tmp_path / "default")
    monkeypatch.setattr(pretrained, "PACKAGE_DIR", installed)
    assert default_model_dir() == installed
    frame = zoo.predict(str(ASPIRIN_EXAMPLE), batch_size=2)
    assert frame.attrs["model"] == "test-md17-small" and (frame["status"] == "ok").all()
    monkeypatch.setenv(pretrained.ENV_VAR, str(model_dir("qm9")))
    assert list(zoo.predict(str(ASPIRIN_EXAMPLE)).columns[7:]) == ["mu [D]", "homo [eV]", "gap [eV]"]
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path / "nowhere" / "model"))
    with pytest.raises(DefaultModelMissing, match="EQUIZOO_DEFAULT_MODEL"):
        default_model_dir()


def test_cli_predict_readme_example_with_the_default_model(tmp_path):
    out = tmp_path / "aspirin.csv"
    proc = run_cli(
        "predict",
        ASPIRIN_EXAMPLE,
        "--output",
        out,
        "--batch-size",
        "2",
        env={"EQUIZOO_DEFAULT_MODEL": str(model_dir("md17"))},
    )
    assert proc.returncode == 0, proc.stderr
    assert "energy [eV]" in proc.stdout and "5 of 5 structures predicted" in proc.stdout
    written = pd.read_csv(out)
    assert list(written.columns) == ["file", "frame", "name", "formula", "n_atoms", "status", "error", "energy [eV]"]
    api = zoo.predict(str(ASPIRIN_EXAMPLE), model_dir("md17"))
    np.testing.assert_allclose(written["energy [eV]"], api["energy [eV]"], rtol=0, atol=1e-9)


def test_cli_predict_partial_failure_exit_code_and_extxyz(tmp_path):
    frames = ase.io.read(ASPIRIN_EXAMPLE, index=":3")
    bad = frames[1].copy()
    bad.positions[0, 0] = np.nan
    path = tmp_path / "with_bad.extxyz"
    ase.io.write(path, [frames[0], bad, frames[2]], format="extxyz")
    out = tmp_path / "out.extxyz"
    proc = run_cli("predict", path, "--model", model_dir("md17"), "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert "frame 1" in proc.stderr and "non-finite" in proc.stderr and "2 of 3 structures predicted" in proc.stderr
    back = ase.io.read(out, index=":")
    assert [a.info["source_frame"] for a in back] == [0, 2]
    api = zoo.predict([frames[0], frames[2]], model_dir("md17"))
    for atoms, forces, energy in zip(back, api["forces [eV/Å]"], api["energy [eV]"]):
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-7)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-8)


def test_cli_predict_oc20_lmdb_and_json(tmp_path, shared_data):
    lmdb = f"{shared_data / 'oc20' / 'format_reference_not_oc20' / 'val.lmdb'}@:20"  # record 25's cell is near singular: slow
    adslab = shared_data / "oc20" / "oc20_adslab_frame.json"
    out = tmp_path / "oc20.json"
    proc = run_cli(
        "predict", adslab, lmdb, "--model", model_dir("oc20"), "-o", out, "--batch-size", "16", "--rows", "3"
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    assert payload["n_structures"] == 21 and payload["n_failed"] == 0 and payload["units"] == {"energy [eV]": "eV"}
    assert [r["frame"] for r in payload["structures"]] == [0, *range(20)] and payload["structures"][1][
        "name"
    ] == "sid 0"
    api = zoo.predict([str(adslab), lmdb], model_dir("oc20"))
    np.testing.assert_allclose([r["energy [eV]"] for r in payload["structures"]], api["energy [eV]"], atol=1e-9)


def test_cli_predict_bad_input_exit_codes(tmp_path):
    missing = run_cli("predict", tmp_path / "nothing.xyz", "--model", model_dir("qm9"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    all_bad = run_cli("predict", ASPIRIN_EXAMPLE, "--model", model_dir("oc20"), "-o", tmp_path / "errors.csv")
    assert all_bad.returncode == 3 and "isolated molecule" in all_bad.stderr
    assert (pd.read_csv(tmp_path / "errors.csv")["status"] == "error").all()
