"""Neighbour lists for molecules and periodic cells."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list
from structures import oc20_adslab, qm9_molecule

from zoo import keys
from zoo.graph import GraphError, attach_graph, periodic_graph, radius_graph


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
    assert {(a, b, *s) for a, b, s in zip(j, i, S)} == {
        (int(a), int(b), *map(int, s)) for a, b, s in zip(*edge_index, offsets)
    }
    vec = pos[edge_index[0]] + shift - pos[edge_index[1]]
    assert vec.norm(dim=1).max() < 5.0
    assert (offsets.abs() > 1).any()  # images beyond +-1 are needed here


def test_attach_graph_mixes_molecules_and_cells():
    z, pos = qm9_molecule(5000)
    batch = {
        keys.POSITIONS: pos,
        keys.BATCH: torch.zeros(len(z), dtype=torch.long),
        keys.PBC: torch.zeros(1, 3, dtype=torch.bool),
    }
    out = attach_graph(batch, 5.0)
    assert out[keys.EDGE_SHIFT].shape == (out[keys.EDGE_INDEX].shape[1], 3)
    assert (out[keys.EDGE_SHIFT] == 0).all()


def test_singular_periodic_cell_is_a_clear_error():
    pos = torch.zeros(2, 3, dtype=torch.float64)
    pos[1, 0] = 1.0
    with pytest.raises(ValueError, match="singular"):
        periodic_graph(
            pos,
            torch.zeros(1, 3, 3, dtype=torch.float64),
            torch.ones(1, 3, dtype=torch.bool),
            torch.zeros(2, dtype=torch.long),
            5.0,
        )


def _jittered_lattice(n: int, spacing: float = 4.5, jitter: float = 0.2, seed: int = 0) -> torch.Tensor:
    """n atoms on a jittered simple cubic lattice: about 6 neighbours within 5 Å, none closer than 4 Å."""
    k = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * spacing
    return torch.from_numpy(grid + np.random.default_rng(seed).uniform(-jitter, jitter, grid.shape))


def test_large_molecules_use_a_cell_list_with_the_same_edges_and_order():
    """Above 1,024 atoms the cell list gives exactly the brute-force edges, ordered by (dst, src), also
    mixed in one batch with small molecules (which keep the dense path) and with a neighbour cap."""
    _, small = qm9_molecule(5000)
    rng = np.random.default_rng(1)
    clustered = torch.from_numpy(np.concatenate([rng.normal(0, 3.0, (900, 3)), rng.normal(40.0, 4.0, (700, 3))]))
    far = _jittered_lattice(1100) + torch.tensor([1e4, 0.0, -3e3], dtype=torch.float64)  # far off the origin
    pos = torch.cat([small, clustered, far, small])
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([len(small), len(clustered), len(far), len(small)]))
    edge_index = radius_graph(pos, batch, 5.0)
    expected = []
    for g in range(4):
        idx = torch.nonzero(batch == g).flatten()
        d = torch.cdist(pos[idx], pos[idx])
        dst, src = torch.nonzero((d < 5.0) & ~torch.eye(len(idx), dtype=torch.bool), as_tuple=True)
        expected.append(torch.stack([idx[src], idx[dst]]))
    assert torch.equal(edge_index, torch.cat(expected, dim=1))
    capped = radius_graph(pos, batch, 5.0, max_neighbors=3)
    dist = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=1)
    for centre in (len(small) + 17, len(small) + 950, len(small) + 1700):
        mine = edge_index[1] == centre
        nearest = edge_index[0][mine][torch.argsort(dist[mine], stable=True)[:3]]
        assert set(capped[0][capped[1] == centre].tolist()) == set(nearest.tolist())


def test_graph_of_100k_atom_molecule_stays_small(tmp_path):
    """A 100,000-atom sparse molecule (about 6 neighbours per atom): the neighbour list is O(N) in memory
    (peak resident memory grows by far less than 2 GB) and finishes, in a subprocess so an out-of-memory
    abort fails this test instead of pytest."""
    script = (
        "import resource, sys\n"
        "import torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_graph import _jittered_lattice\n"
        "from zoo.graph import radius_graph\n"
        "pos = _jittered_lattice(100_000)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "edges = radius_graph(pos, torch.zeros(len(pos), dtype=torch.long), 5.0)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(edges.shape[1], grown * 1024)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    edges, grown = map(int, proc.stdout.split())
    assert 5 * 100_000 < edges < 7 * 100_000
    assert grown < 2 << 30, f"building the graph grew the peak memory by {grown / 2**30:.2f} GiB"


@pytest.mark.parametrize("length, words", [(1e-3, "too small for the cutoff"), (1e12, "exceed")])
def test_absurd_periodic_cells_are_clear_errors(length, words):
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.5e-3, 0.5e-3, 0.5e-3]], dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64)[None] * length
    with pytest.raises(GraphError, match=words):
        periodic_graph(pos, cell, torch.ones(1, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.long), 5.0)


def test_dense_path_in_chunks_gives_the_same_graph(monkeypatch):
    import zoo.graph

    molecules = [qm9_molecule(i)[1] for i in (5000, 100001, 5000, 100001, 5000)]
    pos = torch.cat(molecules)
    batch = torch.repeat_interleave(torch.arange(5), torch.tensor([len(m) for m in molecules]))
    whole = radius_graph(pos, batch, 5.0)
    monkeypatch.setattr(zoo.graph, "_DENSE_MAX_ENTRIES", 2 * 25 * 25)  # about two molecules per chunk
    assert torch.equal(radius_graph(pos, batch, 5.0), whole)
