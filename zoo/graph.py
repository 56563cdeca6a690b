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
from zoo.errors import ZooError

_DENSE_MAX_ATOMS = 1024  # larger molecules use the cell list
_DENSE_MAX_ENTRIES = 1 << 24  # padded distance entries per dense chunk (128 MB in float64)
_CELL_LIST_CHUNK = 1 << 22  # candidate pairs examined at once by the cell list
MAX_EDGES = 100_000_000  # more edges than any model can run on; refused before building
MAX_CELL_LENGTH = 1.0e6  # Å; ASE's cell list overflows beyond ~1e7 Å


class GraphError(ZooError, ValueError):
    """A structure whose neighbour list cannot be built (absurd cell or coordinates)."""


def radius_graph(
    pos: torch.Tensor, batch: torch.Tensor, r_max: float, max_neighbors: Optional[int] = None
) -> torch.Tensor:
    """Edges between atoms of the same structure closer than r_max; [2, E] ordered by (dst, src).

    Structures of up to 1,024 atoms use a padded dense distance matrix (batched); larger ones a cell
    list over their bounding box, O(N + E) in memory. Both give the same edges in the same order.
    """
    if pos.shape[0] == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("atoms must be grouped by structure (batch must be non-decreasing)")
    counts = torch.bincount(batch)
    starts = torch.cumsum(counts, 0) - counts
    large = torch.nonzero(counts > _DENSE_MAX_ATOMS).flatten().tolist()
    if not large:
        return _dense_graphs(pos, batch, counts, starts, r_max, max_neighbors)
    parts = []
    small = counts <= _DENSE_MAX_ATOMS
    if bool((small & (counts > 0)).any()):
        keep = small[batch]
        index = torch.nonzero(keep).flatten()
        sub_batch = batch[keep]
        _, sub_batch = torch.unique_consecutive(sub_batch, return_inverse=True)
        sub_counts = torch.bincount(sub_batch)
        sub_edges = _dense_graphs(
            pos[keep], sub_batch, sub_counts, torch.cumsum(sub_counts, 0) - sub_counts, r_max, max_neighbors
        )
        parts.append(index[sub_edges])
    for g in large:
        a, n = int(starts[g]), int(counts[g])
        edges = cell_list_graph(pos[a : a + n], r_max, max_neighbors)
        parts.append(edges + a)
    edge_index = torch.cat(parts, dim=1)
    order = torch.argsort(edge_index[1] * pos.shape[0] + edge_index[0])
    return edge_index[:, order]


def _dense_graphs(pos, batch, counts, starts, r_max, max_neighbors):
    """Padded dense distance matrices, in chunks of structures that fit _DENSE_MAX_ENTRIES."""
    num_graphs = counts.numel()
    n_max = int(counts.max())
    if num_graphs * n_max * n_max <= _DENSE_MAX_ENTRIES:
        return _dense_chunk(pos, batch, counts, starts, r_max, max_neighbors)
    parts, g = [], 0
    while g < num_graphs:
        h, width = g, 0
        while h < num_graphs and (h - g + 1) * max(width, int(counts[h])) ** 2 <= _DENSE_MAX_ENTRIES or h == g:
            width = max(width, int(counts[h]))
            h += 1
        a, b = int(starts[g]), int(starts[h - 1] + counts[h - 1])
        sub_counts = counts[g:h]
        parts.append(a + _dense_chunk(pos[a:b], batch[a:b] - g, sub_counts, starts[g:h] - a, r_max, max_neighbors))
        g = h
    return torch.cat(parts, dim=1)


def _dense_chunk(pos, batch, counts, starts, r_max, max_neighbors):
    num_graphs, n_max = counts.numel(), int(counts.max())
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


