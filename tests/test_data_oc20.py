"""OC20: OCP LMDBs read without torch_geometric, safely; PyG 1 and 2 layouts; fairchem ASE-DB."""

import collections
import json
import os
import pickle
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo import keys
from zoo.data import (
    DataError,
    PreparedDataset,
    UnsafePickleError,
    collate,
    compute_statistics,
    find_oc20_splits,
    prepare_dataset,
    read_aselmdb,
    read_oc20_lmdb,
    read_structures,
)

lmdb = pytest.importorskip("lmdb", reason="the lmdb package is needed for OC20 files; pip install lmdb")

HERE = Path(__file__).parent
SHARED = Path(os.environ.get("EQUIZOO_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared data not found at {SHARED}; set EQUIZOO_SHARED_DATA"
)
REFERENCE = SHARED / "oc20" / "format_reference_not_oc20"


# --- helpers that write OCP-format LMDBs the way OCP does (pickle.dumps of a PyG Data) -----------


def _fake_pyg(monkeypatch):
    """Register stand-in torch_geometric modules so pickle can name their classes while writing."""
    data_mod = types.ModuleType("torch_geometric.data.data")
    storage_mod = types.ModuleType("torch_geometric.data.storage")
    for name in ("Data", "DataEdgeAttr", "DataTensorAttr"):
        cls = type(name, (), {"__module__": "torch_geometric.data.data"})
        setattr(data_mod, name, cls)
    storage_mod.GlobalStorage = type("GlobalStorage", (), {"__module__": "torch_geometric.data.storage"})
    for name, module in (
        ("torch_geometric", types.ModuleType("torch_geometric")),
        ("torch_geometric.data", types.ModuleType("torch_geometric.data")),
        ("torch_geometric.data.data", data_mod),
        ("torch_geometric.data.storage", storage_mod),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return data_mod, storage_mod


def _pyg1(data_mod, fields):
    data = data_mod.Data()
    data.__dict__.update(fields)
    return data


def _pyg2(data_mod, storage_mod, fields):
    data = data_mod.Data()
    store = storage_mod.GlobalStorage()
    store.__dict__.update({"_mapping": dict(fields), "_parent": data})
    data.__dict__.update(
        {"_edge_attr_cls": data_mod.DataEdgeAttr, "_tensor_attr_cls": data_mod.DataTensorAttr, "_store": store}
    )
    return data


def _write_lmdb(path: Path, values: list[bytes], length_key: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, meminit=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode("ascii"), value)
        if length_key:
            txn.put(b"length", pickle.dumps(len(values), protocol=-1))
    env.sync()
    env.close()


def _emt_adslabs():
    """Small adsorbate+slab systems relaxed with ASE's EMT (NOT DFT): OC20-style fields."""
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    systems = []
    for sid, (metal, adsorbate) in enumerate([("Cu", "O"), ("Pt", "C"), ("Ni", "N"), ("Cu", "H")]):
        slab = fcc111(metal, size=(2, 2, 3), vacuum=6.0)
        layer = slab.get_tags().copy()  # 1 = top ... 3 = bottom
        add_adsorbate(slab, adsorbate, 1.8, "fcc")
        tags = np.concatenate([np.where(layer == 1, 1, 0), [2]])
        fixed = np.concatenate([layer >= 2, [False]])
        slab.set_constraint(FixAtoms(mask=fixed))
        slab.calc = EMT()
        initial = slab.positions.copy()
        e_init = slab.get_potential_energy()
        BFGS(slab, logfile=None).run(fmax=0.1, steps=15)
        systems.append(
            {
                "pos": torch.tensor(initial, dtype=torch.float32),
                "cell": torch.tensor(np.asarray(slab.cell), dtype=torch.float32).view(1, 3, 3),
                "atomic_numbers": torch.tensor(slab.numbers, dtype=torch.float32),
                "natoms": len(slab),
                "tags": torch.tensor(tags, dtype=torch.long),
                "fixed": torch.tensor(fixed, dtype=torch.float32),
                "sid": sid,
                "y_init": float(e_init),
                "y_relaxed": float(slab.get_potential_energy()),
                "pos_relaxed": torch.tensor(slab.positions, dtype=torch.float32),
                "edge_index": torch.zeros(2, 0, dtype=torch.long),
                "cell_offsets": torch.zeros(0, 3),
            }
        )
    return systems


@pytest.fixture(scope="module")
def emt_systems():
    return _emt_adslabs()


def _assert_same(a, b):
    np.testing.assert_array_equal(a.species, b.species)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.cell, b.cell)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    np.testing.assert_array_equal(a.tags, b.tags)
    np.testing.assert_array_equal(a.fixed, b.fixed)
    assert a.index == b.index and set(a.targets) == set(b.targets)
    for key, value in a.targets.items():
        np.testing.assert_array_equal(value, b.targets[key])


# --- the real reference-format files ----------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("name, count", [("train.lmdb", 68), ("val.lmdb", 51)])
def test_reference_lmdbs_load_without_torch_geometric(name, count):
    assert "torch_geometric" not in sys.modules
    structures = read_oc20_lmdb(REFERENCE / name)
    assert "torch_geometric" not in sys.modules
    assert len(structures) == count
    for s in structures:
        assert s.species.dtype == np.int64 and s.positions.dtype == np.float64
        assert s.cell.shape == (3, 3) and s.pbc.all()
        assert set(np.unique(s.tags)) <= {0, 1, 2} and s.fixed.dtype == bool
        assert set(s.targets) == {keys.Y_RELAXED, keys.Y_INIT}
        assert s.units[keys.Y_RELAXED] == "eV"
    assert [s.index for s in structures] == list(range(count))  # sid 0..n-1, records in numeric key order


@needs_shared
def test_reference_lmdbs_keep_record_values():
    """The Structure holds the record's own values; the precomputed graph is present but ignored."""
    env = lmdb.open(str(REFERENCE / "val.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        raw = txn.get(b"3")
    env.close()
    from zoo.data.oc20 import record_fields, safe_loads

    fields = record_fields(safe_loads(raw))
    s = read_oc20_lmdb(REFERENCE / "val.lmdb")[3]
    np.testing.assert_array_equal(s.positions, fields["pos"].numpy().astype(np.float64))
    assert s.n_atoms == fields["natoms"] and s.targets[keys.Y_RELAXED] == fields["y_relaxed"]
    assert {"edge_index", "cell_offsets"} <= set(fields)


@needs_shared
def test_prepare_reference_lmdbs(tmp_path):
    dataset = PreparedDataset(prepare_dataset("oc20-is2re", source=REFERENCE, cache_dir=tmp_path))
    assert dataset.manifest["splits"] == {"train": 68, "val": 51}
    batch = dataset.split("val").collate(np.arange(4))
    assert batch[keys.CELL].shape == (4, 3, 3) and batch[keys.PBC].all()
    assert batch[keys.Y_RELAXED].shape == (4,)


@needs_shared
def test_oc20_adslab_json_via_ase():
    s = read_structures(SHARED / "oc20" / "oc20_adslab_frame.json")[0]
    assert s.n_atoms == 34 and s.pbc.all() and s.fixed.sum() == 24
    assert s.targets[keys.ENERGY] == pytest.approx(-135.66393572)
    assert s.tags[:2].tolist() == [1, 1]


# --- safety -----------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(marker: Path):
    import builtins

    return {
        "os.system": _Evil(os.system, (f"touch {marker}",)),
        "builtins.eval": _Evil(builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.Popen": _Evil(subprocess.Popen, (["touch", str(marker)],)),
        "builtins.open": _Evil(builtins.open, (str(marker), "w")),
    }


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "subprocess.Popen", "builtins.open"])
def test_malicious_global_is_refused(tmp_path, monkeypatch, attack):
    marker = tmp_path / "pwned"
    payload = _attacks(marker)[attack]
    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        top = pickle.dumps(payload, protocol=-1)
        nested = pickle.dumps(
            _pyg1(data_mod, {"pos": torch.zeros(1, 3), "atomic_numbers": torch.ones(1), "evil": payload})
        )
    for value in (top, nested):
        path = tmp_path / f"evil_{len(value)}.lmdb"
        _write_lmdb(path, [value])
        with pytest.raises(UnsafePickleError) as info:
            read_oc20_lmdb(path)
        message = str(info.value)
        refused = f"'{payload.func.__module__}.{payload.func.__name__}'"  # os.system pickles as posix.system
        assert str(path) in message and refused in message and "nothing in it was executed" in message
        assert not marker.exists()


def test_malicious_tensor_storage_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Evil(os.system, (f"touch {marker}",)), protocol=2)
    value = pickle.dumps(_Evil(torch.storage._load_from_bytes, (inner,)), protocol=-1)
    path = tmp_path / "evil_storage.lmdb"
    _write_lmdb(path, [value])
    with pytest.raises(UnsafePickleError, match="weights_only") as info:
        read_oc20_lmdb(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


# --- PyG 1 and PyG 2 layouts, written by the tests from EMT systems --------------------------------


def test_pyg1_and_pyg2_layouts_load_identically(tmp_path, monkeypatch, emt_systems):
    with monkeypatch.context() as m:
        data_mod, storage_mod = _fake_pyg(m)
        v1 = [pickle.dumps(_pyg1(data_mod, f), protocol=-1) for f in emt_systems]
        v2 = [pickle.dumps(_pyg2(data_mod, storage_mod, f), protocol=-1) for f in emt_systems]
    assert "torch_geometric" not in sys.modules
    _write_lmdb(tmp_path / "pyg1.lmdb", v1)
    _write_lmdb(tmp_path / "pyg2.lmdb", v2, length_key=False)
    one, two = read_oc20_lmdb(tmp_path / "pyg1.lmdb"), read_oc20_lmdb(tmp_path / "pyg2.lmdb")
    assert len(one) == len(two) == len(emt_systems)
    for a, b, fields in zip(one, two, emt_systems):
        _assert_same(a, b)
        assert a.targets[keys.POS_RELAXED].shape == (a.n_atoms, 3)
        assert a.tags.tolist() == fields["tags"].tolist() and a.index == fields["sid"]
        assert a.targets[keys.Y_RELAXED] == fields["y_relaxed"]


@needs_shared
def test_reference_records_rewritten_as_pyg1_load_identically(tmp_path, monkeypatch):
    from zoo.data.oc20 import record_fields, safe_loads

    env = lmdb.open(str(REFERENCE / "train.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        records = [record_fields(safe_loads(txn.get(str(i).encode()))) for i in range(10)]
    env.close()
    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        values = [pickle.dumps(_pyg1(data_mod, r), protocol=-1) for r in records]
    _write_lmdb(tmp_path / "pyg1.lmdb", values)
    for a, b in zip(read_oc20_lmdb(tmp_path / "pyg1.lmdb"), read_oc20_lmdb(REFERENCE / "train.lmdb")[:10]):
        _assert_same(a, b)


def test_is2re_folder_layout_prepares(tmp_path, monkeypatch, emt_systems):
    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        values = [pickle.dumps(_pyg1(data_mod, f), protocol=-1) for f in emt_systems]
    root = tmp_path / "is2re" / "all"
    _write_lmdb(root / "train" / "data.lmdb", values[:3])
    _write_lmdb(root / "val_id" / "data.lmdb", values[3:])
    test_only = {k: v for k, v in emt_systems[0].items() if k not in ("y_init", "y_relaxed", "pos_relaxed")}
    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        _write_lmdb(root / "test_id" / "data.lmdb", [pickle.dumps(_pyg1(data_mod, test_only), protocol=-1)])
    assert list(find_oc20_splits(root)) == ["train", "val_id", "test_id"]
    dataset = PreparedDataset(prepare_dataset("oc20-is2re", source=root, cache_dir=tmp_path / "cache"))
    assert dataset.manifest["splits"] == {"train": 3, "val_id": 1, "test_id": 1}
    assert dataset.units == {keys.Y_RELAXED: "eV", keys.Y_INIT: "eV", keys.POS_RELAXED: "Å"}
    test_structure = dataset.split("test_id")[0]
    assert test_structure.targets == {} and test_structure.tags is not None
    direct = read_oc20_lmdb(root / "train" / "data.lmdb")
    _assert_same(dataset[1], direct[1])
    fast = dataset.split("train").collate([0, 1, 2], dtype=torch.float64)
    slow = collate(direct, dtype=torch.float64)
    assert set(fast) == set(slow)
    for key in slow:
        assert torch.equal(fast[key], slow[key]), key
    assert fast[keys.POS_RELAXED].shape == (sum(s.n_atoms for s in direct), 3)


def test_periodic_degree_matches_ase_neighbor_list(tmp_path, monkeypatch, emt_systems):
    from ase.neighborlist import neighbor_list

    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        values = [pickle.dumps(_pyg1(data_mod, f), protocol=-1) for f in emt_systems]
    _write_lmdb(tmp_path / "train.lmdb", values)
    dataset = PreparedDataset(prepare_dataset("oc20-is2re", source=tmp_path / "train.lmdb", cache_dir=tmp_path / "c"))
    stats = compute_statistics(dataset, "train", cutoff=5.0)
    pairs = sum(len(neighbor_list("i", s.to_atoms(), 5.0)) for s in dataset)
    assert stats["avg_degree"] == pytest.approx(pairs / sum(s.n_atoms for s in dataset), rel=1e-12)
    y = np.array([f["y_relaxed"] for f in emt_systems])
    assert stats["targets"][keys.Y_RELAXED]["mean"] == pytest.approx(y.mean())
    assert stats["targets"][keys.Y_RELAXED]["std"] == pytest.approx(y.std(ddof=1))


# --- fairchem ASE-DB layout -------------------------------------------------------------------------


def _write_aselmdb(path: Path, structures):
    """Write rows as fairchem's LMDBDatabase does: zlib(JSON(AtomsRow dict)) under ids 1..n."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, meminit=False)
    with env.begin(write=True) as txn:
        for i, s in enumerate(structures, 1):
            row = {
                "numbers": s.species.tolist(),
                "positions": s.positions.tolist(),
                "cell": s.cell.tolist(),
                "pbc": s.pbc.tolist(),
                "tags": s.tags.tolist(),
                "constraints": [{"name": "FixAtoms", "kwargs": {"indices": np.flatnonzero(s.fixed).tolist()}}],
                "energy": s.targets[keys.Y_RELAXED],
                "forces": np.zeros((s.n_atoms, 3)).tolist(),
                "key_value_pairs": {"sid": s.index},
                "data": {},
                "mtime": 1.0,
                "user": "test",
            }
            txn.put(str(i).encode("ascii"), zlib.compress(json.dumps(row).encode()))
        txn.put(b"nextid", zlib.compress(json.dumps(len(structures) + 1).encode()))
        txn.put(b"metadata", zlib.compress(json.dumps({}).encode()))
    env.sync()
    env.close()


def test_aselmdb(tmp_path, monkeypatch, emt_systems):
    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        values = [pickle.dumps(_pyg1(data_mod, f), protocol=-1) for f in emt_systems]
    _write_lmdb(tmp_path / "src.lmdb", values)
    source = read_oc20_lmdb(tmp_path / "src.lmdb")
    _write_aselmdb(tmp_path / "rows.aselmdb", source)
    rows = read_aselmdb(tmp_path / "rows.aselmdb")
    assert len(rows) == len(source)
    via_dispatch = read_structures(tmp_path / "rows.aselmdb")
    for a, b, c in zip(source, rows, via_dispatch):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.tags, b.tags)
        np.testing.assert_array_equal(a.fixed, b.fixed)
        assert b.index == a.index and b.targets[keys.ENERGY] == a.targets[keys.Y_RELAXED]
        np.testing.assert_array_equal(b.positions, c.positions)


def test_ase_sqlite_db(tmp_path, emt_systems):
    import ase.db
    from ase.build import molecule

    with ase.db.connect(tmp_path / "x.db") as db:
        db.write(molecule("H2O"))
        db.write(molecule("CH4"))
    structures = read_structures(tmp_path / "x.db")
    assert [s.n_atoms for s in structures] == [3, 5]


def test_not_an_lmdb(tmp_path):
    path = tmp_path / "broken.lmdb"
    path.write_bytes(b"this is not an lmdb file" * 10)
    with pytest.raises(DataError, match="broken.lmdb"):
        read_oc20_lmdb(path)


# --- crafted records and damaged files: read in a subprocess, so a crash fails the test --------------


class _Reduce:
    """Pickles as `func(*args)` followed by BUILD(state) when a state is given, as numpy objects do."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _reconstruct():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


def _read_in_subprocess(paths: list[Path]) -> list[str]:
    """One line per file, from a fresh process reading it: `READ ...` or `<ErrorType>: message`. A
    crash (SIGSEGV, SIGBUS) fails the test with the signal instead of taking pytest down."""
    script = (
        "import sys\n"
        "from zoo.data import DataError, read_oc20_lmdb\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        print('READ', [x.positions.tolist() for x in read_oc20_lmdb(path)], flush=True)\n"
        "    except DataError as exc:\n"
        "        print(type(exc).__name__ + ':', str(exc).replace(chr(10), ' '), flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"the reader crashed (exit {proc.returncode}) after {proc.stdout!r}: {proc.stderr[-2000:]}"
    )
    return proc.stdout.splitlines()


def _crafted_records():
    """(name, value of the record's `pos` field, words the refusal must contain)."""
    evil = []
    for offset in (8, 1 << 40):  # just past the 8-byte item: reads the heap; far past it: SIGSEGV
        field = {"x": (np.dtype("<f8"), offset)}
        dtype = _Reduce(np.dtype, ("V8", False, True), (3, "|", None, ("x",), field, 8, 1, 16))
        array = _Reduce(_reconstruct(), (np.ndarray, (0,), b"b"), (1, (6,), dtype, False, bytes(48)))
        evil.append((f"dtype_field_offset_{offset}", array, "numpy dtype"))
    evil.append(("object_array", _Reduce(np.ndarray, ((6,), "O")), "numpy.ndarray"))
    evil.append(
        ("build_on_ordered_dict", _Reduce(collections.OrderedDict, (), {"__class__": "x"}), "BUILD on a OrderedDict")
    )
    storage = torch.zeros(6, dtype=torch.float64).storage()
    view = _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, (1000, 3), (3, 1), False, collections.OrderedDict()))
    evil.append(("tensor_view_beyond_storage", view, "beyond its storage"))
    return evil


def test_crafted_numpy_and_tensor_records_are_refused(tmp_path, monkeypatch):
    """dtype BUILD with a field outside the item, object arrays, BUILD on other objects, tensor views
    past their storage: each gets one UnsafePickleError naming the file, and nothing crashes."""
    cases = _crafted_records()
    paths = []
    for name, value, _ in cases:
        with monkeypatch.context() as m:
            data_mod, _ = _fake_pyg(m)
            record = pickle.dumps(_pyg1(data_mod, {"pos": value, "atomic_numbers": torch.ones(2)}), protocol=-1)
        paths.append(tmp_path / f"{name}.lmdb")
        _write_lmdb(paths[-1], [record])
    lines = _read_in_subprocess(paths)
    assert len(lines) == len(cases), lines
    for (name, _, words), path, line in zip(cases, paths, lines):
        assert line.startswith("UnsafePickleError:") and str(path) in line and words in line, (name, line)


def test_plain_numpy_arrays_and_scalars_still_load(tmp_path, monkeypatch):
    pos = np.arange(6, dtype=">f4").reshape(2, 3)  # big-endian on purpose: BUILD sets the byte order
    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        fields = {"pos": pos, "atomic_numbers": np.array([1, 8]), "y_relaxed": np.float64(-1.25), "natoms": np.int64(2)}
        value = pickle.dumps(_pyg1(data_mod, fields), protocol=-1)
    _write_lmdb(tmp_path / "numpy.lmdb", [value])
    (s,) = read_oc20_lmdb(tmp_path / "numpy.lmdb")
    np.testing.assert_array_equal(s.positions, pos.astype(np.float64))
    assert s.species.tolist() == [1, 8] and s.targets[keys.Y_RELAXED] == -1.25


def test_truncated_lmdb_is_one_clear_error_not_sigbus(tmp_path, monkeypatch, emt_systems):
    with monkeypatch.context() as m:
        data_mod, _ = _fake_pyg(m)
        values = [pickle.dumps(_pyg1(data_mod, f), protocol=-1) for f in emt_systems] * 4
    full = tmp_path / "full.lmdb"
    _write_lmdb(full, values)
    data = full.read_bytes()
    cuts = []
    for keep in (len(data) // 2, len(data) - 4096, 8192, 100):
        cuts.append(tmp_path / f"cut_{keep}.lmdb")
        cuts[-1].write_bytes(data[:keep])
    *cut_lines, full_line = _read_in_subprocess([*cuts, full])
    for path, line in zip(cuts, cut_lines):
        assert line.startswith("DataError:") and str(path) in line, line
        assert "truncated" in line or "too short" in line, line
    assert full_line.startswith("READ")
