"""Dataset registry, ``prepare_dataset`` (source -> prepared cache folder) and ``load_dataset``."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import tarfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .. import keys
from . import remote as _dl
from .ase_io import read_structures
from .errors import DataError
from .md17 import (
    MD17_FILES,
    MD17_SPLIT,
    MD17_URL,
    MD22_FILES,
    MD22_TRAIN_SIZES,
    MD22_URL,
    MDBENCHGNN_KCAL_TO_EV,
    RMD17_FILES,
    RMD17_URL,
    read_md_npz,
    read_mdbenchgnn,
    read_rmd17_splits,
)
from .oc20 import IS2RE_MD5, IS2RE_URL, find_oc20_splits, iter_lmdb_any, lmdb_length
from .qm9 import QM9_N_MOLECULES, QM9_SOURCE_UNITS, iter_qm9_figshare, iter_qm9pack, qm9_split, qm9pack_data_dir
from .remote import file_hash
from .splits import fraction_split, permutation_split
from .store import PreparedDataset, write_prepared
from .units import HARTREE_TO_EV, KCAL_PER_MOL_TO_EV, energy_factor

Progress = Callable[[str, int, "int | None"], None]
_HASH_LIMIT = 512 << 20  # hash local source files up to this size for the provenance record


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset's official download (checksums only where published)."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A dataset equizoo knows how to prepare."""

    name: str
    kind: str  # qm9, md17, rmd17, md22, oc20
    description: str
    molecule: str = ""
    remote: tuple[RemoteFile, ...] = ()


def _registry() -> dict[str, DatasetInfo]:
    out = {
        "qm9": DatasetInfo(
            "qm9",
            "qm9",
            "QM9, 130,831 molecules, 12 targets (reference units; U0/U/H/G atomisation)",
            remote=(
                RemoteFile("https://ndownloader.figshare.com/files/3195389", "dsgdb9nsd.xyz.tar.bz2"),
                RemoteFile("https://ndownloader.figshare.com/files/3195404", "uncharacterized.txt"),
            ),
        )
    }
    for mol, file in MD17_FILES.items():
        out[f"md17-{mol}"] = DatasetInfo(
            f"md17-{mol}", "md17", f"MD17 {mol} (DFT, energies and forces)", mol, (RemoteFile(MD17_URL + file, file),)
        )
    for mol in RMD17_FILES:
        out[f"rmd17-{mol}"] = DatasetInfo(
            f"rmd17-{mol}",
            "rmd17",
            f"revised MD17 {mol} (official index splits)",
            mol,
            (RemoteFile(RMD17_URL, "rmd17.tar.bz2"),),
        )
    for mol, file in MD22_FILES.items():
        out[f"md22-{mol}"] = DatasetInfo(
            f"md22-{mol}", "md22", f"MD22 {mol} (energies and forces)", mol, (RemoteFile(MD22_URL + file, file),)
        )
    out["oc20-is2re"] = DatasetInfo(
        "oc20-is2re",
        "oc20",
        "OC20 IS2RE (initial structure -> relaxed energy; LMDB splits)",
        remote=(RemoteFile(IS2RE_URL, "is2res_train_val_test_lmdbs.tar.gz", md5=IS2RE_MD5),),
    )
    return out


DATASETS: dict[str, DatasetInfo] = _registry()


def dataset_names() -> list[str]:
    """Names accepted by :func:`prepare_dataset`."""
    return list(DATASETS)


