"""Device choice and dtype names: the one place that turns `auto`/`cuda:1`/`float64` into torch objects."""

from __future__ import annotations

from typing import Optional, Union

import torch

from zoo.errors import UseError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64"}


def pick_device(device: Union[str, torch.device, None] = "auto", error: type = UseError) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`; `error` (a ZooError class) for a
    device that is unknown or asked for but absent."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise error(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(
            f"device {name!r} asked for but torch sees no CUDA GPU here (CUDA is not available); use --device cpu or auto"
        )
    return dev


def parse_dtype(dtype: Union[str, torch.dtype, None], error: type = UseError) -> Optional[torch.dtype]:
    """None (keep the model's own dtype), a torch dtype, `float32`/`float64` (or `fp32`/`fp64`)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise error(f"unsupported dtype {dtype}; use float32 or float64")
        return dtype
    name = DTYPE_ALIASES.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise error(f"unknown dtype {dtype!r}; use float32 or float64")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """`float32` for torch.float32 (the spelling of config.json, export metadata and result tables)."""
    return str(dtype).replace("torch.", "")
