"""QM9 readers: the qm9pack CSVs (PyPI) and the original figshare xyz files.

Targets follow the Equiformer reference (``datasets/pyg/qm9.py``) in order and units: mu D, alpha
a0^3, homo/lumo/gap eV, r2 a0^2, zpve eV, U0/U/H/G eV as atomisation energies (free-atom
references of ``atomref.txt`` subtracted), Cv cal/(mol K). Hartree -> eV uses 27.211386246.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as _ATOMIC_NUMBERS

from .. import keys
from .errors import DataError, where
from .splits import permutation_split
from .structure import Structure
from .units import HARTREE_TO_EV

QM9_TARGETS = keys.QM9_TARGETS
QM9_N_MOLECULES = 130_831
QM9_SPLIT_SIZES = (110_000, 10_000)
QM9_UNITS = {
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
QM9_SOURCE_UNITS = {
    "mu": "D",
    "alpha": "a0^3",
    "homo": "Hartree",
    "lumo": "Hartree",
    "gap": "Hartree",
    "r2": "a0^2",
    "zpve": "Hartree",
    "U0": "Hartree",
    "U": "Hartree",
    "H": "Hartree",
    "G": "Hartree",
    "Cv": "cal/mol/K",
}
_HARTREE_TARGETS = ("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G")
_ATOMIZATION_TARGETS = ("U0", "U", "H", "G")

# atomref.txt of the figshare release (Hartree; Cv in cal/mol/K): columns ZPVE, U0, U, H, G, Cv.
ATOMREF_HARTREE: dict[int, dict[str, float]] = {
    1: {"zpve": 0.0, "U0": -0.500273, "U": -0.498857, "H": -0.497912, "G": -0.510927, "Cv": 2.981},
    6: {"zpve": 0.0, "U0": -37.846772, "U": -37.845355, "H": -37.844411, "G": -37.861317, "Cv": 2.981},
    7: {"zpve": 0.0, "U0": -54.583861, "U": -54.582445, "H": -54.581501, "G": -54.598897, "Cv": 2.981},
    8: {"zpve": 0.0, "U0": -75.064579, "U": -75.063163, "H": -75.062219, "G": -75.079532, "Cv": 2.981},
    9: {"zpve": 0.0, "U0": -99.718730, "U": -99.717314, "H": -99.716370, "G": -99.733544, "Cv": 2.981},
}
_ATOMREF_COLUMNS = ("zpve", "U0", "U", "H", "G", "Cv")
# eV reference per element for the atomisation targets, as a [119, 4] table for a fast dot product
_REF_EV = np.zeros((119, len(_ATOMIZATION_TARGETS)))
for _z, _row in ATOMREF_HARTREE.items():
    _REF_EV[_z] = [_row[k] * HARTREE_TO_EV for k in _ATOMIZATION_TARGETS]

QM9PACK_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
QM9PACK_COLUMNS = {
    "mu": "Dipole_debye",
    "alpha": "Polarizability_bohr3",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au",
    "r2": "R2_bohr2",
    "zpve": "ZPVE_au",
    "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au",
    "G": "GibbsFreeEnergy_298K_au",
    "Cv": "Heatcapacity_Cv_cal_mol_K",
}
# raw property order of the figshare xyz header line after "gdb": N A B C mu alpha ... Cv
_XYZ_HEADER = ("index", "A", "B", "C") + QM9_TARGETS
_TRAILING_DOT = re.compile(r"(?<=\d)\.(?=[,\]eE])")
_ELEMENT = re.compile(r"[A-Z][a-z]?")

Progress = Callable[[str, int, "int | None"], None]


def qm9_name(index: int) -> str:
    """The original file stem of QM9 molecule ``index`` (1-based gdb number)."""
    return f"dsgdb9nsd_{index:06d}"


def qm9_targets(raw: dict[str, float], species: np.ndarray) -> dict[str, float]:
    """Convert raw QM9 properties (Hartree etc.) to the reference's targets and units."""
    out = {}
    for name in QM9_TARGETS:
        value = float(raw[name])
        out[name] = value * HARTREE_TO_EV if name in _HARTREE_TARGETS else value
    ref = np.bincount(species, minlength=119)[:119] @ _REF_EV
    for k, name in enumerate(_ATOMIZATION_TARGETS):
        out[name] = out[name] - float(ref[k])
    return out


def qm9_split(n: int = QM9_N_MOLECULES, seed: int = 1) -> dict[str, np.ndarray]:
    """The reference split: ``default_rng(1).permutation(n)`` cut 110,000 / 10,000 / rest."""
    return permutation_split(n, QM9_SPLIT_SIZES[0], QM9_SPLIT_SIZES[1], seed)


def _symbol_to_z(symbol: str, source: str) -> int:
    z = _ATOMIC_NUMBERS.get(symbol)
    if z is None or z == 0:
        raise DataError(f"{source}: unknown element symbol {symbol!r}; fix the file or remove the structure")
    return z


def _float(text: str, source: str) -> float:
    try:
        return float(text.replace("*^", "e"))
    except ValueError:
        raise DataError(f"{source}: cannot read number {text!r}; the file is corrupt, re-extract it") from None


