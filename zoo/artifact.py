"""A model directory: `model.safetensors` (weights) + `config.json` (network config and metadata).

Every command that takes a model accepts such a directory. Writes go to a temporary sibling directory
that is renamed into place, so an interrupted save never leaves a half-written model.
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
from zoo.models.config import EquiformerConfig
from zoo.models.equiformer import Equiformer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "equizoo-model/1"


class ArtifactError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


def save_model_dir(model: Equiformer, out_dir: Union[str, Path], metadata: Optional[dict[str, Any]] = None, overwrite: bool = False) -> Path:
    """Write `model` (weights in its current dtype) and its config to `out_dir` atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ArtifactError(f"{out_dir} already exists; choose another --out or pass overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    dtype = next(model.parameters()).dtype
    config = {
        "format": FORMAT,
        "equizoo_version": __version__,
        "torch_version": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "model": model.config.to_dict(),
        "metadata": metadata or {},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "variant": model.config.name, "dtype": config["dtype"]})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if out_dir.exists():
            backup = out_dir.with_name(f".{out_dir.name}.old")
            os.replace(out_dir, backup)
            os.replace(tmp, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


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


def load_model_dir(model_dir: Union[str, Path], dtype: Optional[torch.dtype] = None, device: Union[str, torch.device] = "cpu") -> Equiformer:
    """Load a model directory into an eval-mode Equiformer (dtype: the saved one unless given)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{model_dir} has no {WEIGHTS}")
    model = Equiformer(EquiformerConfig.from_dict(config["model"]))
    saved_dtype = getattr(torch, config.get("dtype", "float32"))
    model = model.to(saved_dtype)
    state = load_file(str(weights))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if model.state_dict()[k].numel() > 0]
    if missing or result.unexpected_keys:
        raise ArtifactError(f"{weights} does not match its config: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model.to(device=device, dtype=dtype or saved_dtype).eval()
