"""QM9: original xyz files, side files, qm9pack (full 130,831) and the reference split."""

import importlib.util
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from zoo.data import (
    QM9_TARGETS,
    DataError,
    PreparedDataset,
    collate,
    compute_statistics,
    iter_qm9_figshare,
    prepare_dataset,
    read_qm9_atomref,
    read_qm9_uncharacterized,
    read_qm9_xyz,
)
from zoo.data.qm9 import ATOMREF_HARTREE, QM9_N_MOLECULES, parse_mathematica_list
from zoo.data.units import HARTREE_TO_EV

HERE = Path(__file__).parent
SAMPLES = HERE / "data" / "qm9"
SHARED = Path(os.environ.get("EQUIZOO_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared data not found at {SHARED}; set EQUIZOO_SHARED_DATA"
)
needs_qm9pack = pytest.mark.skipif(
    importlib.util.find_spec("qm9pack") is None, reason="qm9pack not installed; run `pip install qm9pack==1.0.3`"
)


def _samples():
    return {s.index: s for s in (read_qm9_xyz(p) for p in sorted(SAMPLES.glob("dsgdb9nsd_*.xyz")))}


def test_xyz_targets_in_reference_units():
    methane = read_qm9_xyz(SAMPLES / "dsgdb9nsd_000001.xyz")
    assert methane.name == "dsgdb9nsd_000001" and methane.index == 1
    assert methane.species.tolist() == [6, 1, 1, 1, 1]
    assert methane.positions[1].tolist() == [0.002150416, -0.0060313176, 0.0019761204]
    t = methane.targets
    assert list(t) == list(QM9_TARGETS)
    assert t["mu"] == 0.0 and t["alpha"] == 13.21 and t["r2"] == 35.3641 and t["Cv"] == 6.469
    assert t["homo"] == pytest.approx(-0.3877 * 27.211386246, abs=1e-12)
    assert t["zpve"] == pytest.approx(0.044749 * 27.211386246, abs=1e-12)
    ref = -37.846772 + 4 * -0.500273
    assert t["U0"] == pytest.approx((-40.47893 - ref) * HARTREE_TO_EV, abs=1e-9)
    assert t["G"] == pytest.approx((-40.498597 - (-37.861317 + 4 * -0.510927)) * HARTREE_TO_EV, abs=1e-9)
    assert methane.units["U0"] == "eV" and methane.units["alpha"] == "a0^3" and methane.units["Cv"] == "cal/mol/K"


def test_mathematica_exponent_and_trailing_dots():
    s = read_qm9_xyz(SAMPLES / "dsgdb9nsd_005005.xyz")
    assert s.positions[7, 2] == 7.9254e-6
    assert parse_mathematica_list("[[0.,1.E-6,2.5],[3.,-4.,5]]") == [[0.0, 1e-6, 2.5], [3.0, -4.0, 5]]


def test_atomref_file_matches_packaged_table():
    assert read_qm9_atomref(SAMPLES / "atomref.txt") == ATOMREF_HARTREE


@needs_shared
def test_uncharacterized_list_matches_figshare_file():
    packaged = read_qm9_uncharacterized()
    from_file = read_qm9_uncharacterized(SHARED / "qm9" / "figshare" / "uncharacterized.txt")
    assert packaged.size == 3054
    np.testing.assert_array_equal(packaged, from_file)


def test_figshare_folder_and_archive(tmp_path):
    folder = list(iter_qm9_figshare(SAMPLES))
    assert [s.index for s in folder] == sorted(set(_samples()) - {5003})
    archive = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        for path in sorted(SAMPLES.glob("*.xyz"), reverse=True):
            tar.add(path, arcname=path.name)
    from_tar = list(iter_qm9_figshare(archive))
    assert [s.index for s in from_tar] == [s.index for s in folder]
    for a, b in zip(folder, from_tar):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.targets == b.targets


def test_figshare_folder_honours_uncharacterized_file(tmp_path):
    for path in SAMPLES.glob("*.xyz"):
        shutil.copy(path, tmp_path)
    (tmp_path / "uncharacterized.txt").write_text("header\n     1      C   C   C   1.0\n")
    indices = [s.index for s in iter_qm9_figshare(tmp_path)]
    assert 1 not in indices and 5003 in indices


# --- the full dataset from qm9pack (prepared once per session) -----------------------------------


@pytest.fixture(scope="session")
def qm9pack_dataset(qm9_full):
    path, prepare_seconds = qm9_full  # conftest: one preparation for these tests and the training runs
    return PreparedDataset(path), prepare_seconds


@needs_qm9pack
def test_qm9pack_has_all_characterized_molecules(qm9pack_dataset):
    dataset, _ = qm9pack_dataset
    assert len(dataset) == QM9_N_MOLECULES == dataset.manifest["n_structures"]
    index = np.asarray(dataset._arrays["index"])
    assert np.all(np.diff(index) > 0)
    everything = np.union1d(index, read_qm9_uncharacterized())
    np.testing.assert_array_equal(everything, np.arange(1, 133_886))
    assert dataset.units == {
        "mu": "D",
        "alpha": "a0^3",
        "homo": "eV",
        "lumo": "eV",
        "gap": "eV",
        "r2": "a0^2",
        "zpve": "eV",
        "U0": "eV",
        "U": "eV",
        "H": "eV",
        "G": "eV",
        "Cv": "cal/mol/K",
    }


@needs_qm9pack
def test_qm9pack_matches_original_xyz_files(qm9pack_dataset):
    dataset, _ = qm9pack_dataset
    position = {int(i): k for k, i in enumerate(np.asarray(dataset._arrays["index"]))}
    samples = _samples()
    characterized = [i for i in samples if i != 5003]
    assert len(characterized) == 19 and 5003 not in position
    for index in characterized:
        mine, original = dataset[position[index]], samples[index]
        assert mine.name == original.name
        np.testing.assert_array_equal(mine.species, original.species)
        np.testing.assert_allclose(mine.positions, original.positions, rtol=0, atol=1e-9)
        for target in QM9_TARGETS:
            assert abs(mine.targets[target] - original.targets[target]) <= 1e-9, (index, target)


@needs_qm9pack
def test_qm9_reference_split(qm9pack_dataset):
    dataset, _ = qm9pack_dataset
    perm = np.random.default_rng(1).permutation(130831)
    expected = {"train": perm[:110000], "val": perm[110000:120000], "test": perm[120000:]}
    assert dataset.manifest["splits"] == {"train": 110000, "val": 10000, "test": 10831}
    for split, indices in expected.items():
        got = dataset.split_indices(split)
        assert got.size == indices.size
        np.testing.assert_array_equal(got[:5], indices[:5])
        np.testing.assert_array_equal(got, indices)


@needs_qm9pack
def test_qm9_prepared_opens_fast_and_batches(qm9pack_dataset):
    dataset, _ = qm9pack_dataset
    start = time.perf_counter()
    reopened = PreparedDataset(dataset.path)
    train = reopened.split("train")
    assert time.perf_counter() - start < 2.0
    batch = train.collate(np.arange(128))
    reference = collate([train[i] for i in range(128)])
    assert set(batch) == set(reference)
    for key in batch:
        assert batch[key].dtype == reference[key].dtype
        assert bool((batch[key] == reference[key]).all()), key


@needs_qm9pack
def test_qm9_statistics_match_reference_constants(qm9pack_dataset):
    dataset, _ = qm9pack_dataset
    stats = compute_statistics(dataset, "train", targets=["homo"])
    # Equiformer hard-codes _AVG_NUM_NODES 18.03065905448718 and _AVG_DEGREE 15.57930850982666 for QM9
    assert stats["avg_num_atoms"] == pytest.approx(18.03, abs=0.01)
    assert stats["avg_degree"] == pytest.approx(15.58, abs=0.01)
    assert stats["targets"]["homo"]["count"] == 110000


@needs_qm9pack
def test_qm9_prepare_is_reused(qm9pack_dataset):
    dataset, _ = qm9pack_dataset
    before = (dataset.path / "manifest.json").stat().st_mtime_ns
    start = time.perf_counter()
    path = prepare_dataset("qm9", cache_dir=dataset.path.parent.parent)
    assert time.perf_counter() - start < 1.0
    assert path == dataset.path and (path / "manifest.json").stat().st_mtime_ns == before


def test_missing_qm9pack_message(monkeypatch):
    import zoo.data.qm9 as qm9

    monkeypatch.setattr(qm9.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install qm9pack==1.0.3"):
        qm9.qm9pack_data_dir()
