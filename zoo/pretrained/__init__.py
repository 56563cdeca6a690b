"""The embedded default model: what `equizoo predict FILE` and `zoo.predict(...)` use without `--model`.

The package ships one small model directory as package data at `zoo/pretrained/default/`
(`config.json` + `model.safetensors`, the format of zoo.artifact), so that prediction works offline on a
fresh install. `install_default_model` puts a trained model there (the training issue does this before a
release). `EQUIZOO_DEFAULT_MODEL` overrides the location: a model directory, a registry name or an
`hf-hub:` id (tests point it at a model they build).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

from zoo.artifact import CARD, CONFIG, WEIGHTS, ArtifactError, atomic_write_dir, read_config

ENV_VAR = "EQUIZOO_DEFAULT_MODEL"
DEFAULT_MODEL_NAME = "equizoo-default"  # the name a default model directory is saved and reported under
PACKAGE_DIR = Path(__file__).resolve().parent / "default"


class DefaultModelMissing(ArtifactError):
    """No default model is installed (and none was configured through EQUIZOO_DEFAULT_MODEL)."""


def default_model_spec() -> Union[str, Path]:
    """The model spec used when none is given: $EQUIZOO_DEFAULT_MODEL, else the packaged directory."""
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        return override
    if not (PACKAGE_DIR / CONFIG).is_file() or not (PACKAGE_DIR / WEIGHTS).is_file():
        raise DefaultModelMissing(
            f"this installation ships no default model (expected {PACKAGE_DIR}/{CONFIG} and {WEIGHTS}); "
            f"pass a model with --model NAME|DIR (Python: model=...) or set {ENV_VAR} to a model directory"
        )
    return PACKAGE_DIR


def default_model_dir() -> Path:
    """The local directory of the default model (resolving a registry name or Hub id if configured)."""
    spec = default_model_spec()
    path = Path(spec).expanduser()
    if path.is_dir():
        read_config(path)
        return path
    if str(spec).startswith("hf-hub:") or not (os.sep in str(spec) or str(spec).startswith((".", "~"))):
        from zoo.hub import resolve_model  # the Hub client is imported only when a name must be resolved

        return resolve_model(str(spec))
    raise DefaultModelMissing(f"{ENV_VAR}={spec} is not a model directory; point it at a directory with {CONFIG}")


def default_model_name() -> str:
    """The name of the default model as written in its config.json."""
    return str(read_config(default_model_dir()).get("name") or DEFAULT_MODEL_NAME)


def install_default_model(model_dir: Union[str, Path], target: Union[str, Path, None] = None) -> Path:
    """Copy a model directory (config.json + model.safetensors, and a README.md card if present) to the
    packaged default location (or `target`), replacing what is there in one rename."""
    source = Path(model_dir)
    read_config(source)
    if not (source / WEIGHTS).is_file():
        raise ArtifactError(f"{source} has no {WEIGHTS}; save the model with zoo.artifact.save_model_dir first")

    def write(tmp: Path) -> None:
        for name in (CONFIG, WEIGHTS, CARD):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)

    return atomic_write_dir(Path(target) if target is not None else PACKAGE_DIR, write, overwrite=True)


__all__ = [
    "DEFAULT_MODEL_NAME",
    "ENV_VAR",
    "PACKAGE_DIR",
    "DefaultModelMissing",
    "default_model_dir",
    "default_model_name",
    "default_model_spec",
    "install_default_model",
]