def _cell_coordinates(pos: torch.Tensor, r_max: float) -> torch.Tensor:
    """Integer cell of every atom on a grid of r_max cubes over the bounding box, with empty stretches
    along each axis shortened to one empty cell (neighbouring cells stay neighbours, others stay apart)."""
    span = (pos.max(0).values - pos.min(0).values) / r_max
    if not bool(torch.isfinite(span).all()) or float(span.max()) > 2.0**52:
        raise GraphError(f"coordinates span {float(span.max() * r_max):.3g} Å; they are not finite or absurdly large")
    cells = torch.floor((pos - pos.min(0).values) / r_max).long()
    out = torch.empty_like(cells)
    for axis in range(3):
        values, inverse = torch.unique(cells[:, axis], return_inverse=True)
        steps = torch.clamp(values[1:] - values[:-1], max=2)
        compact = torch.cat([values.new_zeros(1), torch.cumsum(steps, 0)])
        out[:, axis] = compact[inverse]
    return out


def cell_list_graph(pos: torch.Tensor, r_max: float, max_neighbors: Optional[int] = None) -> torch.Tensor:
    """Edges (no self loops) of one molecule closer than r_max, [2, E] ordered by (dst, src).

    Atoms are binned into r_max cubes; each atom is compared with the atoms of its 27 surrounding cells
    only, a bounded number of candidate pairs at a time, so memory grows with N + E, not N^2.
    """
    device = pos.device
    n = pos.shape[0]
    p = pos.detach()
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    cells = _cell_coordinates(p, r_max)
    dims = cells.max(0).values + 3  # room for the -1 / +1 neighbours
    if int(dims[0]) * int(dims[1]) * int(dims[2]) >= 2**62:
        raise GraphError(f"{n} atoms are too spread out for one cell-list key; split the structure")
    key = ((cells[:, 0] + 1) * dims[1] + (cells[:, 1] + 1)) * dims[2] + (cells[:, 2] + 1)
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    cell_keys, cell_counts = torch.unique_consecutive(sorted_key, return_counts=True)
    cell_starts = torch.cumsum(cell_counts, 0) - cell_counts
    offsets = torch.tensor([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)], device=device)
    shifts = (offsets[:, 0] * dims[1] + offsets[:, 1]) * dims[2] + offsets[:, 2]
    r2 = r_max * r_max
    srcs, dsts, dists = [], [], []
    for shift in shifts.tolist():
        target = key + shift
        slot = torch.searchsorted(cell_keys, target).clamp(max=len(cell_keys) - 1)
        found = cell_keys[slot] == target
        centres = torch.nonzero(found).flatten()
        if centres.numel() == 0:
            continue
        first, count = cell_starts[slot[centres]], cell_counts[slot[centres]]
        total = torch.cumsum(count, 0)
        begin = 0
        while begin < centres.numel():  # bounded chunks of candidate pairs
            done = int(total[begin - 1]) if begin else 0
            end = int(torch.searchsorted(total, done + _CELL_LIST_CHUNK, right=True))
            end = max(end, begin + 1)
            c, f, k = centres[begin:end], first[begin:end], count[begin:end]
            dst = torch.repeat_interleave(c, k)
            local = torch.arange(int(k.sum()), device=device) - torch.repeat_interleave(torch.cumsum(k, 0) - k, k)
            src = order[torch.repeat_interleave(f, k) + local]
            d2 = ((p[src] - p[dst]) ** 2).sum(1)
            keep = (d2 < r2) & (src != dst)
            srcs.append(src[keep])
            dsts.append(dst[keep])
            dists.append(d2[keep])
            begin = end
    if not srcs:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    src, dst = torch.cat(srcs), torch.cat(dsts)
    order = torch.argsort(dst * n + src)
    edge_index = torch.stack([src[order], dst[order]])
    if max_neighbors is not None:
        edge_index = _cap_neighbors(edge_index, torch.cat(dists)[order].sqrt(), max_neighbors)
    return edge_index


