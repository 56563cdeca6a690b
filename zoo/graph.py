"""Neighbour lists: radius graphs of molecules and of periodic cells (every image within the cutoff).

Edges are (src = neighbour, dst = centre) with edge vector pos[src] + shift - pos[dst], no self loops
(periodic images of an atom itself are neighbours). Molecules use a dense per-structure distance matrix
(exact, vectorised over the batch); periodic cells use ASE's cell-list neighbour list, which goes beyond
the minimum image.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from zoo import keys

_DENSE_MAX_ATOMS = 1024


def radius_graph(pos: torch.Tensor, batch: torch.Tensor, r_max: float, max_neighbors: Optional[int] = None) -> torch.Tensor:
    """Edges between atoms of the same structure closer than r_max; [2, E] ordered by (dst, src)."""
    if pos.shape[0] == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    counts = torch.bincount(batch)
    if int(counts.max()) > _DENSE_MAX_ATOMS:
        pbc = torch.zeros(int(counts.numel()), 3, dtype=torch.bool)
        cell = torch.zeros(int(counts.numel()), 3, 3, dtype=pos.dtype)
        edge_index, _, _ = periodic_graph(pos, cell, pbc, batch, r_max, max_neighbors)
        return edge_index
    order = torch.argsort(batch, stable=True)
    if not torch.equal(order, torch.arange(len(order), device=order.device)):
        raise ValueError("atoms must be grouped by structure (batch must be non-decreasing)")
    num_graphs, n_max = counts.numel(), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(pos.shape[0], device=pos.device) - starts[batch]
    padded = pos.new_full((num_graphs, n_max, 3), float("nan"))
    padded[batch, local] = pos.detach()
    dist = torch.cdist(padded, padded)
    mask = dist < r_max  # NaN padding compares False
    mask &= ~torch.eye(n_max, dtype=torch.bool, device=pos.device)
    g, i_dst, i_src = torch.nonzero(mask, as_tuple=True)
    edge_index = torch.stack([starts[g] + i_src, starts[g] + i_dst])
    if max_neighbors is not None:
        edge_index = _cap_neighbors(edge_index, dist[g, i_dst, i_src], max_neighbors)
    return edge_index


def periodic_graph(
    pos: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    batch: torch.Tensor,
    r_max: float,
    max_neighbors: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges of periodic structures over all images within r_max.

    Returns edge_index [2, E], cell_offsets [E, 3] (integer image of src) and edge_shift [E, 3]
    (= cell_offsets @ cell, cartesian), in the device and float dtype of `pos`.
    """
    from ase.neighborlist import primitive_neighbor_list

    device, dtype = pos.device, pos.dtype
    pos_np = pos.detach().cpu().double().numpy()
    cell_np = cell.detach().cpu().double().numpy()
    pbc_np = pbc.detach().cpu().numpy().astype(bool)
    batch_np = batch.detach().cpu().numpy()
    srcs, dsts, offs, dists = [], [], [], []
    first = 0
    for g in range(cell_np.shape[0]):
        idx = np.nonzero(batch_np == g)[0]
        if len(idx) == 0:
            continue
        if not np.all(np.diff(idx) == 1):
            raise ValueError("atoms must be grouped by structure (batch must be non-decreasing)")
        first = idx[0]
        p, c, b = pos_np[idx], cell_np[g], pbc_np[g]
        if b.any() and abs(np.linalg.det(c)) < 1e-12:
            raise ValueError(f"structure {g} is periodic but its cell is singular: {c.tolist()}")
        i, j, s, d = primitive_neighbor_list("ijSd", b, c, p, r_max, self_interaction=False, use_scaled_positions=False)
        keep = d < r_max
        dsts.append(i[keep] + first)
        srcs.append(j[keep] + first)
        offs.append(s[keep])
        dists.append(d[keep])
    if not srcs:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return torch.stack([empty, empty]), torch.zeros(0, 3, dtype=torch.long, device=device), torch.zeros(0, 3, dtype=dtype, device=device)
    src, dst = np.concatenate(srcs), np.concatenate(dsts)
    off, dist = np.concatenate(offs), np.concatenate(dists)
    order = np.lexsort((off[:, 2], off[:, 1], off[:, 0], src, dst))
    edge_index = torch.from_numpy(np.stack([src[order], dst[order]])).long()
    offsets = torch.from_numpy(off[order]).long()
    if max_neighbors is not None:
        keep = _cap_mask(edge_index, torch.from_numpy(dist[order]), max_neighbors)
        edge_index, offsets = edge_index[:, keep], offsets[keep]
    edge_index, offsets = edge_index.to(device), offsets.to(device)
    shift = torch.einsum("ei,eij->ej", offsets.to(dtype), cell.to(dtype).index_select(0, batch.index_select(0, edge_index[1])))
    return edge_index, offsets, shift


def _cap_mask(edge_index: torch.Tensor, dist: torch.Tensor, max_neighbors: int) -> torch.Tensor:
    """Keep the max_neighbors nearest sources of every destination (stable for ties)."""
    dst = edge_index[1]
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(dst[order], stable=True)]
    rank = torch.empty_like(order)
    counts = torch.bincount(dst)
    starts = torch.cumsum(counts, 0) - counts
    rank[order] = torch.arange(len(order)) - starts[dst[order]]
    return rank < max_neighbors


def _cap_neighbors(edge_index: torch.Tensor, dist: torch.Tensor, max_neighbors: int) -> torch.Tensor:
    return edge_index[:, _cap_mask(edge_index.cpu(), dist.cpu(), max_neighbors).to(edge_index.device)]


def attach_graph(batch: dict, r_max: float, max_neighbors: Optional[int] = None) -> dict:
    """Add edge_index, edge_shift and cell_offsets to a collated batch (periodic where any pbc is set)."""
    pos, b = batch[keys.POSITIONS], batch[keys.BATCH]
    pbc = batch.get(keys.PBC)
    if pbc is not None and bool(pbc.any()):
        edge_index, offsets, shift = periodic_graph(pos, batch[keys.CELL], pbc, b, r_max, max_neighbors)
    else:
        edge_index = radius_graph(pos, b, r_max, max_neighbors)
        offsets = torch.zeros(edge_index.shape[1], 3, dtype=torch.long, device=pos.device)
        shift = torch.zeros(edge_index.shape[1], 3, dtype=pos.dtype, device=pos.device)
    out = dict(batch)
    out[keys.EDGE_INDEX], out[keys.CELL_OFFSETS], out[keys.EDGE_SHIFT] = edge_index, offsets, shift
    return out
