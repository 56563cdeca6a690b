"""A model directory: `model.safetensors` (weights) + `config.json` (networks, targets, metadata).

Every command that takes a model accepts such a directory; exports (`model.torchscript.pt`, `model.onnx`,
`model.pt2`) and the model card (`README.md`) live beside them. Writes go to a temporary sibling
directory that is renamed into place, so an interrupted save never leaves a half-written model.

config.json:
    {"format": "equizoo-model/1", "name": ..., "dtype": "float32",
     "targets": [TargetInfo...], "networks": {target name: EquiformerConfig}, "metadata": {...}}
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from zoo import __version__
from zoo.io import make_temp_dir
from zoo.models.config import EquiformerConfig
from zoo.models.equiformer import Equiformer
from zoo.models.zoo_model import TargetInfo, ZooModel, wrap

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "equizoo-model/1"


class ArtifactError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


def as_zoo_model(model: Union[ZooModel, Equiformer]) -> ZooModel:
    return model if isinstance(model, ZooModel) else wrap(model)


def model_config(model: ZooModel, name: Optional[str] = None, metadata: Optional[dict] = None) -> dict:
    dtype = next(model.parameters()).dtype
    return {
        "format": FORMAT,
        "name": name or "-".join(net.config.name for net in model.networks.values()),
        "equizoo_version": __version__,
        "torch_version": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "targets": [t.to_dict() for t in model.targets],
        "networks": {k: net.config.to_dict() for k, net in model.networks.items()},
        "metadata": metadata or {},
    }


def atomic_write_dir(out_dir: Union[str, Path], write, overwrite: bool = False) -> Path:
    """Run `write(tmp_dir)` and move the result to `out_dir` in one rename (replacing it if allowed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ArtifactError(f"{out_dir} already exists; choose another output directory or overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir.parent, f".{out_dir.name}.")
    try:
        write(tmp)
        if out_dir.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, backup / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def save_model_dir(
    model: Union[ZooModel, Equiformer],
    out_dir: Union[str, Path],
    metadata: Optional[dict[str, Any]] = None,
    name: Optional[str] = None,
    overwrite: bool = False,
) -> Path:
    """Write weights (in the model's dtype) and config.json to `out_dir` atomically."""
    from safetensors.torch import save_file

    model = as_zoo_model(model)
    config = model_config(model, name, metadata)

    def write(tmp: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "name": config["name"], "dtype": config["dtype"]})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return atomic_write_dir(out_dir, write, overwrite=overwrite)


def read_config(model_dir: Union[str, Path]) -> dict:
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if not path.is_file():
        raise ArtifactError(f"{model_dir} is not an equizoo model directory: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the model") from exc
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{path} has format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def build_from_config(config: dict) -> ZooModel:
    targets = [TargetInfo.from_dict(t) for t in config["targets"]]
    networks = {name: Equiformer(EquiformerConfig.from_dict(c)) for name, c in config["networks"].items()}
    return ZooModel(networks, targets)


def load_model_dir(model_dir: Union[str, Path], dtype: Optional[torch.dtype] = None, device: Union[str, torch.device] = "cpu") -> ZooModel:
    """Load a model directory into an eval-mode ZooModel (dtype: the saved one unless given)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{model_dir} has no {WEIGHTS}")
    model = build_from_config(config).to(getattr(torch, config.get("dtype", "float32")))
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise ArtifactError(f"{weights} cannot be read ({exc}); the file is damaged, pull or export it again") from exc
    expected = model.state_dict()
    missing = [k for k, v in expected.items() if k not in state and v.numel() > 0]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ArtifactError(f"{weights} does not match {CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(state, strict=False)
    return model.to(device=device, dtype=dtype or next(model.parameters()).dtype).eval()
