"""OC20 readers: OCP single-point LMDBs (pickled PyG ``Data``) and fairchem ASE-DB LMDBs.

The LMDB values are ``pickle.dumps(torch_geometric.data.Data)`` from PyG 1.x (fields in
``__dict__``) or PyG 2.x (fields in ``_store._mapping``). They are read without torch_geometric
through :class:`RestrictedUnpickler`, which resolves only the globals such pickles contain (found
with ``pickletools`` on real files) and refuses every other one before anything runs.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import keys
from .errors import DataError
from .structure import Structure

OC20_SPLITS = (
    "train",
    "val_id",
    "val_ood_ads",
    "val_ood_cat",
    "val_ood_both",
    "test_id",
    "test_ood_ads",
    "test_ood_cat",
    "test_ood_both",
)
IS2RE_URL = "https://dl.fbaipublicfiles.com/opencatalystproject/data/is2res_train_val_test_lmdbs.tar.gz"
IS2RE_MD5 = "cfc04dd2f87b4102ab2f607240d25fb1"  # fairchem DATASET.md
ASELMDB_RESERVED = ("nextid", "metadata", "deleted_ids")


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


class _PygObject:
    """Plain stand-in for torch_geometric objects: keeps the pickled state as attributes."""

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"unexpected state of type {type(state).__name__} for a PyG object")
        self.__dict__.update(state)


class PygData(_PygObject):
    """Stand-in for ``torch_geometric.data.Data``."""


class PygStorage(_PygObject):
    """Stand-in for ``torch_geometric.data.storage.GlobalStorage``."""


class PygAttrMarker:
    """Stand-in for the class-valued ``DataEdgeAttr``/``DataTensorAttr`` fields of PyG 2 Data."""


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
        raise UnsafePickleError(f"tensor rebuild got a {type(storage).__name__}, not a torch storage")
    if backward_hooks:
        raise UnsafePickleError("tensor carries backward hooks; refusing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


def _load_storage(data):
    """Replacement for ``torch.storage._load_from_bytes`` that loads with ``weights_only=True``."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("storage payload is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafePickleError(
                f"embedded tensor storage refused by torch.load(weights_only=True): {exc}"
            ) from None
    if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
        raise UnsafePickleError(f"embedded storage decoded to {type(storage).__name__}")
    return storage


def _np_multiarray():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray


def _np_dtype(spec, align=False, copy=True):
    if not isinstance(spec, str) or np.dtype(spec).hasobject:
        raise UnsafePickleError(f"numpy dtype {spec!r} not allowed")
    return np.dtype(spec, align, copy)


def _np_reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy reconstruct of {cls!r} not allowed")
    return _np_multiarray()._reconstruct(cls, shape, dtype_code)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar of object dtype not allowed")
    return _np_multiarray().scalar(dtype, data)


ALLOWED_GLOBALS = {
    ("torch_geometric.data.data", "Data"): PygData,
    ("torch_geometric.data.data", "DataEdgeAttr"): PygAttrMarker,
    ("torch_geometric.data.data", "DataTensorAttr"): PygAttrMarker,
    ("torch_geometric.data.storage", "GlobalStorage"): PygStorage,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for OCP LMDB values: maps the allow-listed globals, refuses all others."""

    def find_class(self, module: str, name: str):
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': only torch_geometric Data/storage, torch tensor "
                "storage and numpy array globals are allowed in OC20 LMDB records"
            )
        return target

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are not allowed in OC20 LMDB records")


def safe_loads(data: bytes, source: str = "<bytes>"):
    """Unpickle one OCP record with :class:`RestrictedUnpickler`; errors name ``source``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(
            f"{source}: {exc}. The record is refused and nothing in it was executed; only use LMDBs from "
            "trusted OCP/fairchem downloads"
        ) from None
    except Exception as exc:
        raise DataError(
            f"{source}: cannot unpickle the record ({type(exc).__name__}: {exc}); the LMDB may be corrupt"
        ) from None


def record_fields(obj) -> dict:
    """Field dict of an unpickled record: PyG 2 ``_store._mapping``, PyG 1 ``__dict__`` or a dict."""
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, _PygObject):
        store = obj.__dict__.get("_store")
        if isinstance(store, PygStorage):
            return dict(store.__dict__.get("_mapping", {}))
        return {k: v for k, v in obj.__dict__.items() if not k.startswith("_")}
    raise DataError(f"record is a {type(obj).__name__}, not a torch_geometric Data")


def _array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _scalar(value) -> float:
    return float(_array(value).reshape(-1)[0])


