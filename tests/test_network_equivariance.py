"""Symmetries of every variant in float64: rotations (improper ones for E(3) variants), translations,
permutations, and for periodic variants the choice of unit cell and of atom images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from structures import oc20_adslab, qm9_molecule

from zoo import keys
from zoo.graph import periodic_graph, radius_graph
from zoo.models import build_model, get_variant, list_variants

TOL = 1e-10  # scalars (energies, properties), absolute, float64
VEC_TOL = 1e-8  # vectors (forces, displacements; gradients amplify round-off), relative to the largest
# E(3) variants: block 0 makes a 0o block that is zero analytically ((a x r) . r), round-off in float64
# (~1e-14); the layer norms of blocks 0 and 1 scale it by up to 1/sqrt(eps) = 316 each, so the forces
# carry round-off amplified ~1e5 (1e-9..1e-8 seen on a QM9 molecule): a CPU-independent bound is 1e-6,
# still far below what a broken equivariance gives (order 1)
VEC_TOL_E3 = 1e-6
MOLECULAR = [n for n in list_variants() if not get_variant(n).periodic]
PERIODIC = [n for n in list_variants() if get_variant(n).periodic]


def _vec_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


def _vec_tol(name: str) -> float:
    return VEC_TOL_E3 if name.endswith("-e3") else VEC_TOL


def _model(name: str, **flags):
    torch.manual_seed(7)
    model = build_model(name).double().eval()
    for k, v in flags.items():
        setattr(model, k, v)
    return model


def _run_molecule(model, z, pos):
    batch = torch.zeros(len(z), dtype=torch.long)
    return model(pos, z, radius_graph(pos, batch, model.r_max), batch)


def _run_slab(model, z, pos, cell, tags):
    batch = torch.zeros(len(z), dtype=torch.long)
    edge_index, _, shift = periodic_graph(
        pos, cell.unsqueeze(0), torch.ones(1, 3, dtype=torch.bool), batch, model.r_max
    )
    return model(pos, z, edge_index, batch, edge_shift=shift, tags=tags)


def _rotations(name):
    rots = [o3.rand_matrix(dtype=torch.float64) for _ in range(2)]
    if name.endswith("-e3"):
        rots.append(-o3.rand_matrix(dtype=torch.float64))  # improper: rotation times inversion
    return rots


@pytest.mark.parametrize("name", MOLECULAR)
def test_molecular_variant_is_equivariant(name):
    torch.manual_seed(0)
    z, pos = qm9_molecule(5000)
    model = _model(name, compute_forces=True)
    out = _run_molecule(model, z, pos)
    key = model.output_key
    assert out[key].abs().item() > 1e-6  # a non-trivial output
    for rot in _rotations(name):
        moved = _run_molecule(model, z, pos @ rot.T + torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64))
        assert (moved[key] - out[key]).abs().max() <= TOL
        assert _vec_err(moved[keys.FORCES], out[keys.FORCES] @ rot.T) <= _vec_tol(name)
    perm = torch.randperm(len(z))
    permuted = _run_molecule(model, z[perm], pos[perm])
    assert (permuted[key] - out[key]).abs().max() <= TOL
    assert (permuted[model.atomic_key] - out[model.atomic_key][perm]).abs().max() <= TOL
    assert _vec_err(permuted[keys.FORCES], out[keys.FORCES][perm]) <= _vec_tol(name)


@pytest.mark.parametrize("name", PERIODIC)
def test_periodic_variant_is_equivariant_and_cell_invariant(name):
    torch.manual_seed(0)
    atoms = oc20_adslab()
    z = torch.from_numpy(atoms.numbers).long()
    pos = torch.from_numpy(atoms.positions)
    cell = torch.from_numpy(np.asarray(atoms.cell))
    tags = torch.from_numpy(atoms.get_tags()).long()
    model = _model(name)
    out = _run_slab(model, z, pos, cell, tags)
    e = out[keys.ENERGY]
    for rot in _rotations(name):
        moved = _run_slab(model, z, pos @ rot.T + 0.7, cell @ rot.T, tags)
        assert (moved[keys.ENERGY] - e).abs().max() <= TOL
        if model.has_aux:
            assert _vec_err(moved[keys.AUX_DISPLACEMENT], out[keys.AUX_DISPLACEMENT] @ rot.T) <= _vec_tol(name)
    perm = torch.randperm(len(z))
    assert (_run_slab(model, z[perm], pos[perm], cell, tags[perm])[keys.ENERGY] - e).abs().max() <= TOL
    # another image of some atoms, and another (unimodular) choice of cell vectors for the same lattice
    wrapped = pos.clone()
    wrapped[::3] += cell[0] - 2 * cell[1]
    assert (_run_slab(model, z, wrapped, cell, tags)[keys.ENERGY] - e).abs().max() <= TOL
    other_cell = torch.stack([cell[0] + cell[1], cell[1], cell[2] - cell[0]])
    assert (_run_slab(model, z, pos, other_cell, tags)[keys.ENERGY] - e).abs().max() <= TOL


def test_forces_are_minus_energy_gradient():
    z, pos = qm9_molecule(5000)
    model = _model("md17-l2")
    forces = _run_molecule(model, z, pos)[keys.FORCES]
    h = 1e-5
    for atom, axis in ((0, 0), (3, 2), (7, 1)):
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = -(_run_molecule(model, z, plus)[keys.ENERGY] - _run_molecule(model, z, minus)[keys.ENERGY]) / (2 * h)
        assert abs(fd.item() - forces[atom, axis].item()) <= 1e-6 * max(1.0, abs(fd.item()))


def test_virial_is_minus_strain_derivative():
    atoms = oc20_adslab()
    z = torch.from_numpy(atoms.numbers).long()
    pos = torch.from_numpy(atoms.positions)
    cell = torch.from_numpy(np.asarray(atoms.cell))
    tags = torch.from_numpy(atoms.get_tags()).long()
    model = _model("oc20-l1", compute_forces=True, compute_virial=True)
    virial = _run_slab(model, z, pos, cell, tags)[keys.VIRIAL][0]
    h = 1e-6  # the Gaussian basis is sharp: central differences need a small strain
    for a, b in ((0, 0), (1, 2), (2, 1)):
        energies = []
        for sign in (1, -1):
            strain = torch.eye(3, dtype=torch.float64)
            strain[a, b] += sign * h
            energies.append(_run_slab(model, z, pos @ strain, cell @ strain, tags)[keys.ENERGY].item())
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert abs(fd - virial[a, b].item()) <= 1e-5 * max(1.0, abs(fd))
