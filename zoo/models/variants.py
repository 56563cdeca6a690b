"""Every published Equiformer configuration, as named data (spec §1.3 of the paper's reference code).

Names: `qm9-l2`, `qm9-l2-bessel`, `qm9-l2-bessel-drop01`, `qm9-l2-bessel-drop0`, `qm9-l2-linear`,
`qm9-l2-dot`, `md17-l2`, `md17-l3`, `oc20-l1`, `oc20-l1-aux`, `oc20-l1-aux18`, `oc20-l1-linear`,
`oc20-l1-dot`, and `-e3` (odd-parity, E(3)-equivariant) versions where the reference defines them.
"""

from __future__ import annotations

import fnmatch

from zoo.models.config import EquiformerConfig

# the reference's hard-coded normalisation statistics
QM9_AVG_NUM_NODES = 18.03065905448718
QM9_AVG_DEGREE = 15.57930850982666
OC20_AVG_NUM_NODES = 77.81317
OC20_AVG_DEGREE = 23.395238876342773

QM9_TYPES = (1, 6, 7, 8, 9)
MD17_TYPES = tuple(range(64))
OC20_TYPES = tuple(range(84))

_QM9 = dict(
    num_layers=6,
    irreps_node_embedding="128x0e+64x1e+32x2e",
    irreps_sh="1x0e+1x1e+1x2e",
    irreps_head="32x0e+16x1e+8x2e",
    num_heads=4,
    irreps_mlp_mid="384x0e+192x1e+96x2e",
    irreps_feature="512x0e",
    type_numbers=QM9_TYPES,
    avg_num_nodes=QM9_AVG_NUM_NODES,
    avg_degree=QM9_AVG_DEGREE,
    radial_basis="gaussian",
    num_basis=128,
    alpha_drop=0.2,
    output="property",
)
_QM9_E3 = dict(
    irreps_node_embedding="128x0e+32x0o+32x1e+32x1o+16x2e+16x2o",
    irreps_sh="1x0e+1x1o+1x2e",
    irreps_head="32x0e+8x0o+8x1e+8x1o+4x2e+4x2o",
    irreps_mlp_mid="384x0e+96x0o+96x1e+96x1o+48x2e+48x2o",
)
_MD17 = dict(
    _QM9,
    type_numbers=MD17_TYPES,
    radial_basis="exp_normal",
    num_basis=32,
    alpha_drop=0.0,
    output="energy",
    forces=True,
)
_MD17_L3 = dict(
    irreps_node_embedding="128x0e+64x1e+64x2e+32x3e",
    irreps_sh="1x0e+1x1e+1x2e+1x3e",
    irreps_head="32x0e+16x1e+16x2e+8x3e",
    irreps_mlp_mid="384x0e+192x1e+192x2e+96x3e",
)
_MD17_L3_E3 = dict(
    irreps_node_embedding="128x0e+64x0o+32x1e+32x1o+32x2e+32x2o+16x3e+16x3o",
    irreps_sh="1x0e+1x1o+1x2e+1x3o",
    irreps_head="32x0e+16x0o+8x1e+8x1o+8x2e+8x2o+4x3e+4x3o",
    irreps_mlp_mid="384x0e+192x0o+96x1e+96x1o+96x2e+96x2o+48x3e+48x3o",
)
_OC20 = dict(
    num_layers=6,
    irreps_node_embedding="256x0e+128x1e",
    irreps_sh="1x0e+1x1e",
    irreps_head="32x0e+16x1e",
    num_heads=8,
    irreps_pre_attn="256x0e+128x1e",
    irreps_mlp_mid="768x0e+384x1e",
    irreps_feature="512x0e",
    type_numbers=OC20_TYPES,
    avg_num_nodes=OC20_AVG_NUM_NODES,
    avg_degree=OC20_AVG_DEGREE,
    radial_basis="gaussian",
    num_basis=128,
    alpha_drop=0.2,
    max_neighbors=500,
    num_tags=3,
    periodic=True,
    output="energy",
)
_OC20_AUX = dict(_OC20, irreps_feature="512x0e+256x1e", aux_head=True, drop_path=0.05)
_OC20_E3 = dict(
    irreps_node_embedding="256x0e+64x0o+64x1e+64x1o",
    irreps_pre_attn="256x0e+64x0o+64x1e+64x1o",
    irreps_sh="1x0e+1x1o",
    irreps_head="32x0e+8x0o+8x1e+8x1o",
    irreps_mlp_mid="768x0e+192x0o+192x1e+192x1o",
)

_REF = "atomicarchitects/equiformer"
_VARIANTS: dict[str, EquiformerConfig] = {}


def _add(name: str, description: str, reference: str, paper_params: int | None = None, **kw) -> None:
    _VARIANTS[name] = EquiformerConfig(
        name=name, description=description, reference=f"{_REF}: {reference}", paper_params=paper_params, **kw
    )


