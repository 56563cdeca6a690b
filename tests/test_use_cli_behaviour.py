"""The command line as a new user meets it: honest output, bad input refused before any work, one line per
missing optional package, tables that fit 80 columns, and files written with the usual mode.

All command lines of a group run in one subprocess (`run_cli_many`: the real typer app parses each one), so
that torch starts once; each test below reads the result of its commands.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import ase.io
import pytest
from ase.build import molecule
from clihelpers import run_cli_many
from test_use_support import REPO, model_dir

EXAMPLE = REPO / "examples" / "qm9_molecules.extxyz"
ETHANOL_MODEL = "equiformer-md17-ethanol-l2-small-cpu"


@pytest.fixture(scope="module")
def ran(tmp_path_factory, shared_data):
    """Every command line of the normal installation, run once: {key: (exit code, stdout, stderr)}, plus paths."""
    tmp = tmp_path_factory.mktemp("cli")
    hco = tmp / "hco-model"
    shutil.copytree(model_dir("md17"), hco)
    config = json.loads((hco / "config.json").read_text())
    config["metadata"]["elements"] = [1, 6, 8]
    (hco / "config.json").write_text(json.dumps(config))
    mixed = tmp / "mixed.extxyz"
    ase.io.write(mixed, [molecule("CH3CH2OH"), molecule("SiH4")], format="extxyz")
    (tmp / "empty.xyz").write_text("")
    (tmp / "a-file.csv").write_text("not a folder\n")
    (tmp / "real").mkdir()
    (tmp / "link.csv").symlink_to(tmp / "real" / "target.csv")
    ethanol = shared_data / "md17" / "mdbenchgnn" / "ethanol"
    commands = {
        "caveat": ["predict", EXAMPLE],
        "empty": ["predict", tmp / "empty.xyz"],
        "parquet": ["predict", EXAMPLE, "-o", tmp / "out.parquet"],
        "not-a-dir": ["predict", EXAMPLE, "-o", tmp / "a-file.csv" / "out.csv"],
        "eval-mismatch": ["eval", "md17:ethanol"],
        "eval-oc20": ["eval", "oc20-is2re", "--split", "val_id"],
        "pull-unpublished": ["pull", "equiformer-qm9-l2"],
        "list": ["list"],
        "list-help": ["list", "--help"],
        "eval-help": ["eval", "--help"],
        "predict-help": ["predict", "--help"],
        "unseen": ["predict", mixed, "--model", hco, "--rows", "0"],
        "unseen-allowed": ["predict", mixed, "--model", hco, "--rows", "0", "--allow-unseen-elements"],
        "unknown-elements": ["predict", mixed, "--model", model_dir("md17"), "--rows", "0"],
        "symlink": ["predict", EXAMPLE, "--rows", "0", "-o", tmp / "link.csv"],
        "eval-files": [
            "eval",
            ethanol,
            "--model",
            model_dir("md17"),
            "--limit",
            "3",
            "-o",
            tmp / "m.json",
            "--plot",
            tmp / "p.png",
        ],
    }
    results = run_cli_many(commands.values(), env={"EQUIZOO_CACHE": str(tmp / "cache")})
    return dict(zip(commands, results)), tmp


@pytest.fixture(scope="module")
def ran_without_extras(tmp_path_factory):
    """Command lines run where huggingface_hub, onnxruntime and lmdb are not installed."""
    tmp = tmp_path_factory.mktemp("extras")
    commands = {
        "onnx-backend": ["predict", EXAMPLE, "--backend", "onnx"],
        "verify": ["verify", ETHANOL_MODEL],
        "oc20": ["eval", "oc20-is2re", "--model", model_dir("oc20")],
        "export": ["export", ETHANOL_MODEL, "--format", "onnx", "--out", tmp / "exported"],
    }
    results = run_cli_many(
        commands.values(), missing=("huggingface_hub", "onnxruntime", "lmdb"), env={"EQUIZOO_CACHE": str(tmp / "cache")}
    )
    return dict(zip(commands, results)), tmp


def test_predict_refuses_unseen_elements_per_structure_unless_allowed(ran):
    results, _ = ran
    code, out, err = results["unseen"]
    assert code == 1 and "(frame 1): element(s) Si not in the training data" in err and "--allow-unseen-elements" in err
    assert "1 of 2 structures predicted" in err
    code, out, err = results["unseen-allowed"]
    assert code == 0 and "2 of 2 structures predicted" in out, err
    code, out, err = results["unknown-elements"]
    assert code == 0 and "does not record the elements of its training data" in out, err


def test_predictions_of_a_toy_model_carry_its_card_caveat(ran):
    results, _ = ran
    code, out, err = results["caveat"]
    assert code == 0, err
    caveat = [line for line in out.splitlines() if line.startswith("caveat:")]
    assert len(caveat) == 1 and "far less accurate than the paper" in caveat[0]
    assert re.search(r"its card: test\S* gap MAE [0-9.]+ meV", caveat[0]), caveat[0]
    _, out, _ = results["unknown-elements"]  # a model without such a card gets no caveat
    assert "caveat" not in out


def test_bad_options_and_mismatches_are_refused_before_any_work(ran):
    results, tmp = ran
    code, _, err = results["parquet"]
    assert code == 2 and "unknown file type '.parquet'" in err and ".csv, .extxyz, .json" in err
    assert not (tmp / "out.parquet").exists()
    code, _, err = results["not-a-dir"]
    assert code == 2 and "is not a directory" in err
    code, _, err = results["eval-mismatch"]
    assert code == 2 and "needs a force-field model" in err and "Traceback" not in err
    assert not (tmp / "cache").exists()  # refused before the dataset was opened or prepared


def test_missing_optional_packages_are_one_line_each(ran_without_extras):
    results, tmp = ran_without_extras
    for key, extra in (("onnx-backend", "export"), ("verify", "hub"), ("oc20", "data"), ("export", "export")):
        code, _, err = results[key]
        assert code == 2, (key, err)
        assert f"pip install 'equizoo[{extra}]'" in err and "Traceback" not in err, (key, err)
        assert len(err.strip().splitlines()) == 1, (key, err)
    assert not (tmp / "exported").exists() and not (tmp / "cache").exists()


def test_tables_and_help_fit_80_columns(ran):
    results, _ = ran
    code, out, err = results["list"]
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out
    rows = [line.split() for line in lines if line.strip().startswith("equiformer-")]
    statuses = [row[1] for row in rows]
    assert statuses.index("not") > 0 and all(
        s != "not" for s in statuses[: statuses.index("not")]
    )  # usable models first
    assert all(s == "not" for s in statuses[statuses.index("not") :])
    for key in ("list-help", "eval-help", "predict-help"):
        code, out, _ = results[key]
        assert code == 0 and "<bool>" not in out and max(len(line) for line in out.splitlines()) <= 80, key
    assert "--wide" in results["list-help"][1] and "--allow-unseen-elements" in results["predict-help"][1]


def test_one_option_name_and_an_empty_file_is_named(ran):
    results, tmp = ran
    _, out, _ = results["eval-help"]
    assert "--source" in out and "--data" in out  # --data (the name `equizoo verify` had) is an alias of --source
    code, out, err = results["empty"]
    assert code == 3 and "frame -1" not in err + out
    assert f"failed {tmp / 'empty.xyz'} (the whole file)" in err.replace("\n", " ") and "file is empty" in err


def test_files_are_written_with_the_usual_mode_and_through_symlinks(ran):
    results, tmp = ran
    code, _, err = results["symlink"]
    assert code == 0, err
    assert (tmp / "link.csv").is_symlink() and (tmp / "real" / "target.csv").is_file()
    assert stat.S_IMODE((tmp / "real" / "target.csv").stat().st_mode) == 0o644
    code, _, err = results["eval-files"]
    assert code == 0, err
    for name in ("m.json", "p.png"):
        assert stat.S_IMODE((tmp / name).stat().st_mode) == 0o644, name
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_refusals_point_to_the_models_that_exist(ran):
    results, _ = ran
    for key in ("eval-oc20", "pull-unpublished"):
        code, _, err = results[key]
        assert code == 2 and "equizoo list --published" in err.replace("\n", " "), (key, err)
    readme = (REPO / "README.md").read_text().split("\n\n")[1]
    assert "only small CPU-trained models exist" in readme and "equizoo list" in readme and "--published" in readme


def test_the_parity_plot_titles_the_metric_of_all_points(tmp_path):
    import numpy as np
    import pandas as pd

    from zoo.use.evaluate import Evaluation

    rng = np.random.default_rng(1)
    f_ref = rng.normal(size=30000)
    f_pred = f_ref + rng.normal(scale=0.02, size=30000)
    e_ref = -17630e3 + rng.normal(scale=100.0, size=50)
    e_pred = e_ref + rng.normal(scale=5.0, size=50)
    maes = {"energy": float(np.abs(e_pred - e_ref).mean()), "forces": float(np.abs(f_pred - f_ref).mean())}
    metrics = pd.DataFrame(
        [
            {"quantity": q, "metric": "MAE", "unit": u, "value": maes[q]}
            for q, u in (("energy", "meV"), ("forces", "meV/Å"))
        ]
    )
    ev = Evaluation(
        metrics,
        {"energy": (e_ref, e_pred, "meV"), "forces": (f_ref, f_pred, "meV/Å")},
        {"model": "m", "dataset": "d", "split": "test", "n_structures": 50},
    )
    energy, forces = ev.panels(max_points=20000)
    assert forces["ref"].size == 20000 and forces["title"].startswith(f"forces: MAE {maes['forces']:.4g} meV/Å")
    assert (
        abs(np.abs(forces["pred"] - forces["ref"]).mean() - maes["forces"]) > 0
    )  # the subset alone would give another number
    assert (
        energy["title"] == f"energy: MAE {maes['energy']:.4g} meV"
        and abs(energy["ref"].mean()) < 1e-6
        and "mean" in energy["xlabel"]
    )
    assert energy["pred"] - energy["ref"] == pytest.approx(e_pred - e_ref, abs=1e-6)
    ev.plot(tmp_path / "parity.png")
    assert (tmp_path / "parity.png").read_bytes()[:4] == b"\x89PNG"


def test_default_files_are_not_private(tmp_path, monkeypatch):
    from zoo.io import atomic_write_text, default_mode

    target = tmp_path / "data" / "file.json"
    atomic_write_text(target, "{}\n")
    assert stat.S_IMODE(target.stat().st_mode) == default_mode()
    target.chmod(0o600)  # an existing file keeps its own mode when it is replaced
    atomic_write_text(target, "[]\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "[]\n"

    def boom(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("interrupted")

    from zoo.io import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "[]\n" and sorted(p.name for p in target.parent.iterdir()) == ["file.json"]
