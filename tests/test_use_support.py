"""Small models for the use-layer tests (predict, eval, bench, calculator) and checks of them.

The networks are real Equiformer variants shrunk in width and depth (two blocks), wrapped in a ZooModel
with physical normalisation and saved as model directories, so the CLI tests load them like any model.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from zoo.artifact import read_config, save_model_dir
from zoo.data import QM9_UNITS
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel

REPO = Path(__file__).resolve().parents[1]
SMALL_L2 = dict(
    num_layers=2, irreps_node_embedding="16x0e+8x1e+4x2e", irreps_head="8x0e+4x1e+2x2e", num_heads=2,
    irreps_mlp_mid="32x0e+16x1e+8x2e", irreps_feature="32x0e", radial_hidden=(16, 16),
)  # fmt: skip
SMALL_L1 = dict(
    num_layers=2, irreps_node_embedding="16x0e+8x1e", irreps_pre_attn="16x0e+8x1e", irreps_head="8x0e+4x1e", num_heads=2,
    irreps_mlp_mid="32x0e+16x1e", irreps_feature="32x0e", radial_hidden=(16, 16), num_basis=32,
)  # fmt: skip
QM9_TEST_TARGETS = ("mu", "homo", "gap")
ASPIRIN_ENERGY_MEAN = -17630.0  # eV, about the MD17 aspirin DFT energy


def qm9_model(dtype=torch.float64) -> ZooModel:
    """Three QM9 targets (mu, homo, gap), one small network each, with realistic normalisation."""
    torch.manual_seed(0)
    stats = {"mu": (2.7, 1.5), "homo": (-6.5, 0.6), "gap": (6.8, 1.3)}
    nets = {t: build_model("qm9-l2", **SMALL_L2) for t in QM9_TEST_TARGETS}
    targets = [TargetInfo(t, QM9_UNITS[t], mean=stats[t][0], std=stats[t][1]) for t in QM9_TEST_TARGETS]
    return ZooModel(nets, targets).to(dtype).eval()


def md17_model(dtype=torch.float64, seed: int = 0) -> ZooModel:
    """A small md17-l2 force field (exp-normal basis, cosine cutoff) predicting energy and forces in eV."""
    torch.manual_seed(seed)
    target = TargetInfo(
        "energy", "eV", mean=ASPIRIN_ENERGY_MEAN, std=0.2, description="total energy", forces_unit="eV/Å"
    )
    return ZooModel({"energy": build_model("md17-l2", **SMALL_L2)}, [target]).to(dtype).eval()


def oc20_model(dtype=torch.float64) -> ZooModel:
    """A small oc20-l1 (periodic, tag embedding) predicting the relaxed adsorption energy in eV."""
    torch.manual_seed(0)
    target = TargetInfo("energy", "eV", mean=-1.5, std=1.0, description="relaxed adsorption energy (IS2RE)")
    return ZooModel({"energy": build_model("oc20-l1", **SMALL_L1)}, [target]).to(dtype).eval()


_BUILDERS = {"qm9": qm9_model, "md17": md17_model, "oc20": oc20_model}
_ROOT = Path(tempfile.mkdtemp(prefix="equizoo-use-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def model_dir(kind: str) -> Path:
    """A saved model directory of `kind` (qm9, md17, oc20), built once per test process."""
    return save_model_dir(_BUILDERS[kind](), _ROOT / f"{kind}-small", name=f"test-{kind}-small")


@functools.cache
def exported_model_dir(kind: str, fmt: str) -> Path:
    """A copy of model_dir(kind) with an export in `fmt` (zoo.export.export_model checks it against eager)."""
    from zoo.export import export_model

    target = _ROOT / f"{kind}-{fmt}"
    shutil.copytree(model_dir(kind), target)
    export_model(target, fmt, progress=False)
    return target


def test_small_models_save_and_describe_themselves():
    for kind in _BUILDERS:
        config = read_config(model_dir(kind))
        assert config["dtype"] == "float64" and config["networks"]
    assert [t["name"] for t in read_config(model_dir("qm9"))["targets"]] == list(QM9_TEST_TARGETS)
    assert read_config(model_dir("md17"))["networks"]["energy"]["forces"] is True
    assert read_config(model_dir("oc20"))["networks"]["energy"]["periodic"] is True
