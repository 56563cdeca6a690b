"""Neighbour lists for molecules and periodic cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from structures import oc20_adslab, qm9_molecule
from zoo import keys
from zoo.graph import attach_graph, periodic_graph, radius_graph


def _brute_force(pos, batch, r):
    d = torch.cdist(pos, pos)
    mask = (d < r) & (batch[:, None] == batch[None, :]) & ~torch.eye(len(pos), dtype=torch.bool)
    dst, src = torch.nonzero(mask, as_tuple=True)
    return {(int(s), int(t)) for s, t in zip(src, dst)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radius_graph_equals_brute_force(dtype):
    z1, p1 = qm9_molecule(5000)
    z2, p2 = qm9_molecule(100001)
    pos = torch.cat([p1, p2]).to(dtype)
    batch = torch.cat([torch.zeros(len(p1)), torch.ones(len(p2))]).long()
    edge_index = radius_graph(pos, batch, 5.0)
    pairs = {(int(s), int(t)) for s, t in edge_index.T}
    assert pairs == _brute_force(pos, batch, 5.0)
    assert len(pairs) == edge_index.shape[1]
    assert (edge_index[0] != edge_index[1]).all()
    assert (batch[edge_index[0]] == batch[edge_index[1]]).all()


def test_radius_graph_caps_neighbours_nearest_first():
    _, pos = qm9_molecule(100001)
    batch = torch.zeros(len(pos), dtype=torch.long)
    capped = radius_graph(pos, batch, 5.0, max_neighbors=4)
    assert torch.bincount(capped[1]).max() <= 4
    full = radius_graph(pos, batch, 5.0)
    dist = (pos[full[0]] - pos[full[1]]).norm(dim=1)
    for centre in range(3):
        nearest = full[0][full[1] == centre][torch.argsort(dist[full[1] == centre])[:4]]
        assert set(capped[0][capped[1] == centre].tolist()) == set(nearest.tolist())


def test_periodic_graph_equals_ase_and_reaches_beyond_minimum_image():
    atoms = oc20_adslab()
    atoms.positions[:5] += 2.3 * atoms.cell[0] - 1.0 * atoms.cell[1]  # atoms outside the unit cell
    pos = torch.from_numpy(atoms.positions)
    cell = torch.from_numpy(np.asarray(atoms.cell))[None]
    batch = torch.zeros(len(atoms), dtype=torch.long)
    edge_index, offsets, shift = periodic_graph(pos, cell, torch.ones(1, 3, dtype=torch.bool), batch, 5.0)
    i, j, S = neighbor_list("ijS", atoms, 5.0)
    assert {(a, b, *s) for a, b, s in zip(j, i, S)} == {(int(a), int(b), *map(int, s)) for a, b, s in zip(*edge_index, offsets)}
    vec = pos[edge_index[0]] + shift - pos[edge_index[1]]
    assert vec.norm(dim=1).max() < 5.0
    assert (offsets.abs() > 1).any()  # images beyond +-1 are needed here


def test_attach_graph_mixes_molecules_and_cells():
    z, pos = qm9_molecule(5000)
    batch = {keys.POSITIONS: pos, keys.BATCH: torch.zeros(len(z), dtype=torch.long), keys.PBC: torch.zeros(1, 3, dtype=torch.bool)}
    out = attach_graph(batch, 5.0)
    assert out[keys.EDGE_SHIFT].shape == (out[keys.EDGE_INDEX].shape[1], 3)
    assert (out[keys.EDGE_SHIFT] == 0).all()


def test_singular_periodic_cell_is_a_clear_error():
    pos = torch.zeros(2, 3, dtype=torch.float64)
    pos[1, 0] = 1.0
    with pytest.raises(ValueError, match="singular"):
        periodic_graph(pos, torch.zeros(1, 3, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.long), 5.0)
