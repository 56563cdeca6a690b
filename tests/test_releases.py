"""The released models: what ships in releases/ and as the embedded default, and the pipeline that makes them.

Every local release in the registry verifies by sha256; its config, registry entry and card carry the same
numbers with the paper's beside them; its exports equal the eager model; and `equizoo eval` reproduces
every number on its card from the shipped files. The embedded default is the gap release, byte for byte.
`equizoo release` is tested on a small model: a complete folder or nothing, and one clear error for bad input.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from clihelpers import run_cli
from test_use_support import REPO, model_dir

import zoo
from zoo.artifact import read_config
from zoo.cards import card_metrics
from zoo.data import read_mdbenchgnn
from zoo.hub import IntegrityError, pull
from zoo.registry import get_model
from zoo.release import ReleaseError, base_split, check_release, local_releases, release_model, roundoff_tolerance

MD17 = ("aspirin", "ethanol", "naphthalene", "salicylic_acid")
QM9 = ("gap", "homo", "lumo")
SHIPPED = {f"equiformer-md17-{m}-l2-small-cpu" for m in MD17} | {f"equiformer-qm9-{t}-small-cpu" for t in QM9}
SHIPPED_NAMES = sorted(m.name for m in local_releases())


pytestmark = pytest.mark.usefixtures("one_thread")


def _data_for(name: str, shared_data) -> str | None:
    """The local copy a release's evaluation record stands in for (`--source PATH_TO_MDBENCHGNN_ETHANOL`),
    found through EQUIZOO_SHARED_DATA."""
    record = read_config(pull(name))["metadata"]["evaluation"]
    if str(record.get("source_placeholder", "")).startswith("PATH_TO_MDBENCHGNN_"):
        return str(shared_data / "md17" / "mdbenchgnn" / record["data"].split(":", 1)[1])
    return None


def test_the_trained_models_are_released_and_registered():
    assert set(SHIPPED_NAMES) == SHIPPED
    for name in SHIPPED_NAMES:
        entry = get_model(name)
        assert entry.status == "local release" and entry.release == name
        assert {"config.json", "model.safetensors", "README.md", "model.torchscript.pt", "model.onnx"} <= set(
            entry.file_hashes()
        )
        assert entry.paper and all(base_split(m.split) == "test" for m in entry.paper)


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_card_registry_and_config_agree_and_state_what_produced_the_model(name):
    folder = pull(name)  # verifies every file against the registry's sha256
    config = read_config(folder)
    metadata = config["metadata"]
    record = metadata["evaluation"]
    card = (folder / "README.md").read_text()
    recorded = {(r["split"], f"{r['quantity']} {r['metric']} ({r['unit']})"): r["value"] for r in record["results"]}
    on_card = {(m["dataset_split"], m["metric_name"]): m["metric_value"] for m in card_metrics(folder / "README.md")}
    assert on_card == pytest.approx(recorded, rel=1e-12)
    assert {(m.split, m.target): m.value for m in get_model(name).metrics} == {
        (r["split"], r["quantity"]): r["value"] for r in record["results"]
    }
    assert "test" in {base_split(r["split"]) for r in record["results"]}
    for row in re.findall(r"^\| test\S* \| (\S+) \| MAE \| (.+?) \| (.+?) \|$", card, flags=re.M):
        assert row[2] != "—", f"{name}: no paper number beside the measured {row[0]}"
    for command in record["commands"]:
        assert command in card
    # data, split, epochs, hardware and time, as recorded by the training run
    assert metadata["dataset"]["split_rule"] in card
    assert f"epochs {metadata['recipe']['optim']['max_epochs']}" in card
    assert f"{metadata['wall_time_s']:,.0f} s wall clock" in card
    assert "CPU only" in card and "hardware note" in card
    assert "trained briefly on a 2-core CPU" in card and "far less accurate than the paper" in card


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_exports_equal_the_eager_model(name):
    from zoo.export.onnx import load_onnx
    from zoo.graph import radius_graph

    folder = pull(name)
    model = zoo.load(name)
    species = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.52, 0.0, 0.0], [2.0, 1.35, 0.0], [-0.4, 1.0, 0.1], [-0.4, -0.5, 0.9], [-0.4, -0.5, -0.9],
                        [1.9, -0.5, 0.9], [1.9, -0.5, -0.9], [2.9, 1.3, 0.3]], dtype=torch.float32)  # fmt: skip
    batch = torch.zeros(len(species), dtype=torch.long)
    edges = radius_graph(pos, batch, model.r_max)
    eager = model(pos.clone().requires_grad_(model.energy_target is not None), species, edges, batch)
    scripted = torch.jit.load(str(folder / "model.torchscript.pt"))
    ts = scripted(pos.clone(), species, edges, batch)
    onnx = load_onnx(folder / "model.onnx")(pos.clone(), species, edges, batch)
    for key in [t.name for t in model.targets] + (["forces"] if model.energy_target else []):
        ref = eager[key].detach().double()
        assert torch.allclose(ts[key].detach().double(), ref, rtol=1e-5, atol=1e-5), key
        assert torch.allclose(torch.as_tensor(np.asarray(onnx[key])).double(), ref, rtol=1e-4, atol=1e-4), key


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_equizoo_eval_reproduces_every_number_on_the_card(name, shared_data):
    """Tolerance: the float32 round-off bound of each number (`roundoff_tolerance`): one unit in the last
    place of every float32 prediction averaged into the MAE (an energy near -17,600 eV is stored to ~2 meV,
    and other CPUs' SIMD kernels move it by about that), plus 100 float32 units relative to the MAE for the
    network's own arithmetic. It depends on the numbers, not on the CPU, so the check passes on Intel and AMD
    alike, and it stays far below the model's error."""
    pairs = check_release(name, data=_data_for(name, shared_data))
    assert pairs
    for key, (recorded, measured, tolerance) in pairs.items():
        assert abs(recorded - measured) <= tolerance, key
        assert tolerance < 0.15 * abs(recorded), key  # a check that still tells models apart


def test_roundoff_tolerance_follows_the_float32_resolution_of_the_predictions():
    eps = 2.0**-23
    ref = np.full(1000, -17630.0e3)  # meV: MD17 aspirin-sized total energies
    pred = ref + np.linspace(-40.0, 40.0, 1000)
    mae = float(np.abs(pred - ref).mean())
    bound = roundoff_tolerance("MAE", mae, ref, pred, "float32")
    assert bound == pytest.approx(eps * float(np.abs(pred).mean()) + 100 * eps * mae, rel=1e-12)
    assert 2.0 < bound < 2.2  # ~ one float32 ulp of 17,630 eV, in meV
    assert (
        roundoff_tolerance("MAE", mae, ref, pred, "float64") < 1e-8
    )  # float64 evaluations are checked ~1e9 times tighter
    # a metric recomputed on another CPU where every energy moved by one float32 ulp stays within the bound
    moved = np.float32(pred) + np.spacing(np.float32(pred))
    assert abs(float(np.abs(moved.astype(np.float64) - ref).mean()) - mae) <= bound
    # EwT moves only by the structures within round-off of its threshold
    err_ref = np.array([0.0, 0.01, 0.02, 0.5])
    assert roundoff_tolerance("EwT@0.02eV", 50.0, np.zeros(4), err_ref, "float32") == pytest.approx(
        25.0 + 100 * eps * 50.0
    )


def test_equizoo_eval_cli_reproduces_the_card(tmp_path, shared_data):
    """Same tolerance as above; the bound is computed from the reference energies of the split, which the
    predictions match to within the MAE, so the mean |prediction| is the mean |reference| to 1e-6."""
    name = "equiformer-md17-ethanol-l2-small-cpu"
    out = tmp_path / "eval.json"
    ethanol = shared_data / "md17" / "mdbenchgnn" / "ethanol"
    proc = run_cli("eval", ethanol, "--model", name, "--split", "test", "-o", out)
    assert proc.returncode == 0, proc.stderr
    measured = {r["quantity"]: r for r in json.loads(out.read_text())["metrics"]}
    card = {
        m["metric_name"].split()[0]: m["metric_value"]
        for m in card_metrics(pull(name) / "README.md")
        if m["dataset_split"] == "test"
    }
    assert set(card) == {"energy", "forces"}
    test = read_mdbenchgnn(ethanol)["test"]
    reference = {
        "energy": np.array([s.targets["energy"] for s in test]) * 1e3,
        "forces": np.concatenate([s.targets["forces"].reshape(-1) for s in test]) * 1e3,
    }
    for quantity, value in card.items():
        tolerance = roundoff_tolerance("MAE", value, reference[quantity], reference[quantity], "float32")
        assert abs(measured[quantity]["value"] - value) <= tolerance, quantity


def test_the_embedded_default_is_the_gap_release():
    from zoo.pretrained import PACKAGE_DIR

    release = pull("equiformer-qm9-gap-small-cpu")
    for file in ("config.json", "model.safetensors", "README.md"):
        assert (PACKAGE_DIR / file).read_bytes() == (release / file).read_bytes(), file
    assert read_config(PACKAGE_DIR)["name"] == "equiformer-qm9-gap-small-cpu"


def test_a_changed_release_file_is_refused(tmp_path, monkeypatch):
    import shutil

    name = "equiformer-md17-ethanol-l2-small-cpu"
    copy = tmp_path / "releases"
    shutil.copytree(pull(name), copy / name)
    monkeypatch.setenv("EQUIZOO_RELEASES", str(copy))
    assert pull(name) == copy / name
    config = copy / name / "config.json"
    config.write_text(config.read_text().replace('"num_layers": 2', '"num_layers": 3', 1))
    with pytest.raises(IntegrityError, match="sha256 mismatch for config.json"):
        pull(name)


# ------------------------------------------------------------------------- the release pipeline itself
@pytest.fixture()
def release_env(tmp_path, monkeypatch):
    registry = tmp_path / "registry.json"
    monkeypatch.setenv("EQUIZOO_REGISTRY", str(registry))
    monkeypatch.setenv("EQUIZOO_RELEASES", str(tmp_path / "releases"))
    return tmp_path / "releases", registry


def test_release_pipeline_evaluates_exports_cards_and_registers(release_env, shared_data):
    releases, registry = release_env
    ethanol = str(shared_data / "md17" / "mdbenchgnn" / "ethanol")
    rel = release_model(model_dir("md17"), "test-md17-release", data=ethanol, limits={"val": 5, "test": 12}, formats="torchscript",
                        note="A test release.", hardware_note="a test machine", progress=False)  # fmt: skip
    assert rel.path == releases / "test-md17-release"
    assert sorted(p.name for p in rel.path.iterdir()) == [
        "README.md",
        "config.json",
        "exports.json",
        "manifest.json",
        "model.safetensors",
        "model.torchscript.pt",
    ]
    assert oct(rel.path.stat().st_mode & 0o777) == "0o755"
    assert [r["split"] for r in rel.evaluation["results"]] == ["val[:5]", "val[:5]", "test[:12]", "test[:12]"]
    # a public record: the local data folder becomes a placeholder (this model has no training record naming its dataset)
    assert (
        rel.evaluation["commands"][1]
        == "equizoo eval PATH_TO_MDBENCHGNN_ETHANOL --model test-md17-release --split test --limit 12"
    )
    assert ethanol not in (rel.path / "config.json").read_text()
    entry = get_model("test-md17-release")
    assert entry.status == "local release" and str(registry) == entry.source
    card = (rel.path / "README.md").read_text()
    assert "**A test release.**" in card and "a test machine" in card and "test[:12]" in card
    pairs = check_release("test-md17-release", data=ethanol)
    assert read_config(rel.path)["metadata"]["elements"] == [1, 6, 8]  # from the training data: ethanol has H, C, O
    assert set(pairs) == {"val[:5]/energy", "val[:5]/forces", "test[:12]/energy", "test[:12]/forces"}
    assert all(measured == recorded for recorded, measured, _ in pairs.values())  # float64 model, same code: identical
    assert all(0 < tolerance < 1e-6 * abs(recorded) + 1e-9 for recorded, _, tolerance in pairs.values())
    with pytest.raises(ReleaseError, match="already exists"):
        release_model(model_dir("md17"), "test-md17-release", data=ethanol, formats="torchscript", progress=False)


def test_release_bad_inputs_leave_nothing_behind(release_env, shared_data):
    releases, registry = release_env
    with pytest.raises(ReleaseError, match="must be lowercase"):
        release_model(model_dir("md17"), "Bad Name", data="md17:ethanol")
    with pytest.raises(ReleaseError, match="no training record"):
        release_model(model_dir("md17"), "no-data")
    with pytest.raises(ReleaseError, match="no split 'train2'"):
        release_model(
            model_dir("md17"),
            "bad-split",
            data=str(shared_data / "md17" / "mdbenchgnn" / "ethanol"),
            splits=("train2",),
            progress=False,
        )
    assert not releases.exists() or list(releases.iterdir()) == []
    assert not registry.exists()


def test_cli_release_and_verify(tmp_path, shared_data):
    env = {"EQUIZOO_REGISTRY": str(tmp_path / "registry.json"), "EQUIZOO_RELEASES": str(tmp_path / "releases")}
    ethanol = str(shared_data / "md17" / "mdbenchgnn" / "ethanol")
    proc = run_cli(
        "release",
        model_dir("md17"),
        "--name",
        "cli-release",
        "--data",
        ethanol,
        "--split",
        "test",
        "--limit",
        "test=8",
        "--format",
        "none",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "reproduce: equizoo eval" in proc.stdout and (tmp_path / "releases" / "cli-release" / "README.md").is_file()
    proc = run_cli(
        "verify", "cli-release", "--data", ethanol, env=env
    )  # --data: the alias of --source, the name `equizoo eval` uses
    assert proc.returncode == 0, proc.stderr
    assert "every number on the card is reproduced" in proc.stdout and "round-off bound" in proc.stdout
    assert (
        "predicting with cli-release" in proc.stderr and "8/8" in proc.stderr
    )  # the progress bar `equizoo eval` shows
    proc = run_cli("release", model_dir("md17"), "--name", "cli-release-2", "--limit", "test", env=env)
    assert proc.returncode == 2 and "SPLIT=N" in proc.stderr


def test_readme_tables_list_the_registered_numbers():
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from release_table import release_table

    table = release_table()
    assert len(table.splitlines()) == len(SHIPPED)
    for readme in (REPO / "README.md", REPO / "releases" / "README.md"):
        assert table in readme.read_text(), (
            f"{readme} lists other numbers than the registry: run python tools/release_table.py"
        )


def test_publish_puts_a_release_on_a_hub_by_name(hub, tmp_path, monkeypatch):
    import shutil

    name = "equiformer-md17-ethanol-l2-small-cpu"
    release = pull(name)
    copy = tmp_path / "releases"
    shutil.copytree(release, copy / name)
    monkeypatch.setenv("EQUIZOO_RELEASES", str(copy))
    proc = run_cli("publish", name, "--repo", "equizoo-test/ethanol-small-cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = get_model(name)
    assert (
        entry.status == "published" and entry.repo_id == "equizoo-test/ethanol-small-cpu" and len(entry.revision) == 40
    )
    from zoo.registry import metrics_from_config

    assert list(entry.metrics) == metrics_from_config(read_config(release)) and {m.split for m in entry.metrics} == {
        "val",
        "test",
    }
    pulled = pull(name)
    assert pulled != copy / name and os.environ["HF_HOME"] in str(pulled)
    for file in ("README.md", "config.json", "model.safetensors", "model.onnx"):
        assert (pulled / file).read_bytes() == (release / file).read_bytes(), file
