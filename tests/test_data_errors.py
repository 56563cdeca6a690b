"""Bad inputs give one clear DataError that names the file and says what to do."""

from pathlib import Path

import numpy as np
import pytest

from zoo.data import (
    DataError,
    load_dataset,
    prepare_dataset,
    read_md_npz,
    read_mdbenchgnn,
    read_qm9_xyz,
    read_rmd17_splits,
    read_structures,
)
from zoo.data.units import energy_factor

HERE = Path(__file__).parent
QM9_SAMPLE = HERE / "data" / "qm9" / "dsgdb9nsd_000002.xyz"


def _raises(call, path, *fragments):
    """Exactly one DataError, not chained, whose message names ``path`` and contains ``fragments``."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.__cause__ is None
    return message


@pytest.mark.parametrize("suffix", [".xyz", ".extxyz", ".npz", ".lmdb", ".cif"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    _raises(lambda: read_structures(path), path, "empty")


def test_empty_qm9_file(tmp_path):
    path = tmp_path / "dsgdb9nsd_000001.xyz"
    path.write_text("\n")
    _raises(lambda: read_qm9_xyz(path), path, "empty")


def test_truncated_xyz(tmp_path):
    path = tmp_path / "truncated.extxyz"
    path.write_text("3\nProperties=species:S:1:pos:R:3 energy=1.0\nC 0 0 0\nH 1 0 0\n")
    _raises(lambda: read_structures(path, energy_unit="eV"), path, "truncated")


def test_truncated_qm9_xyz(tmp_path):
    path = tmp_path / "dsgdb9nsd_000002.xyz"
    lines = QM9_SAMPLE.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n")
    _raises(lambda: read_qm9_xyz(path), path, "truncated", "header says 4 atoms, found 2")


def test_unknown_element(tmp_path):
    path = tmp_path / "unknown.xyz"
    path.write_text("2\nProperties=species:S:1:pos:R:3\nC 0 0 0\nXx 1 0 0\n")
    _raises(lambda: read_structures(path), path, "unknown element symbol 'Xx'")


def test_unknown_element_qm9(tmp_path):
    path = tmp_path / "dsgdb9nsd_000002.xyz"
    path.write_text(QM9_SAMPLE.read_text().replace("\nN\t", "\nQq\t", 1))
    _raises(lambda: read_qm9_xyz(path), f"{path}:3", "unknown element symbol 'Qq'")


def test_nan_coordinate_xyz(tmp_path):
    path = tmp_path / "nan.xyz"
    path.write_text("2\n\nC 0 nan 0\nH 1 0 0\n")
    _raises(lambda: read_structures(path), path, "non-finite", "atom 0")


def test_nan_coordinate_qm9(tmp_path):
    path = tmp_path / "dsgdb9nsd_000002.xyz"
    text = QM9_SAMPLE.read_text()
    path.write_text(text.replace("0.0172574639", "NaN", 1))
    _raises(lambda: read_qm9_xyz(path), path, "non-finite", "atom 1")


def test_nan_coordinate_npz(tmp_path):
    path = tmp_path / "md17_x.npz"
    positions = np.zeros((3, 2, 3))
    positions[2, 1, 0] = np.nan
    np.savez(path, R=positions, z=np.array([1, 1]), E=np.zeros((3, 1)), F=np.zeros((3, 2, 3)))
    _raises(lambda: read_md_npz(path), path, "frame 2", "non-finite")


def test_missing_rmd17_split_file(tmp_path):
    (tmp_path / "index_train_01.csv").write_text("0\n1\n")
    _raises(lambda: read_rmd17_splits(tmp_path, 1), tmp_path / "index_test_01.csv", "not found")


def test_missing_split_file_when_preparing_rmd17(tmp_path):
    (tmp_path / "npz_data").mkdir()
    npz = tmp_path / "npz_data" / "rmd17_ethanol.npz"
    np.savez(
        npz,
        nuclear_charges=np.array([1, 1]),
        coords=np.zeros((4, 2, 3)),
        energies=np.zeros(4),
        forces=np.zeros((4, 2, 3)),
    )
    message = _raises(
        lambda: prepare_dataset("rmd17-ethanol", source=npz, cache_dir=tmp_path / "c"),
        "index_train_01.csv",
        "not found",
    )
    assert "splits" in message


def test_missing_mdbenchgnn_split_file(tmp_path):
    data = dict(
        pos=np.zeros((2, 2, 3)), energy=np.zeros((2, 1)), forces=np.zeros((2, 2, 3)), atomic_numbers=np.array([1, 1])
    )
    np.savez(tmp_path / "train.npz", **data)
    np.savez(tmp_path / "test.npz", **data)
    _raises(lambda: read_mdbenchgnn(tmp_path), tmp_path / "val.npz", "not found")


def test_bad_split_index(tmp_path):
    (tmp_path / "index_train_01.csv").write_text("0\nabc\n")
    (tmp_path / "index_test_01.csv").write_text("1\n")
    _raises(lambda: read_rmd17_splits(tmp_path, 1), f"{tmp_path / 'index_train_01.csv'}:2", "integer")


def test_missing_file(tmp_path):
    _raises(lambda: read_structures(tmp_path / "nope.xyz"), tmp_path / "nope.xyz", "no such file")


def test_unknown_dataset_and_unit(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'qm10'"):
        prepare_dataset("qm10", cache_dir=tmp_path)
    with pytest.raises(DataError, match="unknown energy unit 'kcal'"):
        energy_factor("kcal")


def test_not_prepared(tmp_path):
    with pytest.raises(DataError, match="equizoo data prepare md17-aspirin"):
        load_dataset("md17-aspirin", cache_dir=tmp_path, prepare=False)
    with pytest.raises(DataError, match="no source given"):
        load_dataset("md17-aspirin", cache_dir=tmp_path)


def test_wrong_npz_layout(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    _raises(lambda: read_md_npz(path), path, "unknown npz layout")


def test_negative_atom_count_qm9(tmp_path):
    path = tmp_path / "dsgdb9nsd_000002.xyz"
    path.write_text("-4\n" + "\n".join(QM9_SAMPLE.read_text().splitlines()[1:]) + "\n")
    _raises(lambda: read_qm9_xyz(path), f"{path}:1", "number of atoms is -4")
    _raises(lambda: read_structures(path), f"{path}:1", "number of atoms is -4")


def test_binary_garbage_qm9(tmp_path):
    path = tmp_path / "dsgdb9nsd_000002.xyz"
    lines = QM9_SAMPLE.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:3]) + b"\n\xff\xfe\x00\x9c binary\x80\n" + bytes(range(256)))
    _raises(lambda: read_qm9_xyz(path), f"{path}:4", "not text", "re-extract")
    _raises(lambda: read_structures(path), f"{path}:4", "not text")
