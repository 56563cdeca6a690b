"""A trained model knows the elements of its training data (config `metadata.elements`) and refuses others.

The network embeds every atomic number of its type list, but what it predicts for an element it never saw is
meaningless (an H/C/O force field gives about the same energy for SiH4, CH3Cl and copper). predict, eval and
the ASE calculator therefore give one clear error per such structure, predict the others, and go on only with
the explicit option. A model without the record behaves as before and says that its elements are unknown
(the command line side is in test_use_cli_behaviour).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.calculator import CalculationFailed
from test_use_support import model_dir

import zoo
from zoo.calculators import EquiformerCalculator
from zoo.spec import ModelSpec

HCO = [1, 6, 8]  # what an MD17 ethanol model saw


@pytest.fixture(scope="module")
def hco_model(tmp_path_factory):
    """The small md17 test model with the elements of its (MD17) training data recorded, as releases record them."""
    out = tmp_path_factory.mktemp("elements") / "hco-model"
    shutil.copytree(model_dir("md17"), out)
    config = json.loads((out / "config.json").read_text())
    config["metadata"]["elements"] = HCO
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def _structures():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    return [molecule("CH3CH2OH"), molecule("SiH4"), molecule("CH3Cl"), molecule("H2O"), copper]


def test_model_info_reads_the_training_elements(hco_model):
    from zoo.artifact import read_config

    assert ModelSpec.from_config(read_config(hco_model), str(hco_model)).elements == tuple(HCO)
    assert ModelSpec.from_config(read_config(model_dir("md17")), "x").elements is None


def test_predict_refuses_unseen_elements_per_structure_and_predicts_the_others(hco_model):
    frame = zoo.predict(_structures(), model=hco_model)
    assert list(frame["status"]) == ["ok", "error", "error", "ok", "error"]
    errors = list(frame["error"])
    assert "element(s) Si not in the training data" in errors[1] and "(it saw only H C O)" in errors[1]
    assert "element(s) Cl not in the training data" in errors[2] and "allow_unseen_elements=True" in errors[2]
    assert "element(s) Cu not in the training data" in errors[4]
    assert np.isfinite(frame["energy [eV]"][[0, 3]]).all()
    allowed = zoo.predict(_structures(), model=hco_model, allow_unseen_elements=True)
    assert (allowed["status"] == "ok").all()
    assert allowed["energy [eV]"][0] == frame["energy [eV]"][0]  # the same model on the same structure
    unknown = zoo.predict(_structures()[:2], model=model_dir("md17"))  # no record: no check, as before
    assert (unknown["status"] == "ok").all()


def test_calculator_refuses_unseen_elements_unless_allowed(hco_model):
    atoms = molecule("SiH4")
    atoms.calc = EquiformerCalculator(hco_model)
    with pytest.raises(CalculationFailed, match="Si not in the training data"):
        atoms.get_potential_energy()
    atoms.calc = EquiformerCalculator(hco_model, allow_unseen_elements=True)
    assert np.isfinite(atoms.get_potential_energy())


def test_eval_refuses_a_dataset_with_unseen_elements(hco_model, shared_data):
    from zoo.errors import UseError
    from zoo.use.evaluate import run_evaluation

    record = shutil.copytree(hco_model, hco_model.parent / "h-only")
    config = json.loads((record / "config.json").read_text())
    config["metadata"]["elements"] = [1]
    (record / "config.json").write_text(json.dumps(config))
    with pytest.raises(UseError, match="C, O not in the training data"):
        run_evaluation(
            str(shared_data / "md17" / "mdbenchgnn" / "ethanol"), record, split="test", limit=2, device="cpu"
        )
