"""LAMMPS data files and input scripts for `pair_style equiformer` (used by `equizoo lammps example`).

Units are LAMMPS `metal` (Å, eV, ps, g/mol) for eV models and `real` (kcal/mol, fs) for kcal/mol models.
Periodic cells are written as LAMMPS restricted triclinic boxes (a along x, b in the xy plane), rotating
positions and velocities when the cell is not already in that form; molecules get a box around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# LAMMPS's unit constants (update.cpp): metal and real
MVV2E = {"metal": 1.0364269e-4, "real": 48.88821291 * 48.88821291}
FTM2V = {"metal": 1.0 / 1.0364269e-4, "real": 1.0 / 48.88821291 / 48.88821291}
ENERGY_UNITS = {"eV": "metal", "kcal/mol": "real"}


def _f(x) -> str:
    """Shortest text that reads back to the same double."""
    return repr(float(x))


def lammps_cell(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(restricted triclinic cell [3,3] as rows a, b, c; rotation R with new = old @ R)."""
    cell = np.asarray(cell, dtype=np.float64)
    a, b, c = cell
    lx = np.linalg.norm(a)
    ahat = a / lx
    xy = b @ ahat
    ly = np.sqrt(b @ b - xy * xy)
    xz = c @ ahat
    yz = (b @ c - xy * xz) / ly
    lz = np.sqrt(c @ c - xz * xz - yz * yz)
    new = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    if np.allclose(new, cell, rtol=0, atol=1e-12):
        return cell, np.eye(3)
    return new, np.linalg.solve(cell, new)


def write_data(
    path,
    positions: np.ndarray,
    numbers: Sequence[int],
    elements: Sequence[str],
    cell: Optional[np.ndarray] = None,
    velocities: Optional[np.ndarray] = None,
    padding: float = 10.0,
) -> dict:
    """Write an `atom_style atomic` data file; atom types follow `elements` (1-based).

    `cell` None: a molecule in an orthogonal box `padding` Å beyond its extent (use `boundary f f f` or
    `s s s`). Velocities are in LAMMPS units (Å/ps for metal). Returns {"positions", "cell", "rotation"}
    as written (positions rotated into the LAMMPS frame for a periodic cell).
    """
    from ase.data import atomic_masses, chemical_symbols

    pos = np.asarray(positions, dtype=np.float64)
    numbers = [int(z) for z in numbers]
    symbols = [chemical_symbols[z] for z in numbers]
    missing = sorted(set(symbols) - set(elements))
    if missing:
        raise ValueError(f"elements {missing} of the structure are not in the type list {list(elements)}")
    types = [list(elements).index(s) + 1 for s in symbols]
    vel = None if velocities is None else np.asarray(velocities, dtype=np.float64)
    if cell is None:
        lo = pos.min(axis=0) - padding
        hi = pos.max(axis=0) + padding
        box = [f"{_f(lo[k])} {_f(hi[k])} {'xyz'[k]}lo {'xyz'[k]}hi" for k in range(3)]
        rot = np.eye(3)
        new_cell = np.diag(hi - lo)
        tilt = None
    else:
        new_cell, rot = lammps_cell(cell)
        pos = pos @ rot
        vel = None if vel is None else vel @ rot
        box = [f"0.0 {_f(new_cell[k, k])} {'xyz'[k]}lo {'xyz'[k]}hi" for k in range(3)]
        tilt = (new_cell[1, 0], new_cell[2, 0], new_cell[2, 1])
    lines = ["LAMMPS data file written by equizoo", "", f"{len(numbers)} atoms", f"{len(elements)} atom types", ""]
    lines += box
    if tilt is not None and any(abs(t) > 0 for t in tilt):
        lines.append(f"{_f(tilt[0])} {_f(tilt[1])} {_f(tilt[2])} xy xz yz")
    lines += ["", "Masses", ""]
    from ase.data import atomic_numbers

    lines += [f"{t + 1} {_f(atomic_masses[atomic_numbers[el]])}  # {el}" for t, el in enumerate(elements)]
    lines += ["", "Atoms  # atomic", ""]
    lines += [f"{i + 1} {types[i]} {_f(pos[i, 0])} {_f(pos[i, 1])} {_f(pos[i, 2])}" for i in range(len(numbers))]
    if vel is not None:
        lines += ["", "Velocities", ""]
        lines += [f"{i + 1} {_f(vel[i, 0])} {_f(vel[i, 1])} {_f(vel[i, 2])}" for i in range(len(numbers))]
    Path(path).write_text("\n".join(lines) + "\n")
    return {"positions": pos, "cell": new_cell, "rotation": rot}


def input_script(
    data_file: str,
    model_file: str,
    elements: Sequence[str],
    plugin: Optional[str],
    periodic: bool,
    units: str = "metal",
    steps: int = 100,
    timestep: Optional[float] = None,
    temperature: Optional[float] = 300.0,
    seed: int = 12345,
    thermo: int = 10,
    pair_options: str = "",
    dump: Optional[str] = None,
) -> str:
    """An NVE run: read the data file, load the plugin and the model, create velocities, integrate."""
    timestep = timestep if timestep is not None else (0.0005 if units == "metal" else 0.5)
    lines = [
        "# pair_style equiformer example written by `equizoo lammps example`",
        f"units           {units}",
        "atom_style      atomic",
        f"boundary        {'p p p' if periodic else 's s s'}",
        f"read_data       {data_file}",
        "",
    ]
    if plugin:
        lines.append(f"plugin load     {plugin}")
    else:
        lines.append("# the plugin must be loaded: `plugin load /path/equiformerplugin.so` or LAMMPS_PLUGIN_PATH")
    lines += [
        f"pair_style      equiformer {pair_options}".rstrip(),
        f"pair_coeff      * * {model_file} {' '.join(elements)}",
        # molecules: shrink-wrapped box, O(N^2) neighbour search (bins fail when the box is smaller than the cutoff)
        f"neighbor        1.0 {'bin' if periodic else 'nsq'}",
        "",
    ]
    if temperature is not None:
        lines.append(
            f"velocity        all create {temperature} {seed} mom yes rot {'no' if periodic else 'yes'} dist gaussian"
        )
    lines += [
        f"timestep        {timestep}",
        "fix             nve all nve",
        "thermo_style    custom step temp pe ke etotal press",
        "thermo_modify   format float %.10g",
        f"thermo          {thermo}",
    ]
    if dump:
        lines += [
            f"dump            traj all custom {thermo} {dump} id type x y z fx fy fz",
            "dump_modify     traj sort id",
        ]
    lines += [f"run             {steps}", ""]
    return "\n".join(lines)
