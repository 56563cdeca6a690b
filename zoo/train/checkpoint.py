"""Training checkpoints, written atomically: ``<run>/checkpoints/step_<N>/`` holds

- ``model.safetensors``: the network's state dict (parameters and persistent buffers);
- ``ema.safetensors``: the EMA weights, when EMA is on;
- ``optimizer.pt``: the AdamW state dict (tensors, numbers and lists only; read with weights_only=True);
- ``state.json``: step, best validation result, metrics history and the running train sums.

Random numbers are not stored because none are carried between steps: the data order is a function of
(seed, epoch), noisy nodes of (seed, epoch, structure) and dropout of (seed, step, rank), so the step
counter is the whole random state. A checkpoint folder is written under a temporary name and renamed,
so a killed run leaves either a complete checkpoint or none.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.io import atomic_write, atomic_write_text, make_temp_dir  # noqa: F401 - atomic_write_text is used as ckpt.atomic_write_text
from zoo.train.errors import TrainError

CHECKPOINTS = "checkpoints"
PREFIX = "step_"


def tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached copies (what safetensors stores)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_weights(path: Path, state: Mapping[str, torch.Tensor], metadata: dict | None = None) -> None:
    """A safetensors file written atomically."""
    atomic_write(
        path, lambda tmp: save_file(tensors(state), tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
    )


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise TrainError(
            f"{path} cannot be read ({exc}); the checkpoint is damaged, resume from an earlier one"
        ) from exc


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(path: str | Path) -> Path:
    """The newest checkpoint under a run folder, or the checkpoint folder itself."""
    path = Path(path)
    if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise TrainError(f"{path} holds no checkpoint (expected {path / CHECKPOINTS}/{PREFIX}<N>/); nothing to resume")
    return found[-1]


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: Mapping[str, torch.Tensor] | None, state: Mapping, keep: int) -> Path:  # fmt: skip
    """Write checkpoint ``step`` and prune all but the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:09d}"
    tmp = make_temp_dir(root, f".{final.name}.")
    try:
        save_file(tensors(model.state_dict()), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(tensors(ema), str(tmp / "ema.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".{PREFIX}*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[dict, dict | None]:
    """Restore model and optimizer in place; return (state, EMA weights or None)."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainError(f"{path / 'state.json'} cannot be read ({exc}); resume from an earlier checkpoint") from exc
    weights = load_weights(path / "model.safetensors", device)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise TrainError(
            f"{path}: the checkpoint does not match the recipe's model ({str(exc).splitlines()[0]})"
        ) from exc
    try:
        opt_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(opt_state)
    except Exception as exc:
        raise TrainError(f"{path / 'optimizer.pt'} cannot be restored ({exc.__class__.__name__}: {exc})") from exc
    ema_path = path / "ema.safetensors"
    ema = load_weights(ema_path, device) if ema_path.is_file() else None
    return state, ema