def prepared_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where ``name`` is (or would be) prepared."""
    return _dl.cache_dir(cache) / "prepared" / name


def _is_url(source) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _describe_files(paths: Iterable[Path]) -> list[dict]:
    out = []
    for path in paths:
        if path.is_file():
            entry = {"path": str(path), "bytes": path.stat().st_size}
            if entry["bytes"] <= _HASH_LIMIT:
                entry["sha256"] = file_hash(path)
            out.append(entry)
    return out


def _fetch(info: DatasetInfo, cache: Path, mirror: str | None, progress: Progress | None) -> list[Path]:
    if not info.remote:
        raise DataError(f"dataset {info.name} has no official download; give source=PATH")
    paths = []
    for remote in info.remote:
        url = f"{mirror.rstrip('/')}/{remote.filename}" if mirror else remote.url
        if not (remote.sha256 or remote.md5):
            warnings.warn(
                f"{remote.filename}: no published checksum; recording its sha256 in the manifest", stacklevel=3
            )
        paths.append(_dl.download(url, cache / "downloads" / remote.filename, remote.sha256, remote.md5, progress))
    return paths


def _split_rule(n: int, train: int, val: int) -> tuple[dict[str, np.ndarray], str]:
    if n > train + val:
        return permutation_split(n, train, val), f"default_rng(1).permutation({n}): train {train}, val {val}, test rest"
    return fraction_split(n), f"only {n} structures: default_rng(1).permutation({n}) cut 80/10/10 %"


def _units_meta(source_units: dict[str, str], conversion: dict[str, float]) -> dict:
    return {"source_units": source_units, "conversion_to_canonical": conversion}


def _prepare_qm9(source, options, progress):
    if source is None or source == "qm9pack":
        data_dir = qm9pack_data_dir()
        structures, reader = iter_qm9pack(data_dir, progress), "qm9pack==1.0.3 CSVs"
        files = [data_dir / f for f in ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")]
    else:
        source = Path(source)
        if source.is_dir() and (source / "qm9_part1.csv").is_file():
            structures, reader = iter_qm9pack(source, progress), "qm9pack CSVs"
            files = sorted(source.glob("qm9_part*.csv"))
        else:
            structures = iter_qm9_figshare(source, options.get("uncharacterized"), progress)
            reader = "figshare dsgdb9nsd xyz"
            files = [source] if source.is_file() else []
    structures = list(structures)
    if len(structures) == QM9_N_MOLECULES:
        splits = qm9_split()
        rule = "reference: default_rng(1).permutation(130831); train [:110000], val [110000:120000], test rest"
    else:
        splits, rule = _split_rule(len(structures), 110_000, 10_000)
    meta = {
        "source": str(source or "qm9pack"),
        "reader": reader,
        "split_rule": rule,
        **_units_meta(
            QM9_SOURCE_UNITS,
            {"Hartree_to_eV": HARTREE_TO_EV, "atomref": "figshare atomref.txt free-atom U0/U/H/G subtracted"},
        ),
        "files": _describe_files(files),
    }
    return structures, splits, meta, "dsgdb9nsd_{index:06d}"


def _md_units(energy_unit: str) -> dict:
    return _units_meta(
        {keys.ENERGY: energy_unit, keys.FORCES: f"{energy_unit}/Å"},
        {"energy_factor_to_eV": energy_factor(energy_unit), "kcal_per_mol_to_eV": KCAL_PER_MOL_TO_EV},
    )


def _prepare_md(info: DatasetInfo | None, source, options, progress):
    source = Path(source)
    kind = info.kind if info else "custom"
    if kind == "md22":
        train, val = options.get("train_size", MD22_TRAIN_SIZES[info.molecule]), options.get("val_size", 50)
    else:
        train, val = options.get("train_size", MD17_SPLIT[0]), options.get("val_size", MD17_SPLIT[1])
    meta: dict = {"source": str(source)}
    if source.is_dir() and (source / "train.npz").is_file():
        parts = read_mdbenchgnn(source, exact=options.get("exact", True))
        structures = list(itertools.chain.from_iterable(parts.values()))
        bounds = np.cumsum([0] + [len(v) for v in parts.values()])
        splits = {k: np.arange(bounds[i], bounds[i + 1]) for i, k in enumerate(parts)}
        meta.update(
            reader="MDBENCHGNN npz (train/val/test files)",
            split_rule="MDBENCHGNN train.npz / val.npz / test.npz",
            **_units_meta(
                {keys.ENERGY: "eV (MD17 kcal/mol x 0.04336)", keys.FORCES: "eV/Å (kcal/mol/Å x 0.04336)"},
                {"rescaled_by": KCAL_PER_MOL_TO_EV / MDBENCHGNN_KCAL_TO_EV if options.get("exact", True) else 1.0},
            ),
            files=_describe_files(source / f"{s}.npz" for s in parts),
        )
        return structures, splits, meta, None
    if source.suffix == ".npz":
        structures = read_md_npz(source)
        unit = _npz_energy_unit(source)
        if unit == "MDBENCHGNN":
            units = _units_meta(
                {keys.ENERGY: "eV (MD17 kcal/mol x 0.04336)", keys.FORCES: "eV/Å (kcal/mol/Å x 0.04336)"},
                {"rescaled_by": KCAL_PER_MOL_TO_EV / MDBENCHGNN_KCAL_TO_EV},
            )
        else:
            units = _md_units(unit)
        meta.update(reader="npz", **units, files=_describe_files([source]))
    elif source.is_file():
        energy_unit = options.get("energy_unit")
        if energy_unit is None:
            raise DataError(
                f"{source}: extxyz/xyz files do not state their units; pass energy_unit= "
                "(MD17 files: 'kcal/mol'; rMD17 exports: 'eV' or 'meV')"
            )
        structures = read_structures(source, energy_unit=energy_unit, length_unit=options.get("length_unit", "Å"))
        meta.update(reader="ASE", **_md_units(energy_unit), files=_describe_files([source]))
    else:
        raise DataError(f"{source}: no such file; give an npz, extxyz or MDBENCHGNN folder")
    if kind == "rmd17" and source.suffix == ".npz":
        splits, rule = _rmd17_splits(source, len(structures), options)
    else:
        splits, rule = _split_rule(len(structures), train, val)
    meta["split_rule"] = rule
    return structures, splits, meta, None


def _npz_energy_unit(path: Path) -> str:
    """The energy unit an MD npz file is stored in, or "MDBENCHGNN" for that layout's truncated eV."""
    with np.load(path, allow_pickle=False) as data:
        if "pos" in data.files and "atomic_numbers" in data.files:
            return "MDBENCHGNN"
        if "e_unit" in data.files:
            return str(data["e_unit"].item() if data["e_unit"].ndim == 0 else data["e_unit"][0])
    return "kcal/mol"


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders of ``archive`` under ``dest``; refuse links and escaping paths."""
    root = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            target = (dest / member.name).resolve()
            if not target.is_relative_to(root):
                raise DataError(f"{archive}: member {member.name!r} points outside the extraction folder; refusing")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)


def _rmd17_splits(npz: Path, n: int, options) -> tuple[dict[str, np.ndarray], str]:
    split = int(options.get("split", 1))
    split_dir = options.get("split_dir")
    if split_dir is None:
        candidates = [npz.parent.parent / "splits", npz.parent / "splits", npz.parent]
        split_dir = next((c for c in candidates if (c / f"index_train_{split:02d}.csv").is_file()), candidates[0])
    official = read_rmd17_splits(split_dir, split, n)
    val_size = int(options.get("val_size", 50))
    perm = np.random.default_rng(1).permutation(len(official["train"]))
    train_idx = official["train"][perm[: len(perm) - val_size]]
    val_idx = official["train"][perm[len(perm) - val_size :]]
    rule = (
        f"official rMD17 split {split:02d} ({split_dir}); val = {val_size} of its train indices "
        f"(default_rng(1).permutation, last {val_size})"
    )
    return {"train": train_idx, "val": val_idx, "test": official["test"]}, rule


def _extract_rmd17(archive: Path, molecule: str, dest: Path) -> Path:
    """Pull one molecule's npz and the split files out of rmd17.tar.bz2 (no other members)."""
    wanted = {f"rmd17/npz_data/{RMD17_FILES[molecule]}"} | {
        f"rmd17/splits/index_{kind}_{k:02d}.csv" for kind in ("train", "test") for k in range(1, 6)
    }
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            name = member.name.lstrip("./")
            if name in wanted and member.isfile():
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    npz = dest / "rmd17" / "npz_data" / RMD17_FILES[molecule]
    if not npz.is_file():
        raise DataError(f"{archive}: {RMD17_FILES[molecule]} not found inside; download rmd17.tar.bz2 again")
    return npz


