"""Structure record and collate: dtypes, shapes and the batch layout of zoo.keys."""

import numpy as np
import pytest
import torch

from zoo import keys
from zoo.data import DataError, Structure, collate, structure_from_atoms


def _molecule(n=3, energy=-1.0, index=0):
    rng = np.random.default_rng(n + index)
    return Structure(
        species=np.array([8, 1, 1, 6, 6][:n]),
        positions=rng.normal(size=(n, 3)),
        targets={keys.ENERGY: energy, keys.FORCES: rng.normal(size=(n, 3)), "dipole": np.array([1.0, 2.0, 3.0])},
        units={keys.ENERGY: "eV", keys.FORCES: "eV/Å", "dipole": "D"},
        index=index,
    )


def _slab():
    return Structure(
        species=np.array([29.0, 29.0, 8.0]),
        positions=np.zeros((3, 3)) + np.arange(3)[:, None],
        cell=np.eye(3).reshape(1, 3, 3) * 5,
        pbc=True,
        tags=[0, 1, 2],
        fixed=[1, 0, 0],
        targets={keys.ENERGY: 2.0, keys.FORCES: np.ones((3, 3)), "dipole": [0.0, 0.0, 1.0]},
        units={keys.ENERGY: "eV", keys.FORCES: "eV/Å", "dipole": "D"},
        index=7,
    )


def test_structure_normalises_dtypes():
    s = _slab()
    assert s.species.dtype == np.int64 and s.species.tolist() == [29, 29, 8]
    assert s.positions.dtype == np.float64 and s.cell.shape == (3, 3)
    assert s.pbc.tolist() == [True, True, True]
    assert s.tags.dtype == np.int64 and s.fixed.dtype == bool and s.fixed.tolist() == [True, False, False]
    assert isinstance(s.targets[keys.ENERGY], float)
    with pytest.raises(AttributeError):
        s.index = 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"species": [1, 1], "positions": np.zeros((3, 3))},
        {"species": [1.5], "positions": np.zeros((1, 3))},
        {"species": [1], "positions": np.zeros((1, 3)), "pbc": True},
        {"species": [1], "positions": np.zeros((1, 3)), "tags": [0, 1]},
        {"species": [1], "positions": np.zeros((1, 3)), "targets": {keys.FORCES: np.zeros((2, 3))}},
    ],
)
def test_structure_rejects_inconsistent_input(kwargs):
    with pytest.raises(DataError):
        Structure(**kwargs)


def test_check_rejects_nan_and_bad_elements():
    with pytest.raises(DataError, match="somefile.xyz.*atom 1"):
        Structure(species=[1, 1], positions=[[0, 0, 0], [np.nan, 0, 0]]).check("somefile.xyz")
    with pytest.raises(DataError, match="somefile.xyz"):
        Structure(species=[0, 1], positions=np.zeros((2, 3))).check("somefile.xyz")


def test_collate_layout():
    structures = [_molecule(3, -1.0, 0), _slab(), _molecule(5, -3.0, 2)]
    batch = collate(structures)
    assert batch[keys.POSITIONS].shape == (11, 3) and batch[keys.POSITIONS].dtype == torch.get_default_dtype()
    assert batch[keys.SPECIES].dtype == torch.int64
    assert batch[keys.BATCH].tolist() == [0] * 3 + [1] * 3 + [2] * 5
    assert batch[keys.NUM_ATOMS].tolist() == [3, 3, 5]
    assert batch[keys.CELL].shape == (3, 3, 3)
    assert torch.equal(batch[keys.CELL][0], torch.zeros(3, 3)) and batch[keys.CELL][1, 0, 0] == 5
    assert batch[keys.PBC].tolist() == [[False] * 3, [True] * 3, [False] * 3]
    assert batch[keys.TAGS].tolist() == [0, 0, 0, 0, 1, 2] + [0] * 5
    assert batch[keys.FIXED].tolist() == [False] * 3 + [True, False, False] + [False] * 5
    assert batch[keys.INDEX].tolist() == [0, 7, 2]
    assert batch[keys.ENERGY].tolist() == [-1.0, 2.0, -3.0]
    assert batch[keys.FORCES].shape == (11, 3)
    assert torch.allclose(batch[keys.FORCES][3:6], torch.ones(3, 3))
    assert batch["dipole"].shape == (3, 3)
    assert set(batch) == {
        keys.POSITIONS,
        keys.SPECIES,
        keys.BATCH,
        keys.NUM_ATOMS,
        keys.CELL,
        keys.PBC,
        keys.TAGS,
        keys.FIXED,
        keys.INDEX,
        keys.ENERGY,
        keys.FORCES,
        "dipole",
    }


def test_collate_dtype_and_target_selection():
    structures = [_molecule(3), _molecule(4)]
    batch = collate(structures, targets=[keys.ENERGY], dtype=torch.float64)
    assert batch[keys.POSITIONS].dtype == torch.float64 and batch[keys.ENERGY].dtype == torch.float64
    assert keys.FORCES not in batch
    np.testing.assert_array_equal(batch[keys.POSITIONS].numpy()[:3], structures[0].positions)


def test_collate_errors():
    with pytest.raises(DataError, match="no structures"):
        collate([])
    bare = Structure(species=[1], positions=np.zeros((1, 3)), index=5)
    with pytest.raises(DataError, match="#5 has no target 'energy'"):
        collate([_molecule(3), bare])


def test_atoms_round_trip():
    s = _slab()
    back = structure_from_atoms(s.to_atoms(), index=s.index)
    np.testing.assert_array_equal(back.species, s.species)
    np.testing.assert_array_equal(back.positions, s.positions)
    np.testing.assert_array_equal(back.cell, s.cell)
    np.testing.assert_array_equal(back.tags, s.tags)
    np.testing.assert_array_equal(back.fixed, s.fixed)
    assert back.targets[keys.ENERGY] == s.targets[keys.ENERGY]
    np.testing.assert_array_equal(back.targets[keys.FORCES], s.targets[keys.FORCES])