def record_to_structure(fields: dict, source: str) -> Structure:
    """Convert an OCP record to a Structure; precomputed graphs (edge_index, ...) are ignored."""
    for required in ("atomic_numbers", "pos"):
        if required not in fields:
            raise DataError(f"{source}: record has no {required!r} (fields: {sorted(fields)}); not an OC20 record")
    z = _array(fields["atomic_numbers"]).reshape(-1)
    if z.dtype.kind == "f":
        if not np.all(z == np.round(z)):
            raise DataError(f"{source}: atomic_numbers are not integers")
        z = np.round(z)
    z = z.astype(np.int64)
    n = z.shape[0]
    positions = _array(fields["pos"]).astype(np.float64).reshape(-1, 3)
    if "natoms" in fields and int(_scalar(fields["natoms"])) != n:
        raise DataError(f"{source}: natoms={int(_scalar(fields['natoms']))} but {n} atomic numbers")
    cell = _array(fields["cell"]).astype(np.float64).reshape(3, 3) if fields.get("cell") is not None else None
    pbc = _array(fields["pbc"]).astype(bool).reshape(-1) if fields.get("pbc") is not None else (cell is not None)
    targets, units = {}, {}
    for name, key, unit in (
        ("y_relaxed", keys.Y_RELAXED, "eV"),
        ("y_init", keys.Y_INIT, "eV"),
        ("y", keys.ENERGY, "eV"),
    ):
        if fields.get(name) is not None:
            targets[key], units[key] = _scalar(fields[name]), unit
    if fields.get("pos_relaxed") is not None:
        targets[keys.POS_RELAXED] = _array(fields["pos_relaxed"]).astype(np.float64).reshape(n, 3)
        units[keys.POS_RELAXED] = "Å"
    if fields.get("force") is not None:
        targets[keys.FORCES], units[keys.FORCES] = _array(fields["force"]).astype(np.float64).reshape(n, 3), "eV/Å"
    sid = fields.get("sid")
    index, name = -1, ""
    if sid is not None:
        sid_value = _array(sid).reshape(-1)[0] if not isinstance(sid, (int, str)) else sid
        try:
            index = int(sid_value)
        except (TypeError, ValueError):
            name = str(sid_value)
    return Structure(
        species=z,
        positions=positions,
        cell=cell,
        pbc=pbc,
        tags=_array(fields["tags"]).reshape(-1) if fields.get("tags") is not None else None,
        fixed=_array(fields["fixed"]).reshape(-1) if fields.get("fixed") is not None else None,
        targets=targets,
        units=units,
        name=name,
        index=index,
    ).check(source)


def _open_lmdb(path: Path):
    try:
        import lmdb
    except ImportError:
        raise DataError(f"{path}: reading LMDB files needs the 'lmdb' package; run `pip install lmdb`") from None
    if not path.is_file():
        raise DataError(f"{path}: no such file (OC20 LMDBs are single files, e.g. <split>/data.lmdb)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; download or extract it again")
    try:
        return lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as exc:
        raise DataError(f"{path}: not a readable LMDB file ({exc}); download or extract it again") from None


def _numeric_keys(txn) -> list[bytes]:
    found = [k for k in txn.cursor().iternext(values=False) if k.isdigit()]
    return sorted(found, key=int)


def lmdb_length(path: str | os.PathLike) -> int:
    """Number of records (numeric keys) in an OCP or ASE LMDB."""
    path = Path(path)
    env = _open_lmdb(path)
    try:
        with env.begin() as txn:
            return len(_numeric_keys(txn))
    finally:
        env.close()


def iter_oc20_lmdb(path: str | os.PathLike) -> Iterator[Structure]:
    """Yield the records of an OCP single-point LMDB in key order (``b'0'``, ``b'1'``, ...)."""
    path = Path(path)
    env = _open_lmdb(path)
    try:
        with env.begin() as txn:
            for key in _numeric_keys(txn):
                source = f"{path} (key {key.decode()})"
                yield record_to_structure(record_fields(safe_loads(txn.get(key), source)), source)
    finally:
        env.close()


def read_oc20_lmdb(path: str | os.PathLike) -> list[Structure]:
    """All records of an OCP single-point LMDB."""
    return list(iter_oc20_lmdb(path))


def _fixed_from_constraints(constraints, n: int) -> np.ndarray | None:
    if not constraints:
        return None
    fixed = np.zeros(n, dtype=bool)
    for constraint in constraints:
        if constraint.get("name") == "FixAtoms":
            fixed[np.asarray(constraint.get("kwargs", {}).get("indices", []), dtype=np.int64)] = True
    return fixed


