"""Model cards to the standard of the field: every shipped card states the training data's level of theory,
the elements covered and what happens outside them, the data's licence and citation beside the code's and
the weights', precision and cutoff, and every file with its size and sha256; cards and configs are public
artifacts that name no path of the machine that made them; `equizoo card` renders the same for a run
that was just trained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.artifact import read_config
from zoo.export.report import read_exports
from zoo.hub import pull, sha256_file
from zoo.release import local_releases

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(m.name for m in local_releases())
DEVELOPMENT = re.compile(r"\.\./shared|/work/|/root/|/tmp/|/home/|~/\.cache|workplace|/shared/data")
THEORY = {"md17": "DFT PBE+vdW-TS", "qm9": "DFT B3LYP/6-31G(2df,p)"}
CITATION = {"md17": "@article{chmiela2017machine", "qm9": "@article{ramakrishnan2014quantum"}
ELEMENTS = {
    "ethanol": [1, 6, 8],
    "aspirin": [1, 6, 8],
    "salicylic_acid": [1, 6, 8],
    "naphthalene": [1, 6],
    "qm9": [1, 6, 7, 8, 9],
}


def _kind(config: dict) -> str:
    return "qm9" if config["metadata"]["dataset"]["name"] == "qm9" else "md17"


def assert_card_states_everything(folder: Path, card: str, config: dict) -> None:
    """The fields every card carries, checked against the files and config they describe."""
    from ase.data import chemical_symbols

    from zoo.cards import dataset_facts

    metadata = config["metadata"]
    facts = dataset_facts(metadata)
    assert facts is not None, "the card must name a known public dataset"
    assert f"| level of theory | {facts.level_of_theory} |" in card
    assert f"| data licence | {facts.licence} |" in card and f"- training data: {facts.licence}" in card
    assert facts.citation in card and "@inproceedings{liao2023equiformer" in card
    assert "- code (equizoo): " in card and "- weights and exports: " in card
    elements = metadata["elements"]
    assert elements == sorted(set(elements)) and all(isinstance(z, int) for z in elements)
    symbols = ", ".join(chemical_symbols[z] for z in elements)
    assert f"| elements covered | {symbols} (Z = {', '.join(map(str, elements))})" in card
    assert "--allow-unseen-elements" in card
    first = next(iter(config["networks"].values()))
    assert f"| weights (`model.safetensors`) | {config['dtype']} |" in card
    for rec in read_exports(folder).values():
        assert f"| export `{rec['path']}` ({rec['format']}, {rec['device']}) | {rec['dtype']} |" in card
    assert f"| cutoff r_max | {first['r_max']:g} Å |" in card and "| neighbour cap | " in card
    for file in sorted(p for p in folder.iterdir() if p.name not in ("README.md", "manifest.json")):
        assert f"| `{file.name}` | {file.stat().st_size:,} | `{sha256_file(file)}` |" in card, file.name


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_card_states_data_elements_licences_precision_and_hashes(name):
    folder = pull(name)
    config = read_config(folder)
    card = (folder / "README.md").read_text()
    assert_card_states_everything(folder, card, config)
    kind = _kind(config)
    assert THEORY[kind] in card and CITATION[kind] in card
    molecule = config["metadata"]["dataset"]["name"].split("-", 1)[-1]
    assert config["metadata"]["elements"] == ELEMENTS["qm9" if kind == "qm9" else molecule]
    # hardware by its model, reproduction commands that work anywhere
    cpu = config["metadata"]["hardware"]["cpu_model"]
    assert re.search(r"EPYC \d{4}", cpu) and f"1 x {cpu}" in card
    for command in config["metadata"]["evaluation"]["commands"]:
        assert command.startswith(f"equizoo eval {kind}:") and command in card
        if kind == "md17":
            assert command.endswith(f"--source PATH_TO_MDBENCHGNN_{molecule.upper()}")


def test_no_card_or_config_names_a_development_path():
    shipped = [p for name in SHIPPED for p in (pull(name) / "README.md", pull(name) / "config.json")]
    default = REPO / "zoo" / "pretrained" / "default"
    for path in shipped + [default / "README.md", default / "config.json", REPO / "zoo" / "hub" / "published.json"]:
        found = DEVELOPMENT.findall(path.read_text())
        assert not found, f"{path} names {found}"


def test_recorded_elements_are_those_of_the_training_data(shared_data):
    for name in SHIPPED:
        config = read_config(pull(name))
        if _kind(config) != "md17":
            continue  # QM9's 4,000 training molecules need the full prepared QM9; recorded by `equizoo restate`
        molecule = config["metadata"]["dataset"]["name"].split("-", 1)[1]
        z = np.load(shared_data / "md17" / "mdbenchgnn" / molecule / "train.npz")["atomic_numbers"]
        assert config["metadata"]["elements"] == sorted(int(v) for v in np.unique(z))


def test_equizoo_card_renders_the_same_for_a_new_training_run(shared_data, tmp_path):
    from clihelpers import run_cli
    from test_train_runs import MICRO_L2, QUICK, model_sets, quiet

    from zoo.train import load_recipe, train

    source = shared_data / "md17" / "mdbenchgnn" / "ethanol"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.train_limit=4", "data.val_limit=2", "data.test_limit=2",
            "optim.batch_size=2", "optim.max_epochs=1", "schedule.warmup_epochs=0", *model_sets(MICRO_L2), *QUICK]  # fmt: skip
    torch.set_num_threads(1)
    train(load_recipe("md17/l2/ethanol", sets), out=tmp_path / "run", console=quiet())
    config = read_config(tmp_path / "run" / "model")
    assert config["metadata"]["elements"] == [1, 6, 8]  # recorded by the trainer from its training split
    proc = run_cli("card", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "run" / "model"
    card = (folder / "README.md").read_text()
    assert_card_states_everything(folder, card, config)
    assert THEORY["md17"] in card and str(source) not in card


def test_restate_keeps_weights_exports_and_numbers(tmp_path, monkeypatch, shared_data):
    """`equizoo restate` rewrites a release's record only: the bytes of weights and exports and every
    measured number stay; the registry, manifest and card follow the new config."""
    import shutil

    from clihelpers import run_cli

    from zoo.hub import read_manifest

    name = "equiformer-md17-ethanol-l2-small-cpu"
    shutil.copytree(pull(name), tmp_path / "releases" / name)
    env = {
        "EQUIZOO_RELEASES": str(tmp_path / "releases"),
        "EQUIZOO_REGISTRY": str(tmp_path / "registry.json"),
        "EQUIZOO_CACHE": str(tmp_path / "cache"),
    }
    before = {p.name: sha256_file(p) for p in (tmp_path / "releases" / name).iterdir()}
    proc = run_cli(
        "restate",
        name,
        "--source",
        str(shared_data / "md17" / "mdbenchgnn" / "ethanol"),
        "--hardware-note",
        "a new note",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "releases" / name
    after = {p.name: sha256_file(p) for p in folder.iterdir()}
    assert {k for k in before if before[k] != after[k]} == {"config.json", "README.md", "manifest.json"}
    old, new = read_config(pull(name)), read_config(folder)
    assert new["metadata"]["evaluation"]["results"] == old["metadata"]["evaluation"]["results"]
    assert new["metadata"]["elements"] == [1, 6, 8]  # recomputed from the prepared training split
    assert new["metadata"]["hardware_note"] == "a new note" and "a new note" in (folder / "README.md").read_text()
    entry = json.loads((tmp_path / "registry.json").read_text())["models"][name]
    assert (
        {k: v["sha256"] for k, v in entry["files"].items()}
        == read_manifest(folder)
        == {k: v for k, v in after.items() if k != "manifest.json"}
    )
