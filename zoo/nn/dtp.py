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

    _groups: List[Tuple[int, int, int, int, int, int]]
    _outputs: List[Tuple[int, int, int, int]]

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
        self._sh_slices = block_slices(self.irreps_sh)
        # Paths that share an input block are computed together: Y @ M gives, per edge, one [d1, K]
        # operator for all their outputs (K = sum of their 2 l_out + 1), applied with one batched matmul.
        self._layout = []  # per group: (input block, [(path l's, sh block, k0, d3, w0, sorted position)])
        groups, outputs, widx = [], [], []
        w0 = col0 = 0
        for i, (mul, _) in enumerate(self.irreps_in):
            members = [(j, k) for (ii, j, k) in instructions if ii == i]
            if not members:
                continue
            start1, _, d1 = in_slices[i]
            k0, entries = 0, []
            for j, k in members:
                l3 = raw[k][1].l
                d3 = 2 * l3 + 1
                entries.append(((self.irreps_in[i].ir.l, self.irreps_sh[j].ir.l, l3), j, k0, d3, w0, perm[k]))
                k0 += d3
                w0 += mul
            kdim = k0
            index = torch.empty(mul, kdim, dtype=torch.long)
            for _, _, kk, d3, pw0, _ in entries:
                index[:, kk : kk + d3] = (pw0 + torch.arange(mul)).unsqueeze(1)
            groups.append((start1, mul, d1, kdim, col0, len(widx)))
            widx.extend(index.reshape(-1).tolist())
            for _, _, kk, d3, _, pos in entries:
                outputs.append((pos, len(groups) - 1, kk, d3, mul))
            self._layout.append((d1, kdim, col0, entries))
            col0 += d1 * kdim
        outputs.sort()
        self._groups = groups
        self._outputs = [o[1:] for o in outputs]
        self._op_columns = col0
        self.weight_numel = w0
        self.cg_float32 = False
        self.register_constant("op_matrix", self._coefficients(False))
        self.register_buffer("weight_index", torch.tensor(widx, dtype=torch.long), persistent=False)
        self.internal_weights = internal_weights
        if internal_weights:
            self.weight = torch.nn.Parameter(torch.randn(w0))
        else:
            self.register_buffer("weight", torch.zeros(0), persistent=False)

    def _coefficients(self, cg_float32: bool) -> torch.Tensor:
        """M [dim_sh, columns]: M[sh_j component, (i, k) of a group] = sqrt(2 l3 + 1) * CG[i, j, k]."""
        m = torch.zeros(self.irreps_sh.dim, self._op_columns, dtype=torch.float64)
        for d1, kdim, col0, entries in self._layout:
            for (l1, l2, l3), j, k0, d3, _, _ in entries:
                cg = reference_wigner_3j(l1, l2, l3)
                if cg_float32 and 0 not in (l1, l2, l3):
                    cg = cg.float().double()
                cg = cg * math.sqrt(2 * l3 + 1)  # [d1, d2, d3]
                start2, _, d2 = self._sh_slices[j]
                block = m[start2 : start2 + d2, col0 : col0 + d1 * kdim].view(d2, d1, kdim)
                block[:, :, k0 : k0 + d3] = cg.permute(1, 0, 2)
        return m

    def set_cg_float32(self, enabled: bool) -> None:
        """Use float32-rounded Wigner 3j symbols for paths with l > 0 (reference checkpoints carry those)."""
        self.cg_float32 = enabled
        current = self.op_matrix
        self.register_constant("op_matrix", self._coefficients(enabled))
        self.op_matrix = self.op_matrix.to(device=current.device, dtype=current.dtype)

    def __repr__(self) -> str:
        kind = "internal" if self.internal_weights else "per-edge"
        return f"{self.__class__.__name__}({self.irreps_in} x {self.irreps_sh} -> {self.irreps_out.simplify()}, {kind} weights={self.weight_numel})"

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        e = x.shape[0]
        w = self.weight.unsqueeze(0) if weight is None else weight
        ops = sh @ self.op_matrix
        results: List[torch.Tensor] = []
        for start1, mul, d1, kdim, col0, w_start in self._groups:
            xs = x[:, start1 : start1 + mul * d1].reshape(e, mul, d1)
            op = ops[:, col0 : col0 + d1 * kdim].reshape(e, d1, kdim)
            r = xs * op if d1 == 1 else torch.bmm(xs, op)
            weights = w.index_select(1, self.weight_index[w_start : w_start + mul * kdim]).view(w.shape[0], mul, kdim)
            results.append(r * weights)
        return torch.cat([results[g][:, :, k0 : k0 + d3].reshape(e, mul * d3) for g, k0, d3, mul in self._outputs], dim=1)
