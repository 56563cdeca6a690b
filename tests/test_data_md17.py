"""MD17 / rMD17 / MD22: the shared files load, units convert, splits follow the reference."""

import os
from pathlib import Path

import numpy as np
import pytest

from zoo import keys
from zoo.data import (
    DataError,
    PreparedDataset,
    md17_split,
    prepare_dataset,
    read_md_npz,
    read_mdbenchgnn,
    read_rmd17_splits,
    read_sgdml_npz,
    read_structures,
    write_structures,
)
from zoo.data.units import KCAL_PER_MOL_TO_EV

HERE = Path(__file__).parent
SHARED = Path(os.environ.get("EQUIZOO_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared data not found at {SHARED}; set EQUIZOO_SHARED_DATA"
)
MDBENCH = SHARED / "md17" / "mdbenchgnn"
ATOMS = {"aspirin": 21, "ethanol": 9, "naphthalene": 18, "salicylic_acid": 16}


def test_kcal_constant():
    assert KCAL_PER_MOL_TO_EV == pytest.approx(4184 / (6.02214076e23 * 1.602176634e-19), rel=1e-12)
    assert KCAL_PER_MOL_TO_EV * 1000 == pytest.approx(43.364, abs=1e-3)


@needs_shared
@pytest.mark.parametrize("molecule", sorted(ATOMS))
def test_mdbenchgnn_molecules_prepare(molecule, tmp_path):
    dataset = PreparedDataset(prepare_dataset(f"md17-{molecule}", source=MDBENCH / molecule, cache_dir=tmp_path))
    assert dataset.manifest["splits"] == {"train": 950, "val": 50, "test": 1000}
    assert dataset.units == {keys.ENERGY: "eV", keys.FORCES: "eV/Å"}
    s = dataset.split("val")[0]
    assert s.n_atoms == ATOMS[molecule] and s.targets[keys.FORCES].shape == (ATOMS[molecule], 3)
    raw = np.load(MDBENCH / molecule / "val.npz")
    np.testing.assert_array_equal(s.positions, raw["pos"][0])
    assert s.targets[keys.ENERGY] == pytest.approx(raw["energy"][0, 0] * KCAL_PER_MOL_TO_EV / 0.04336, rel=1e-14)
    energies = dataset.target(keys.ENERGY)
    assert np.isfinite(energies).all() and -20000 < energies.mean() < -4000


@needs_shared
@pytest.mark.parametrize(
    "name, frames, first_energy_kcal",
    [("ethanol_ccsd_t-train.npz", 1000, None), ("md17_ethanol_first2000_mlff.npz", 2000, -97208.40600498248)],
)
def test_sgdml_npz(name, frames, first_energy_kcal):
    structures = read_md_npz(SHARED / "md17" / "sgdml_npz" / name)
    assert len(structures) == frames
    assert structures[0].species.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    if first_energy_kcal is not None:
        assert structures[0].targets[keys.ENERGY] == first_energy_kcal * KCAL_PER_MOL_TO_EV
    raw = np.load(SHARED / "md17" / "sgdml_npz" / name)
    np.testing.assert_array_equal(structures[3].targets[keys.FORCES], raw["F"][3] * KCAL_PER_MOL_TO_EV)


@needs_shared
@pytest.mark.parametrize(
    "path, unit, frames, natoms",
    [
        ("rmd17/rmd17_aspirin_1000_meV.extxyz", "meV", 1000, 21),
        ("rmd17/rmd17_ethanol_train_1_1000_eV.extxyz", "eV", 1000, 9),
        ("rmd17/rmd17_ethanol_reduced_100_kcalmol.extxyz", "kcal/mol", 100, 9),
        ("md17/ethanol_sampledata_2000.extxyz", "kcal/mol", 2000, 9),
        ("md17/aspirin_ccsd_15frames.extxyz", "kcal/mol", 15, 21),
    ],
)
def test_extxyz_files(path, unit, frames, natoms):
    structures = read_structures(SHARED / path, energy_unit=unit)
    assert len(structures) == frames and structures[0].n_atoms == natoms
    energy = structures[0].targets[keys.ENERGY]
    assert -20000 < energy < -4000, "energy should be in eV after conversion"


def _frame_key(positions):
    order = np.lexsort(positions.T)
    return tuple(np.round(positions[order].ravel(), 4))


@needs_shared
def test_same_frame_in_three_unit_systems(tmp_path):
    # MD17 ethanol: the sGDML file (kcal/mol) and MDBENCHGNN's test.npz (eV, converted by them with a
    # truncated 0.04336 that the reader undoes) hold the same frames.
    kcal = read_sgdml_npz(SHARED / "md17" / "sgdml_npz" / "md17_ethanol_first2000_mlff.npz")
    ev = read_mdbenchgnn(MDBENCH / "ethanol")["test"]
    by_position = {_frame_key(s.positions): s for s in kcal}
    matched = [(by_position[_frame_key(s.positions)], s) for s in ev if _frame_key(s.positions) in by_position]
    assert len(matched) == 1000
    for a, b in matched[:50]:
        assert abs(a.targets[keys.ENERGY] - b.targets[keys.ENERGY]) < 1e-8
        np.testing.assert_allclose(a.targets[keys.FORCES], b.targets[keys.FORCES], rtol=0, atol=1e-8)

    # the same frame written in meV and read back
    frame = matched[0][0]
    raw_kcal = frame.targets[keys.ENERGY] / KCAL_PER_MOL_TO_EV
    atoms = frame.to_atoms()
    atoms.info[keys.ENERGY] = raw_kcal * KCAL_PER_MOL_TO_EV * 1000
    atoms.arrays[keys.FORCES] = frame.targets[keys.FORCES] * 1000
    import ase.io

    ase.io.write(tmp_path / "frame_meV.extxyz", atoms)
    back = read_structures(tmp_path / "frame_meV.extxyz", energy_unit="meV")[0]
    assert back.targets[keys.ENERGY] == pytest.approx(frame.targets[keys.ENERGY], abs=1e-9)
    np.testing.assert_allclose(back.targets[keys.FORCES], frame.targets[keys.FORCES], atol=1e-9)

    # rMD17 ethanol in kcal/mol (H atoms first) and in eV; the eV export divided by 23.060541945329334 kcal/mol per eV
    rk = read_structures(SHARED / "rmd17" / "rmd17_ethanol_reduced_100_kcalmol.extxyz", energy_unit="kcal/mol")
    re_ = read_structures(SHARED / "rmd17" / "rmd17_ethanol_train_1_1000_eV.extxyz", energy_unit="eV")
    by_position = {_frame_key(s.positions): s for s in re_}
    pairs = [(s, by_position[_frame_key(s.positions)]) for s in rk if _frame_key(s.positions) in by_position]
    assert pairs
    for a, b in pairs:
        raw_kcal = a.targets[keys.ENERGY] / KCAL_PER_MOL_TO_EV
        assert b.targets[keys.ENERGY] * 23.060541945329334 == pytest.approx(raw_kcal, rel=1e-12)
        assert a.targets[keys.ENERGY] == pytest.approx(b.targets[keys.ENERGY], rel=5e-7)

    # rMD17 aspirin in meV: energies are the file's values / 1000
    aspirin = read_structures(SHARED / "rmd17" / "rmd17_aspirin_1000_meV.extxyz", energy_unit="meV")
    assert aspirin[0].targets[keys.ENERGY] == pytest.approx(-17617710.229506634 / 1000, abs=1e-9)


@needs_shared
def test_md17_reference_split(tmp_path):
    source = SHARED / "md17" / "sgdml_npz" / "md17_ethanol_first2000_mlff.npz"
    dataset = PreparedDataset(prepare_dataset("md17-ethanol", source=source, cache_dir=tmp_path))
    perm = np.random.default_rng(1).permutation(2000)
    np.testing.assert_array_equal(dataset.split_indices("train"), perm[:950])
    np.testing.assert_array_equal(dataset.split_indices("val"), perm[950:1000])
    np.testing.assert_array_equal(dataset.split_indices("test"), perm[1000:])
    assert "default_rng(1)" in dataset.manifest["split_rule"]
    assert dataset.manifest["source_units"][keys.ENERGY] == "kcal/mol"


def test_md17_split_function():
    split = md17_split(5000)
    perm = np.random.default_rng(1).permutation(5000)
    np.testing.assert_array_equal(split["val"], perm[950:1000])
    assert split["test"].size == 4000


def _tiny_rmd17(root: Path, frames: int = 12):
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(frames, 3, 3))
    data = {
        "nuclear_charges": np.array([8, 1, 1]),
        "coords": coords,
        "energies": -47000.0 + rng.normal(size=frames),
        "forces": rng.normal(size=(frames, 3, 3)),
        "old_indices": np.arange(frames),
    }
    (root / "npz_data").mkdir(parents=True)
    np.savez(root / "npz_data" / "rmd17_ethanol.npz", **data)
    (root / "splits").mkdir()
    (root / "splits" / "index_train_01.csv").write_text("".join(f"{i}\n" for i in range(0, 8)))
    (root / "splits" / "index_test_01.csv").write_text("".join(f"{i}\n" for i in range(8, 12)))
    return data


