"""The published configurations: parameter counts, Clebsch-Gordan conventions, constants, harmonics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e3nn import o3
from e3nn.math import normalize2mom
from safetensors.torch import load_file

from zoo.models import build_model, count_parameters, get_variant, list_variants
from zoo.nn import SphericalHarmonics
from zoo.nn.activation import SmoothLeakyReLU
from zoo.nn.cg import E3NN_044_FLIPPED, SIGMOID_NORM, SILU_NORM, SMOOTH_LEAKY_RELU_02_NORM, reference_wigner_3j
from zoo.nn.dtp import DepthwiseTensorProduct
from zoo.nn.linear import IrrepsLinear

PAPER_COUNTS = {
    "qm9-l2": 3_531_715,
    "qm9-l2-linear": 3_008_515,
    "qm9-l2-dot": 3_352_579,
    "qm9-l2-bessel-drop0": 3_477_705,
    "md17-l2": 3_496_001,
    "md17-l3": 5_500_865,
    "oc20-l1": 9_123_331,
    "oc20-l1-aux": 10_130_819,
    "oc20-l1-aux18": 26_773_379,
    "oc20-l1-linear": 7_837_699,
    "oc20-l1-dot": 8_722_435,
}
REQUIRED = [
    "qm9-l2",
    "qm9-l2-bessel",
    "qm9-l2-bessel-drop0",
    "qm9-l2-linear",
    "qm9-l2-dot",
    "md17-l2",
    "md17-l3",
    "oc20-l1",
    "oc20-l1-aux18",
]


@pytest.mark.parametrize("name,count", PAPER_COUNTS.items())
def test_parameter_counts_equal_the_paper(name, count):
    assert count_parameters(build_model(name)) == count
    assert get_variant(name).paper_params == count


def test_every_named_variant_exists_including_e3():
    names = list_variants()
    for name in REQUIRED:
        assert name in names
    assert {n for n in names if n.endswith("-e3")} == {"qm9-l2-e3", "md17-l3-e3", "oc20-l1-e3"}
    assert list_variants("md17-*") == ["md17-l2", "md17-l3", "md17-l3-e3"]
    with pytest.raises(KeyError, match="equizoo variants"):
        get_variant("qm9-l7")


def test_radial_weight_counts():
    """Depthwise-TP weight counts of the spec: 960 (QM9 L2), 2112 (MD17 L3), 896 (OC20 L1)."""
    for name, numel in (("qm9-l2", 960), ("md17-l3", 2112), ("oc20-l1", 896)):
        assert build_model(name).edge_deg_embed.dw.weight_numel == numel


def test_wigner_3j_has_the_reference_sign():
    old = load_file(str(Path(__file__).parent / "data" / "e3nn_0_4_4_wigner_3j.safetensors"))
    assert len(old) > 20
    for key, value in old.items():
        l1, l2, l3 = map(int, key.split("_"))
        torch.testing.assert_close(reference_wigner_3j(l1, l2, l3), value, rtol=0, atol=1e-12)
        flipped = (l1, l2, l3) in E3NN_044_FLIPPED
        torch.testing.assert_close(
            o3.wigner_3j(l1, l2, l3, dtype=torch.float64), -value if flipped else value, rtol=0, atol=1e-12
        )


def test_activation_constants_equal_e3nn():
    assert SILU_NORM == pytest.approx(normalize2mom(torch.nn.functional.silu).cst, rel=1e-15)
    assert SIGMOID_NORM == pytest.approx(normalize2mom(torch.sigmoid).cst, rel=1e-15)
    raw = SmoothLeakyReLU(0.2).double()  # its constants are buffers, exact in float64
    assert SMOOTH_LEAKY_RELU_02_NORM == pytest.approx(normalize2mom(lambda x: raw(x) / raw.cst).cst, rel=1e-15)
    assert (
        round(SILU_NORM, 6) == 1.679177
        and round(SIGMOID_NORM, 6) == 1.846706
        and round(SMOOTH_LEAKY_RELU_02_NORM, 6) == 1.53132
    )


@pytest.mark.parametrize("irreps", ["1x0e+1x1e+1x2e", "1x0e+1x1e+1x2e+1x3e", "1x0e+1x1o+1x2e+1x3o", "1x0e+1x1e"])
def test_spherical_harmonics_equal_e3nn(irreps):
    vec = torch.randn(50, 3, dtype=torch.float64)
    ours = SphericalHarmonics(irreps).double()(vec)
    ref = o3.spherical_harmonics(o3.Irreps(irreps), vec, normalize=True, normalization="component")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-13)


def test_dtype_round_trip_keeps_exact_coefficients():
    model = build_model("md17-l2")
    exact = build_model("md17-l2").double().edge_deg_embed.dw.op_matrix.clone()
    model.float().double()
    torch.testing.assert_close(model.edge_deg_embed.dw.op_matrix, exact, rtol=0, atol=0)


def test_config_round_trip_and_unknown_keys():
    from zoo.models import EquiformerConfig

    c = get_variant("oc20-l1-aux18")
    assert EquiformerConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown Equiformer config keys"):
        EquiformerConfig.from_dict({**c.to_dict(), "lmax_typo": 3})


def test_repr_is_readable():
    text = repr(build_model("qm9-l2"))
    assert "DepthwiseTensorProduct(128x0e+64x1e+32x2e x 1x0e+1x1e+1x2e" in text
    assert "IrrepsLinear(" in text and "variant='qm9-l2'" in text


@pytest.mark.parametrize("irreps_sh", ["1x0e+1x1e+1x2e", "1x0e+1x1e+1x1e+1x2e"])
def test_deferred_scalar_pieces_equal_the_expanded_tensor_product(irreps_sh):
    """A 0e input block's piece of an l>0 output block reaches the linear map un-expanded (channels mixed
    first): the same numbers as expanding it first, also when several SH blocks give it several paths."""
    torch.manual_seed(0)
    irreps = o3.Irreps("6x0e+4x1e+2x2e")
    dtp = DepthwiseTensorProduct(irreps, irreps_sh, irreps).double()
    lin = IrrepsLinear(dtp.irreps_out.simplify(), irreps).double()
    e = 7
    xs = [torch.randn(e, ir.dim, mul, dtype=torch.float64) for mul, ir in irreps]
    sh = torch.randn(e, o3.Irreps(irreps_sh).dim, dtype=torch.float64)
    weight = torch.randn(e, dtp.weight_numel, dtype=torch.float64)
    pieces, operators = dtp(xs, sh, weight)
    assert any(k >= 0 for k in dtp.deferred)
    assert max(op.shape[-1] for op in operators) == (2 if irreps_sh.count("1x1e") == 2 else 1)
    expanded = [list(row) for row in pieces]
    for o, k in enumerate(dtp.deferred):
        if k >= 0:
            op, x = operators[o], pieces[o][k]
            paths = op.shape[2]
            full = op.unsqueeze(-1) * x.view(e, 1, paths, -1)
            expanded[o][k] = full.reshape(e * op.shape[1], -1)
    torch.testing.assert_close(
        lin.forward_pieces(pieces, e, None, operators, dtp.deferred),
        lin.forward_pieces(expanded, e),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", ["md17-l2", "qm9-l2-dot", "qm9-l2-linear", "oc20-l1-aux"])
def test_a_structure_without_edges_runs_and_feels_no_force(name):
    """Two atoms farther apart than the cutoff: no edges at all, finite outputs, exactly zero forces."""
    torch.manual_seed(0)
    model = build_model(name, num_layers=2).double().eval()
    model.compute_forces = True
    pos = torch.tensor([[0.0, 0.0, 0.0], [4.0 * model.r_max, 0.0, 0.0]], dtype=torch.float64)
    extra = {"tags": torch.tensor([0, 2])} if model.use_tags else {}
    out = model(
        pos, torch.tensor([1, 6]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, dtype=torch.long), **extra
    )
    assert all(torch.isfinite(v).all() for v in out.values())
    assert torch.equal(out["forces"], torch.zeros(2, 3, dtype=torch.float64))


def _weights_in_graph(root) -> list:
    """The leaf tensors an output's autograd graph accumulates gradients into."""
    seen, leaves, todo = set(), [], [root]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        todo.extend(f for f, _ in node.next_functions)
    return leaves


