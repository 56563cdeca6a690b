"""The Python entry points: `zoo.load(spec)` gives a ready model from a directory, a registry name or
an `hf-hub:ORG/NAME@REV` id."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch


def resolve(spec: Union[str, Path]) -> Path:
    """A local model directory for `spec`: an existing directory, or (through zoo.hub.pull) a registry
    name or Hub id, holding only files whose sha256 was verified. A registry name is looked for at its
    pinned Hub revision, in the installed model distribution `equizoo-models`, in $EQUIZOO_RELEASES and in
    a source checkout's releases/, in that order."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from zoo.hub import resolve_model  # the Hub client is imported only when needed

    return resolve_model(str(spec))


def load(spec: Union[str, Path], dtype: Optional[torch.dtype] = None, device: Union[str, torch.device] = "cpu"):
    """Load a model (ZooModel, eval mode) from a directory, registry name or Hub id."""
    from zoo.artifact import load_model_dir

    return load_model_dir(resolve(spec), dtype=dtype, device=device)
