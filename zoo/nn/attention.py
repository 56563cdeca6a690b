"""Equivariant graph attention: MLP attention with non-linear or linear messages, and dot-product
attention (the paper's ablation)."""

import math
from typing import Final, List, Optional

import torch
from e3nn import o3

from zoo.nn.activation import Gate, SmoothLeakyReLU
from zoo.nn.constants import ExactConstants
from zoo.nn.dtp import DepthwiseTensorProduct
from zoo.nn.irreps import num_even_scalars, sort_irreps_e3nn, sort_irreps_even_first, split_gate
from zoo.nn.linear import IrrepsLinear
from zoo.nn.radial import RadialProfile
from zoo.nn.scatter import gather_rows, scatter_sum, segment_softmax


class SeparableTP(torch.nn.Module):
    """Depthwise TP with radially weighted (or internal) weights, then an equivariant linear map, then
    optionally a gate (the reference's `SeparableFCTP` without its unused norm).

    `forward(xs, sh, weight)`: `weight` [E, dtp.weight_numel] are the radial MLP's outputs in the TP's
    output order (`dtp_rad` reordered by `dtp.weight_perm`, see `zoo.nn.radial.radial_profiles`); None
    for internal weights.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out, radial_channels, gate: bool = False) -> None:
        super().__init__()
        irreps_out = o3.Irreps(irreps_out)
        self.dtp = DepthwiseTensorProduct(irreps_in, irreps_sh, irreps_out, internal_weights=radial_channels is None)
        self.dtp_rad = (
            RadialProfile(list(radial_channels) + [self.dtp.weight_numel]) if radial_channels is not None else None
        )
        self.gate = None
        lin_out = irreps_out
        if gate:
            scalars, gates, gated = split_gate(irreps_out)
            self.gate = Gate(scalars, gates, gated)
            lin_out = self.gate.irreps_in
        self.lin = IrrepsLinear(self.dtp.irreps_out.simplify(), lin_out)
        self.irreps_in = self.dtp.irreps_in
        self.irreps_out = irreps_out

    def forward(
        self, xs: List[torch.Tensor], sh: torch.Tensor, weight: Optional[torch.Tensor] = None, num_out: int = -1
    ) -> List[torch.Tensor]:
        """`num_out` not negative: only the first `num_out` output blocks (no gate)."""
        pieces, operators = self.dtp(xs, sh, weight, num_out)
        # internal weights: scale the linear map's rows instead of the TP's outputs
        scale = self.dtp.output_weights() if weight is None else None
        out = self.lin.forward_pieces(pieces, sh.shape[0], scale, operators, self.dtp.deferred, num_out)
        gate = self.gate
        if gate is not None:
            out = gate(out)
        return out

    def radial_params(self) -> List[torch.Tensor]:
        rad = self.dtp_rad
        assert rad is not None
        return rad.flat_params()


class _PairAttention(torch.nn.Module):
    """What both attentions share: merged pair features m_ij = W_src x_i + W_dst x_j, and the
    softmax-weighted sum of per-head values over the incoming edges of each node.

    Heads in the block layout: a block of `irreps_head * num_heads` is [E, 2l+1, num_heads * mul] with
    head h on channels [h mul, (h+1) mul), so splitting into heads is a view.
    """

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

    def merge(self, xs: List[torch.Tensor], edge_src: torch.Tensor, edge_dst: torch.Tensor) -> List[torch.Tensor]:
        src = self.merge_src(xs)
        dst = self.merge_dst(xs)
        return [gather_rows(a, edge_src) + gather_rows(b, edge_dst) for a, b in zip(src, dst)]

    def aggregate(
        self, logits: torch.Tensor, values: List[torch.Tensor], edge_dst: torch.Tensor, num_nodes: int
    ) -> List[torch.Tensor]:
        """Softmax of logits [E, H] over incoming edges; sum of value blocks [E, 2l+1, H mul] weighted per head."""
        e, h = logits.shape[0], logits.shape[1]
        attn = self.alpha_dropout(segment_softmax(logits, edge_dst, num_nodes)).view(e, 1, h, 1)
        out: List[torch.Tensor] = []
        for v in values:
            d, c = v.shape[1], v.shape[2]
            out.append(scatter_sum((v.view(e, d, h, c // h) * attn).view(e, d, c), edge_dst, num_nodes))
        return out


class GraphAttention(_PairAttention):
    """Equiformer's equivariant graph attention.

    merge: m_ij = W_src x_i + W_dst x_j (edge i -> j). Non-linear messages: m = DTP(m, Y; radial weights);
    attention logits from its scalars (linear -> SmoothLeakyReLU -> dot with a per-head vector); values
    from gate(linear(m)) -> DTP with learned weights -> linear. Linear messages: one radial separable TP
    gives logits and values. Softmax over incoming edges, sum, project.

    `forward(xs, edge_src, edge_dst, sh, weight)`: `weight` are the radial TP weights in output order
    (`radial_params()` / `radial_perm()` describe the radial MLP that makes them).
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
        self.mul_scalar_head = self.irreps_head[0].mul if self.irreps_head[0].ir == o3.Irrep("0e") else 0
        irreps_alpha = o3.Irreps(f"{mul_alpha}x0e")
        if nonlinear_message:
            self.sep_act = SeparableTP(
                self.irreps_pre_attn, irreps_sh, self.irreps_pre_attn, radial_channels, gate=True
            )
            self.sep_alpha = IrrepsLinear(self.sep_act.dtp.irreps_out.simplify(), irreps_alpha)
            self.sep_value = SeparableTP(self.irreps_pre_attn, irreps_sh, irreps_attn_heads, None)
        else:
            self.sep = SeparableTP(
                self.irreps_pre_attn, irreps_sh, (irreps_alpha + irreps_attn_heads).simplify(), radial_channels
            )
        self.alpha_act = SmoothLeakyReLU(0.2)
        bound = math.sqrt(6.0 / (num_heads + self.mul_alpha_head))
        self.alpha_dot = torch.nn.Parameter(torch.empty(1, num_heads, self.mul_alpha_head).uniform_(-bound, bound))
        self.proj = IrrepsLinear(irreps_attn_heads, self.irreps_out)

    def radial_params(self) -> List[torch.Tensor]:
        if self.nonlinear_message:
            return self.sep_act.radial_params()
        return self.sep.radial_params()

    def radial_perm(self) -> torch.Tensor:
        if self.nonlinear_message:
            return self.sep_act.dtp.weight_perm
        return self.sep.dtp.weight_perm

    def forward(
        self,
        xs: List[torch.Tensor],
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        sh: torch.Tensor,
        weight: torch.Tensor,
        scalars_only: bool = False,
    ) -> List[torch.Tensor]:
        """`scalars_only`: only the first output block (0e), for a block whose other outputs nobody reads."""
        message = self.merge(xs, edge_src, edge_dst)
        e = edge_src.shape[0]
        h = self.num_heads
        num_out = 1 if scalars_only else -1
        if self.nonlinear_message:
            pieces, operators = self.sep_act.dtp(message, sh, weight)
            deferred = self.sep_act.dtp.deferred
            alpha = self.sep_alpha.forward_pieces(pieces, e, None, operators, deferred)[0].view(
                e, h, self.mul_alpha_head
            )
            gate = self.sep_act.gate
            assert gate is not None
            values = self.sep_value(
                gate(self.sep_act.lin.forward_pieces(pieces, e, None, operators, deferred)), sh, None, num_out
            )
        else:
            blocks = self.sep(message, sh, weight, num_out)
            # the first 0e block holds, per head, the head's alpha channels then its 0e value channels
            first = blocks[0].view(e, h, self.mul_alpha_head + self.mul_scalar_head)
            alpha, scalars = torch.split(first, [self.mul_alpha_head, self.mul_scalar_head], dim=2)
            values = [scalars.reshape(e, 1, h * self.mul_scalar_head)] + blocks[1:]
        logits = (self.alpha_act(alpha) * self.alpha_dot).sum(-1)
        return self.proj(self.aggregate(logits, values, edge_dst, xs[0].shape[0]), num_out)


