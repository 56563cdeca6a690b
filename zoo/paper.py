"""The paper's numbers (Liao & Smidt, ICLR 2023), in one table that the registry, `equizoo eval` and the
model cards read: test/validation MAE per dataset, target and variant, with units and where they come from."""

from __future__ import annotations

# QM9, paper Table 1 (test MAE): value and unit per target
QM9 = {
    "mu": (0.011, "D"), "alpha": (0.046, "a0^3"), "homo": (15, "meV"), "lumo": (14, "meV"), "gap": (30, "meV"),
    "r2": (0.251, "a0^2"), "zpve": (1.26, "meV"), "U0": (6.59, "meV"), "U": (6.74, "meV"), "H": (6.63, "meV"),
    "G": (7.63, "meV"), "Cv": (0.023, "cal/mol/K"),
}  # fmt: skip
# QM9 ablation table (test MAE, units as in QM9) of the variants without the paper's full attention
QM9_ABLATION = {
    "qm9-l2-linear": {"alpha": 0.051, "gap": 32, "homo": 16, "lumo": 16, "mu": 0.013, "Cv": 0.025},
    "qm9-l2-dot": {"alpha": 0.053, "gap": 32, "homo": 17, "lumo": 16, "mu": 0.013, "Cv": 0.025},
}
# MD17, paper Table 2 (as repeated in DeNS Table 4): (energy MAE meV, force MAE meV/Å) per Lmax and molecule
MD17_UNITS = ("meV", "meV/Å")
MD17 = {
    "l2": {
        "aspirin": (5.3, 7.2), "ethanol": (2.2, 3.1), "naphthalene": (3.7, 2.1), "salicylic_acid": (4.5, 4.1),
        "benzene": (2.2, 6.6), "malonaldehyde": (3.3, 5.8), "toluene": (3.8, 2.1), "uracil": (4.3, 3.3),
    },
    "l3": {
        "aspirin": (5.3, 6.6), "ethanol": (2.2, 2.9), "naphthalene": (4.4, 2.0), "salicylic_acid": (4.3, 3.9),
        "benzene": (2.5, 8.1), "malonaldehyde": (3.2, 5.4), "toluene": (3.7, 2.1), "uracil": (4.3, 3.4),
    },
}  # fmt: skip
# OC20 IS2RE, energy MAE in eV per variant and split (6 blocks trained on IS2RE only; aux18: 18 blocks with
# the IS2RS auxiliary head and Noisy Nodes, whose val_id number is the authors' README's)
OC20_VAL_SPLITS = ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")
OC20_TEST_SPLITS = ("test_id", "test_ood_ads", "test_ood_cat", "test_ood_both")
OC20 = {
    "oc20-l1": dict(
        zip(OC20_VAL_SPLITS + OC20_TEST_SPLITS, (0.5088, 0.6271, 0.5051, 0.5545, 0.5037, 0.6881, 0.5213, 0.6301))
    ),
    "oc20-l1-linear": dict(zip(OC20_VAL_SPLITS, (0.5168, 0.6308, 0.5088, 0.5657))),
    "oc20-l1-dot": dict(zip(OC20_VAL_SPLITS, (0.5386, 0.6382, 0.5297, 0.5692))),
    "oc20-l1-aux18": dict(zip(("val_id",) + OC20_TEST_SPLITS, (0.4156, 0.4171, 0.5479, 0.4248, 0.4741))),
}
SOURCES = {
    "qm9": "paper Table 1",
    "qm9-ablation": "paper QM9 ablation table",
    "md17": "paper Table 2 (DeNS Table 4)",
    "oc20": "paper OC20 IS2RE validation (6 blocks)",
    "oc20-l1-aux18": "authors' README (val ID, IS2RE+IS2RS+Noisy Nodes)",
}
