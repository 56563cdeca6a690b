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
    operator [K, 2 l_in + 1] for all paths of that block at once; one batched matmul per non-scalar input
    block applies it to the block's channels. Its rows come grouped by output block (paths of one output
    irrep side by side), so the piece an input block gives an output block is a view, weighted in one
    multiply; the pieces go to the following linear map unconcatenated. A scalar input block's piece of a
    non-scalar output block is an outer product (operator [2 l_out + 1, paths] times channels): it is
    *deferred*, handed to the linear map un-expanded with its operator, which mixes the channels first and
    expands after, (2 l_out + 1) times fewer multiplications. `forward` takes the per-edge weights in output
    order: `weight_perm` maps it to path order (`w_out = w_path[..., weight_perm]`).

    `scalar_inputs_only` keeps only the paths of the first (0e) input block, for inputs whose other blocks
    are known to be zero (the edge-degree embedding): their pieces are the first channels of each output
    block, `weight_perm` selects only their weights, and the linear map that follows treats the missing
    channels as zero.
    """

    _groups: List[Tuple[int, int, int]]
    _op_sizes: List[int]
    _group_splits: List[List[int]]
    _group_outs: List[List[int]]
    _pieces: List[List[Tuple[int, int, int, int, int, int]]]
    _piece_sizes: List[int]
    _out_channels: List[int]
    deferred: List[int]

    def __init__(
        self, irreps_in, irreps_sh, irreps_target, internal_weights: bool = False, scalar_inputs_only: bool = False
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        irreps_target = o3.Irreps(irreps_target)
        raw, paths, w0 = _tp_paths(self.irreps_in, self.irreps_sh, irreps_target)
        self.irreps_out, _ = sort_irreps_even_first(o3.Irreps(raw))
        self.irreps_out_blocks = self.irreps_out.simplify()
        self.weight_numel = w0
        out_irs = [ir for _, ir in self.irreps_out_blocks]
        self._layout, rows = _group_layout(
            self.irreps_in, paths, out_irs
        )  # (input block, d1, [(output block, [paths], k0)])
        self.scalar_inputs_only = scalar_inputs_only
        if scalar_inputs_only:
            if self.irreps_in[0].ir != o3.Irrep("0e"):
                raise ValueError(f"scalar_inputs_only needs a first 0e input block, got {self.irreps_in}")
            self._layout, rows = self._layout[:1], rows[:1]
        self._groups = [(i, k, d1) for (i, d1, _), k in zip(self._layout, rows)]
        self._op_sizes = [k * d1 for _, k, d1 in self._groups]
        self._sh_starts = [sum(ir.dim for _, ir in self.irreps_sh[:j]) for j in range(len(self.irreps_sh))]
        # per output block, its pieces (one per input block feeding it), in output-channel order:
        # (its position q in group order, input block, d1, d3, paths, mul)
        self._pieces = [[] for _ in out_irs]
        q = 0
        for i, d1, entries in self._layout:
            for o, sel, _ in entries:
                self._pieces[o].append((q, i, d1, out_irs[o].dim, len(sel), self.irreps_in[i].mul))
                q += 1
        # per group, how its result splits into pieces ((2 l_out + 1) paths each): operator columns (scalar
        # input block) or rows of the product (other blocks)
        self._group_splits = [[out_irs[o].dim * len(sel) for o, sel, _ in entries] for _, _, entries in self._layout]
        self._group_outs = [[o for o, _, _ in entries] for _, _, entries in self._layout]  # increasing
        self._piece_sizes = [p * mul for pieces in self._pieces for *_, p, mul in pieces]
        self._out_channels = [sum(p * mul for *_, p, mul in pieces) for pieces in self._pieces]
        # per output block: the position of its deferred piece (scalar input, non-scalar output) or -1
        self.deferred = [
            next((k for k, (_, _, d1, d3, _, _) in enumerate(pieces) if d1 == 1 and d3 > 1), -1)
            for pieces in self._pieces
        ]
        # output channel (block by block, path by path, channel) -> weight index in path order
        perm = _weight_permutation(self._layout, self.irreps_in, len(out_irs))
        assert sorted(perm) == list(range(w0 if not scalar_inputs_only else len(perm)))
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
        only = ", scalar inputs only" if self.scalar_inputs_only else ""
        return f"{self.__class__.__name__}({self.irreps_in} x {self.irreps_sh} -> {self.irreps_out.simplify()}, {kind} weights={self.weight_numel}{only})"

    def output_weights(self) -> List[torch.Tensor]:
        """The internal weights as one [channels] vector per output block (output order)."""
        return torch.split(self.weight.index_select(0, self.weight_perm), self._out_channels)

    def forward(
        self, xs: List[torch.Tensor], sh: torch.Tensor, weight: Optional[torch.Tensor] = None, num_out: int = -1
    ) -> Tuple[List[List[torch.Tensor]], List[torch.Tensor]]:
        """Blocks [E, 2l+1, mul] of `irreps_in`, sh [E, dim_sh], per-edge weights [E, len(weight_perm)]
        in output order -> (pieces, operators). `pieces[o]`: block o of `irreps_out.simplify()` as its
        pieces [E (2l+1), paths * mul] (one per input block feeding it, channels in order), except the
        deferred piece `deferred[o]`, given as [E, paths * mul] with its operator `operators[o]`
        [E, 2l+1, paths] (an empty tensor where the block has none); for `IrrepsLinear.forward_pieces`.
        Without `weight` the pieces are unweighted: the internal weights (`output_weights`) go to the
        linear map's rows instead. A scalar input block needs no contraction (operator rows times
        channels); each other input block takes one batched matmul for all its pieces. With `num_out` not
        negative only the first `num_out` output blocks are made."""
        e = sh.shape[0]
        # per piece, in group order: its operator [E, (2l+1) paths] (scalar input block) or its product
        # [E, (2l+1) paths, mul] (one batched matmul per other input block, split by rows)
        flat: List[torch.Tensor] = []
        none = sh.new_empty(0)
        for g, op in enumerate(torch.split(sh @ self.op_matrix, self._op_sizes, dim=1)):
            i, k, d1 = self._groups[g]
            splits = self._group_splits[g]
            if d1 == 1:
                flat.extend(torch.split(op, splits, dim=1))
                continue
            # only the rows of the output blocks made (the group's first `keep` pieces)
            keep = len(splits)
            if num_out >= 0:
                keep = 0
                for o in self._group_outs[g]:
                    if o < num_out:
                        keep += 1
            if keep > 0:
                rows = sum(splits[:keep])
                product = torch.bmm(op.view(e, k, d1)[:, :rows] if rows < k else op.view(e, k, d1), xs[i])
                flat.extend(torch.split(product, splits[:keep], dim=1))
            flat.extend([none] * (len(splits) - keep))
        ws: List[torch.Tensor] = []
        if weight is not None:
            ws = torch.split(weight, self._piece_sizes, dim=1)
        out: List[List[torch.Tensor]] = []
        operators: List[torch.Tensor] = []
        j = 0
        for o, pieces in enumerate(self._pieces):
            if o == num_out:
                break
            row: List[torch.Tensor] = []
            operator = none
            for k, (q, i, d1, d3, p, mul) in enumerate(pieces):
                if d1 == 1:
                    x = xs[i].view(e, 1, mul)
                    if weight is not None:
                        x = x * ws[j].view(e, p, mul)
                    if k == self.deferred[o]:
                        operator = flat[q].view(e, d3, p)
                        a = x if weight is not None or p == 1 else x.expand(e, p, mul)
                    else:
                        a = flat[q].view(e, d3, p, 1) * x.view(e, 1, x.shape[1], mul)
                else:
                    a = flat[q]
                    if weight is not None:
                        a = a.view(e, d3, p, mul) * ws[j].view(e, 1, p, mul)
                rows = e * d3 if k != self.deferred[o] else e
                row.append(a.view(rows, p * mul) if a.is_contiguous() else a.reshape(rows, p * mul))
                j += 1
            out.append(row)
            operators.append(operator)
        return out, operators


def _tp_paths(irreps_in, irreps_sh, irreps_target) -> tuple:
    """The tensor-product paths kept (output in `irreps_target`, or a scalar), in path order: (raw output irreps
    [(mul, ir)], paths [(input block, sh block, ir_out, weight start)], number of weights)."""
    raw, paths = [], []
    w0 = 0
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in irreps_target or ir_out == o3.Irrep("0e"):
                    paths.append((i, j, ir_out, w0))
                    raw.append((mul, ir_out))
                    w0 += mul
    return raw, paths, w0


def _group_layout(irreps_in, paths: list, out_irs: list) -> tuple:
    """Per input block with paths (a group): (input block, its dim d1, [(output block, its paths in path order,
    first row k0 in the group's column block)]), and the number of rows K of each group."""
    layout, rows = [], []
    for i, (_, ir_in) in enumerate(irreps_in):
        mine = [p for p in paths if p[0] == i]
        if not mine:
            continue
        k0, entries = 0, []
        for o, ir_o in enumerate(out_irs):
            sel = [p for p in mine if p[2] == ir_o]
            if not sel:
                continue
            entries.append((o, sel, k0))
            k0 += ir_o.dim * len(sel)
        layout.append((i, ir_in.dim, entries))
        rows.append(k0)
    return layout, rows


def _weight_permutation(layout: list, irreps_in, n_out: int) -> list:
    """Output channel (block by block, path by path, channel) -> weight index in path order."""
    perm = []
    for o in range(n_out):
        for i_g, _, entries in layout:
            for oo, sel, _ in entries:
                if oo == o:
                    for p in sel:
                        perm.extend(range(p[3], p[3] + irreps_in[i_g].mul))
    return perm
