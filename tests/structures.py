"""Real structures shipped in tests/data/structures (see PROVENANCE.md there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers

HERE = Path(__file__).resolve().parent / "data" / "structures"


def qm9_molecule(index: int = 100001) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z, positions in Å) of a QM9 molecule from its original xyz file."""
    lines = (HERE / f"dsgdb9nsd_{index:06d}.xyz").read_text().splitlines()
    n = int(lines[0])
    rows = [line.split() for line in lines[2 : 2 + n]]
    z = torch.tensor([atomic_numbers[r[0]] for r in rows])
    pos = torch.tensor([[float(v.replace("*^", "e")) for v in r[1:4]] for r in rows], dtype=torch.float64)
    return z, pos


def oc20_adslab():
    """The real OC20 adslab (ASE Atoms) with OC20 tags: 2 adsorbate, 1 free slab atoms, 0 fixed ones."""
    from ase.io import read

    atoms = read(HERE / "oc20_adslab_frame.json")
    tags = np.where(atoms.get_tags() == 1, 2, 1)
    fixed = atoms.constraints[0].get_indices() if atoms.constraints else []
    tags[fixed] = 0
    atoms.set_tags(tags)
    return atoms