def test_an_eval_force_call_takes_the_weights_as_constants_and_gives_them_back(monkeypatch):
    """Eval-mode forces free their graph (no create_graph), so the weights stay out of it for the call:
    forces and virial equal those of a graph through the weights (train mode, this variant has no
    dropout), and afterwards every weight requires gradients as before, also when the call raises."""
    from structures import qm9_molecule

    from zoo.graph import radius_graph

    torch.manual_seed(0)
    model = build_model("md17-l2", num_layers=2).double()
    model.atom_embed.lin.weight.requires_grad_(False)  # frozen by the caller: stays frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    z, pos = qm9_molecule(5000)
    batch = torch.zeros(len(z), dtype=torch.long)
    args = (pos, z, radius_graph(pos, batch, model.r_max), batch)

    trained = model.train()(*args, compute_virial=True)
    assert any(isinstance(p, torch.nn.Parameter) for p in _weights_in_graph(trained["energy"].grad_fn))
    out = model.eval()(*args, compute_virial=True)
    assert not any(isinstance(p, torch.nn.Parameter) for p in _weights_in_graph(out["energy"].grad_fn))
    for key in ("energy", "forces", "virial"):
        torch.testing.assert_close(out[key], trained[key].detach(), rtol=1e-12, atol=1e-12)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before

    def fail(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "_outputs", fail)
    with pytest.raises(RuntimeError, match="boom"):
        model(*args)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
