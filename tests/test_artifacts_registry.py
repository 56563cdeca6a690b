"""The registry of pretrained models (catalogue + registry JSON files), model cards, and the `list` /
`info` / `card` commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from clihelpers import run_cli

from zoo.artifact import save_model_dir
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel

REPO = Path(__file__).resolve().parents[1]
MOLECULES = ("aspirin", "ethanol", "naphthalene", "salicylic_acid", "benzene", "malonaldehyde", "toluene", "uracil")
SMALL = dict(num_layers=1, irreps_sh="1x0e+1x1e", irreps_node_embedding="8x0e+4x1e", irreps_head="4x0e+2x1e", num_heads=2,
             irreps_mlp_mid="16x0e+8x1e", irreps_feature="16x0e", num_basis=8, radial_hidden=(8, 8))  # fmt: skip
SHA = "ab" * 32
REV = "cd" * 20


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, env={"PYTHONWARNINGS": "ignore"}, timeout=300)


@pytest.fixture()
def registry_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "registry.json"
    monkeypatch.setenv("EQUIZOO_REGISTRY", str(path))
    return path


def _write(path: Path, models: dict) -> None:
    path.write_text(json.dumps({"format": "equizoo-registry/1", "models": models}))


def test_catalogue_names_and_meanings(registry_file):
    from zoo.registry import NOT_PUBLISHED, get_model, list_models

    names = [m.name for m in list_models()]
    expected = ["equiformer-qm9-l2", "equiformer-oc20-is2re-l1", "equiformer-oc20-is2re-aux18-l1"]
    expected += [f"equiformer-md17-{mol}-l{lmax}" for mol in MOLECULES for lmax in (2, 3)]
    cpu = [f"equiformer-qm9-{t}-small-cpu" for t in ("gap", "homo", "lumo")]
    cpu += [f"equiformer-md17-{mol}-l2-small-cpu" for mol in ("aspirin", "ethanol", "naphthalene", "salicylic_acid")]
    assert sorted(names) == sorted(expected + cpu)
    qm9 = get_model("equiformer-qm9-l2")
    assert [t for t, _ in qm9.targets] == [
        "mu",
        "alpha",
        "homo",
        "lumo",
        "gap",
        "r2",
        "zpve",
        "U0",
        "U",
        "H",
        "G",
        "Cv",
    ]
    assert qm9.unit("homo") == "eV" and qm9.status == NOT_PUBLISHED and not qm9.published
    assert {(m.target, m.value, m.unit) for m in qm9.paper} >= {("homo", 15.0, "meV"), ("Cv", 0.023, "cal/mol/K")}
    aspirin = get_model("equiformer-md17-aspirin-l3")
    assert aspirin.variant == "md17-l3" and aspirin.unit("forces") == "eV/Å"
    assert [(m.target, m.value) for m in aspirin.paper] == [("energy", 5.3), ("forces", 6.6)]
    assert get_model("equiformer-oc20-is2re-aux18-l1").variant == "oc20-l1-aux18"
    assert [m.name for m in list_models("equiformer-md17-*-l3")] == [f"equiformer-md17-{mol}-l3" for mol in MOLECULES]
    # the paper's models need a GPU to train; what ships are the CPU-trained local releases
    assert sorted(m.name for m in list_models(published_only=True)) == sorted(cpu)
    small = get_model("equiformer-md17-aspirin-l2-small-cpu")
    assert small.paper == get_model("equiformer-md17-aspirin-l2").paper and "2-core CPU" in small.description


def test_adding_a_trained_model_is_data(registry_file):
    from zoo.registry import Metric, get_model, list_models, register

    entry = register("equiformer-md17-uracil-l2", {"model.safetensors": {"sha256": SHA, "size": 10}, "config.json": {"sha256": SHA}},
                     repo_id="org/uracil", revision=REV, metrics=[Metric("test", "energy", 0.004, "eV")])  # fmt: skip
    assert entry.status == "published" and entry.hub_id == f"hf-hub:org/uracil@{REV}"
    got = get_model("equiformer-md17-uracil-l2")
    assert got.file_hashes() == {"config.json": SHA, "model.safetensors": SHA} and got.dataset == "MD17/uracil"
    assert "equiformer-md17-uracil-l2" in [m.name for m in list_models(published_only=True)]
    doc = json.loads(registry_file.read_text())
    assert doc["format"] == "equizoo-registry/1" and doc["models"]["equiformer-md17-uracil-l2"]["revision"] == REV
    # a name outside the catalogue defines its meaning itself
    _write(registry_file, {"my-model": {"description": "d", "dataset": "mine", "task": "md17", "variant": "md17-l2",
                                        "targets": {"energy": "eV"}, "release": "my-model", "files": {"config.json": SHA}}})  # fmt: skip
    assert get_model("my-model").status == "local release"


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"repo_id": "org/x", "revision": "main", "files": {"a": SHA}}, "40-hex commit sha"),
        ({"repo_id": "org/x", "revision": REV, "files": {"a": "123"}}, "64-hex sha256"),
        ({"repo_id": "org/x", "revision": REV}, "no files"),
        ({"files": {"a": SHA}}, "neither repo_id"),
        ({"repo_id": "not a repo", "revision": REV, "files": {"a": SHA}}, "ORG/NAME"),
        ({"colour": "red"}, "unknown keys"),
    ],
)
def test_malformed_registry_entries_are_named(registry_file, entry, message):
    from zoo.registry import RegistryError, get_model

    _write(registry_file, {"equiformer-md17-aspirin-l2": entry})
    with pytest.raises(RegistryError, match=message) as exc:
        get_model("equiformer-md17-aspirin-l2")
    assert str(registry_file) in str(exc.value) and "equiformer-md17-aspirin-l2" in str(exc.value)


def test_unusable_registry_files(tmp_path, monkeypatch):
    from zoo.registry import RegistryError, list_models

    monkeypatch.setenv("EQUIZOO_REGISTRY", str(tmp_path / "absent.json"))
    assert len(list_models()) == 26  # not written yet: nothing registered there
    (tmp_path / "bad.json").write_text("{not json")
    monkeypatch.setenv("EQUIZOO_REGISTRY", str(tmp_path / "bad.json"))
    with pytest.raises(RegistryError, match="not valid JSON"):
        list_models()


@pytest.fixture()
def trained_dir(tmp_path) -> Path:
    torch.manual_seed(2)
    model = ZooModel(
        {"energy": build_model("md17-l2", **SMALL)},
        [TargetInfo("energy", "eV", forces_unit="eV/Å", description="potential energy")],
    )
    metadata = {
        "metrics": {"val": {"energy_mae": 0.0071, "force_mae": 0.0102}, "test": {"energy_mae": 0.0062, "force_mae": 0.0081},
                    "units": {"energy_mae": "eV", "force_mae": "eV/Å"}, "final_weights": "last", "weights_epoch": 1500.0},
        "dataset": {"name": "md17/ethanol", "target": "energy", "unit": "eV", "sizes": {"train": 950, "val": 50, "test": 554000}},
        "recipe": {"task": "md17", "optim": {"lr": 5e-4, "max_epochs": 1500, "batch_size": 8}},
        "hardware": {"processes": 1, "device_type": "cuda", "device_name": "NVIDIA A6000"},
        "wall_time_s": 36000.0,
    }  # fmt: skip
    return save_model_dir(model, tmp_path / "ethanol", metadata=metadata, name="ethanol")


def test_card_front_matter_parses_and_carries_the_metrics(trained_dir, registry_file):
    from huggingface_hub import ModelCard

    from zoo.cards import card_metrics, write_card

    path = write_card(trained_dir, "equiformer-md17-ethanol-l2")
    card = ModelCard.load(str(path))
    data = card.data.to_dict()
    assert data["library_name"] == "equizoo" and data["license"] == "mit" and data["datasets"] == ["MD17/ethanol"]
    assert "equiformer" in data["tags"] and "md17" in data["tags"]
    results = data["model-index"][0]["results"]
    assert {r["dataset"]["split"] for r in results} == {"val", "test"}
    metrics = {(m["dataset_split"], m["metric_name"]): m["metric_value"] for m in card_metrics(path)}
    assert metrics[("test", "energy MAE (eV)")] == 0.0062 and metrics[("test", "forces MAE (eV/Å)")] == 0.0081
    text = card.text
    assert "| test | energy | MAE | 0.0062 eV (6.2 meV) | 2.2 meV |" in text
    assert "| test | forces | MAE | 0.0081 eV/Å (8.1 meV/Å) | 3.1 meV/Å |" in text
    assert "1 x NVIDIA A6000" in text and "10.00 h" in text and "lr 0.0005" in text
    assert 'zoo.load("' in text and "pair_style equiformer" in text and "@inproceedings{liao2023equiformer" in text


def test_card_claims_nothing_without_metadata(tmp_path, registry_file):
    from huggingface_hub import ModelCard

    from zoo.cards import write_card

    model = ZooModel({"energy": build_model("md17-l2", **SMALL)}, [TargetInfo("energy", "eV", forces_unit="eV/Å")])
    plain = save_model_dir(model, tmp_path / "plain", name="plain")
    card = ModelCard.load(str(write_card(plain)))
    assert "model-index" not in card.data.to_dict()
    assert "No training record is stored" in card.text and "No measured metrics are stored" in card.text
    assert "paper" not in card.text.split("## Results")[1].split("##")[0]


def test_metrics_from_training_metadata(trained_dir):
    from zoo.artifact import read_config
    from zoo.registry import metrics_from_config

    got = {(m.split, m.target): (m.value, m.unit) for m in metrics_from_config(read_config(trained_dir))}
    assert got == {
        ("val", "energy"): (0.0071, "eV"),
        ("val", "forces"): (0.0102, "eV/Å"),
        ("test", "energy"): (0.0062, "eV"),
        ("test", "forces"): (0.0081, "eV/Å"),
    }


def test_cli_list_and_info(registry_file):
    table = _cli("list", "equiformer-md17-*-l2", "--wide")  # the default columns fit 80; --wide has outputs and status
    assert (
        table.returncode == 0
        and "equiformer-md17-uracil-l2" in table.stdout
        and "equiformer-qm9-l2" not in table.stdout
    )
    assert "not published yet" in table.stdout and "energy [eV]" in table.stdout
    rows = json.loads(_cli("list", "--json").stdout)
    assert len(rows) == 26 and {r["status"] for r in rows} == {"not published yet", "local release"}
    info = _cli("info", "equiformer-qm9-l2")
    assert (
        info.returncode == 0
        and "homo [eV]" in info.stdout
        and "not published yet" in info.stdout
        and "15 meV" in info.stdout
    )
    assert json.loads(_cli("info", "equiformer-oc20-is2re-l1", "--json").stdout)["variant"] == "oc20-l1"
    none = _cli("list", "resnet-*")
    assert none.returncode == 2 and "no registered model matches" in none.stderr
    unknown = _cli("info", "equiformer-qm9")
    assert unknown.returncode == 2 and "unknown model name" in unknown.stderr and "Traceback" not in unknown.stderr


def test_cli_card(trained_dir, registry_file):
    result = _cli("card", str(trained_dir), "--name", "equiformer-md17-ethanol-l2")
    assert result.returncode == 0, result.stderr
    assert (trained_dir / "README.md").read_text().startswith("---\n")
