"""`zoo.evaluate` and `equizoo eval`: the official metrics equal a direct computation on small real splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clihelpers import run_cli
from test_use_support import QM9_TEST_TARGETS, model_dir

import zoo
from zoo import paper
from zoo.data import load_dataset, read_mdbenchgnn
from zoo.errors import UseError
from zoo.use.evaluate import open_dataset, run_evaluation

pytestmark = pytest.mark.usefixtures("one_thread")


def _metric(frame, quantity, metric="MAE"):
    row = frame[(frame["quantity"] == quantity) & (frame["metric"] == metric)]
    assert len(row) == 1, frame
    return row.iloc[0]


def test_md17_metrics_equal_a_direct_computation(shared_data):
    folder = shared_data / "md17" / "mdbenchgnn" / "aspirin"
    metrics = zoo.evaluate(str(folder), model_dir("md17"), split="test", limit=6, batch_size=4)
    test = read_mdbenchgnn(folder)["test"][:6]
    frame = zoo.predict(test, model_dir("md17"))
    e_mae = np.mean(np.abs(frame["energy [eV]"].to_numpy() - [s.targets["energy"] for s in test])) * 1000
    f_mae = (
        np.mean(
            np.abs(
                np.concatenate(frame["forces [eV/Å]"].to_list()) - np.concatenate([s.targets["forces"] for s in test])
            )
        )
        * 1000
    )
    energy, forces = _metric(metrics, "energy"), _metric(metrics, "forces")
    assert (energy["unit"], forces["unit"], energy["n"]) == ("meV", "meV/Å", 6)
    assert energy["value"] == pytest.approx(e_mae, rel=1e-10) and forces["value"] == pytest.approx(f_mae, rel=1e-10)
    assert (energy["paper"], forces["paper"]) == paper.MD17["l2"]["aspirin"]


def test_oc20_metrics_equal_a_direct_computation(shared_data, tmp_path):
    source = shared_data / "oc20" / "format_reference_not_oc20"
    result = run_evaluation("oc20-is2re", model_dir("oc20"), source=source, cache_dir=tmp_path, split="train", limit=10)
    dataset = load_dataset("oc20-is2re", cache_dir=tmp_path).split("train")
    structures = [dataset[i] for i in range(10)]
    pred = zoo.predict(structures, model_dir("oc20"))["energy [eV]"].to_numpy()
    err = pred - np.array([s.targets["y_relaxed"] for s in structures])
    m = result.metrics
    assert _metric(m, "energy")["value"] == pytest.approx(np.mean(np.abs(err)), rel=1e-10)
    assert _metric(m, "energy", "MSE")["value"] == pytest.approx(np.mean(err**2), rel=1e-10)
    assert _metric(m, "energy", "EwT@0.02eV")["value"] == pytest.approx(100 * np.mean(np.abs(err) < 0.02))
    assert np.isnan(_metric(m, "energy")["paper"])  # the paper has no number for this (non-OC20) split
    with pytest.raises(UseError, match="no 'val_id' split; choose one with --split: train, val"):
        run_evaluation("oc20-is2re", model_dir("oc20"), cache_dir=tmp_path)


def test_dataset_specs_and_their_errors(tmp_path):
    with pytest.raises(UseError, match="unknown md17 molecule 'asprin'"):
        open_dataset("md17:asprin")
    with pytest.raises(UseError, match="unknown QM9 target"):
        open_dataset("qm9:energy")
    with pytest.raises(UseError, match="--source PATH"):
        open_dataset("md17:aspirin", cache_dir=tmp_path)
    with pytest.raises(UseError, match="unknown dataset"):
        open_dataset("spice")


def test_cli_eval_qm9_json_plot_and_paper_numbers(shared_data, tmp_path):
    out, png = tmp_path / "qm9.json", tmp_path / "parity.png"
    samples = shared_data / "qm9" / "dsgdb9nsd_xyz_samples"
    proc = run_cli(
        "eval", "qm9:homo,gap", "--model", model_dir("qm9"), "--source", samples, "--cache-dir", tmp_path / "cache",
        "--split", "train", "--limit", "8", "-o", out, "--plot", png,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "paper Table 1" in proc.stdout and "homo" in proc.stdout
    payload = json.loads(out.read_text())
    rows = {r["quantity"]: r for r in payload["metrics"]}
    assert set(rows) == {"homo", "gap"} and payload["n_structures"] == 8 and payload["split"] == "train"
    assert rows["gap"]["unit"] == "meV" and rows["gap"]["paper"] == paper.QM9["gap"][0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train = load_dataset("qm9", cache_dir=tmp_path / "cache").split("train")
    molecules = [train[i] for i in range(8)]
    frame = zoo.predict(molecules, model_dir("qm9"))
    for target in ("homo", "gap"):
        direct = 1000 * np.mean(np.abs(frame[f"{target} [eV]"].to_numpy() - [m.targets[target] for m in molecules]))
        assert rows[target]["value"] == pytest.approx(direct, rel=1e-10)
    assert set(QM9_TEST_TARGETS) >= set(rows)


def test_cli_eval_bad_dataset_exit_code():
    proc = run_cli("eval", "md17:benzine", "--model", model_dir("md17"))
    assert proc.returncode == 2 and "unknown md17 molecule" in proc.stderr
