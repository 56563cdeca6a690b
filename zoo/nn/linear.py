"""Equivariant linear map between irreps (the reference's `LinearRS`)."""


import math
from typing import List, Tuple

import torch
from e3nn import o3

from zoo.nn.irreps import block_slices


class IrrepsLinear(torch.nn.Module):
    """Per-irrep-type matrix multiply, with a bias on the even scalars.

    Weights are one flat vector in e3nn's `TensorProduct` instruction order (one [mul_in, mul_out] matrix
    per pair of input and output blocks of the same irrep), initialised N(0, 1/fan_in) and used without a
    runtime normalisation factor, exactly as the reference's `LinearRS` (an e3nn TensorProduct with a
    constant 1x0e second input and `path_normalization='none'`). The bias sits on the 0e blocks of the
    simplified output irreps.
    """

    _segments: List[Tuple[int, int, int, int, int, int]]
    _blocks: List[Tuple[int, int]]

    def __init__(self, irreps_in, irreps_out, bias: bool = True) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        in_slices = block_slices(self.irreps_in)
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

        # merge instructions into one matmul where the input rows and weights are contiguous
        segments: list[list[int]] = []  # [in_start, mul_in, dim, w_start, mul_out, i_out]
        for i_in, i_out, w0 in sorted(instructions, key=lambda t: (t[1], t[0])):
            start, mul_in, dim = in_slices[i_in]
            mul_out = self.irreps_out[i_out].mul
            last = segments[-1] if segments else None
            if (
                last is not None
                and last[5] == i_out
                and last[0] + last[1] * dim == start
                and last[3] + last[1] * mul_out == w0
            ):
                last[1] += mul_in
            else:
                segments.append([start, mul_in, dim, w0, mul_out, i_out])
        self._segments = [tuple(s) for s in segments]
        self._blocks = [(mul, ir.dim) for mul, ir in self.irreps_out]

        bias_positions: list[int] = []
        start = 0
        for mul, ir in self.irreps_out.simplify():
            if ir.l == 0 and ir.p == 1:
                bias_positions.extend(range(start, start + mul))
            start += mul * ir.dim
        self.use_bias = bias and len(bias_positions) > 0
        if self.use_bias:
            self.bias = torch.nn.Parameter(torch.zeros(len(bias_positions)))
        else:
            self.register_buffer("bias", torch.zeros(0), persistent=False)
        self.register_buffer("bias_index", torch.tensor(bias_positions if self.use_bias else [], dtype=torch.long), persistent=False)
        self.dim_out = self.irreps_out.dim

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out}, bias={self.use_bias}, weights={self.weight.numel()})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        outs: List[torch.Tensor] = []
        acc: List[torch.Tensor] = []
        for i_out, (mul_out, dim) in enumerate(self._blocks):
            y = torch.zeros(0)
            found = False
            for in_start, mul_in, d, w0, m_out, seg_out in self._segments:
                if seg_out != i_out:
                    continue
                w = self.weight[w0 : w0 + mul_in * m_out].view(mul_in, m_out)
                xs = x[:, in_start : in_start + mul_in * d]
                if d == 1:
                    part = xs @ w
                else:
                    part = torch.matmul(xs.reshape(n, mul_in, d).transpose(1, 2), w).transpose(1, 2).reshape(n, m_out * d)
                y = part if not found else y + part
                found = True
            if not found:
                y = x.new_zeros(n, mul_out * dim)
            outs.append(y)
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        if self.use_bias:
            full = self.bias.new_zeros(self.dim_out).index_copy(0, self.bias_index, self.bias)
            out = out + full
        return out