class DotProductAttention(_PairAttention, ExactConstants):
    """Dot-product attention ablation: q from the destination node, k and v from one radial separable TP
    of the merged pair features; logit = <q, k> over all components with per-irrep scaling."""

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
        channel = 1.0 / self.irreps_head.num_irreps**0.5
        scale = {ir: channel * (1.0 / ir.dim**0.5) for _, ir in self.irreps_head}
        self.register_constant("q_scale", torch.tensor([scale[ir] for _, ir in irreps_attn_heads], dtype=torch.float64))
        self.proj = IrrepsLinear(irreps_attn_heads, self.irreps_out)

    def radial_params(self) -> List[torch.Tensor]:
        return self.key_value.radial_params()

    def radial_perm(self) -> torch.Tensor:
        return self.key_value.dtp.weight_perm

    def forward(
        self,
        xs: List[torch.Tensor],
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        sh: torch.Tensor,
        weight: torch.Tensor,
        scalars_only: bool = False,
    ) -> List[torch.Tensor]:
        """`scalars_only`: only the first output block (0e); the logits still need every irrep."""
        e = edge_src.shape[0]
        h = self.num_heads
        scales = self.q_scale.unbind(0)
        kv = self.key_value(self.merge(xs, edge_src, edge_dst), sh, weight)
        logits: Optional[torch.Tensor] = None
        values: List[torch.Tensor] = []
        for i, q in enumerate(self.query(xs)):
            d, c = q.shape[1], q.shape[2]
            pair = kv[i].view(e, d, 2, c)
            values.append(pair[:, :, 1])
            dot = (gather_rows(q * scales[i], edge_dst) * pair[:, :, 0]).view(e, d, h, c // h).sum(dim=(1, 3))
            logits = dot if logits is None else logits + dot
        assert logits is not None
        num_out = 1 if scalars_only else -1
        if scalars_only:
            values = values[:1]
        return self.proj(self.aggregate(logits, values, edge_dst, xs[0].shape[0]), num_out)