def parse_qm9_xyz(text: str, path: str | os.PathLike | None = None) -> Structure:
    """Parse one figshare QM9 xyz file (``gdb`` header, ``El x y z q`` lines, ``*^`` exponents)."""
    if not text.strip():
        raise DataError(f"{where(path)}: file is empty; re-extract it from dsgdb9nsd.xyz.tar.bz2")
    lines = text.splitlines()
    try:
        n = int(lines[0].strip())
    except ValueError:
        raise DataError(
            f"{where(path, 1)}: expected the number of atoms, got {lines[0][:40]!r}; not a QM9 xyz file"
        ) from None
    if n < 1:
        raise DataError(
            f"{where(path, 1)}: the number of atoms is {n}; it must be positive. Fix or re-extract the file"
        )
    if len(lines) < 2:
        raise DataError(f"{where(path)}: truncated after line 1; re-extract the file")
    header = lines[1].split()
    if len(header) != 1 + len(_XYZ_HEADER) or header[0] != "gdb":
        raise DataError(
            f"{where(path, 2)}: expected 'gdb N A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv'; "
            "not a QM9 xyz file (use read_structures for plain xyz)"
        )
    raw = {k: _float(v, where(path, 2)) for k, v in zip(_XYZ_HEADER, header[1:])}
    atom_lines = lines[2 : 2 + n]
    if len(atom_lines) < n or any(not line.strip() for line in atom_lines):
        found = sum(1 for line in atom_lines if line.strip())
        raise DataError(
            f"{where(path)}: truncated: header says {n} atoms, found {found} atom lines; re-extract the file"
        )
    species = np.empty(n, dtype=np.int64)
    positions = np.empty((n, 3))
    for i, line in enumerate(atom_lines):
        parts = line.split()
        src = where(path, i + 3)
        if len(parts) < 4:
            raise DataError(f"{src}: expected 'El x y z q', got {line.strip()!r}; the file is truncated or corrupt")
        species[i] = _symbol_to_z(parts[0], src)
        positions[i] = [_float(p, src) for p in parts[1:4]]
    return _qm9_structure(species, positions, raw, int(raw["index"]), where(path))


def read_qm9_xyz(path: str | os.PathLike) -> Structure:
    """Read one original QM9 file ``dsgdb9nsd_NNNNNN.xyz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return parse_qm9_xyz(decode_text(path.read_bytes(), path), path)


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """A text file's bytes as str; binary garbage is a DataError naming the file and the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{where(path, line)}: not text (byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8); "
            "the file is binary or corrupt, re-extract it"
        ) from None


def read_qm9_atomref(path: str | os.PathLike) -> dict[int, dict[str, float]]:
    """Parse the figshare ``atomref.txt`` (free-atom ZPVE, U0, U, H, G in Hartree; Cv)."""
    path = Path(path)
    refs: dict[int, dict[str, float]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) == 7 and parts[0] in _ATOMIC_NUMBERS:
            z = _ATOMIC_NUMBERS[parts[0]]
            refs[z] = {k: _float(v, where(path, lineno)) for k, v in zip(_ATOMREF_COLUMNS, parts[1:])}
    if not refs:
        raise DataError(f"{path}: no element rows found; is this the QM9 atomref.txt?")
    return refs


def read_qm9_uncharacterized(path: str | os.PathLike | None = None) -> np.ndarray:
    """1-based indices of the 3,054 uncharacterized molecules (from ``path`` or the packaged copy)."""
    if path is None:
        path = Path(__file__).parent / "resources" / "qm9_uncharacterized.txt"
        text = path.read_text()
        return np.array([int(x) for x in text.split() if x.isdigit()], dtype=np.int64)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; download uncharacterized.txt from figshare or omit it")
    out = [int(line.split()[0]) for line in path.read_text().splitlines() if re.match(r"^\s*\d+\s+\S", line)]
    if not out:
        raise DataError(f"{path}: no indices found; is this the QM9 uncharacterized.txt?")
    return np.asarray(out, dtype=np.int64)


def _xyz_index(name: str) -> int | None:
    match = re.search(r"dsgdb9nsd_(\d+)\.xyz$", name)
    return int(match.group(1)) if match else None


