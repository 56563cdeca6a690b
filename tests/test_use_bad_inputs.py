"""Bad structures given to `zoo.predict`: each gets its own error row before any model runs, and a
failure of one structure (out of memory included) never costs the others their results or the file."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pandas as pd
import pytest
from test_use_support import REPO, model_dir

from zoo.use.inputs import MIN_DISTANCE
from zoo.use.predict import Predictor

ASPIRIN = REPO / "examples" / "aspirin_md17.extxyz"


pytestmark = pytest.mark.usefixtures("one_thread")


def _aspirin(i: int = 0) -> ase.Atoms:
    return ase.io.read(ASPIRIN, index=i)


def test_atoms_closer_than_the_threshold_are_an_error_for_that_structure():
    duplicated = _aspirin()
    duplicated.positions[5] = duplicated.positions[2] + [0.03, 0.0, 0.04]
    slab = ase.Atoms("C2", positions=[[0.02, 1.0, 1.0], [3.96, 1.0, 1.0]], cell=[4.0, 4.0, 4.0], pbc=True)
    fine = ase.Atoms("C2", positions=[[0.5, 1.0, 1.0], [3.5, 1.0, 1.0]], cell=[4.0, 4.0, 4.0], pbc=True)
    frame = Predictor(model_dir("md17")).run([_aspirin(1), duplicated, slab, fine]).frame()
    assert MIN_DISTANCE == 0.1 and list(frame["status"]) == ["ok", "error", "error", "ok"]
    assert "atoms 2 and 5 are 0.05 Å apart, closer than 0.1 Å" in frame["error"][1]
    assert "periodic image of atom" in frame["error"][2] and "0.06 Å apart" in frame["error"][2]


@pytest.mark.parametrize("length, words", [(1e-3, "too small for the cutoff"), (1e12, "exceed 1e+06 Å")])
def test_degenerate_and_absurd_periodic_cells_are_an_error_for_that_structure(length, words):
    cell = ase.Atoms(
        "CO", positions=[[0.0, 0.0, 0.0], [0.4 * length, 0.4 * length, 0.4 * length]], cell=np.eye(3) * length, pbc=True
    )
    frame = Predictor(model_dir("md17")).run([_aspirin(), cell, _aspirin(2)]).frame()
    assert list(frame["status"]) == ["ok", "error", "ok"]
    assert words in frame["error"][1] and "cell" in frame["error"][1]


def test_a_structure_that_runs_out_of_memory_is_its_own_error_row(tmp_path):
    """The model raising MemoryError on one structure (here: the one above 100 atoms) fails that row only;
    the batch it was in is retried structure by structure and the output file is written."""
    predictor = Predictor(model_dir("md17"))
    module = predictor.runner.module

    def fails_on_large(**inputs):
        if inputs["pos"].shape[0] > 100:
            raise MemoryError()
        return module(**inputs)

    predictor.runner.module = fails_on_large
    big = ase.Atoms("C125", positions=np.stack(np.meshgrid(*[np.arange(5.0) * 1.5] * 3), -1).reshape(-1, 3))
    result = predictor.run([_aspirin(0), big, _aspirin(1)], batch_size=8)
    out = result.write(tmp_path / "out.csv")
    written = pd.read_csv(out)
    assert list(written["status"]) == ["ok", "error", "ok"]
    assert written["error"][1].startswith("out of memory on this structure of 125 atoms (MemoryError")
    reference = Predictor(model_dir("md17")).run([_aspirin(0), _aspirin(1)]).frame()
    np.testing.assert_allclose(written["energy [eV]"][[0, 2]], reference["energy [eV]"], rtol=0, atol=1e-9)
