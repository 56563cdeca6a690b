"""Depthwise ('uvu') tensor product of node features with edge spherical harmonics."""


import math
from typing import List, Optional, Tuple

import torch
from e3nn import o3

from zoo.nn.cg import reference_wigner_3j
from zoo.nn.constants import ExactConstants
from zoo.nn.irreps import block_slices, sort_irreps_even_first


class DepthwiseTensorProduct(ExactConstants):
    """out_path[u] = w_path[u] * sqrt(2 l_out + 1) * CG(x[u], Y): one output block per path.

    For every input block, every SH irrep and every l_out in their product that appears in
    `irreps_target` (or is 0e) there is one path with one weight per channel. Output blocks are sorted by
    l, even first; weights are laid out in path-generation order. Weights come per edge (`weight` argument,
    from a radial MLP) or, with `internal_weights`, from a learned vector shared by all edges.
    """

    _paths: List[Tuple[int, int, int, int, int, int, int, int]]

    def __init__(self, irreps_in, irreps_sh, irreps_target, internal_weights: bool = False) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        irreps_target = o3.Irreps(irreps_target)
        raw, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in irreps_target or ir_out == o3.Irrep("0e"):
                        instructions.append((i, j, len(raw)))
                        raw.append((mul, ir_out))
        self.irreps_out, perm = sort_irreps_even_first(o3.Irreps(raw))
        in_slices = block_slices(self.irreps_in)
        sh_slices = block_slices(self.irreps_sh)
        paths = []
        self._path_ls = []
        w0 = cg0 = 0
        for i, j, k in instructions:
            start1, mul, d1 = in_slices[i]
            start2, _, d2 = sh_slices[j]
            l1, l2, l3 = self.irreps_in[i].ir.l, self.irreps_sh[j].ir.l, raw[k][1].l
            d3 = 2 * l3 + 1
            paths.append((perm[k], start1, mul, d1, start2, d2, d3, w0, cg0))
            self._path_ls.append((l1, l2, l3))
            w0 += mul
            cg0 += d1 * d2 * d3
        paths.sort()
        self._paths = [p[1:] for p in paths]
        self.weight_numel = w0
        self.cg_float32 = False
        self.register_constant("cg", self._coefficients(False))
        self.internal_weights = internal_weights
        self.weight = torch.nn.Parameter(torch.randn(w0) if internal_weights else torch.zeros(0))

    def _coefficients(self, cg_float32: bool) -> torch.Tensor:
        # per path, sqrt(2 l3 + 1) * CG stored as [d2, d1 * d3], so that Y @ cg is the per-edge [d1, d3] operator
        cgs = []
        for l1, l2, l3 in self._path_ls:
            cg = reference_wigner_3j(l1, l2, l3)
            if cg_float32 and 0 not in (l1, l2, l3):
                cg = cg.float().double()
            cgs.append((cg * math.sqrt(2 * l3 + 1)).permute(1, 0, 2).reshape(-1))
        return torch.cat(cgs)

    def set_cg_float32(self, enabled: bool) -> None:
        """Use float32-rounded Wigner 3j symbols for paths with l > 0 (reference checkpoints carry those)."""
        self.cg_float32 = enabled
        current = self.cg
        self.register_constant("cg", self._coefficients(enabled))
        self.cg = self.cg.to(device=current.device, dtype=current.dtype)

    def __repr__(self) -> str:
        kind = "internal" if self.internal_weights else "per-edge"
        return f"{self.__class__.__name__}({self.irreps_in} x {self.irreps_sh} -> {self.irreps_out.simplify()}, {kind} weights={self.weight_numel})"

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        e = x.shape[0]
        if weight is None:
            w = self.weight.unsqueeze(0)
        else:
            w = weight
        outs: List[torch.Tensor] = []
        for start1, mul, d1, start2, d2, d3, w0, cg0 in self._paths:
            xs = x[:, start1 : start1 + mul * d1].reshape(e, mul, d1)
            ys = sh[:, start2 : start2 + d2]
            op = (ys @ self.cg[cg0 : cg0 + d1 * d2 * d3].view(d2, d1 * d3)).view(e, d1, d3)
            out = torch.matmul(xs, op) * w[:, w0 : w0 + mul].unsqueeze(-1)
            outs.append(out.reshape(e, mul * d3))
        return torch.cat(outs, dim=1)