def _prepare_oc20(source, options, progress):
    splits_files = find_oc20_splits(source)
    total = sum(lmdb_length(f) if f.suffix == ".lmdb" else 0 for files in splits_files.values() for f in files) or None
    counts: dict[str, int] = {}

    def structures():
        for split, files in splits_files.items():
            counts[split] = 0
            for file in files:
                for s in iter_lmdb_any(file):
                    counts[split] += 1
                    yield s

    def splits(n: int) -> dict[str, np.ndarray]:
        bounds = np.cumsum([0] + list(counts.values()))
        return {k: np.arange(bounds[i], bounds[i + 1]) for i, k in enumerate(counts)}

    meta = {
        "source": str(source),
        "reader": "OCP LMDB (restricted unpickler) / fairchem aselmdb",
        "split_rule": "one split per LMDB folder/file: " + ", ".join(splits_files),
        **_units_meta({keys.Y_RELAXED: "eV", keys.Y_INIT: "eV", keys.POS_RELAXED: "Å"}, {}),
        "files": [{"path": str(f), "bytes": f.stat().st_size} for files in splits_files.values() for f in files],
    }
    return structures(), splits, meta, None, total


def prepare_dataset(
    name: str,
    source: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    download: bool = False,
    mirror: str | None = None,
    progress: Progress | None = None,
    **options,
) -> Path:
    """Prepare dataset ``name`` into ``<cache>/prepared/<name>`` and return that folder.

    ``source``: a local file/folder, an http(s) URL, or None (QM9: the installed qm9pack; others:
    the official download when ``download=True``). ``mirror`` replaces the official host (the
    files keep their names). Already prepared datasets are reused unless ``force``.
    ``options`` (by dataset): ``energy_unit``/``length_unit`` (extxyz), ``train_size``/``val_size``
    (MD17/MD22/extxyz), ``split``/``split_dir``/``val_size`` (rMD17), ``exact`` (MDBENCHGNN),
    ``uncharacterized`` (QM9 figshare).
    """
    cache = _dl.cache_dir(cache_dir)
    out = cache / "prepared" / name
    if (out / "manifest.json").is_file() and not force:
        return out
    info = DATASETS.get(name)
    if info is None and source is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or give source= for your own file)")
    source, downloaded = _resolve_source(name, info, source, cache, download, mirror, progress, options)
    total = None
    kind = info.kind if info else "custom"
    if kind == "qm9":
        structures, splits, meta, template = _prepare_qm9(source, options, progress)
    elif kind == "oc20":
        structures, splits, meta, template, total = _prepare_oc20(source, options, progress)
    else:
        structures, splits, meta, template = _prepare_md(info, source, options, progress)
    if downloaded:
        meta["downloaded"] = [{"file": str(p), "sha256": file_hash(p)} for p in downloaded]
    meta["dataset"] = {"kind": kind, "description": info.description if info else f"custom dataset from {source}"}
    if total is None and isinstance(structures, list):
        total = len(structures)
    return write_prepared(out, name, structures, splits, meta, template, progress, total)


