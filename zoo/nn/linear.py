"""Equivariant linear map between irreps (the reference's `LinearRS`)."""

import math
from typing import List, Optional, Tuple

import torch
from e3nn import o3

from zoo.nn.irreps import block_shapes


class IrrepsLinear(torch.nn.Module):
    """Per-irrep-type matrix multiply, with a bias on the even scalars.

    Weights are one flat vector in e3nn's `TensorProduct` instruction order (one [mul_in, mul_out] matrix
    per pair of input and output blocks of the same irrep), initialised N(0, 1/fan_in) and used without a
    runtime normalisation factor, exactly as the reference's `LinearRS` (an e3nn TensorProduct with a
    constant 1x0e second input and `path_normalization='none'`). The bias sits on the 0e blocks of the
    output irreps (in order). Works on the block layout: one matmul per instruction, on a view of the
    weight, no copies; the products of an output block accumulate in place (`addmm_`).
    """

    _sizes: List[int]
    _plan: List[List[Tuple[int, int, int, int]]]
    _out_shapes: List[Tuple[int, int]]
    _bias_sizes: List[int]
    _bias_piece: List[int]

    def __init__(self, irreps_in, irreps_out, bias: bool = True) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        instructions = []  # (i_in, i_out, weight_start)
        numel = 0
        for i_in, (mul_in, ir_in) in enumerate(self.irreps_in):
            for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
                if ir_in == ir_out:
                    instructions.append((i_in, i_out, numel))
                    numel += mul_in * mul_out
        fan_in = [0] * len(self.irreps_out)
        for i_in, i_out, _ in instructions:
            fan_in[i_out] += self.irreps_in[i_in].mul
        weight = torch.randn(numel)
        for i_in, i_out, w0 in instructions:
            n = self.irreps_in[i_in].mul * self.irreps_out[i_out].mul
            weight[w0 : w0 + n] /= math.sqrt(fan_in[i_out])
        self.weight = torch.nn.Parameter(weight)

        # per output block: the instructions feeding it, as (input block, weight piece, mul_in, mul_out)
        self._sizes = [self.irreps_in[i_in].mul * self.irreps_out[i_out].mul for i_in, i_out, _ in instructions]
        self._plan = [
            [
                (i_in, k, self.irreps_in[i_in].mul, mul_out)
                for k, (i_in, i_out, _) in enumerate(instructions)
                if i_out == o
            ]
            for o, (mul_out, _) in enumerate(self.irreps_out)
        ]
        self._out_shapes = block_shapes(self.irreps_out)

        scalar_blocks = [mul for mul, ir in self.irreps_out if ir.l == 0 and ir.p == 1]
        self.use_bias = bias and sum(scalar_blocks) > 0
        if self.use_bias:
            self.bias = torch.nn.Parameter(torch.zeros(sum(scalar_blocks)))
        else:
            self.register_buffer("bias", torch.zeros(0), persistent=False)
        # per output block: which piece of the bias it gets (-1: none); the bias follows the 0e blocks in order
        self._bias_sizes = scalar_blocks if self.use_bias else []
        piece = 0
        self._bias_piece = []
        for _, ir in self.irreps_out:
            if self.use_bias and ir.l == 0 and ir.p == 1:
                self._bias_piece.append(piece)
                piece += 1
            else:
                self._bias_piece.append(-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out}, bias={self.use_bias}, weights={self.weight.numel()})"

    def forward(self, xs: List[torch.Tensor], num_out: int = -1) -> List[torch.Tensor]:
        """Blocks [N, dim, mul_in] of `irreps_in` -> blocks [N, dim, mul_out] of `irreps_out` (only the first
        `num_out` of them if it is not negative; input blocks they do not read may be left out)."""
        n = xs[0].shape[0]
        return self.forward_pieces([[x.reshape(n * x.shape[1], x.shape[2])] for x in xs], n, num_out=num_out)

    def forward_one_hot(self, index: torch.Tensor, dtype: torch.dtype) -> List[torch.Tensor]:
        """`forward` of one-hot rows (a single input block `mul x 0e`, `index` [N] of the hot channels): the
        weight rows picked out, no one-hot tensor and no matmul."""
        n = index.shape[0]
        ws = torch.split(self.weight, self._sizes)
        bs = torch.split(self.bias, self._bias_sizes) if self.use_bias else []
        outs: List[torch.Tensor] = []
        for o, plan in enumerate(self._plan):
            d, mul = self._out_shapes[o]
            if len(plan) == 0:
                y = torch.zeros(n, d, mul, dtype=dtype, device=index.device)
            else:
                _, k, mul_in, mul_out = plan[0]
                y = ws[k].view(mul_in, mul_out).index_select(0, index).view(n, 1, mul_out)
            piece = self._bias_piece[o]
            if piece >= 0:
                y = y + bs[piece]
            outs.append(y)
        return outs

    def forward_pieces(
        self,
        parts: List[List[torch.Tensor]],
        n: int,
        row_scale: Optional[List[torch.Tensor]] = None,
        operators: Optional[List[torch.Tensor]] = None,
        deferred: Optional[List[int]] = None,
        num_out: int = -1,
    ) -> List[torch.Tensor]:
        """Like `forward` for N = `n`, with input block i given as pieces [N dim, c_j] whose channels, in
        order, make up the block (channels past the last piece are zero): each piece meets its own rows
        of the weight, never concatenated. `row_scale[i]` [mul_in], if given, scales input block i's
        channels, applied to the weight's rows. With `operators` and `deferred` (from
        `DepthwiseTensorProduct.forward`), piece `deferred[i]` of block i is [N, paths * c] and stands for
        operators[i] [N, dim, paths] times it: its channels are mixed first, then expanded. `num_out` as
        in `forward`."""
        ws = torch.split(self.weight, self._sizes)
        bs = torch.split(self.bias, self._bias_sizes) if self.use_bias else []
        outs: List[torch.Tensor] = []
        for o, plan in enumerate(self._plan):
            if o == num_out:
                break
            d, mul = self._out_shapes[o]
            y: Optional[torch.Tensor] = None
            late_part: Optional[torch.Tensor] = None
            for i_in, k, mul_in, mul_out in plan:
                w = ws[k].view(mul_in, mul_out)
                if row_scale is not None:
                    w = w * row_scale[i_in].unsqueeze(1)
                ps = parts[i_in]
                widths = [p.shape[1] for p in ps]
                if sum(widths) < mul_in:
                    w = w[: sum(widths)]
                w_rows = [w] if len(ps) == 1 else torch.split(w, widths)
                late = -1 if deferred is None else deferred[i_in]
                for j, (p, wp) in enumerate(zip(ps, w_rows)):
                    if j == late and operators is not None:
                        c = _expand(operators[i_in], p, wp)
                        late_part = c if late_part is None else late_part + c
                    elif y is None:
                        y = torch.mm(p, wp)
                    elif p.dtype == y.dtype and wp.dtype == y.dtype:
                        y.addmm_(p, wp)
                    else:  # autocast casts for mm, not for the in-place addmm_: the first product's dtype
                        y.addmm_(p.to(y.dtype), wp.to(y.dtype))
            if y is None:
                y = late_part if late_part is not None else parts[0][0].new_zeros(n * d, mul)
            elif late_part is not None:
                y = y + late_part
            piece = self._bias_piece[o]
            if piece >= 0:
                y = y + bs[piece]  # out of place: under autocast the float32 bias promotes, as for any add
            outs.append(y.view(n, d, mul))
        return outs


def _expand(operator: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_p operator[:, :, p] (x_p @ w_p) as [N dim, mul_out], for x [N, paths c], w [paths c, mul_out]."""
    n, d, paths, m = operator.shape[0], operator.shape[1], operator.shape[2], w.shape[1]
    if paths == 1:
        return (operator.view(n, d, 1) * torch.mm(x, w).view(n, 1, m)).view(n * d, m)
    c = x.shape[1] // paths
    z = torch.bmm(x.view(n, paths, c).transpose(0, 1), w.view(paths, c, m))
    return torch.bmm(operator, z.transpose(0, 1)).view(n * d, m)
