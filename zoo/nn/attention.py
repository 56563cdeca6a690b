"""Equivariant graph attention: MLP attention with non-linear or linear messages, and dot-product
attention (the paper's ablation)."""


import math
from typing import Final, List, Tuple

import torch
from e3nn import o3

from zoo.nn.activation import Gate, SmoothLeakyReLU
from zoo.nn.dtp import DepthwiseTensorProduct
from zoo.nn.irreps import block_slices, num_even_scalars, sort_irreps_e3nn, sort_irreps_even_first, split_gate
from zoo.nn.linear import IrrepsLinear
from zoo.nn.radial import RadialProfile
from zoo.nn.scatter import scatter_sum, segment_softmax


class SeparableTP(torch.nn.Module):
    """Depthwise TP with radially weighted (or internal) weights, then an equivariant linear map, then
    optionally a gate (the reference's `SeparableFCTP` without its unused norm)."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, radial_channels, gate: bool = False) -> None:
        super().__init__()
        irreps_out = o3.Irreps(irreps_out)
        self.dtp = DepthwiseTensorProduct(irreps_in, irreps_sh, irreps_out, internal_weights=radial_channels is None)
        self.dtp_rad = RadialProfile(list(radial_channels) + [self.dtp.weight_numel]) if radial_channels is not None else None
        self.gate = None
        lin_out = irreps_out
        if gate:
            scalars, gates, gated = split_gate(irreps_out)
            self.gate = Gate(scalars, gates, gated)
            lin_out = self.gate.irreps_in
        self.lin = IrrepsLinear(self.dtp.irreps_out.simplify(), lin_out)
        self.irreps_in = self.dtp.irreps_in
        self.irreps_out = irreps_out

    def forward(self, x: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        if self.dtp_rad is not None:
            out = self.dtp(x, sh, self.dtp_rad(radial))
        else:
            out = self.dtp(x, sh)
        out = self.lin(out)
        if self.gate is not None:
            out = self.gate(out)
        return out


def _head_slices(irreps_head: o3.Irreps, num_heads: int) -> List[Tuple[int, int]]:
    """(start, width per head) of each block of `irreps_head * num_heads` laid out block by block."""
    return [(start * num_heads, mul * d) for start, mul, d in block_slices(irreps_head)]


class _Heads(torch.nn.Module):
    """Reshape between [N, blocks of (mul*H)] and [N, H, irreps_head] (`Vec2AttnHeads`/`AttnHeads2Vec`)."""

    _slices: List[Tuple[int, int]]

    def __init__(self, irreps_head, num_heads: int) -> None:
        super().__init__()
        self.irreps_head = o3.Irreps(irreps_head)
        self.num_heads = num_heads
        self._slices = _head_slices(self.irreps_head, num_heads)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return torch.cat([x[:, s : s + self.num_heads * w].reshape(n, self.num_heads, w) for s, w in self._slices], dim=2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out: List[torch.Tensor] = []
        start = 0
        for _, w in self._slices:
            out.append(x[:, :, start : start + w].reshape(n, self.num_heads * w))
            start += w
        return torch.cat(out, dim=1)


class _PairAttention(torch.nn.Module):
    """What both attentions share: merged pair features m_ij = W_src x_i + W_dst x_j, and the
    softmax-weighted sum of per-head values over the incoming edges of each node."""

    def __init__(self, irreps_in, irreps_out, irreps_pre_attn, irreps_head, num_heads: int, alpha_drop: float) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.irreps_pre_attn = self.irreps_in if irreps_pre_attn is None else o3.Irreps(irreps_pre_attn)
        self.irreps_head = o3.Irreps(irreps_head)
        self.num_heads = num_heads
        self.merge_src = IrrepsLinear(self.irreps_in, self.irreps_pre_attn, bias=True)
        self.merge_dst = IrrepsLinear(self.irreps_in, self.irreps_pre_attn, bias=False)
        self.alpha_dropout = torch.nn.Dropout(alpha_drop) if alpha_drop > 0 else torch.nn.Identity()

    def merge(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor) -> torch.Tensor:
        return self.merge_src(x).index_select(0, edge_src) + self.merge_dst(x).index_select(0, edge_dst)

    def aggregate(self, logits: torch.Tensor, value: torch.Tensor, edge_dst: torch.Tensor, num_nodes: int) -> torch.Tensor:
        attn = self.alpha_dropout(segment_softmax(logits, edge_dst, num_nodes).unsqueeze(-1))
        return scatter_sum(value * attn, edge_dst, num_nodes)


class GraphAttention(_PairAttention):
    """Equiformer's equivariant graph attention.

    merge: m_ij = W_src x_i + W_dst x_j (edge i -> j). Non-linear messages: m = DTP(m, Y; radial weights);
    attention logits from its scalars (linear -> SmoothLeakyReLU -> dot with a per-head vector); values
    from gate(linear(m)) -> DTP with learned weights -> linear. Linear messages: one radial separable TP
    gives logits and values. Softmax over incoming edges, sum, project.
    """

    nonlinear_message: Final[bool]

    def __init__(
        self,
        irreps_in,
        irreps_sh,
        irreps_out,
        radial_channels: List[int],
        irreps_head,
        num_heads: int,
        irreps_pre_attn=None,
        nonlinear_message: bool = True,
        alpha_drop: float = 0.0,
    ) -> None:
        super().__init__(irreps_in, irreps_out, irreps_pre_attn, irreps_head, num_heads, alpha_drop)
        self.nonlinear_message = nonlinear_message
        irreps_attn_heads = sort_irreps_even_first(self.irreps_head * num_heads)[0].simplify()
        mul_alpha = num_even_scalars(irreps_attn_heads)
        self.mul_alpha_head = mul_alpha // num_heads
        irreps_alpha = o3.Irreps(f"{mul_alpha}x0e")
        if nonlinear_message:
            self.sep_act = SeparableTP(self.irreps_pre_attn, irreps_sh, self.irreps_pre_attn, radial_channels, gate=True)
            self.sep_alpha = IrrepsLinear(self.sep_act.dtp.irreps_out, irreps_alpha)
            self.sep_value = SeparableTP(self.irreps_pre_attn, irreps_sh, irreps_attn_heads, None)
            self.heads_alpha = _Heads(o3.Irreps(f"{self.mul_alpha_head}x0e"), num_heads)
            self.heads_value = _Heads(self.irreps_head, num_heads)
        else:
            self.sep = SeparableTP(self.irreps_pre_attn, irreps_sh, (irreps_alpha + irreps_attn_heads).simplify(), radial_channels)
            self.heads_all = _Heads((o3.Irreps(f"{self.mul_alpha_head}x0e") + self.irreps_head).simplify(), num_heads)
        self.heads_out = _Heads(self.irreps_head, num_heads)
        self.alpha_act = SmoothLeakyReLU(0.2)
        bound = math.sqrt(6.0 / (num_heads + self.mul_alpha_head))
        self.alpha_dot = torch.nn.Parameter(torch.empty(1, num_heads, self.mul_alpha_head).uniform_(-bound, bound))
        self.proj = IrrepsLinear(irreps_attn_heads, self.irreps_out)

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        message = self.merge(x, edge_src, edge_dst)
        if self.nonlinear_message:
            message = self.sep_act.dtp(message, sh, self.sep_act.dtp_rad(radial))
            alpha = self.heads_alpha.split(self.sep_alpha(message))
            value = self.sep_act.gate(self.sep_act.lin(message))
            value = self.heads_value.split(self.sep_value(value, sh, radial))
        else:
            message = self.heads_all.split(self.sep(message, sh, radial))
            alpha = message[:, :, : self.mul_alpha_head]
            value = message[:, :, self.mul_alpha_head :]
        logits = (self.alpha_act(alpha) * self.alpha_dot).sum(-1)
        return self.proj(self.heads_out.merge(self.aggregate(logits, value, edge_dst, x.shape[0])))


class DotProductAttention(_PairAttention):
    """Dot-product attention ablation: q from the destination node, k and v from one radial separable TP
    of the merged pair features; logit = <q, k> over all components with per-irrep scaling."""

    _scale_blocks: List[Tuple[int, int, float]]

    def __init__(
        self,
        irreps_in,
        irreps_sh,
        irreps_out,
        radial_channels: List[int],
        irreps_head,
        num_heads: int,
        irreps_pre_attn=None,
        alpha_drop: float = 0.0,
    ) -> None:
        super().__init__(irreps_in, irreps_out, irreps_pre_attn, irreps_head, num_heads, alpha_drop)
        irreps_attn_heads = sort_irreps_e3nn(self.irreps_head * num_heads).simplify()
        irreps_kv = sort_irreps_e3nn(self.irreps_head * (num_heads * 2)).simplify()
        self.query = IrrepsLinear(self.irreps_in, irreps_attn_heads)
        self.key_value = SeparableTP(self.irreps_pre_attn, irreps_sh, irreps_kv, radial_channels)
        self.heads_q = _Heads(self.irreps_head, num_heads)
        self.heads_kv = _Heads(self.irreps_head, 2 * num_heads)
        channel = 1.0 / self.irreps_head.num_irreps**0.5
        self._scale_blocks = [(s, mul * d, channel * (1.0 / d**0.5)) for s, mul, d in block_slices(self.irreps_head)]
        self.proj = IrrepsLinear(irreps_attn_heads, self.irreps_out)

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        q = self.heads_q.split(self.query(x))
        q = torch.cat([q[:, :, s : s + w] * f for s, w, f in self._scale_blocks], dim=2)
        kv = self.heads_kv.split(self.key_value(self.merge(x, edge_src, edge_dst), sh, radial))
        k = kv[:, : self.num_heads]
        v = kv[:, self.num_heads :]
        logits = (q.index_select(0, edge_dst) * k).sum(-1)
        return self.proj(self.heads_q.merge(self.aggregate(logits, v, edge_dst, x.shape[0])))