def aselmdb_row_to_structure(row: dict, source: str) -> Structure:
    """Convert one decoded fairchem ASE-LMDB row (an ASE ``AtomsRow`` dict) to a Structure."""
    from ase.io.jsonio import decode

    row = decode(json.dumps(row)) if not isinstance(row.get("numbers"), np.ndarray) else row
    if "numbers" not in row or "positions" not in row:
        raise DataError(f"{source}: row has no numbers/positions; not an ASE database row")
    numbers = np.asarray(row["numbers"], dtype=np.int64)
    n = numbers.shape[0]
    cell = row.get("cell")
    cell = (
        np.asarray(cell.get("array") if isinstance(cell, dict) else cell, dtype=np.float64)
        if cell is not None
        else None
    )
    if cell is not None and not np.any(cell):
        cell = None
    pbc = row.get("pbc")
    targets, units = {}, {}
    if row.get("energy") is not None:
        targets[keys.ENERGY], units[keys.ENERGY] = float(row["energy"]), "eV"
    if row.get("forces") is not None:
        targets[keys.FORCES], units[keys.FORCES] = np.asarray(row["forces"], dtype=np.float64).reshape(n, 3), "eV/Å"
    data = {**(row.get("key_value_pairs") or {}), **(row.get("data") or {})}
    sid = data.get("sid")
    index, name = -1, ""
    if sid is not None:
        try:
            index = int(sid)
        except (TypeError, ValueError):
            name = str(sid)
    return Structure(
        species=numbers,
        positions=np.asarray(row["positions"], dtype=np.float64),
        cell=cell,
        pbc=np.asarray(pbc, dtype=bool) if (pbc is not None and cell is not None) else None,
        tags=np.asarray(row["tags"]) if row.get("tags") is not None else None,
        fixed=_fixed_from_constraints(row.get("constraints"), n),
        targets=targets,
        units=units,
        name=name,
        index=index,
    ).check(source)


def iter_aselmdb(path: str | os.PathLike) -> Iterator[Structure]:
    """Yield the rows of a fairchem ``.aselmdb`` (zlib-compressed JSON rows keyed by id)."""
    path = Path(path)
    env = _open_lmdb(path)
    try:
        with env.begin() as txn:
            for key in _numeric_keys(txn):
                source = f"{path} (id {key.decode()})"
                try:
                    row = json.loads(zlib.decompress(txn.get(key)))
                except (zlib.error, ValueError) as exc:
                    raise DataError(
                        f"{source}: not a zlib-compressed JSON row ({exc}); is this a fairchem .aselmdb?"
                    ) from None
                yield aselmdb_row_to_structure(row, source)
    finally:
        env.close()


def read_aselmdb(path: str | os.PathLike) -> list[Structure]:
    """All rows of a fairchem ``.aselmdb``."""
    return list(iter_aselmdb(path))


def find_oc20_splits(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Map split name to its LMDB files under ``root``.

    Accepts ``<root>/<split>/*.lmdb`` (the OC20 layout, ``<split>/data.lmdb``), ``<root>/<split>.lmdb``
    or a single ``.lmdb`` file (split named after the file, or its folder for ``data.lmdb``). The
    extracted IS2RE tarball root (``data/is2re/all`` inside) is found too. Known OC20 split names
    come first, in their usual order.
    """
    root = Path(root)
    if root.is_file():
        split = root.parent.name if root.stem == "data" else root.stem
        return {split: [root]}
    if not root.is_dir():
        raise DataError(f"{root}: no such file or directory; give an OC20 LMDB or the folder with <split>/data.lmdb")
    nested = root / "data" / "is2re" / "all"
    if nested.is_dir():
        root = nested
    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.lmdb")) + sorted(sub.glob("*.aselmdb"))
        if files:
            found[sub.name] = files
    for file in sorted(list(root.glob("*.lmdb")) + list(root.glob("*.aselmdb"))):
        found.setdefault(file.stem, []).append(file)
    if not found:
        raise DataError(
            f"{root}: no LMDB files found; expected <split>/data.lmdb for splits such as {', '.join(OC20_SPLITS[:2])}"
        )
    order = [s for s in OC20_SPLITS if s in found] + sorted(s for s in found if s not in OC20_SPLITS)
    return {s: found[s] for s in order}


def iter_lmdb_any(path: Path) -> Iterator[Structure]:
    """Records of an OCP ``.lmdb`` or a fairchem ``.aselmdb``, chosen by suffix."""
    return iter_aselmdb(path) if path.suffix == ".aselmdb" else iter_oc20_lmdb(path)
