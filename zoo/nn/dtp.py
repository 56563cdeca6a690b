"""Depthwise ('uvu') tensor product of node features with edge spherical harmonics."""


import math
from typing import List, Optional, Tuple

import torch
from e3nn import o3

from zoo.nn.cg import reference_wigner_3j
from zoo.nn.constants import ExactConstants
from zoo.nn.irreps import sort_irreps_even_first


class DepthwiseTensorProduct(ExactConstants):
    """out_path[u] = w_path[u] * sqrt(2 l_out + 1) * CG(x[u], Y): one output block per path.

    For every input block, every SH irrep and every l_out in their product that appears in
    `irreps_target` (or is 0e) there is one path with one weight per channel. Output blocks (`irreps_out`)
    are sorted by l, even first; weights are laid out in path-generation order (`weight_numel` of them).
    Weights come per edge (`weight` argument, from a radial MLP) or, with `internal_weights`, from a learned
    vector shared by all edges.

    Computation, on the block layout: one matmul Y @ `op_matrix` gives, per edge and input block, an
    operator [K, 2 l_in + 1] for all paths of that block at once; one batched matmul per input block applies
    it to the block's channels; the result is already in the order of the output blocks of
    `irreps_out.simplify()` (paths of one output irrep side by side), so each output block is a view (or one
    `cat` when several input blocks feed it) times its weights. `forward` takes the per-edge weights in
    output order: `weight_perm` maps it to path order (`w_out = w_path[..., weight_perm]`).
    """

    _groups: List[Tuple[int, int, int]]
    _sections: List[List[int]]
    _outputs: List[List[Tuple[int, int, int, int]]]
    _op_sizes: List[int]
    _out_channels: List[int]

    def __init__(self, irreps_in, irreps_sh, irreps_target, internal_weights: bool = False) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        irreps_target = o3.Irreps(irreps_target)
        raw, paths = [], []  # paths: (input block, sh block, ir_out, weight start)
        w0 = 0
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in irreps_target or ir_out == o3.Irrep("0e"):
                        paths.append((i, j, ir_out, w0))
                        raw.append((mul, ir_out))
                        w0 += mul
        self.irreps_out, _ = sort_irreps_even_first(o3.Irreps(raw))
        self.irreps_out_blocks = self.irreps_out.simplify()
        self.weight_numel = w0
        out_irs = [ir for _, ir in self.irreps_out_blocks]
        sh_starts = []
        start = 0
        for _, ir in self.irreps_sh:
            sh_starts.append(start)
            start += ir.dim

        # per input block (group): its paths by output block, in path order
        self._layout = []  # (input block, d1, [(output block, [paths], k0)])
        groups, sections, op_sizes = [], [], []
        outputs: list[list[tuple[int, int, int, int]]] = [[] for _ in out_irs]
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            mine = [p for p in paths if p[0] == i]
            if not mine:
                continue
            g = len(groups)
            k0, entries, sizes = 0, [], []
            for o, ir_o in enumerate(out_irs):
                sel = [p for p in mine if p[2] == ir_o]
                if not sel:
                    continue
                entries.append((o, sel, k0))
                sizes.append(ir_o.dim * len(sel))
                outputs[o].append((g, len(sizes) - 1, ir_o.dim, len(sel) * mul))
                k0 += ir_o.dim * len(sel)
            self._layout.append((i, ir_in.dim, entries))
            groups.append((i, k0, ir_in.dim))
            sections.append(sizes)
            op_sizes.append(k0 * ir_in.dim)
        self._groups = groups
        self._sections = sections
        self._outputs = outputs
        self._op_sizes = op_sizes
        self._sh_starts = sh_starts
        self._out_channels = [sum(c for _, _, _, c in outs) for outs in outputs]
        # output channel (block by block, path by path, channel) -> weight index in path order
        perm = []
        for o in range(len(out_irs)):
            for i_g, d1, entries in self._layout:
                for oo, sel, _ in entries:
                    if oo == o:
                        for p in sel:
                            perm.extend(range(p[3], p[3] + self.irreps_in[i_g].mul))
        assert sorted(perm) == list(range(w0))
        self.register_buffer("weight_perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.cg_float32 = False
        self.register_constant("op_matrix", self._coefficients(False))
        self.internal_weights = internal_weights
        if internal_weights:
            self.weight = torch.nn.Parameter(torch.randn(w0))
        else:
            self.register_buffer("weight", torch.zeros(0), persistent=False)

    def _coefficients(self, cg_float32: bool) -> torch.Tensor:
        """M [dim_sh, sum over groups of K d1]: column block of group g viewed [K, d1]; row k = (output
        block, component c, path) holds sqrt(2 l3 + 1) CG[a, j, c] of that path in the rows of its SH block."""
        cols = []
        for i, d1, entries in self._layout:
            kdim = sum(len(sel) * self.irreps_out_blocks[o].ir.dim for o, sel, _ in entries)
            m = torch.zeros(self.irreps_sh.dim, kdim, d1, dtype=torch.float64)
            for o, sel, k0 in entries:
                d3 = self.irreps_out_blocks[o].ir.dim
                for q, (_, j, ir_out, _) in enumerate(sel):
                    l1, l2, l3 = self.irreps_in[i].ir.l, self.irreps_sh[j].ir.l, ir_out.l
                    cg = reference_wigner_3j(l1, l2, l3)
                    if cg_float32 and 0 not in (l1, l2, l3):
                        cg = cg.float().double()
                    cg = cg * math.sqrt(2 * l3 + 1)  # [d1, d2, d3]
                    s2, d2 = self._sh_starts[j], self.irreps_sh[j].ir.dim
                    rows = k0 + torch.arange(d3) * len(sel) + q
                    m[s2 : s2 + d2, rows, :] = cg.permute(1, 2, 0)
            cols.append(m.reshape(self.irreps_sh.dim, kdim * d1))
        return torch.cat(cols, dim=1)

    def set_cg_float32(self, enabled: bool) -> None:
        """Use float32-rounded Wigner 3j symbols for paths with l > 0 (reference checkpoints carry those)."""
        self.cg_float32 = enabled
        current = self.op_matrix
        self.register_constant("op_matrix", self._coefficients(enabled))
        self.op_matrix = self.op_matrix.to(device=current.device, dtype=current.dtype)

    def __repr__(self) -> str:
        kind = "internal" if self.internal_weights else "per-edge"
        return f"{self.__class__.__name__}({self.irreps_in} x {self.irreps_sh} -> {self.irreps_out.simplify()}, {kind} weights={self.weight_numel})"

    def output_weights(self) -> List[torch.Tensor]:
        """The internal weights as one [channels] vector per output block (output order)."""
        return torch.split(self.weight.index_select(0, self.weight_perm), self._out_channels)

    def forward(
        self, xs: List[torch.Tensor], sh: torch.Tensor, weight: Optional[torch.Tensor] = None, weighted: bool = True
    ) -> List[torch.Tensor]:
        """Blocks [E, 2l+1, mul] of `irreps_in`, sh [E, dim_sh], weight [E, weight_numel] in output order
        (None with internal weights) -> blocks of `irreps_out.simplify()`. `weighted=False` leaves the
        (internal) weights out, for a following linear map that folds them into its own weights."""
        e = sh.shape[0]
        ws: List[torch.Tensor] = []
        if weighted:
            ws = self.output_weights() if weight is None else torch.split(weight.unsqueeze(1), self._out_channels, dim=2)
        ops = torch.split(sh @ self.op_matrix, self._op_sizes, dim=1)
        parts: List[List[torch.Tensor]] = []
        for g, (i, kdim, d1) in enumerate(self._groups):
            r = torch.bmm(ops[g].view(e, kdim, d1), xs[i])
            parts.append(torch.split(r, self._sections[g], dim=1))
        out: List[torch.Tensor] = []
        for o, sources in enumerate(self._outputs):
            pieces = [parts[g][s].reshape(e, d3, c) for g, s, d3, c in sources]
            y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
            out.append(y * ws[o] if weighted else y)
        return out
