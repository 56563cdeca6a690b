"""Radial bases of edge lengths and the radial MLP that turns them into tensor-product weights."""

import math
from typing import List

import torch


class GaussianBasis(torch.nn.Module):
    """Graphormer-style learned Gaussians of d / r_max (the reference's `GaussianRadialBasisLayer`).

    x = w * d / r_max + b; phi_k = exp(-((x - mu_k) / sigma_k)^2 / 2) / (sqrt(2 pi) sigma_k), sigma = |s| + 1e-5;
    pi is written 3.14159 as in the reference. No cutoff envelope.
    """

    def __init__(self, num_basis: int, r_max: float) -> None:
        super().__init__()
        self.num_basis = num_basis
        self.r_max = float(r_max)
        self.mean = torch.nn.Parameter(torch.empty(1, num_basis).uniform_(0.0, 1.0))
        self.std = torch.nn.Parameter(torch.empty(1, num_basis).uniform_(1.0 / num_basis, 1.0))
        self.weight = torch.nn.Parameter(torch.ones(1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(1, 1))

    def extra_repr(self) -> str:
        return f"num_basis={self.num_basis}, r_max={self.r_max}"

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        x = self.weight * (dist / self.r_max).unsqueeze(-1) + self.bias
        std = self.std.abs() + 1e-5
        a = (2 * 3.14159) ** 0.5
        return torch.exp(-0.5 * ((x - self.mean) / std) ** 2) / (a * std)


class BesselBasis(torch.nn.Module):
    """Spherical Bessel basis with trainable frequencies and a p=5 polynomial envelope (GemNet's
    `RadialBasis(rbf='spherical_bessel')`): env(x) sqrt(2/r^3) sin(f_n x) / x, x = d / r_max, f_n = n pi."""

    def __init__(self, num_basis: int, r_max: float, exponent: int = 5) -> None:
        super().__init__()
        self.num_basis = num_basis
        self.r_max = float(r_max)
        self.inv_cutoff = 1.0 / self.r_max
        self.norm_const = math.sqrt(2.0 / self.r_max**3)
        self.p = exponent
        self.a = -(exponent + 1) * (exponent + 2) / 2.0
        self.b = float(exponent * (exponent + 2))
        self.c = -exponent * (exponent + 1) / 2.0
        self.frequencies = torch.nn.Parameter(math.pi * torch.arange(1, num_basis + 1, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"num_basis={self.num_basis}, r_max={self.r_max}, envelope_exponent={self.p}"

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        x = dist * self.inv_cutoff
        env = 1 + self.a * x**self.p + self.b * x ** (self.p + 1) + self.c * x ** (self.p + 2)
        env = torch.where(x < 1, env, torch.zeros_like(x))
        rbf = self.norm_const / x.unsqueeze(-1) * torch.sin(self.frequencies * x.unsqueeze(-1))
        return env.unsqueeze(-1) * rbf


class ExpNormalBasis(torch.nn.Module):
    """TorchMD-Net's exp-normal smearing with a cosine cutoff (fixed, not trained):
    phi_k = (cos(pi d / r_max) + 1) / 2 * [d < r_max] * exp(-beta (exp(-alpha d) - mu_k)^2)."""

    def __init__(self, num_basis: int, r_max: float) -> None:
        super().__init__()
        self.num_basis = num_basis
        self.r_max = float(r_max)
        self.alpha = 5.0 / self.r_max
        # built in float32 like the reference, so that converted checkpoints carry the same values
        start = torch.exp(torch.scalar_tensor(-self.r_max))
        self.register_buffer("means", torch.linspace(start, 1, num_basis))
        self.register_buffer("betas", torch.tensor([(2 / num_basis * (1 - start)) ** -2] * num_basis))

    def extra_repr(self) -> str:
        return f"num_basis={self.num_basis}, r_max={self.r_max}"

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        d = dist.unsqueeze(-1)
        cutoff = 0.5 * (torch.cos(d * math.pi / self.r_max) + 1.0) * (d < self.r_max).to(d.dtype)
        return cutoff * torch.exp(-self.betas * (torch.exp(self.alpha * (-d)) - self.means) ** 2)


class _Linear(torch.nn.Linear):
    def flat_params(self) -> List[torch.Tensor]:
        bias = self.bias
        return [self.weight] if bias is None else [self.weight, bias]


class _LayerNorm(torch.nn.LayerNorm):
    def flat_params(self) -> List[torch.Tensor]:
        return [self.weight, self.bias]


class _SiLU(torch.nn.SiLU):
    def flat_params(self) -> List[torch.Tensor]:
        return []


class RadialProfile(torch.nn.Module):
    """Radial MLP: Linear -> LayerNorm -> SiLU per hidden layer, then a bias-free Linear plus a learned
    offset (initialised U(+-1/sqrt(fan_in))). The reference's `RadialProfile`."""

    def __init__(self, channels: List[int]) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for i in range(1, len(channels)):
            last = i == len(channels) - 1
            layers.append(_Linear(channels[i - 1], channels[i], bias=not last))
            if not last:
                layers.append(_LayerNorm(channels[i]))
                layers.append(_SiLU())
        self.net = torch.nn.Sequential(*layers)
        bound = 1.0 / math.sqrt(channels[-2])
        self.offset = torch.nn.Parameter(torch.empty(channels[-1]).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.offset

    def flat_params(self) -> List[torch.Tensor]:
        """[weight, bias, ln weight, ln bias] per hidden layer, then [last weight, offset]."""
        out: List[torch.Tensor] = []
        for layer in self.net:
            out.extend(layer.flat_params())
        out.append(self.offset)
        return out


def radial_profiles(
    x: torch.Tensor, params: List[List[torch.Tensor]], perms: List[torch.Tensor], eps: float = 1e-5
) -> List[torch.Tensor]:
    """Several `RadialProfile`s of the same shape on the same input, batched: one batched matmul per
    hidden layer for all of them. `params[g]` is profile g's `flat_params()`; `perms[g]` reorders its outputs
    (`out[:, perms[g]]`, applied to the last layer's weights, not to the edges; it may keep
    only some outputs). Returns [E, len(perms[g])] each."""
    n_hidden = (len(params[0]) - 2) // 4
    h = x.unsqueeze(0).expand(len(params), x.shape[0], x.shape[1])
    for layer in range(n_hidden):
        k = 4 * layer
        weight = torch.stack([p[k] for p in params]).transpose(1, 2)
        bias = torch.stack([p[k + 1] for p in params]).unsqueeze(1)
        h = torch.baddbmm(bias, h, weight)
        h = torch.nn.functional.layer_norm(h, [h.shape[-1]], None, None, eps)
        gamma = torch.stack([p[k + 2] for p in params]).unsqueeze(1)
        beta = torch.stack([p[k + 3] for p in params]).unsqueeze(1)
        h = torch.nn.functional.silu(torch.addcmul(beta, h, gamma))
    # the last layer, one matmul per profile: each output is its own tensor, so the force gradient never
    # stacks the [E, outputs] gradients of all profiles into one
    return [
        torch.addmm(p[-1].index_select(0, perm), hg, p[-2].index_select(0, perm).t())
        for p, perm, hg in zip(params, perms, h.unbind(0))
    ]
