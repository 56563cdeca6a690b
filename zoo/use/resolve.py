"""Model specs -> local model directories: a directory, a registry name or an `hf-hub:ORG/NAME@REV` id
(through zoo.hub, which verifies every file's sha256), or None for the embedded default; `load` gives
the ready ZooModel (`zoo.load`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from zoo.artifact import ArtifactError, load_model_dir, read_config
from zoo.errors import UseError
from zoo.pretrained import default_model_dir, default_model_spec


def resolve(spec: Union[str, Path]) -> Path:
    """A local model directory for `spec`: an existing directory, or (through zoo.hub.pull) a registry
    name or Hub id, holding only files whose sha256 was verified. A registry name is looked for at its
    pinned Hub revision, in the installed model distribution `equizoo-models`, in $EQUIZOO_RELEASES and in
    a source checkout's releases/, in that order."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from zoo.hub import resolve_model  # the Hub client (and huggingface_hub) is imported only when needed

    return resolve_model(str(spec))


def load(spec: Union[str, Path], dtype: Optional[torch.dtype] = None, device: Union[str, torch.device] = "cpu"):
    """Load a model (ZooModel, eval mode) from a directory, registry name or Hub id."""
    return load_model_dir(resolve(spec), dtype=dtype, device=device)


def resolve_model_dir(spec: Union[str, Path, None]) -> Path:
    """A local model directory for a spec (None: the embedded default); UseError naming the spec otherwise."""
    if spec is None:
        try:
            return default_model_dir()
        except (ArtifactError, UseError):
            raise
        except Exception as exc:  # noqa: BLE001 - a registry default goes through the Hub client, which raises many types
            raise UseError(f"default model {default_model_spec()}: {type(exc).__name__}: {exc}") from None
    path = Path(spec).expanduser()
    if path.is_dir():
        read_config(path)
        return path
    text = str(spec)
    if path.exists():
        raise UseError(
            f"model {spec}: not a model directory (give a directory with config.json, a registry name, an hf-hub: id or a TorchScript .pt file)"
        )
    if not text.startswith("hf-hub:") and (os.sep in text or text.startswith((".", "~"))):
        raise UseError(
            f"model {spec}: no such model directory; give a directory with config.json, a registry name or an hf-hub: id"
        )
    try:
        return resolve(text)
    except ModuleNotFoundError as exc:
        if exc.name not in ("zoo.hub", "huggingface_hub"):
            raise
        raise UseError(
            f"model {spec!r}: no such directory, and registry names / hf-hub ids need zoo.hub ({exc.name} is not installed)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the Hub client raises many types (network, lookup, checksum)
        raise UseError(f"model {spec!r}: {type(exc).__name__}: {exc}") from None
