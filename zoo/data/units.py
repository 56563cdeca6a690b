"""Unit conversion to the canonical units of equizoo: eV, Å, eV/Å.

Constants (stated once, used everywhere):

- ``HARTREE_TO_EV = 27.211386246``: the value the Equiformer reference (and PyG's QM9) uses.
- ``KCAL_PER_MOL_TO_EV``: ``ase.units.create_units("2018")``, i.e. 4184 J / (N_A e) =
  0.0433641042418 eV, exact in SI 2019. The Equiformer paper's "x43.364 meV" is this value rounded.
- ``BOHR_TO_ANGSTROM``: CODATA 2018 via ASE, 0.529177210903 Å.
"""

from __future__ import annotations

import ase.units

from .errors import DataError

_U2018 = ase.units.create_units("2018")

HARTREE_TO_EV = 27.211386246
KCAL_PER_MOL_TO_EV = _U2018["kcal"] / _U2018["mol"]
KJ_PER_MOL_TO_EV = _U2018["kJ"] / _U2018["mol"]
BOHR_TO_ANGSTROM = _U2018["Bohr"]

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": KCAL_PER_MOL_TO_EV,
    "kJ/mol": KJ_PER_MOL_TO_EV,
    "Hartree": HARTREE_TO_EV,
    "Ha": HARTREE_TO_EV,
}
LENGTH_UNITS: dict[str, float] = {
    "Å": 1.0,
    "A": 1.0,
    "Ang": 1.0,
    "Angstrom": 1.0,
    "Bohr": BOHR_TO_ANGSTROM,
    "a0": BOHR_TO_ANGSTROM,
}

ENERGY = "eV"
STRESS = "eV/Å^3"


def energy_factor(unit: str) -> float:
    """Multiplier taking energies in ``unit`` to eV."""
    try:
        return ENERGY_UNITS[unit]
    except KeyError:
        raise DataError(f"unknown energy unit {unit!r}; use one of {', '.join(ENERGY_UNITS)}") from None


def length_factor(unit: str) -> float:
    """Multiplier taking lengths in ``unit`` to Å."""
    try:
        return LENGTH_UNITS[unit]
    except KeyError:
        raise DataError(f"unknown length unit {unit!r}; use one of {', '.join(LENGTH_UNITS)}") from None


def force_factor(energy_unit: str, length_unit: str = "Å") -> float:
    """Multiplier taking forces in ``energy_unit/length_unit`` to eV/Å."""
    return energy_factor(energy_unit) / length_factor(length_unit)
