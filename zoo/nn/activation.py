"""Normalised activations and the equivariant gate."""


import torch
from e3nn import o3

from zoo.nn.cg import SIGMOID_NORM, SILU_NORM, SMOOTH_LEAKY_RELU_02_NORM


class SmoothLeakyReLU(torch.nn.Module):
    """f(x) = (1+a)/2 x + (1-a)/2 x (2 sigmoid(x) - 1), a smooth leaky ReLU (the reference's attention
    non-linearity), times its second-moment normalisation constant."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        if negative_slope != 0.2:
            raise ValueError("only negative_slope=0.2 (the published setting) has a recorded normalisation constant")
        self.alpha = negative_slope
        self.cst = SMOOTH_LEAKY_RELU_02_NORM

    def extra_repr(self) -> str:
        return f"negative_slope={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = ((1 + self.alpha) / 2) * x
        x2 = ((1 - self.alpha) / 2) * x * (2 * torch.sigmoid(x) - 1)
        return (x1 + x2) * self.cst


class ScalarActivation(torch.nn.Module):
    """SiLU on scalar features, normalised to unit second moment (e3nn `Activation` with one act)."""

    def __init__(self, irreps) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps)
        self.irreps_out = self.irreps_in
        if any(ir.l != 0 or ir.p != 1 for _, ir in self.irreps_in):
            raise ValueError(f"ScalarActivation takes even scalars only, got {self.irreps_in}")
        self.cst = SILU_NORM

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in}, silu)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.cst


class Gate(torch.nn.Module):
    """Input [scalars | gates | gated]; output [silu(scalars) | sigmoid(gates) * gated], normalised.

    Each gated irrep (one channel of one block) is scaled by its own gate scalar.
    """

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
        index = []
        gate = 0
        for mul, ir in self.irreps_gated:
            for _ in range(mul):
                index.extend([gate] * ir.dim)
                gate += 1
        self.register_buffer("gate_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.silu_cst = SILU_NORM
        self.sigmoid_cst = SIGMOID_NORM

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars = torch.nn.functional.silu(x[:, : self.num_scalars]) * self.silu_cst
        if self.num_gates == 0:
            return scalars
        gates = torch.sigmoid(x[:, self.num_scalars : self.num_scalars + self.num_gates]) * self.sigmoid_cst
        gated = x[:, self.num_scalars + self.num_gates :] * gates.index_select(1, self.gate_index)
        return torch.cat([scalars, gated], dim=1)
