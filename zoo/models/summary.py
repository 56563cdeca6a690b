"""Human- and machine-readable summaries of the variants (for `equizoo variants`)."""

from __future__ import annotations

from e3nn import o3

from zoo.models.equiformer import build_model, count_parameters
from zoo.models.variants import get_variant, list_variants


def variant_summaries(pattern: str = "*") -> list[dict]:
    rows = []
    for name in list_variants(pattern):
        c = get_variant(name)
        predicts = (
            "energy + forces (-dE/dx)"
            if c.forces
            else ("adsorption energy" if c.periodic else "one molecular property")
        )
        if c.aux_head:
            predicts += " + IS2RS displacement"
        rows.append(
            {
                "name": name,
                "params": count_parameters(build_model(c)),
                "paper_params": c.paper_params,
                "lmax": o3.Irreps(c.irreps_node_embedding).lmax,
                "num_layers": c.num_layers,
                "irreps_node_embedding": c.irreps_node_embedding,
                "irreps_sh": c.irreps_sh,
                "irreps_feature": c.irreps_feature,
                "attention": c.attention,
                "radial_basis": f"{c.radial_basis}({c.num_basis})",
                "r_max": c.r_max,
                "periodic": c.periodic,
                "predicts": predicts,
                "description": c.description,
            }
        )
    return rows
