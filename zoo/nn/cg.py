"""Clebsch-Gordan coefficients in the reference's convention, and activation constants.

The reference Equiformer ran on e3nn 0.4.4. e3nn >= 0.5 returns `wigner_3j(l1, l2, l3)` with the opposite
sign for some triples (measured against 0.4.4 for l <= 4; see tools/dump_e3nn044_wigner3j.py). A sign is a
free convention of each tensor-product path, so both are equivariant, but only the reference's gives the
same outputs for the same weights. equizoo builds every path with the reference's sign, so checkpoints
of the authors' code load without touching their weights, and equizoo checkpoints stay valid for it.
"""

import functools

import torch
from e3nn import o3

# (l1, l2, l3) whose e3nn>=0.5 Wigner 3j is the negative of e3nn 0.4.4's (every triple with l <= 4, l3 <= 6)
E3NN_044_FLIPPED: frozenset[tuple[int, int, int]] = frozenset(
    {
        (1, 2, 2), (1, 3, 3), (1, 4, 4), (2, 1, 2), (2, 2, 1), (3, 1, 3),
        (3, 3, 1), (3, 4, 6), (4, 1, 4), (4, 3, 6), (4, 4, 1), (4, 4, 5),
    }
)  # fmt: skip
MAX_CHECKED_L = 4

# e3nn's second-moment normalisation constants (1e6 standard-normal samples, seed 0, float64); identical
# in e3nn 0.4.4 and 0.6.0. Kept as literals so the network does not draw a million samples per import.
SILU_NORM = 1.6791767923989418
SIGMOID_NORM = 1.8467055342154763
SMOOTH_LEAKY_RELU_02_NORM = 1.531320475574866


@functools.cache
def _reference_w3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    if max(l1, l2) > MAX_CHECKED_L:
        raise ValueError(f"the e3nn 0.4.4 sign convention is only recorded for l <= {MAX_CHECKED_L}")
    c = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
    return -c if (l1, l2, l3) in E3NN_044_FLIPPED else c


def reference_wigner_3j(l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Wigner 3j symbol [2l1+1, 2l2+1, 2l3+1] with e3nn 0.4.4's sign convention."""
    return _reference_w3j(l1, l2, l3).to(dtype).clone()
