"""Normalised activations and the equivariant gate."""

from typing import List

import torch
from e3nn import o3

from zoo.nn.cg import SIGMOID_NORM, SILU_NORM, SMOOTH_LEAKY_RELU_02_NORM
from zoo.nn.constants import ExactConstants


class SmoothLeakyReLU(ExactConstants):
    """f(x) = (1+a)/2 x + (1-a)/2 x (2 sigmoid(x) - 1) = x (a + (1-a) sigmoid(x)), a smooth leaky ReLU (the
    reference's attention non-linearity), times its second-moment normalisation constant."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        if negative_slope != 0.2:
            raise ValueError("only negative_slope=0.2 (the published setting) has a recorded normalisation constant")
        self.alpha = negative_slope
        self.cst = SMOOTH_LEAKY_RELU_02_NORM
        self.register_constant("offset", torch.tensor(negative_slope * self.cst, dtype=torch.float64))
        self.register_constant("slope", torch.tensor((1 - negative_slope) * self.cst, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"negative_slope={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.addcmul(self.offset, self.slope, torch.sigmoid(x))


class ScalarActivation(ExactConstants):
    """SiLU on scalar features, normalised to unit second moment (e3nn `Activation` with one act)."""

    def __init__(self, irreps) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps)
        self.irreps_out = self.irreps_in
        if any(ir.l != 0 or ir.p != 1 for _, ir in self.irreps_in):
            raise ValueError(f"ScalarActivation takes even scalars only, got {self.irreps_in}")
        self.register_constant("cst", torch.tensor(SILU_NORM, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in}, silu)"

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        return [torch.nn.functional.silu(x) * self.cst for x in xs]


class Gate(ExactConstants):
    """Input [scalars | gates | gated]; output [silu(scalars) | sigmoid(gates) * gated], normalised.

    Each gated irrep (one channel of one block) is scaled by its own gate scalar. Block layout: the input's
    first block holds scalars and gates side by side ([N, 1, n_scalars + n_gates]); each gated block
    [N, 2l+1, mul] is multiplied by its [N, 1, mul] slice of the gates.
    """

    _gated_muls: List[int]

    def __init__(self, irreps_scalars, irreps_gates, irreps_gated) -> None:
        super().__init__()
        self.irreps_scalars = o3.Irreps(irreps_scalars)
        self.irreps_gates = o3.Irreps(irreps_gates)
        self.irreps_gated = o3.Irreps(irreps_gated)
        if self.irreps_gates.num_irreps != self.irreps_gated.num_irreps:
            raise ValueError(f"{self.irreps_gated.num_irreps} gated irreps need as many gates, got {self.irreps_gates}")
        self.irreps_in = (self.irreps_scalars + self.irreps_gates + self.irreps_gated).simplify()
        self.irreps_out = self.irreps_scalars + self.irreps_gated
        self.num_scalars = self.irreps_scalars.dim
        self.num_gates = self.irreps_gates.dim
        expected = (
            o3.Irreps(f"{self.num_scalars + self.num_gates}x0e") + self.irreps_gated
            if self.num_scalars + self.num_gates
            else self.irreps_gated
        )
        if list(self.irreps_in) != list(expected) or self.num_scalars == 0:
            raise ValueError(f"Gate needs even scalars, 0e gates and non-0e gated irreps, got {self.irreps_in}")
        self._gated_muls = [mul for mul, _ in self.irreps_gated]
        self.register_constant("silu_cst", torch.tensor(SILU_NORM, dtype=torch.float64))
        self.register_constant("sigmoid_cst", torch.tensor(SIGMOID_NORM, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out})"

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Given only the first block (scalars and gates), only the scalars' output block is made."""
        if self.num_gates == 0:
            return [torch.nn.functional.silu(xs[0]) * self.silu_cst]
        scalars, gates = torch.split(xs[0], [self.num_scalars, self.num_gates], dim=2)
        out = [torch.nn.functional.silu(scalars) * self.silu_cst]
        if len(xs) == 1:
            return out
        gates = torch.sigmoid(gates) * self.sigmoid_cst
        for i, g in enumerate(torch.split(gates, self._gated_muls, dim=2)):
            out.append(xs[i + 1] * g)
        return out