_add(
    "qm9-l2",
    "QM9, Lmax=2, non-linear messages, MLP attention, Gaussian radial basis (the paper's Equiformer)",
    "graph_attention_transformer_nonlinear_l2",
    3531715,
    **_QM9,
)
_add(
    "qm9-l2-bessel",
    "QM9, Lmax=2, Bessel radial basis (8), alpha-dropout 0.2 (ZPVE)",
    "graph_attention_transformer_nonlinear_bessel_l2",
    **dict(_QM9, radial_basis="bessel", num_basis=8),
)
_add(
    "qm9-l2-bessel-drop01",
    "QM9, Lmax=2, Bessel radial basis (8), alpha-dropout 0.1 (R^2)",
    "graph_attention_transformer_nonlinear_bessel_l2_drop01",
    **dict(_QM9, radial_basis="bessel", num_basis=8, alpha_drop=0.1),
)
_add(
    "qm9-l2-bessel-drop0",
    "QM9, Lmax=2, Bessel radial basis (8), no alpha-dropout (U0, U, H, G)",
    "graph_attention_transformer_nonlinear_bessel_l2_drop00",
    3477705,
    **dict(_QM9, radial_basis="bessel", num_basis=8, alpha_drop=0.0),
)
_add(
    "qm9-l2-linear",
    "QM9 ablation: linear messages with MLP attention",
    "graph_attention_transformer_l2",
    3008515,
    **dict(_QM9, attention="mlp_linear"),
)
_add(
    "qm9-l2-dot",
    "QM9 ablation: dot-product attention (linear messages)",
    "dot_product_attention_transformer_l2",
    3352579,
    **dict(_QM9, attention="dot_product"),
)
_add(
    "qm9-l2-e3",
    "QM9, Lmax=2, E(3)-equivariant (odd-parity irreps)",
    "graph_attention_transformer_nonlinear_l2_e3",
    **dict(_QM9, **_QM9_E3),
)
_add(
    "md17-l2",
    "MD17 force field, Lmax=2, exp-normal radial basis, energy and forces = -dE/dx",
    "graph_attention_transformer_nonlinear_exp_l2_md17",
    3496001,
    **_MD17,
)
_add(
    "md17-l3",
    "MD17 force field, Lmax=3, exp-normal radial basis, energy and forces = -dE/dx",
    "graph_attention_transformer_nonlinear_exp_l3_md17",
    5500865,
    **dict(_MD17, **_MD17_L3),
)
_add(
    "md17-l3-e3",
    "MD17 force field, Lmax=3, E(3)-equivariant (odd-parity irreps)",
    "graph_attention_transformer_nonlinear_exp_l3_e3_md17",
    **dict(_MD17, **_MD17_L3_E3),
)
_add(
    "oc20-l1",
    "OC20 IS2RE, Lmax=1, 6 blocks, periodic, atom-type + tag embedding",
    "oc20/configs/is2re/all/graph_attention_transformer/l1_256_nonlinear_g@2_local.yml",
    9123331,
    **_OC20,
)
_add(
    "oc20-l1-aux",
    "OC20 IS2RE + IS2RS auxiliary head (noisy nodes), 6 blocks",
    "oc20/configs/is2re/all/graph_attention_transformer/l1_256_nonlinear_aux_g@2_local.yml",
    10130819,
    **_OC20_AUX,
)
_add(
    "oc20-l1-aux18",
    "OC20 IS2RE + IS2RS auxiliary head (noisy nodes), 18 blocks (the paper's best)",
    "oc20/configs/is2re/all/graph_attention_transformer/l1_256_blocks@18_nonlinear_aux_g@4_local.yml",
    26773379,
    **dict(_OC20_AUX, num_layers=18),
)
_add(
    "oc20-l1-linear",
    "OC20 ablation: linear messages, 6 blocks (the paper's count; the repo yml says 8)",
    "oc20/configs/is2re/all/graph_attention_transformer/l1_256_g@2_local.yml",
    7837699,
    **dict(_OC20, attention="mlp_linear"),
)
_add(
    "oc20-l1-dot",
    "OC20 ablation: dot-product attention, 6 blocks (the paper's count; the repo yml says 8)",
    "oc20/configs/is2re/all/dp_attention_transformer/l1_256_g@2_local.yml",
    8722435,
    **dict(_OC20, attention="dot_product"),
)
_add(
    "oc20-l1-e3",
    "OC20 IS2RE, Lmax=1, E(3)-equivariant (odd-parity irreps), 6 blocks",
    "oc20/configs/is2re/all/graph_attention_transformer/l1_256_e3_nonlinear_g@2_local.yml",
    **dict(_OC20, **_OC20_E3),
)


def list_variants(pattern: str = "*") -> list[str]:
    """Variant names matching a shell-style wildcard, in registry order."""
    return [n for n in _VARIANTS if fnmatch.fnmatchcase(n, pattern)]


def get_variant(name: str) -> EquiformerConfig:
    try:
        return _VARIANTS[name]
    except KeyError:
        close = [n for n in _VARIANTS if name.split("-")[0] in n][:5] or list(_VARIANTS)[:5]
        raise KeyError(
            f"unknown Equiformer variant {name!r}; try one of {close} (`equizoo variants` lists all)"
        ) from None