def _resolve_source(
    name: str, info, source, cache: Path, download: bool, mirror: str | None, progress, options: dict
) -> tuple:
    """The local source to prepare from and the files downloaded for it: an http(s) URL is fetched, a missing
    source of a known dataset is its official download (when allowed; QM9 otherwise reads qm9pack), unpacked
    where the dataset ships as an archive. May set `options['uncharacterized']` (QM9)."""
    downloaded: list[Path] = []
    if _is_url(source):
        filename = str(source).rstrip("/").rsplit("/", 1)[-1] or "download"
        source = _dl.download(str(source), cache / "downloads" / filename, progress=progress)
        downloaded = [source]
    elif source is None and info is not None and (download or info.kind != "qm9"):
        if not download:
            raise DataError(
                f"dataset {name}: no source given; pass source=PATH (a local copy) or download=True "
                f"(official files: {', '.join(r.url for r in info.remote)})"
            )
        downloaded = _fetch(info, cache, mirror, progress)
        source = downloaded[0]
        if info.kind == "qm9":
            options.setdefault("uncharacterized", downloaded[1])
        elif info.kind == "rmd17":
            source = _extract_rmd17(downloaded[0], info.molecule, cache / "downloads" / "rmd17")
        elif info.kind == "oc20":
            target = cache / "downloads" / "is2re"
            if not (target / "data").is_dir():
                _safe_extract(downloaded[0], target)
            source = target
    return source, downloaded


def load_dataset(
    name: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    prepare: bool = True,
    **prepare_options,
) -> PreparedDataset:
    """Open a prepared dataset by name (preparing it first if needed and possible) or by folder."""
    path = Path(name)
    if (path / "manifest.json").is_file():
        return PreparedDataset(path)
    out = prepared_path(str(name), cache_dir)
    if not (out / "manifest.json").is_file():
        if not prepare:
            raise DataError(f"dataset {name} is not prepared in {out}; run `equizoo data prepare {name}`")
        prepare_dataset(str(name), cache_dir=cache_dir, **prepare_options)
    return PreparedDataset(out)


def dataset_info(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict:
    """Counts per split, units per target and the cache path of a dataset (prepared or not)."""
    path = Path(name)
    if not (path / "manifest.json").is_file():
        path = prepared_path(str(name), cache_dir)
    registered = DATASETS.get(str(name))
    if not (path / "manifest.json").is_file():
        if registered is None:
            raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
        return {
            "name": registered.name,
            "description": registered.description,
            "prepared": False,
            "path": str(path),
            "official_files": [r.url for r in registered.remote],
        }
    manifest = PreparedDataset(path).manifest
    return {
        "name": manifest["name"],
        "description": manifest.get("dataset", {}).get("description", ""),
        "prepared": True,
        "path": str(path),
        "n_structures": manifest["n_structures"],
        "n_atoms": manifest["n_atoms"],
        "splits": manifest["splits"],
        "split_rule": manifest.get("split_rule", ""),
        "targets": {k: v["unit"] for k, v in manifest["targets"].items()},
        "source_units": manifest.get("source_units", {}),
        "source": manifest.get("source", ""),
        "created": manifest.get("created", ""),
    }


def list_datasets(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every registered dataset plus any other prepared folder in the cache, with its state."""
    rows = []
    for name, info in DATASETS.items():
        path = prepared_path(name, cache_dir)
        rows.append(
            {
                "name": name,
                "description": info.description,
                "prepared": (path / "manifest.json").is_file(),
                "path": str(path),
            }
        )
    root = _dl.cache_dir(cache_dir) / "prepared"
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file() and p.name not in DATASETS):
            rows.append({"name": folder.name, "description": "custom", "prepared": True, "path": str(folder)})
    return rows


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "RemoteFile",
    "dataset_info",
    "dataset_names",
    "list_datasets",
    "load_dataset",
    "prepare_dataset",
    "prepared_path",
]
