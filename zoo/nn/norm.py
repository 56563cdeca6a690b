"""Equivariant layer norm (the reference's `EquivariantLayerNormV2`)."""

from typing import List

import torch
from e3nn import o3

from zoo.nn.constants import ExactConstants


class EquivariantLayerNorm(ExactConstants):
    """Per node and per irrep block: centre the 0e channels, divide by one RMS shared by all channels of
    the block ('component' normalisation, eps 1e-5), scale per channel, add a bias on 0e channels.
    Always computed in at least float32 (the reference disables autocast here).

    Block layout: a 0e block [N, 1, mul] is exactly `layer_norm` over its channels; any other block
    [N, 2l+1, mul] is scaled by rsqrt(|x|^2 / ((2l+1) mul) + eps). Weights: `affine_weight` [sum of muls],
    `affine_bias` [muls of the 0e blocks], in block order.
    """

    _muls: List[int]
    _scalar_muls: List[int]
    _scalar: List[bool]

    def __init__(self, irreps, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.irreps_in = self.irreps_out = self.irreps
        self.eps = eps
        self._muls = [mul for mul, _ in self.irreps]
        self._scalar = [ir.l == 0 and ir.p == 1 for _, ir in self.irreps]
        self._scalar_muls = [mul for mul, ir in self.irreps if ir.l == 0 and ir.p == 1]
        self.affine_weight = torch.nn.Parameter(torch.ones(sum(self._muls)))
        self.affine_bias = torch.nn.Parameter(torch.zeros(sum(self._scalar_muls)))
        self.register_constant("eps_cst", torch.tensor(eps, dtype=torch.float64))
        self.register_constant(
            "inv_size", torch.tensor([1.0 / (mul * ir.dim) for mul, ir in self.irreps], dtype=torch.float64)
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps}, eps={self.eps})"

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        dtype = xs[0].dtype
        low = dtype in (torch.float16, torch.bfloat16)
        weights = torch.split(self.affine_weight, self._muls)
        biases = torch.split(self.affine_bias, self._scalar_muls)
        inv_size = self.inv_size.unbind(0)
        out: List[torch.Tensor] = []
        ib = 0
        for i, x in enumerate(xs):
            if low:
                x = x.float()
            if self._scalar[i]:
                y = torch.nn.functional.layer_norm(x, [self._muls[i]], weights[i], biases[ib], self.eps)
                ib += 1
            else:
                square = (x * x).sum(dim=(1, 2), keepdim=True)
                y = x * (torch.rsqrt(square * inv_size[i] + self.eps_cst) * weights[i])
            out.append(y.to(dtype) if low else y)
        return out
