"""The Equiformer network: one module for every variant, configured by an `EquiformerConfig`."""

from typing import Dict, List, Optional, Tuple, Union

import torch
from e3nn import o3

from zoo import keys
from zoo.models.config import EquiformerConfig
from zoo.nn.activation import ScalarActivation
from zoo.nn.attention import GraphAttention
from zoo.nn.blocks import EdgeDegreeEmbedding, NodeEmbedding, TransBlock
from zoo.nn.constants import ExactConstants
from zoo.nn.dtp import DepthwiseTensorProduct
from zoo.nn.irreps import blocks_to_flat
from zoo.nn.linear import IrrepsLinear
from zoo.nn.norm import EquivariantLayerNorm
from zoo.nn.radial import BesselBasis, ExpNormalBasis, GaussianBasis, radial_profiles
from zoo.nn.scatter import scatter_sum
from zoo.nn.sh import SphericalHarmonics


class Equiformer(ExactConstants):
    """Equivariant graph attention transformer on a given graph.

    Inputs: `pos` [N, 3] (Å), `species` [N] atomic numbers, `edge_index` [2, E] as (src = neighbour,
    dst = centre), `batch` [N] structure index per atom, optional `edge_shift` [E, 3] (cartesian periodic
    image shift added to pos[src]), optional `tags` [N] (OC20). The graph is built outside (zoo.graph,
    C++, LAMMPS). Edge vectors are pos[src] - pos[dst] + edge_shift; messages aggregate at dst.

    Outputs (a dict, names in zoo.keys): the per-structure scalar (`energy` or `property`) and its
    per-atom parts; `forces` (-dE/dpos) when `compute_forces`; `virial` (-dE/dstrain) when
    `compute_virial`; `aux_displacement` for variants with the IS2RS head. The `compute_forces` /
    `compute_virial` arguments override the module attributes for one call.
    """

    compute_forces: bool
    compute_virial: bool
    _radial_groups: List[List[int]]

    def __init__(self, config: EquiformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.output_key = keys.ENERGY if c.output == "energy" else keys.PROPERTY
        self.atomic_key = keys.ATOMIC_ENERGY if c.output == "energy" else keys.ATOMIC_PROPERTY
        self.compute_forces = c.forces
        self.compute_virial = False
        self.has_aux = c.aux_head
        self.use_tags = c.num_tags > 0
        self.r_max = c.r_max
        irreps_node = o3.Irreps(c.irreps_node_embedding)
        irreps_feature = o3.Irreps(c.irreps_feature)
        radial = [c.num_basis] + list(c.radial_hidden)

        self.register_buffer("type_lookup", _type_lookup(c.type_numbers), persistent=False)

        self.sh = SphericalHarmonics(c.irreps_sh)
        self.atom_embed = NodeEmbedding(irreps_node, len(c.type_numbers))
        self.tag_embed = NodeEmbedding(irreps_node, c.num_tags) if self.use_tags else None
        self.rbf = _radial_basis(c)
        self.edge_deg_embed = EdgeDegreeEmbedding(irreps_node, c.irreps_sh, radial, c.avg_degree)
        self.blocks = _blocks(c, irreps_node, irreps_feature, radial)
        self.norm = EquivariantLayerNorm(irreps_feature)
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_feature if ir.l == 0 and ir.p == 1])
        self.head = torch.nn.ModuleList(
            [IrrepsLinear(irreps_feature, scalars), ScalarActivation(scalars), IrrepsLinear(scalars, "1x0e")]
        )
        self.avg_num_nodes = float(c.avg_num_nodes)
        self.aux_head: Optional[GraphAttention] = None
        if c.aux_head:
            aux_out = "1x1o" if o3.Irrep("1o") in irreps_feature else "1x1e"
            self.aux_head = GraphAttention(
                irreps_feature, c.irreps_sh, aux_out, radial, c.irreps_head, c.num_heads,
                irreps_pre_attn=c.irreps_pre_attn, nonlinear_message=c.attention == "mlp_nonlinear", alpha_drop=c.alpha_drop,
            )  # fmt: skip
        self.register_constant("inv_sqrt_num_nodes", torch.tensor(1.0 / self.avg_num_nodes**0.5, dtype=torch.float64))
        self._radial_groups = self._same_shape_radial_mlps()
        self.apply(_init_torch_layers)
        if c.cg_float32:
            for m in self.modules():
                if isinstance(m, DepthwiseTensorProduct):
                    m.set_cg_float32(True)

    def _same_shape_radial_mlps(self) -> List[List[int]]:
        """Radial MLPs (edge-degree embedding, each block, the auxiliary head) grouped by identical layer sizes:
        each group is evaluated together as one batched MLP."""
        shapes = [tuple(p.shape for p in self.edge_deg_embed.rad.flat_params())]
        shapes += [tuple(p.shape for p in block.attn.radial_params()) for block in self.blocks]
        if self.aux_head is not None:
            shapes.append(tuple(p.shape for p in self.aux_head.radial_params()))
        return [[i for i, s in enumerate(shapes) if s == key] for key in dict.fromkeys(shapes)]

    def _radial_weights(self, radial: torch.Tensor) -> List[torch.Tensor]:
        """Every radially weighted TP's weights (edge-degree embedding, each block, the auxiliary head), in
        the TPs' output order: radial MLPs of the same shape run as one batched MLP."""
        params: List[List[torch.Tensor]] = [self.edge_deg_embed.rad.flat_params()]
        perms: List[torch.Tensor] = [self.edge_deg_embed.dw.weight_perm]
        for block in self.blocks:
            params.append(block.attn.radial_params())
            perms.append(block.attn.radial_perm())
        aux_head = self.aux_head
        if aux_head is not None:
            params.append(aux_head.radial_params())
            perms.append(aux_head.radial_perm())
        weights: List[torch.Tensor] = [radial for _ in range(len(params))]
        for group in self._radial_groups:
            outs = radial_profiles(radial, [params[i] for i in group], [perms[i] for i in group])
            for k, i in enumerate(group):
                weights[i] = outs[k]
        return weights

    def extra_repr(self) -> str:
        return f"variant={self.config.name!r}, r_max={self.r_max}, forces={self.compute_forces}"

    def _outputs(
        self,
        edge_vec: torch.Tensor,
        species: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        batch: torch.Tensor,
        tags: Optional[torch.Tensor],
        num_graphs: int,
    ) -> Dict[str, torch.Tensor]:
        """Per-structure and per-atom outputs (and the auxiliary head) from the edge vectors."""
        num_nodes = species.shape[0]
        sh = self.sh(edge_vec)
        radial = self.rbf(torch.linalg.vector_norm(edge_vec, dim=1))
        tp_weights = self._radial_weights(radial)
        xs = self.atom_embed(self.type_lookup.index_select(0, species), edge_vec.dtype)
        tag_embed = self.tag_embed
        if tag_embed is not None:
            if tags is None:
                raise RuntimeError("this model needs per-atom tags (0 subsurface, 1 surface, 2 adsorbate)")
            xs = [x + t for x, t in zip(xs, tag_embed(tags, edge_vec.dtype))]
        xs = [x + d for x, d in zip(xs, self.edge_deg_embed(num_nodes, edge_dst, sh, tp_weights[0]))]
        for i, block in enumerate(self.blocks):
            xs = block(xs, edge_src, edge_dst, sh, tp_weights[i + 1], batch, num_graphs)
        xs = self.norm(xs)
        ys = xs
        for layer in self.head:
            ys = layer(ys)
        atomic = ys[0].view(num_nodes) * self.inv_sqrt_num_nodes
        total = scatter_sum(atomic, batch, num_graphs)
        out: Dict[str, torch.Tensor] = {self.output_key: total, self.atomic_key: atomic}
        aux_head = self.aux_head
        if aux_head is not None:
            out[keys.AUX_DISPLACEMENT] = blocks_to_flat(aux_head(xs, edge_src, edge_dst, sh, tp_weights[-1]))
        return out

    @torch.jit.unused
    def _graded_outputs(
        self,
        edge_vec: torch.Tensor,
        species: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        batch: torch.Tensor,
        tags: Optional[torch.Tensor],
        num_graphs: int,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(dE/d edge_vec, outputs) where Python does better than TorchScript's plain `torch.autograd.grad`.

        Inside `torch.compile`: a functional gradient (dynamo traces `torch.func.grad` into the graph).
        In an eval-mode eager call: the weights taken as constants for the call. That gradient is taken
        without `create_graph` and frees the graph, so no gradient could reach the weights through the call
        anyway; recording none spares the autograd nodes of the weights' own ops and the activations kept
        only for weight gradients (md17-l2 energy+forces on CPU: ~6 % faster). The weights that required
        gradients (leaves only) require them again when the call returns or raises; like train/eval mode,
        this is the module's state, so do not train it in another thread meanwhile.
        """

        def energy(vec: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
            out = self._outputs(vec, species, edge_src, edge_dst, batch, tags, num_graphs)
            return out[self.output_key].sum(), out

        if torch.compiler.is_dynamo_compiling():
            return torch.func.grad(energy, has_aux=True)(edge_vec)
        if not edge_vec.requires_grad:
            edge_vec.requires_grad_(True)
        weights = [p for p in self.parameters() if p.requires_grad and p.is_leaf]
        for p in weights:
            p.requires_grad_(False)
        try:
            total, out = energy(edge_vec)
            grad = torch.autograd.grad([total], [edge_vec], allow_unused=True)[0]
        finally:
            for p in weights:
                p.requires_grad_(True)
        return (torch.zeros_like(edge_vec) if grad is None else grad), out

    def forward(
        self,
        pos: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        edge_shift: Optional[torch.Tensor] = None,
        tags: Optional[torch.Tensor] = None,
        num_graphs: int = -1,
        compute_forces: Optional[bool] = None,
        compute_virial: Optional[bool] = None,
    ) -> Dict[str, torch.Tensor]:
        want_forces = self.compute_forces if compute_forces is None else compute_forces
        want_virial = self.compute_virial if compute_virial is None else compute_virial
        if num_graphs < 0:
            num_graphs = int(batch.max().item()) + 1 if batch.numel() > 0 else 0
        num_nodes = pos.shape[0]
        edge_src = edge_index[0]
        edge_dst = edge_index[1]
        edge_vec = pos.index_select(0, edge_src) - pos.index_select(0, edge_dst)
        if edge_shift is not None:
            edge_vec = edge_vec + edge_shift
        need_grad = want_forces or want_virial
        g = torch.zeros(0)
        in_python = False
        if not torch.jit.is_scripting():
            in_python = need_grad and (torch.compiler.is_dynamo_compiling() or not self.training)
        if in_python:
            g, out = self._graded_outputs(edge_vec, species, edge_src, edge_dst, batch, tags, num_graphs)
        else:
            if need_grad and not edge_vec.requires_grad:
                edge_vec.requires_grad_(True)
            out = self._outputs(edge_vec, species, edge_src, edge_dst, batch, tags, num_graphs)
            if need_grad:
                grads = torch.autograd.grad([out[self.output_key].sum()], [edge_vec], create_graph=self.training)
                grad = grads[0]
                g = torch.zeros_like(edge_vec) if grad is None else grad
        if need_grad:
            if want_forces:
                out[keys.FORCES] = scatter_sum(g, edge_dst, num_nodes) - scatter_sum(g, edge_src, num_nodes)
            if want_virial:
                per_edge = -(edge_vec.unsqueeze(-1) * g.unsqueeze(-2))
                out[keys.VIRIAL] = scatter_sum(per_edge, batch.index_select(0, edge_dst), num_graphs)
        return out


def _init_torch_layers(m: torch.nn.Module) -> None:
    """The reference's `_init_weights`: zero nn.Linear biases, LayerNorm to (1, 0)."""
    if isinstance(m, torch.nn.Linear) and m.bias is not None:
        torch.nn.init.zeros_(m.bias)
    elif isinstance(m, torch.nn.LayerNorm):
        torch.nn.init.ones_(m.weight)
        torch.nn.init.zeros_(m.bias)


def build_model(config: Union[str, EquiformerConfig, dict], **overrides) -> Equiformer:
    """Build an (untrained) Equiformer from a variant name, a config or a config dict."""
    from zoo.models.variants import get_variant

    if isinstance(config, str):
        config = get_variant(config)
    elif isinstance(config, dict):
        config = EquiformerConfig.from_dict(config)
    if overrides:
        config = config.replace(**overrides)
    return Equiformer(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def no_weight_decay_names(model: Equiformer) -> List[str]:
    """Parameters the reference excludes from weight decay: biases, norm affines, radial-basis
    parameters (nn.Linear weights, TP weights, radial offsets and alpha_dot are decayed)."""
    names = []
    basis_types = (GaussianBasis, BesselBasis, torch.nn.LayerNorm, EquivariantLayerNorm)
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "bias" or isinstance(mod, basis_types):
                names.append(full)
    return names


def _type_lookup(type_numbers) -> torch.Tensor:
    """Atomic number (0..118) -> type index of the network, -1 for elements it has no embedding for."""
    lookup = torch.full((119,), -1, dtype=torch.long)
    for t, z in enumerate(type_numbers):
        lookup[z] = t
    return lookup


def _radial_basis(c: EquiformerConfig) -> torch.nn.Module:
    """The radial basis of the config: gaussian, bessel or exponential-normal, `num_basis` functions up to r_max."""
    if c.radial_basis == "gaussian":
        return GaussianBasis(c.num_basis, c.r_max)
    if c.radial_basis == "bessel":
        return BesselBasis(c.num_basis, c.r_max)
    return ExpNormalBasis(c.num_basis, c.r_max)


def _blocks(c: EquiformerConfig, irreps_node, irreps_feature, radial: List[int]) -> torch.nn.ModuleList:
    """The `num_layers` Transformer blocks; the last one maps to `irreps_feature`."""
    return torch.nn.ModuleList(
        TransBlock(
            irreps_node,
            c.irreps_sh,
            irreps_node if i < c.num_layers - 1 else irreps_feature,
            radial,
            c.irreps_head,
            c.num_heads,
            c.irreps_mlp_mid,
            irreps_pre_attn=c.irreps_pre_attn,
            attention=c.attention,
            alpha_drop=c.alpha_drop,
            drop_path=c.drop_path,
        )
        for i in range(c.num_layers)
    )