def periodic_cell_problem(cell, pbc, n_atoms: int, r_max: float) -> str:
    """Why a periodic cell cannot get a neighbour list ("" if it can): singular, longer than
    MAX_CELL_LENGTH, or so small for the cutoff that the images would give more than MAX_EDGES edges.

    The edge estimate is n^2 * prod over periodic axes of max(2 r_max / h, ...) with h the distance
    between opposite faces: the share of images and atoms within 2 r_max along that axis.
    """
    c = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = np.asarray(pbc, dtype=bool).reshape(3)
    if not periodic.any():
        return ""
    if not np.isfinite(c).all():
        return "the periodic cell is not finite"
    lengths = np.linalg.norm(c, axis=1)
    if (lengths[periodic] > MAX_CELL_LENGTH).any():
        return (
            f"periodic cell vectors of {lengths[periodic].max():.3g} Å exceed {MAX_CELL_LENGTH:.0e} Å; "
            "give a realistic cell, or no cell and pbc=False for an isolated structure"
        )
    volume = abs(np.linalg.det(c))
    if volume < 1e-12 or (lengths[periodic] < 1e-12).any():
        return f"the periodic cell is singular (zero volume): {c.tolist()}; fix the cell"
    heights = volume / np.linalg.norm(np.cross(c[[1, 2, 0]], c[[2, 0, 1]]), axis=1)
    estimate = float(n_atoms) ** 2 * float(np.prod(2.0 * r_max / heights[periodic]))
    if estimate > MAX_EDGES:
        return (
            f"the periodic cell is too small for the cutoff of {r_max:g} Å (face distances "
            f"{', '.join(f'{h:.3g}' for h in heights[periodic])} Å): about {estimate:.2g} edges between "
            "periodic images; check the cell and its units"
        )
    return ""


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
            raise GraphError(f"structure {g} is periodic but its cell is singular: {c.tolist()}")
        problem = periodic_cell_problem(c, b, len(idx), r_max)
        if problem:
            raise GraphError(f"structure {g}: {problem}")
        i, j, s, d = primitive_neighbor_list("ijSd", b, c, p, r_max, self_interaction=False, use_scaled_positions=False)
        keep = d < r_max
        dsts.append(i[keep] + first)
        srcs.append(j[keep] + first)
        offs.append(s[keep])
        dists.append(d[keep])
    if not srcs:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return (
            torch.stack([empty, empty]),
            torch.zeros(0, 3, dtype=torch.long, device=device),
            torch.zeros(0, 3, dtype=dtype, device=device),
        )
    src, dst = np.concatenate(srcs), np.concatenate(dsts)
    off, dist = np.concatenate(offs), np.concatenate(dists)
    order = np.lexsort((off[:, 2], off[:, 1], off[:, 0], src, dst))
    edge_index = torch.from_numpy(np.stack([src[order], dst[order]])).long()
    offsets = torch.from_numpy(off[order]).long()
    if max_neighbors is not None:
        keep = _cap_mask(edge_index, torch.from_numpy(dist[order]), max_neighbors)
        edge_index, offsets = edge_index[:, keep], offsets[keep]
    edge_index, offsets = edge_index.to(device), offsets.to(device)
    shift = torch.einsum(
        "ei,eij->ej", offsets.to(dtype), cell.to(dtype).index_select(0, batch.index_select(0, edge_index[1]))
    )
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


def neighbour_graph(
    pos: torch.Tensor,
    cell: Optional[torch.Tensor],
    pbc: Optional[torch.Tensor],
    batch: torch.Tensor,
    r_max: float,
    max_neighbors: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(edge_index, cell_offsets, edge_shift) within r_max: over periodic images where any `pbc` is set
    (cell [G, 3, 3], pbc [G, 3]), else within each structure (offsets and shifts zero)."""
    if pbc is not None and bool(pbc.any()):
        return periodic_graph(pos, cell, pbc, batch, r_max, max_neighbors)
    edge_index = radius_graph(pos, batch, r_max, max_neighbors)
    offsets = torch.zeros(edge_index.shape[1], 3, dtype=torch.long, device=pos.device)
    shift = torch.zeros(edge_index.shape[1], 3, dtype=pos.dtype, device=pos.device)
    return edge_index, offsets, shift


def attach_graph(batch: dict, r_max: float, max_neighbors: Optional[int] = None) -> dict:
    """Add edge_index, edge_shift and cell_offsets to a collated batch (periodic where any pbc is set)."""
    edge_index, offsets, shift = neighbour_graph(
        batch[keys.POSITIONS], batch.get(keys.CELL), batch.get(keys.PBC), batch[keys.BATCH], r_max, max_neighbors
    )
    out = dict(batch)
    out[keys.EDGE_INDEX], out[keys.CELL_OFFSETS], out[keys.EDGE_SHIFT] = edge_index, offsets, shift
    return out
