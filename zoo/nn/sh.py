"""Real spherical harmonics of edge vectors in e3nn's basis, 'component' normalisation."""

import math
from typing import List

import torch
from e3nn import o3

from zoo.nn.cg import reference_wigner_3j
from zoo.nn.constants import ExactConstants


class SphericalHarmonics(ExactConstants):
    """Y^0..Y^lmax of the normalised edge vectors, concatenated for the requested irreps.

    Y^1 = sqrt(3) r/|r| (e3nn's basis, where the l=1 representation is the rotation matrix) and
    Y^l = c_l * CG(1, l-1 -> l)(Y^1, Y^(l-1)), the recursion that generates harmonic polynomials; c_l
    fixes |Y^l|^2 = 2l+1 and the sign is checked against e3nn at construction.
    """

    _ls: List[int]
    _offsets: List[int]

    def __init__(self, irreps_sh) -> None:
        super().__init__()
        self.irreps_sh = o3.Irreps(irreps_sh)
        self._ls = [ir.l for _, ir in self.irreps_sh]
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"spherical harmonics irreps must have multiplicity 1, got {self.irreps_sh}")
        self.lmax = max(self._ls)
        probe = torch.tensor([[0.3, -0.5, 0.8], [-0.7, 0.2, 0.1]], dtype=torch.float64)
        probe_y = [torch.ones(2, 1, dtype=torch.float64), math.sqrt(3.0) * torch.nn.functional.normalize(probe, dim=-1)]
        coeffs, offsets, start = [], [], 0
        for l in range(2, self.lmax + 1):
            cg = reference_wigner_3j(1, l - 1, l)
            raw = torch.einsum("ei,ej,ijk->ek", probe_y[1], probe_y[l - 1], cg)
            scale = math.sqrt(2 * l + 1) / raw[0].norm().item()
            expected = o3.spherical_harmonics(l, probe, normalize=True, normalization="component")
            coeff = cg * scale
            if torch.allclose(raw * scale, -expected, atol=1e-10):
                coeff = -coeff
            elif not torch.allclose(raw * scale, expected, atol=1e-10):
                raise RuntimeError(f"spherical harmonics recursion disagrees with e3nn at l={l}")
            probe_y.append(torch.einsum("ei,ej,ijk->ek", probe_y[1], probe_y[l - 1], coeff))
            coeffs.append(coeff.reshape(-1))
            offsets.append(start)
            start += coeff.numel()
        self._offsets = offsets
        self.register_constant("sqrt3", torch.tensor(math.sqrt(3.0), dtype=torch.float64))
        self.register_constant("coeff", torch.cat(coeffs) if coeffs else torch.zeros(0, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_sh})"

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(vec, dim=-1)
        e = vec.shape[0]
        ys: List[torch.Tensor] = [torch.ones(e, 1, dtype=vec.dtype, device=vec.device), unit * self.sqrt3]
        for l in range(2, self.lmax + 1):
            d_prev = 2 * l - 1
            d = 2 * l + 1
            c = self.coeff[self._offsets[l - 2] : self._offsets[l - 2] + 3 * d_prev * d].view(3, d_prev * d)
            # Y^l_k = sum_ij Y1_i Yprev_j C_ijk
            t = (ys[1] @ c).view(e, d_prev, d)
            ys.append(torch.bmm(ys[l - 1].unsqueeze(1), t).squeeze(1))
        return torch.cat([ys[l] for l in self._ls], dim=1)