def test_rmd17_npz_with_official_splits(tmp_path):
    data = _tiny_rmd17(tmp_path / "rmd17")
    npz = tmp_path / "rmd17" / "npz_data" / "rmd17_ethanol.npz"
    structures = read_md_npz(npz)
    assert structures[5].targets[keys.ENERGY] == data["energies"][5] * KCAL_PER_MOL_TO_EV
    np.testing.assert_array_equal(structures[5].targets[keys.FORCES], data["forces"][5] * KCAL_PER_MOL_TO_EV)
    splits = read_rmd17_splits(tmp_path / "rmd17" / "splits", 1, n=12)
    np.testing.assert_array_equal(splits["test"], np.arange(8, 12))
    dataset = PreparedDataset(prepare_dataset("rmd17-ethanol", source=npz, cache_dir=tmp_path / "cache", val_size=2))
    train, val, test = (dataset.split_indices(s) for s in ("train", "val", "test"))
    np.testing.assert_array_equal(test, np.arange(8, 12))
    assert train.size == 6 and val.size == 2
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(8))


def test_md22_sgdml_format(tmp_path):
    rng = np.random.default_rng(1)
    frames = 40
    np.savez(
        tmp_path / "md22_AT-AT.npz",
        R=rng.normal(size=(frames, 4, 3)),
        z=np.array([6, 7, 8, 1], dtype=np.uint8),
        E=rng.normal(size=(frames, 1)),
        F=rng.normal(size=(frames, 4, 3)),
        e_unit=np.array("kcal/mol"),
        r_unit=np.array("Ang"),
    )
    dataset = PreparedDataset(
        prepare_dataset("md22-AT-AT", source=tmp_path / "md22_AT-AT.npz", cache_dir=tmp_path, train_size=20, val_size=5)
    )
    perm = np.random.default_rng(1).permutation(frames)
    np.testing.assert_array_equal(dataset.split_indices("train"), perm[:20])
    assert dataset.manifest["splits"] == {"train": 20, "val": 5, "test": 15}


def test_write_and_read_extxyz(tmp_path):
    structures = read_md_npz(_write_sgdml(tmp_path / "a.npz"))
    write_structures(tmp_path / "a.extxyz", structures[:3])
    back = read_structures(tmp_path / "a.extxyz")
    for a, b in zip(structures, back):
        np.testing.assert_allclose(a.positions, b.positions)
        assert a.targets[keys.ENERGY] == pytest.approx(b.targets[keys.ENERGY])


def _write_sgdml(path):
    rng = np.random.default_rng(2)
    np.savez(
        path, R=rng.normal(size=(5, 2, 3)), z=np.array([1, 1]), E=rng.normal(size=(5, 1)), F=rng.normal(size=(5, 2, 3))
    )
    return path


def test_extxyz_needs_energy_unit_to_prepare(tmp_path):
    structures = read_md_npz(_write_sgdml(tmp_path / "a.npz"))
    write_structures(tmp_path / "a.extxyz", structures)
    with pytest.raises(DataError, match="energy_unit"):
        prepare_dataset("md17-ethanol", source=tmp_path / "a.extxyz", cache_dir=tmp_path)