def iter_qm9_figshare(
    source: str | os.PathLike,
    uncharacterized: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> Iterator[Structure]:
    """Yield the characterized molecules of a figshare QM9 release in index order.

    ``source`` is a directory of ``dsgdb9nsd_*.xyz`` files or the ``dsgdb9nsd.xyz.tar.bz2`` archive.
    ``uncharacterized`` is ``uncharacterized.txt``; by default the copy next to ``source`` if
    present, else the packaged list.
    """
    source = Path(source)
    if uncharacterized is None:
        candidate = (source if source.is_dir() else source.parent) / "uncharacterized.txt"
        uncharacterized = candidate if candidate.is_file() else None
    skip = set(read_qm9_uncharacterized(uncharacterized).tolist())
    if source.is_dir():
        files = sorted((i, p) for p in source.glob("dsgdb9nsd_*.xyz") if (i := _xyz_index(p.name)) is not None)
        if not files:
            raise DataError(f"{source}: no dsgdb9nsd_*.xyz files found; extract dsgdb9nsd.xyz.tar.bz2 there")
        for count, (index, path) in enumerate(files):
            if index not in skip:
                yield read_qm9_xyz(path)
            if progress and count % 2000 == 0:
                progress("reading QM9 xyz", count, len(files))
        return
    if not source.is_file():
        raise DataError(f"{source}: no such file or directory; give the QM9 xyz folder or dsgdb9nsd.xyz.tar.bz2")
    found: dict[int, Structure] = {}
    try:
        with tarfile.open(source, mode="r:*") as tar:
            for member in tar:
                index = _xyz_index(member.name)
                if index is None or not member.isfile() or index in skip:
                    continue
                handle = tar.extractfile(member)
                text = decode_text(handle.read(), f"{source}!{member.name}")
                found[index] = parse_qm9_xyz(text, f"{source}!{member.name}")
                if progress and len(found) % 2000 == 0:
                    progress("reading QM9 archive", len(found), None)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot read the archive ({exc}); download it again") from None
    if not found:
        raise DataError(f"{source}: no dsgdb9nsd_*.xyz members found; is this dsgdb9nsd.xyz.tar.bz2?")
    for index in sorted(found):
        yield found[index]


def qm9pack_data_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack`` (found without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "qm9pack is not installed; run `pip install qm9pack==1.0.3` or prepare QM9 from the "
            "figshare files (source=<folder or dsgdb9nsd.xyz.tar.bz2>)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def parse_mathematica_list(text: str):
    """Parse a Mathematica-style list (``[[0.,1.5],...]``, trailing-dot numbers) as JSON."""
    if ".," in text or ".]" in text or ".E" in text or ".e" in text:
        text = _TRAILING_DOT.sub(".0", text)
    return json.loads(text)


def _qm9pack_rows(data_dir: Path) -> Iterable[tuple[str, int, dict[str, str]]]:
    csv.field_size_limit(1 << 30)
    for fname in QM9PACK_FILES:
        path = data_dir / fname
        if not path.is_file():
            raise DataError(
                f"{path}: missing qm9pack file; reinstall with `pip install --force-reinstall qm9pack==1.0.3`"
            )
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}: file is empty; reinstall qm9pack==1.0.3") from None
            columns = {name: i for i, name in enumerate(header)}
            needed = ["Index", "N_atoms", "Elements", "XYZ_Ang", *QM9PACK_COLUMNS.values()]
            missing = [c for c in needed if c not in columns]
            if missing:
                raise DataError(f"{path}: columns {missing} missing; this is not qm9pack 1.0.3 data")
            for lineno, row in enumerate(reader, 2):
                yield str(path), lineno, {c: row[columns[c]] for c in needed}


def iter_qm9pack(data_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> Iterator[Structure]:
    """Yield all 130,831 QM9 molecules of qm9pack's three CSVs, sorted by QM9 index."""
    data_dir = Path(data_dir) if data_dir is not None else qm9pack_data_dir()
    found: list[Structure] = []
    for count, (path, lineno, row) in enumerate(_qm9pack_rows(data_dir)):
        src = where(path, lineno)
        try:
            index = int(row["Index"])
            n = int(row["N_atoms"])
            species = np.array([_symbol_to_z(s, src) for s in _ELEMENT.findall(row["Elements"])], dtype=np.int64)
            positions = np.array(parse_mathematica_list(row["XYZ_Ang"]), dtype=np.float64)
            raw = {name: float(row[col]) for name, col in QM9PACK_COLUMNS.items()}
        except (ValueError, json.JSONDecodeError) as exc:
            raise DataError(f"{src}: cannot parse the row ({exc}); reinstall qm9pack==1.0.3") from None
        if species.shape != (n,) or positions.shape != (n, 3):
            raise DataError(f"{src}: N_atoms={n} but {species.size} elements and {positions.shape} positions")
        found.append(_qm9_structure(species, positions, raw, index, src))
        if progress and count % 5000 == 0:
            progress("reading qm9pack", count, QM9_N_MOLECULES)
    found.sort(key=lambda s: s.index)
    yield from found


__all__ = [
    "ATOMREF_HARTREE",
    "QM9_N_MOLECULES",
    "QM9_TARGETS",
    "QM9_UNITS",
    "QM9_SOURCE_UNITS",
    "iter_qm9_figshare",
    "iter_qm9pack",
    "parse_mathematica_list",
    "parse_qm9_xyz",
    "qm9_name",
    "qm9_split",
    "qm9_targets",
    "qm9pack_data_dir",
    "read_qm9_atomref",
    "read_qm9_uncharacterized",
    "read_qm9_xyz",
]


def _qm9_structure(species: np.ndarray, positions: np.ndarray, raw: dict, index: int, src: str) -> Structure:
    """One checked QM9 molecule with its 12 targets in QM9_UNITS, named by its QM9 index."""
    return Structure(
        species=species,
        positions=positions,
        targets=qm9_targets(raw, species),
        units=QM9_UNITS,
        name=qm9_name(index),
        index=index,
    ).check(src)
