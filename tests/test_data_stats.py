"""compute_statistics against brute force on a small prepared dataset."""

from pathlib import Path

import numpy as np
import pytest

from zoo import keys
from zoo.data import DataError, PreparedDataset, Structure, compute_statistics, prepare_dataset, write_prepared

SAMPLES = Path(__file__).parent / "data" / "qm9"


def _brute_degree(structures, cutoff):
    pairs = 0
    for s in structures:
        d = np.linalg.norm(s.positions[:, None] - s.positions[None], axis=-1)
        pairs += int((d < cutoff).sum()) - s.n_atoms
    return pairs / sum(s.n_atoms for s in structures)


def test_qm9_sample_statistics(tmp_path):
    dataset = PreparedDataset(prepare_dataset("qm9", source=SAMPLES, cache_dir=tmp_path))
    train = dataset.split("train")
    structures = list(train)
    for cutoff in (1.2, 2.0, 5.0):
        stats = compute_statistics(dataset, "train", targets=["U0", "gap"], cutoff=cutoff)
        assert stats["avg_degree"] == pytest.approx(_brute_degree(structures, cutoff), rel=1e-12)
    u0 = np.array([s.targets["U0"] for s in structures])
    assert stats["n_structures"] == len(structures) == 15
    assert stats["avg_num_atoms"] == pytest.approx(np.mean([s.n_atoms for s in structures]))
    assert stats["targets"]["U0"]["mean"] == pytest.approx(u0.mean(), rel=1e-12)
    assert stats["targets"]["U0"]["std"] == pytest.approx(u0.std(ddof=1), rel=1e-12)
    assert stats["targets"]["U0"]["unit"] == "eV"
    everything = compute_statistics(dataset, split=None)
    assert set(everything["targets"]) == set(dataset.target_names) and everything["n_structures"] == 19
    quick = compute_statistics(dataset, "train", max_structures=4)
    assert quick["n_structures"] == 4


def test_per_atom_and_vector_targets(tmp_path):
    rng = np.random.default_rng(0)
    structures = [
        Structure(
            species=[1] * n,
            positions=rng.normal(size=(n, 3)) * 2,
            targets={keys.FORCES: rng.normal(size=(n, 3)), "vec": rng.normal(size=2)},
            units={keys.FORCES: "eV/Å", "vec": "D"},
        )
        for n in (2, 3, 3, 5)
    ]
    dataset = PreparedDataset(write_prepared(tmp_path / "d", "d", structures, {"train": [0, 1, 2, 3]}))
    stats = compute_statistics(dataset)
    forces = np.concatenate([s.targets[keys.FORCES] for s in structures]).ravel()
    assert stats["targets"][keys.FORCES]["mean"] == pytest.approx(forces.mean())
    assert stats["targets"][keys.FORCES]["std"] == pytest.approx(forces.std(ddof=1))
    vec = np.stack([s.targets["vec"] for s in structures])
    assert stats["targets"]["vec"]["std"] == pytest.approx(vec.std(axis=0, ddof=1).tolist())
    assert stats["avg_degree"] == pytest.approx(_brute_degree(structures, 5.0))
    with pytest.raises(DataError, match="no target 'gap'"):
        compute_statistics(dataset, targets=["gap"])
