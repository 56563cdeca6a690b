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
import re
import struct
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


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


class _PygObject:
    """Plain stand-in for torch_geometric objects: keeps the pickled state as attributes."""

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnsafePickleError(f"unexpected state of type {type(state).__name__} for a PyG object")
        self.__dict__.update(state)


class PygData(_PygObject):
    """Stand-in for ``torch_geometric.data.Data``."""


class PygStorage(_PygObject):
    """Stand-in for ``torch_geometric.data.storage.GlobalStorage``."""


class PygAttrMarker:
    """Stand-in for the class-valued ``DataEdgeAttr``/``DataTensorAttr`` fields of PyG 2 Data."""


_NUMPY_KINDS = "biuf"  # bool, signed and unsigned integers, floats: nothing else is rebuilt
_DTYPE_SPEC = re.compile(r"^[biuf][0-9]{1,2}$")
_TORCH_DTYPES = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)


def _torch_storage_numel(storage) -> int:
    if isinstance(storage, torch.storage.TypedStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated but is what OCP pickled
            return storage.size()
    return storage.nbytes()


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    """``torch._utils._rebuild_tensor_v2`` with every argument checked against the storage it views."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
        raise UnsafePickleError(f"tensor rebuild got a {type(storage).__name__}, not a torch storage")
    if backward_hooks:
        raise UnsafePickleError("tensor carries backward hooks; refusing")
    if isinstance(storage, torch.storage.TypedStorage) and storage.dtype not in _TORCH_DTYPES:
        raise UnsafePickleError(f"tensor of dtype {storage.dtype} not allowed (plain numbers and booleans only)")
    if not (_is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)):
        raise UnsafePickleError("tensor size/stride are not tuples of non-negative integers of one length")
    if type(storage_offset) is not int or storage_offset < 0:
        raise UnsafePickleError(f"tensor storage offset {storage_offset!r} is not a non-negative integer")
    if all(n > 0 for n in size):
        extent = storage_offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
        if extent > _torch_storage_numel(storage):
            raise UnsafePickleError(
                f"tensor of size {tuple(size)} reaches beyond its storage of {_torch_storage_numel(storage)} elements"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._utils._rebuild_tensor_v2(
            storage, storage_offset, tuple(size), tuple(stride), False, collections.OrderedDict()
        )


def _is_int_tuple(value) -> bool:
    return isinstance(value, (tuple, list)) and all(type(v) is int and v >= 0 for v in value)


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


class _NumpyDtype:
    """A numpy dtype named in a pickle: a plain bool/int/float spec such as ``f8``; its BUILD state may
    only set the byte order."""

    def __init__(self, spec: str) -> None:
        self.dtype = np.dtype(spec)

    def build(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                and state[2:] == (None, None, None, -1, -1, 0)):  # fmt: skip
            raise UnsafePickleError(
                f"numpy dtype state {state!r} is not a plain dtype (fields, subarrays and metadata are refused)"
            )
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _NumpyArray:
    """A numpy array named in a pickle: rebuilt by BUILD from (shape, plain dtype, raw bytes) checked here."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.memo_keys: list = []

    def build(self, state) -> np.ndarray:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise UnsafePickleError("numpy array state is not (1, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _NumpyDtype):
            raise UnsafePickleError("numpy array without a plain dtype")
        if not _is_int_tuple(shape) or not isinstance(fortran, bool) or not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError("numpy array state has a bad shape, order flag or data (object arrays are refused)")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.dtype.itemsize != len(raw):
            raise UnsafePickleError(
                f"numpy array of shape {tuple(shape)} and dtype {dtype.dtype} needs {count * dtype.dtype.itemsize} bytes, the record has {len(raw)}"
            )
        flat = np.frombuffer(bytes(raw), dtype=dtype.dtype, count=count)
        self.array = flat.reshape(tuple(shape), order="F" if fortran else "C").copy()
        return self.array


class _NdarrayName:
    """Stands for ``numpy.ndarray``, which an array pickle only ever passes to ``_reconstruct``."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()


def _np_dtype(spec, align=False, copy=True):
    try:
        plain = isinstance(spec, str) and bool(_DTYPE_SPEC.match(spec)) and np.dtype(spec).kind in _NUMPY_KINDS
    except TypeError:
        plain = False
    if not plain:
        raise UnsafePickleError(f"numpy dtype {spec!r} not allowed (plain bool/int/float only)")
    return _NumpyDtype(spec)


def _np_reconstruct(cls, shape, dtype_code):
    if cls is not _NDARRAY:
        raise UnsafePickleError(f"numpy reconstruct of {cls!r} not allowed")
    return _NumpyArray()


def _np_frombuffer(buffer, dtype, shape, order):
    """numpy >= 2 pickles contiguous arrays (protocol 5) as ``_frombuffer(bytes, dtype, shape, order)``."""
    if not isinstance(buffer, (bytes, bytearray, memoryview)) or order not in ("C", "F"):
        raise UnsafePickleError("numpy buffer array without bytes and a C/F order")
    return _NumpyArray().build((1, shape, dtype, order == "F", bytes(buffer)))


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise UnsafePickleError("numpy scalar without a plain dtype and its exact bytes")
    return np.frombuffer(data, dtype=dtype.dtype)[0]


ALLOWED_GLOBALS = {
    ("torch_geometric.data.data", "Data"): PygData,
    ("torch_geometric.data.data", "DataEdgeAttr"): PygAttrMarker,
    ("torch_geometric.data.data", "DataTensorAttr"): PygAttrMarker,
    ("torch_geometric.data.storage", "GlobalStorage"): PygStorage,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}
_CALLABLES = (
    PygData,
    PygStorage,
    PygAttrMarker,
    _rebuild_tensor,
    _load_storage,
    collections.OrderedDict,
    _np_dtype,
    _np_reconstruct,
    _np_frombuffer,
    _np_scalar,
)
_CLASSES = (PygData, PygStorage, PygAttrMarker)


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler for OCP LMDB values: maps the allow-listed globals, refuses all others.

    Built on the pure-Python unpickler so that every opcode that runs code is checked here: BUILD only
    fills the PyG stand-ins and rebuilds numpy dtypes/arrays from (shape, dtype, bytes) checked above;
    REDUCE calls only the allow-listed functions; NEWOBJ makes only the PyG stand-ins (OBJ/INST are
    refused); APPEND(S)/SETITEM(S)/ADDITEMS fill only real lists, dicts and sets. Nothing numpy or
    torch does on its own with pickle state (dtype ``__setstate__``, object arrays) is ever reached.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

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

    def _container(self, kinds: tuple, opcode: str):
        target = self.stack[-1]
        if type(target) not in kinds:
            raise UnsafePickleError(f"{opcode} on a {type(target).__name__} is not allowed")
        return target

    def _remember(self, key: int) -> None:
        top = self.stack[-1]
        self.memo[key] = top
        if isinstance(top, _NumpyArray):
            top.memo_keys.append(key)

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _NumpyDtype):
            inst.build(state)
        elif isinstance(inst, _NumpyArray):
            array = inst.build(state)
            self.stack[-1] = array
            for key in inst.memo_keys:
                self.memo[key] = array
        elif type(inst) in (PygData, PygStorage):
            inst.__setstate__(state)
        else:
            raise UnsafePickleError(f"BUILD on a {type(inst).__name__} is not allowed")

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is allowed for allowed in _CALLABLES) or not isinstance(args, tuple):
            raise UnsafePickleError(f"calling {getattr(func, '__qualname__', None) or repr(func)} is not allowed")
        self.stack[-1] = func(*args)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if not any(cls is allowed for allowed in _CLASSES) or args != ():
            raise UnsafePickleError(f"creating a {getattr(cls, '__name__', type(cls).__name__)} is not allowed")
        self.append(cls.__new__(cls))

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        self._load_newobj() if kwargs == {} else self._refuse("NEWOBJ_EX with keyword arguments")

    def _refuse(self, what: str = "this opcode"):
        raise UnsafePickleError(f"{what} is not allowed in OC20 LMDB records")

    def _load_obj(self):
        self._refuse("OBJ/INST (protocol 0/1 instances)")

    def _load_append(self):
        value = self.stack.pop()
        self._container((list,), "APPEND").append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._container((list,), "APPENDS").extend(items)

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._container((dict, collections.OrderedDict), "SETITEM")[key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._container((dict, collections.OrderedDict), "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_additems(self):
        items = self.pop_mark()
        self._container((set,), "ADDITEMS").update(items)

    def _load_put(self):
        self._remember(int(self.readline()[:-1]))

    def _load_binput(self):
        self._remember(self.read(1)[0])

    def _load_long_binput(self):
        self._remember(int.from_bytes(self.read(4), "little"))

    def _load_memoize(self):
        self._remember(len(self.memo))

    for _name, _handler in (
        ("BUILD", _load_build), ("REDUCE", _load_reduce), ("NEWOBJ", _load_newobj), ("NEWOBJ_EX", _load_newobj_ex),
        ("OBJ", _load_obj), ("INST", _load_obj), ("APPEND", _load_append), ("APPENDS", _load_appends),
        ("SETITEM", _load_setitem), ("SETITEMS", _load_setitems), ("ADDITEMS", _load_additems), ("PUT", _load_put),
        ("BINPUT", _load_binput), ("LONG_BINPUT", _load_long_binput), ("MEMOIZE", _load_memoize),
    ):  # fmt: skip
        dispatch[getattr(pickle, _name)[0]] = _handler
    del _name, _handler


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
    """A record field as a numpy array of plain numbers (bool/int/float); anything else is refused."""
    if isinstance(value, _NumpyArray):
        value = value.array
    if isinstance(value, torch.Tensor):
        if value.dtype not in _TORCH_DTYPES:
            raise ValueError(f"a tensor of dtype {value.dtype} is not plain numbers")
        value = value.detach().cpu()
        value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    array = np.asarray(value)
    if array.dtype.kind not in _NUMPY_KINDS:
        raise ValueError(
            f"a field of type {type(value).__name__} (numpy kind {array.dtype.kind!r}) is not plain numbers"
        )
    return array


def _scalar(value) -> float:
    array = _array(value).reshape(-1)
    if array.size == 0:
        raise ValueError("an empty array where a number belongs")
    return float(array[0])


def record_to_structure(fields: dict, source: str) -> Structure:
    """Convert an OCP record to a Structure; precomputed graphs (edge_index, ...) are ignored."""
    try:
        return _record_to_structure(fields, source)
    except DataError:
        raise
    except (ValueError, TypeError, IndexError) as exc:
        raise DataError(f"{source}: malformed OC20 record ({exc}); the LMDB may be corrupt or not OC20") from None


def _record_to_structure(fields: dict, source: str) -> Structure:
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


_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_META = struct.Struct("<IIQQ48s48sQQ")  # magic, version, address, mapsize, free db, main db, last page, txn id


def check_lmdb_size(path: Path) -> None:
    """Refuse an LMDB file shorter than its own header says, before it is memory-mapped: reading a
    page past the end of a mapped file kills the process with SIGBUS instead of raising.

    Reads the two meta pages (64-bit LMDB layout: magic, version, ..., last page number, transaction id;
    the page size is the free database's first field) and requires (last page + 1) * page size bytes
    for the newer meta.
    """
    size = path.stat().st_size
    header = 16  # page header before each meta
    with open(path, "rb") as fh:
        first = fh.read(header + _LMDB_META.size)
        if len(first) < header + _LMDB_META.size:
            raise DataError(f"{path}: {size} bytes is too short for an LMDB file; download or extract it again")
        magic, _, _, _, free_db, _, last_page, txn = _LMDB_META.unpack_from(first, header)
        page_size = int.from_bytes(free_db[:4], "little")
        if magic != _LMDB_MAGIC or page_size < 512 or page_size > 1 << 16 or page_size & (page_size - 1):
            raise DataError(f"{path}: not an LMDB file (no LMDB meta page at its start); download or extract it again")
        fh.seek(page_size)
        second = fh.read(header + _LMDB_META.size)
    metas = [(txn, last_page)]
    if len(second) == header + _LMDB_META.size:
        magic2, _, _, _, _, _, last_page2, txn2 = _LMDB_META.unpack_from(second, header)
        if magic2 == _LMDB_MAGIC:
            metas.append((txn2, last_page2))
    needed = max(2, max(metas)[1] + 1) * page_size
    if size < needed:
        raise DataError(
            f"{path}: truncated LMDB file: its header needs {needed:,} bytes ({needed // page_size} pages of "
            f"{page_size}), the file has {size:,}; download or extract it again"
        )


def _open_lmdb(path: Path):
    try:
        import lmdb
    except ImportError:
        raise DataError(f"{path}: reading LMDB files needs the 'lmdb' package; run `pip install lmdb`") from None
    if not path.is_file():
        raise DataError(f"{path}: no such file (OC20 LMDBs are single files, e.g. <split>/data.lmdb)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; download or extract it again")
    check_lmdb_size(path)
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
