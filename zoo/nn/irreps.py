"""Irreps bookkeeping shared by the blocks (the reference's sorting and gate-splitting rules) and the
block layout of features.

Features travel through the network as a list of blocks, one per irrep block of their irreps, each a
tensor [N, 2l+1, mul] (components, then channels): equivariant linear maps are one matmul per block and
element-wise operations never slice or concatenate. e3nn's flat layout [N, sum mul*(2l+1)] (channel-major
within a block) is only used at the boundaries (`flat_to_blocks`, `blocks_to_flat`).
"""

from typing import List, Tuple

import torch
from e3nn import o3


def sort_irreps_even_first(irreps: o3.Irreps) -> tuple[o3.Irreps, tuple[int, ...]]:
    """Sort blocks by (l, even before odd, original position); return the sorted irreps and `p`,
    where p[i] is the new position of block i (the reference's `sort_irreps_even_first`)."""
    order = sorted(range(len(irreps)), key=lambda i: (irreps[i].ir.l, -irreps[i].ir.p, i))
    p = [0] * len(order)
    for new, old in enumerate(order):
        p[old] = new
    return o3.Irreps([irreps[i] for i in order]), tuple(p)


def sort_irreps_e3nn(irreps: o3.Irreps) -> o3.Irreps:
    """e3nn's `Irreps.sort()` order: by (l, p) with odd before even (used by dot-product attention)."""
    return o3.Irreps([irreps[i] for i in sorted(range(len(irreps)), key=lambda i: (irreps[i].ir, i))])


def split_gate(irreps: o3.Irreps) -> tuple[o3.Irreps, o3.Irreps, o3.Irreps]:
    """Split output irreps into (scalars 0e, gates 0e, gated non-0e) as the reference's `irreps2gate`."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0 and ir.p == 1]).simplify()
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps if not (ir.l == 0 and ir.p == 1)]).simplify()
    gates = o3.Irreps([(mul, "0e") for mul, _ in gated]).simplify()
    return scalars, gates, gated


def num_even_scalars(irreps: o3.Irreps) -> int:
    return sum(mul for mul, ir in irreps if ir.l == 0 and ir.p == 1)


def block_slices(irreps: o3.Irreps) -> list[tuple[int, int, int]]:
    """(start, mul, dim) of every block in the flat layout."""
    out, start = [], 0
    for mul, ir in irreps:
        out.append((start, mul, ir.dim))
        start += mul * ir.dim
    return out


def block_shapes(irreps: o3.Irreps) -> list[tuple[int, int]]:
    """(dim, mul) of every block: the shape [N, dim, mul] it has in the block layout."""
    return [(ir.dim, mul) for mul, ir in irreps]


def flat_to_blocks(x: torch.Tensor, shapes: List[Tuple[int, int]]) -> List[torch.Tensor]:
    """e3nn's flat layout [N, sum mul*dim] (channel-major blocks) -> blocks [N, dim, mul] (views)."""
    out: List[torch.Tensor] = []
    start = 0
    for d, mul in shapes:
        out.append(x[:, start : start + mul * d].reshape(x.shape[0], mul, d).transpose(1, 2))
        start += mul * d
    return out


def blocks_to_flat(xs: List[torch.Tensor]) -> torch.Tensor:
    """Blocks [N, dim, mul] -> e3nn's flat layout [N, sum mul*dim] (one copy, at the network's boundary)."""
    return torch.cat([x.transpose(1, 2).reshape(x.shape[0], -1) for x in xs], dim=1)
