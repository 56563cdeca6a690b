"""The prepared on-disk format: one folder of memory-mappable ``.npy`` files plus ``manifest.json``.

Layout (N atoms, G structures)::

    manifest.json         name, counts, targets with units, splits, provenance
    species.npy  [N] u8   positions.npy [N,3] f8   offsets.npy [G+1] i8   index.npy [G] i8
    cell.npy [G,3,3] f8, pbc.npy [G,3] bool, tags.npy [N] i8, fixed.npy [N] bool   (when present)
    target.<name>.npy     [G], [G,k] or [N,...] f8; NaN where a structure lacks the target
    split.<name>.npy      int64 structure indices

Every array is written straight to its final ``.npy`` (a fixed-size header rewritten at the end), so
preparing streams and opening is an mmap: full QM9 opens in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import keys
from .._version import __version__
from .errors import DataError
from .structure import PER_ATOM_TARGETS, Structure

FORMAT = "equizoo-prepared"
FORMAT_VERSION = 1
_HEADER_BYTES = 256
Progress = Callable[[str, int, "int | None"], None]


class _NpyStream:
    """Append rows of one dtype and row shape to a ``.npy`` file whose header is fixed at close.

    Scalar-row streams take Python numbers through :meth:`push` (cheap per structure); others take
    arrays through :meth:`append`. Rows are buffered and written in large blocks.
    """

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...], scalar: bool = False):
        self.path = path
        self.scalar = scalar
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._fh = open(path, "wb")
        self._fh.write(b"\0" * _HEADER_BYTES)
        self._buffer: list = []
        self._buffered = 0

    def push(self, value) -> None:
        self._buffer.append(value)
        self.rows += 1
        if len(self._buffer) > 1 << 16:
            self._flush()

    def append(self, array) -> None:
        array = np.asarray(array)
        if array.shape[1:] != self.row_shape:
            raise DataError(f"{self.path.stem}: row shape {array.shape[1:]} differs from earlier {self.row_shape}")
        self._buffer.append(array)
        self._buffered += array.size
        self.rows += array.shape[0]
        if self._buffered > 1 << 19:
            self._flush()

    def fill(self, rows: int, value) -> None:
        if not rows:
            return
        if self.scalar:
            self._buffer.extend([value] * rows)
            self.rows += rows
        else:
            self.append(np.full((rows, *self.row_shape), value, dtype=self.dtype))

    def _flush(self) -> None:
        if self._buffer:
            block = np.array(self._buffer) if self.scalar else np.concatenate(self._buffer)
            self._fh.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
            self._buffer, self._buffered = [], 0

    def close(self) -> None:
        self._flush()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.row_shape),
        }
        text = repr(header).encode("latin1")
        pad = _HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:
            raise DataError(f"{self.path}: npy header too long")
        self._fh.seek(0)
        self._fh.write(b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little") + text + b" " * pad + b"\n")
        self._fh.close()


class PreparedWriter:
    """Stream structures into a prepared folder; ``finish`` writes splits and the manifest.

    Writes to ``<path>.tmp-<pid>`` and renames at the end, so an interrupted prepare never leaves a
    folder that looks complete.
    """

    def __init__(self, path: str | os.PathLike, name: str):
        self.path = Path(path)
        self.name = name
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.n_graphs = 0
        self.n_atoms = 0
        self._species = _NpyStream(self.tmp / "species.npy", np.uint8, ())
        self._positions = _NpyStream(self.tmp / "positions.npy", np.float64, (3,))
        self._natoms = _NpyStream(self.tmp / "natoms.npy", np.int64, (), scalar=True)
        self._index = _NpyStream(self.tmp / "index.npy", np.int64, (), scalar=True)
        self._fields: dict[str, _NpyStream] = {}
        self._targets: dict[str, _NpyStream] = {}
        self._units: dict[str, str] = {}
        self._kind: dict[str, str] = {}  # "scalar", "vector" (per structure) or "atom"
        self._last_units: dict | None = None

    def _streams(self) -> list[_NpyStream]:
        return [
            self._species,
            self._positions,
            self._natoms,
            self._index,
            *self._fields.values(),
            *self._targets.values(),
        ]

    def _new_field(self, field: str, dtype, row_shape, per_atom: bool, fill) -> None:
        stream = _NpyStream(self.tmp / f"{field}.npy", dtype, row_shape)
        stream.fill(self.n_atoms if per_atom else self.n_graphs, fill)
        self._fields[field] = stream

    def _new_target(self, name: str, value, unit: str) -> None:
        if name in PER_ATOM_TARGETS:
            kind, shape, rows = "atom", np.shape(value)[1:], self.n_atoms
        elif np.ndim(value) == 0:
            kind, shape, rows = "scalar", (), self.n_graphs
        else:
            kind, shape, rows = "vector", np.shape(value), self.n_graphs
        stream = _NpyStream(self.tmp / f"target.{name}.npy", np.float64, shape, scalar=kind == "scalar")
        stream.fill(rows, np.nan)
        self._targets[name] = stream
        self._kind[name] = kind
        self._units[name] = unit

    def add(self, s: Structure) -> None:
        n = s.species.shape[0]
        self._species.append(s.species)
        self._positions.append(s.positions)
        self._natoms.push(n)
        self._index.push(s.index)
        fields = self._fields
        if s.cell is not None and "cell" not in fields:
            self._new_field("cell", np.float64, (3, 3), False, 0.0)
        if "pbc" not in fields and s.pbc.any():
            self._new_field("pbc", bool, (3,), False, False)
        if s.tags is not None and "tags" not in fields:
            self._new_field("tags", np.int64, (), True, 0)
        if s.fixed is not None and "fixed" not in fields:
            self._new_field("fixed", bool, (), True, False)
        if fields:
            if "cell" in fields:
                fields["cell"].append(s.cell[None] if s.cell is not None else np.zeros((1, 3, 3)))
            if "pbc" in fields:
                fields["pbc"].append(s.pbc[None])
            if "tags" in fields:
                fields["tags"].append(s.tags if s.tags is not None else np.zeros(n, np.int64))
            if "fixed" in fields:
                fields["fixed"].append(s.fixed if s.fixed is not None else np.zeros(n, bool))
        targets = s.targets
        if s.units != self._last_units or not targets.keys() <= self._targets.keys():
            for name, value in targets.items():
                unit = s.units.get(name, "")
                if name not in self._targets:
                    self._new_target(name, value, unit)
                elif self._units[name] != unit:
                    raise DataError(f"dataset {self.name}: target {name!r} in {unit!r} after {self._units[name]!r}")
            self._last_units = s.units
        for name, stream in self._targets.items():
            value = targets.get(name)
            kind = self._kind[name]
            if value is None:
                stream.fill(n if kind == "atom" else 1, np.nan)
            elif kind == "scalar":
                stream.push(value)
            elif kind == "vector":
                stream.append(np.asarray(value)[None])
            else:
                stream.append(value)
        self.n_graphs += 1
        self.n_atoms += n

    def add_all(
        self, structures: Iterable[Structure], progress: Progress | None = None, total: int | None = None
    ) -> None:
        for count, s in enumerate(structures, 1):
            self.add(s)
            if progress and count % 1000 == 0:
                progress(f"writing {self.name}", count, total)
        if progress:
            progress(f"writing {self.name}", self.n_graphs, total)

    def finish(
        self,
        splits: Mapping[str, Sequence[int] | np.ndarray],
        meta: Mapping | None = None,
        name_template: str | None = None,
    ) -> Path:
        if self.n_graphs == 0:
            shutil.rmtree(self.tmp)
            raise DataError(f"dataset {self.name}: the source gave no structures; check the source path")
        for stream in self._streams():
            stream.close()
        natoms = np.load(self.tmp / "natoms.npy")
        np.save(self.tmp / "offsets.npy", np.concatenate([[0], np.cumsum(natoms)]).astype(np.int64))
        (self.tmp / "natoms.npy").unlink()
        split_counts = {}
        for split, idx in splits.items():
            idx = np.asarray(idx, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_graphs):
                raise DataError(f"dataset {self.name}: split {split!r} has indices outside 0..{self.n_graphs - 1}")
            np.save(self.tmp / f"split.{split}.npy", idx)
            split_counts[split] = int(idx.size)
        targets = {
            name: {"unit": self._units[name], "per_atom": self._kind[name] == "atom", "shape": list(stream.row_shape)}
            for name, stream in self._targets.items()
        }
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "n_structures": self.n_graphs,
            "n_atoms": self.n_atoms,
            "fields": sorted(self._fields),
            "targets": targets,
            "splits": split_counts,
            "name_template": name_template,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "equizoo_version": __version__,
            **dict(meta or {}),
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False, default=_json_default))
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        for stream in self._streams():
            if not stream._fh.closed:
                stream._fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_prepared(
    path: str | os.PathLike,
    name: str,
    structures: Iterable[Structure],
    splits: Mapping[str, Sequence[int] | np.ndarray] | Callable[[int], Mapping[str, np.ndarray]],
    meta: Mapping | None = None,
    name_template: str | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> Path:
    """Write ``structures`` as a prepared dataset; ``splits`` may be a function of the count."""
    writer = PreparedWriter(path, name)
    try:
        writer.add_all(structures, progress, total)
        resolved = splits(writer.n_graphs) if callable(splits) else splits
        return writer.finish(resolved, meta, name_template)
    except BaseException:
        writer.abort()
        raise


class PreparedDataset:
    """A prepared dataset (or a view of some of its structures), opened by memory-mapping.

    Works as a map-style ``torch.utils.data.Dataset`` of :class:`Structure` and has a fast
    array-level :meth:`collate` that skips building records.
    """

    def __init__(
        self, path: str | os.PathLike, indices: np.ndarray | None = None, _base: PreparedDataset | None = None
    ):
        self.path = Path(path)
        if _base is not None:
            self.manifest, self._arrays, self._offsets = _base.manifest, _base._arrays, _base._offsets
        else:
            manifest_path = self.path / "manifest.json"
            if not manifest_path.is_file():
                raise DataError(
                    f"{self.path}: not a prepared dataset (no manifest.json); run `equizoo data prepare NAME` first"
                )
            self.manifest = json.loads(manifest_path.read_text())
            if self.manifest.get("format") != FORMAT or self.manifest.get("version") != FORMAT_VERSION:
                raise DataError(f"{self.path}: prepared with another format version; prepare it again with --force")
            self._arrays = {}
            for file in self.path.glob("*.npy"):
                if not file.name.startswith("split."):
                    self._arrays[file.stem] = np.load(file, mmap_mode="r")
            self._offsets = np.asarray(self._arrays["offsets"])
        self._indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    # --- description -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def target_names(self) -> list[str]:
        return list(self.manifest["targets"])

    @property
    def units(self) -> dict[str, str]:
        return {k: v["unit"] for k, v in self.manifest["targets"].items()}

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    def split_indices(self, split: str) -> np.ndarray:
        """Global structure indices of ``split``."""
        file = self.path / f"split.{split}.npy"
        if split not in self.manifest["splits"] or not file.is_file():
            raise DataError(f"{self.path}: no split {split!r}; available: {', '.join(self.split_names) or 'none'}")
        return np.load(file)

    def split(self, split: str) -> PreparedDataset:
        """A view of the structures of one split, in the split file's order."""
        return PreparedDataset(self.path, self._global(self.split_indices(split)), _base=self)

    def subset(self, indices: Sequence[int] | np.ndarray) -> PreparedDataset:
        """A view of some structures (indices local to this view)."""
        return PreparedDataset(self.path, self._global(np.asarray(indices, dtype=np.int64)), _base=self)

    def _global(self, local: np.ndarray) -> np.ndarray:
        return local if self._indices is None else self._indices[local]

    @property
    def global_indices(self) -> np.ndarray:
        return np.arange(len(self._offsets) - 1) if self._indices is None else self._indices

    # --- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offsets) - 1 if self._indices is None else len(self._indices)

    @property
    def natoms(self) -> np.ndarray:
        """Atoms per structure of this view."""
        return np.diff(self._offsets)[self.global_indices]

    def elements(self, chunk: int = 1 << 16) -> list[int]:
        """Sorted atomic numbers present in this view's structures (read `chunk` structures at a time)."""
        species = self._arrays["species"]
        seen: set[int] = set()
        order = np.sort(self.global_indices)
        for c in range(0, len(order), chunk):
            part = order[c : c + chunk]
            starts, counts = self._offsets[part], self._offsets[part + 1] - self._offsets[part]
            atoms = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
            seen.update(int(z) for z in np.unique(np.asarray(species[atoms])))
        return sorted(seen)

    def target(self, name: str) -> np.ndarray:
        """One per-structure target for this view, [len] or [len, k] (NaN where missing)."""
        info = self.manifest["targets"].get(name)
        if info is None:
            raise DataError(f"{self.path}: no target {name!r}; available: {', '.join(self.target_names)}")
        if info["per_atom"]:
            raise DataError(f"{self.path}: target {name!r} is per atom; use collate() to gather it")
        return np.asarray(self._arrays[f"target.{name}"][self.global_indices])

    def __getitem__(self, i: int) -> Structure:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        g = int(self._global(np.array([i % len(self)]))[0])
        a, b = int(self._offsets[g]), int(self._offsets[g + 1])
        arrays = self._arrays
        targets, units = {}, {}
        for name, info in self.manifest["targets"].items():
            array = arrays[f"target.{name}"]
            if info["per_atom"] or info["shape"]:
                value = np.array(array[a:b] if info["per_atom"] else array[g])
                if np.isnan(value).all():
                    continue
            else:
                value = float(array[g])
                if math.isnan(value):
                    continue
            targets[name] = value
            units[name] = info["unit"]
        index = int(arrays["index"][g])
        template = self.manifest.get("name_template")
        return Structure(
            species=np.array(arrays["species"][a:b], dtype=np.int64),
            positions=np.array(arrays["positions"][a:b]),
            cell=np.array(arrays["cell"][g]) if "cell" in arrays else None,
            pbc=np.array(arrays["pbc"][g]) if "pbc" in arrays else None,
            tags=np.array(arrays["tags"][a:b]) if "tags" in arrays else None,
            fixed=np.array(arrays["fixed"][a:b]) if "fixed" in arrays else None,
            targets=targets,
            units=units,
            name=template.format(index=index) if template else "",
            index=index,
        )

    def __iter__(self) -> Iterator[Structure]:
        for i in range(len(self)):
            yield self[i]

    def collate(
        self,
        indices: Sequence[int] | np.ndarray,
        targets: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batch structures ``indices`` (local to this view) straight from the arrays.

        Same keys, dtypes and order as :func:`zoo.data.collate` of the same structures; default
        targets are all of the dataset's (NaN where a structure lacks one).
        """
        dtype = dtype or torch.get_default_dtype()
        g = self._global(np.asarray(indices, dtype=np.int64))
        if g.size == 0:
            raise DataError("collate got no structures; pass at least one index")
        starts = self._offsets[g]
        counts = self._offsets[g + 1] - starts
        total = int(counts.sum())
        first = np.cumsum(counts) - counts
        atom = np.repeat(starts - first, counts) + np.arange(total)
        arrays = self._arrays
        ng = g.size
        batch = {
            keys.POSITIONS: torch.from_numpy(arrays["positions"][atom]).to(dtype),
            keys.SPECIES: torch.from_numpy(arrays["species"][atom].astype(np.int64)),
            keys.BATCH: torch.repeat_interleave(torch.arange(ng), torch.from_numpy(counts)),
            keys.NUM_ATOMS: torch.from_numpy(counts.astype(np.int64)),
            keys.CELL: torch.from_numpy(arrays["cell"][g]).to(dtype)
            if "cell" in arrays
            else torch.zeros(ng, 3, 3, dtype=dtype),
            keys.PBC: torch.from_numpy(arrays["pbc"][g]) if "pbc" in arrays else torch.zeros(ng, 3, dtype=torch.bool),
            keys.TAGS: torch.from_numpy(arrays["tags"][atom])
            if "tags" in arrays
            else torch.zeros(total, dtype=torch.int64),
            keys.FIXED: torch.from_numpy(arrays["fixed"][atom])
            if "fixed" in arrays
            else torch.zeros(total, dtype=torch.bool),
            keys.INDEX: torch.from_numpy(arrays["index"][g]),
        }
        for name in self.target_names if targets is None else targets:
            info = self.manifest["targets"].get(name)
            if info is None:
                raise DataError(f"{self.path}: no target {name!r}; available: {', '.join(self.target_names)}")
            array = arrays[f"target.{name}"]
            batch[name] = torch.from_numpy(array[atom] if info["per_atom"] else array[g]).to(dtype)
        return batch

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        targets: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield collated batches over this view (shuffled with ``default_rng(seed)`` if asked)."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.collate(order[start : start + batch_size], targets, dtype)

    def __repr__(self) -> str:
        view = "" if self._indices is None else f", view of {len(self)}"
        return (
            f"PreparedDataset({self.name!r}, {self.manifest['n_structures']} structures{view}, path={str(self.path)!r})"
        )
