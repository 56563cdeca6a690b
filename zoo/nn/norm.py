"""Equivariant layer norm (the reference's `EquivariantLayerNormV2`)."""


from typing import List, Tuple

import torch
from e3nn import o3


class EquivariantLayerNorm(torch.nn.Module):
    """Per node and per irrep block: centre the 0e channels, divide by one RMS shared by all channels of
    the block ('component' normalisation, eps 1e-5), scale per channel, add a bias on 0e channels.
    Always computed in at least float32 (the reference disables autocast here)."""

    _blocks: List[Tuple[int, int, int, bool, int, int]]

    def __init__(self, irreps, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.irreps_in = self.irreps_out = self.irreps
        self.eps = eps
        blocks = []
        start = iw = ib = 0
        for mul, ir in self.irreps:
            scalar = ir.l == 0 and ir.p == 1
            blocks.append((start, mul, ir.dim, scalar, iw, ib))
            start += mul * ir.dim
            iw += mul
            ib += mul if scalar else 0
        self._blocks = blocks
        self.affine_weight = torch.nn.Parameter(torch.ones(iw))
        self.affine_bias = torch.nn.Parameter(torch.zeros(ib))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps}, eps={self.eps})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        fields: List[torch.Tensor] = []
        for start, mul, d, scalar, iw, ib in self._blocks:
            f = x[:, start : start + mul * d].reshape(-1, mul, d)
            if scalar:
                f = f - f.mean(dim=1, keepdim=True)
            norm = f.pow(2).mean(-1).mean(dim=1, keepdim=True)
            norm = (norm + self.eps).pow(-0.5) * self.affine_weight[iw : iw + mul].unsqueeze(0)
            f = f * norm.unsqueeze(-1)
            if scalar:
                f = f + self.affine_bias[ib : ib + mul].view(mul, 1)
            fields.append(f.reshape(-1, mul * d))
        return torch.cat(fields, dim=-1).to(dtype)
