"""What an export measured, and the `exports.json` record of a model directory's exported files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Union

from zoo.artifact import EXPORTS


@dataclass(frozen=True)
class ExportResult:
    """One exported file: its format, dtype and device, and its largest deviation from eager on the check
    structures (absolute, over every output) next to the tolerance it had to meet."""

    format: str
    path: Path
    dtype: str
    device: str
    max_abs_error: float
    tolerance: float
    seconds: float
    torch_version: str = ""  # the torch that wrote it (an AOTInductor package runs only with that version)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = Path(self.path).name
        d["seconds"] = round(self.seconds, 1)
        return d


def read_exports(model_dir: Union[str, Path]) -> Dict[str, dict]:
    """The recorded exports of a model directory ({} if none)."""
    path = Path(model_dir) / EXPORTS
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("exports", {}))
    except (json.JSONDecodeError, AttributeError):
        return {}


def write_exports(model_dir: Union[str, Path], records: Dict[str, dict]) -> Path:
    """Write `exports.json` atomically."""
    import torch

    from zoo._version import __version__

    path = Path(model_dir) / EXPORTS
    doc = {"equizoo_version": __version__, "torch_version": torch.__version__, "exports": records}
    from zoo.io import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path
