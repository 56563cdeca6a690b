"""Dump e3nn 0.4.4's Wigner 3j symbols (l <= 3) for tests/data.

The reference Equiformer was built on e3nn 0.4.4, whose `wigner_3j` differs in sign from e3nn >= 0.5
for some (l1, l2, l3). equizoo builds its tensor products with the reference convention
(`zoo.nn.cg.reference_wigner_3j`); this file lets the tests check that convention without e3nn 0.4.4.

Usage (e3nn 0.4.4 unpacked into a scratch folder; it needs the env var to import on torch >= 2.6):
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 PYTHONPATH=/tmp/e3nn044 python tools/dump_e3nn044_wigner3j.py OUT
"""

import sys

import e3nn
import torch
from e3nn import o3
from safetensors.torch import save_file

assert e3nn.__version__ == "0.4.4", e3nn.__version__
tensors = {}
for l1 in range(4):
    for l2 in range(4):
        for l3 in range(abs(l1 - l2), min(l1 + l2, 3) + 1):
            tensors[f"{l1}_{l2}_{l3}"] = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).contiguous()
save_file(tensors, sys.argv[1], metadata={"e3nn": e3nn.__version__})
