"""Embeddings, feed-forward network and the pre-norm transformer block."""

from typing import Final, List, Optional

import torch
from e3nn import o3

from zoo.nn.activation import Gate
from zoo.nn.attention import DotProductAttention, GraphAttention
from zoo.nn.constants import ExactConstants
from zoo.nn.dtp import DepthwiseTensorProduct
from zoo.nn.irreps import split_gate
from zoo.nn.linear import IrrepsLinear
from zoo.nn.norm import EquivariantLayerNorm
from zoo.nn.radial import RadialProfile
from zoo.nn.scatter import scatter_sum


class NodeEmbedding(torch.nn.Module):
    """One-hot type -> linear into the node irreps (only 0e is non-zero); weights ~ N(0, 1)."""

    def __init__(self, irreps_out, num_types: int) -> None:
        super().__init__()
        self.num_types = num_types
        self.lin = IrrepsLinear(o3.Irreps(f"{num_types}x0e"), irreps_out, bias=True)
        with torch.no_grad():
            self.lin.weight.mul_(num_types**0.5)
        self.irreps_out = self.lin.irreps_out

    def forward(self, types: torch.Tensor, dtype: torch.dtype) -> List[torch.Tensor]:
        return self.lin.forward_one_hot(types, dtype)


class EdgeDegreeEmbedding(ExactConstants):
    """Sum over neighbours of DTP(constant node vector, Y; radial weights), projected, / sqrt(avg degree).

    Independent of atom types: it encodes the geometry of each atom's neighbourhood. The constant node
    vector is the same for every node, so it is computed on the edges directly; only its 0e block is
    non-zero, so only the TP paths from that block are computed (`scalar_inputs_only`).
    """

    def __init__(self, irreps_node, irreps_sh, radial_channels: List[int], avg_degree: float) -> None:
        super().__init__()
        scalars = o3.Irreps(irreps_node)[:1]
        self.exp = IrrepsLinear(o3.Irreps("1x0e"), scalars, bias=True)
        self.dw = DepthwiseTensorProduct(irreps_node, irreps_sh, irreps_node, scalar_inputs_only=True)
        self.rad = RadialProfile(list(radial_channels) + [self.dw.weight_numel])
        self.proj = IrrepsLinear(self.dw.irreps_out.simplify(), irreps_node)
        self.avg_degree = float(avg_degree)
        self.register_constant("inv_sqrt_degree", torch.tensor(1.0 / self.avg_degree**0.5, dtype=torch.float64))
        self.irreps_out = o3.Irreps(irreps_node)

    def extra_repr(self) -> str:
        return f"avg_degree={self.avg_degree}"

    def forward(
        self, num_nodes: int, edge_dst: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor
    ) -> List[torch.Tensor]:
        """`weight`: the radial TP weights in the TP's output order (`rad` reordered by `dw.weight_perm`)."""
        ones = torch.ones(sh.shape[0], 1, 1, dtype=sh.dtype, device=sh.device)
        pieces, operators = self.dw(self.exp([ones]), sh, weight)
        edge = self.proj.forward_pieces(pieces, sh.shape[0], None, operators, self.dw.deferred)
        return [scatter_sum(y, edge_dst, num_nodes) * self.inv_sqrt_degree for y in edge]


class FeedForward(torch.nn.Module):
    """Linear -> gate -> linear (the reference's two FCTPs with the constant node attribute 1x0e)."""

    def __init__(self, irreps_in, irreps_mid, irreps_out) -> None:
        super().__init__()
        self.gate = Gate(*split_gate(o3.Irreps(irreps_mid)))
        self.fctp_1 = IrrepsLinear(irreps_in, self.gate.irreps_in)
        self.fctp_2 = IrrepsLinear(self.gate.irreps_out, irreps_out)

    def forward(self, xs: List[torch.Tensor], scalars_only: bool = False) -> List[torch.Tensor]:
        """`scalars_only`: the output is read only through the gate's scalars (xs may hold only its first
        block): the first linear makes only the block of scalars and gates."""
        return self.fctp_2(self.gate(self.fctp_1(xs, 1 if scalars_only else -1)))


class GraphDropPath(torch.nn.Module):
    """Stochastic depth per graph: drop a whole residual branch of a structure, scale survivors 1/keep."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def extra_repr(self) -> str:
        return f"rate={self.rate}"

    def forward(self, xs: List[torch.Tensor], batch: torch.Tensor, num_graphs: int) -> List[torch.Tensor]:
        if not self.training or self.rate == 0.0:
            return xs
        keep = 1.0 - self.rate
        mask = torch.floor(keep + torch.rand(num_graphs, dtype=xs[0].dtype, device=xs[0].device)) / keep
        node_mask = mask.index_select(0, batch).view(-1, 1, 1)
        return [x * node_mask for x in xs]


class TransBlock(torch.nn.Module):
    """Pre-norm block: x + attn(LN(x)), then shortcut(x) + FFN(LN(x))."""

    scalars_only: Final[bool]

    def __init__(
        self,
        irreps_in,
        irreps_sh,
        irreps_out,
        radial_channels: List[int],
        irreps_head,
        num_heads: int,
        irreps_mlp_mid,
        irreps_pre_attn=None,
        attention: str = "mlp_nonlinear",
        alpha_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.norm_1 = EquivariantLayerNorm(self.irreps_in)
        common = dict(irreps_pre_attn=irreps_pre_attn, alpha_drop=alpha_drop)
        if attention == "dot_product":
            self.attn = DotProductAttention(
                self.irreps_in, irreps_sh, self.irreps_in, radial_channels, irreps_head, num_heads, **common
            )
        elif attention in ("mlp_nonlinear", "mlp_linear"):
            self.attn = GraphAttention(
                self.irreps_in, irreps_sh, self.irreps_in, radial_channels, irreps_head, num_heads,
                nonlinear_message=attention == "mlp_nonlinear", **common,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown attention {attention!r}: use mlp_nonlinear, mlp_linear or dot_product")
        self.drop_path = GraphDropPath(drop_path)
        self.norm_2 = EquivariantLayerNorm(self.irreps_in)
        self.ffn = FeedForward(self.irreps_in, irreps_mlp_mid, self.irreps_out)
        self.ffn_shortcut: Optional[IrrepsLinear] = None
        if self.irreps_in != self.irreps_out:
            self.ffn_shortcut = IrrepsLinear(self.irreps_in, self.irreps_out)
        # a block with only even scalars out (the last one) reads only the first input block (its only 0e
        # block): the attention and the feed-forward network skip what would feed the other blocks
        scalar_blocks = [i for i, (_, ir) in enumerate(self.irreps_in) if ir == o3.Irrep("0e")]
        self.scalars_only = all(ir == o3.Irrep("0e") for _, ir in self.irreps_out) and scalar_blocks == [0]

    def forward(
        self,
        xs: List[torch.Tensor],
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        sh: torch.Tensor,
        weight: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> List[torch.Tensor]:
        """Blocks of `irreps_in` -> blocks of `irreps_out`; `weight`: the attention's radial TP weights."""
        attn = self.attn(self.norm_1(xs), edge_src, edge_dst, sh, weight, self.scalars_only)
        attn = self.drop_path(attn, batch, num_graphs)
        xs = [x + a for x, a in zip(xs, attn)]  # only the first block when `scalars_only`
        update = self.drop_path(self.ffn(self.norm_2(xs), self.scalars_only), batch, num_graphs)
        shortcut = self.ffn_shortcut
        if shortcut is not None:
            xs = shortcut(xs)
        return [x + u for x, u in zip(xs, update)]
