"""Load checkpoints of the authors' reference Equiformer code into equizoo models.

The reference saves `torch.save({'state_dict': model.state_dict(), ...})` (keys possibly prefixed by
`module.` from DDP). Its tensor products are e3nn modules whose weights are flat vectors in instruction
order; equizoo keeps the same layout and the same Clebsch-Gordan signs (zoo.nn.cg), so conversion is a
renaming of keys plus dropping e3nn's derived buffers. Nothing is unpickled beyond tensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from zoo.errors import ZooError
from zoo.models.config import EquiformerConfig
from zoo.models.equiformer import Equiformer, build_model

# e3nn buffers derived from the irreps (recomputed by equizoo) and empty placeholders
_DROP = (
    re.compile(r"\.output_mask$"),
    re.compile(r"\._compiled_main_left_right\."),
    re.compile(r"\.gate\.mul\.weight$"),
    re.compile(r"^atomref$"),
)
_RENAME = (
    (re.compile(r"^(atom_embed|tag_embed)\.atom_type_lin\."), r"\1.lin."),
    (re.compile(r"\.(ga|dpa)\."), ".attn."),
    (re.compile(r"^auxiliary_head\."), "aux_head."),
    (re.compile(r"\.tp\.weight$"), ".weight"),
    (re.compile(r"^rbf\.rbf\.frequencies$"), "rbf.frequencies"),
)
_BIAS = re.compile(r"^(.*)\.bias\.(\d+)$")


class ConversionError(ZooError, ValueError):
    """A reference checkpoint does not match the chosen equizoo variant."""


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read a reference checkpoint: a safetensors state dict, or a torch.save'd dict (weights_only) that
    holds the state dict directly or under 'state_dict' / 'model'."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ConversionError(
            f"could not read {path} as a weights-only torch checkpoint ({exc.__class__.__name__}: {exc}). "
            "Save the reference model's state_dict with torch.save or safetensors."
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} does not contain a state dict of tensors")
    return dict(obj)


def convert_state_dict(reference: Mapping[str, torch.Tensor], model: Equiformer) -> dict[str, torch.Tensor]:
    """Map a reference state dict onto `model`'s parameter names; errors list every unmatched key."""
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    biases: dict[str, list[tuple[int, torch.Tensor]]] = {}
    unexpected = []
    for key, value in reference.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if any(p.search(key) for p in _DROP) or value.numel() == 0:
            continue
        for pattern, repl in _RENAME:
            key = pattern.sub(repl, key)
        m = _BIAS.match(key)
        if m:
            biases.setdefault(f"{m.group(1)}.bias", []).append((int(m.group(2)), value))
            continue
        if key not in target:
            unexpected.append(key)
            continue
        out[key] = value
    for key, parts in biases.items():
        out[key] = torch.cat([v for _, v in sorted(parts, key=lambda t: t[0])])
        if key not in target:
            unexpected.append(key)
    missing = [k for k, v in target.items() if k not in out and v.numel() > 0]
    shape_errors = [
        f"{k}: checkpoint {tuple(out[k].shape)} vs model {tuple(target[k].shape)}"
        for k in out
        if k in target and out[k].numel() != target[k].numel()
    ]
    if unexpected or missing or shape_errors:
        raise ConversionError(
            f"checkpoint does not match variant {model.config.name!r}: "
            f"{len(unexpected)} unexpected keys {unexpected[:8]}, {len(missing)} missing keys {missing[:8]}, "
            f"shape mismatches {shape_errors[:8]}. Pick the variant the checkpoint was trained with (`equizoo variants`)."
        )
    return {k: v.reshape(target[k].shape).to(target[k].dtype) for k, v in out.items()}


def has_float32_cg(reference: Mapping[str, torch.Tensor]) -> bool:
    """Whether the checkpoint's e3nn tensor products carry float32 Wigner 3j buffers (as every float32
    reference checkpoint does); the converted model then uses the same rounded coefficients."""
    return any(
        k.split("._compiled_main_left_right._w3j_")[-1] != k and v.dtype == torch.float32 for k, v in reference.items()
    )


def load_reference(
    checkpoint: Union[str, Path, Mapping[str, torch.Tensor]],
    variant: Union[str, EquiformerConfig],
    dtype: torch.dtype = torch.float32,
) -> Equiformer:
    """Build `variant` and load a reference checkpoint (path or state dict) into it, in eval mode."""
    reference = checkpoint if isinstance(checkpoint, Mapping) else read_state_dict(checkpoint)
    model = build_model(variant, cg_float32=has_float32_cg(reference)).to(dtype)
    model.load_state_dict(convert_state_dict(reference, model), strict=False)
    return model.eval()


def convert_reference_checkpoint(
    checkpoint,
    variant: str,
    out,
    dtype: str = "float32",
    overwrite: bool = False,
    target: Optional[str] = None,
    unit: Optional[str] = None,
    mean: float = 0.0,
    std: float = 1.0,
) -> dict:
    """Convert a reference checkpoint file into an equizoo model directory; returns a summary.

    The reference keeps target normalisation outside the network (in its training loop or OCP's
    normalizer); give `mean`/`std`/`unit` to bake it in (e.g. OC20 IS2RE: mean -1.525913953781128,
    std 2.279365062713623, eV), else the model outputs the raw network value.
    """
    from zoo.artifact import save_model_dir
    from zoo.models.equiformer import count_parameters
    from zoo.models.zoo_model import TargetInfo, ZooModel

    if dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    if std == 0:
        raise ValueError("--std must be non-zero")
    network = load_reference(checkpoint, variant, dtype=getattr(torch, dtype))
    name = target or network.output_key
    info = TargetInfo(
        name=name,
        unit=unit or "raw",
        mean=mean,
        std=std,
        description=f"converted from a reference checkpoint ({Path(checkpoint).name})",
        forces_unit=f"{unit}/Å" if (unit and network.config.forces) else None,
    )
    model = ZooModel({name: network}, [info])
    metadata = {"source": "reference checkpoint (atomicarchitects/equiformer)", "checkpoint": Path(checkpoint).name}
    save_model_dir(model, out, metadata=metadata, name=f"{variant}-converted", overwrite=overwrite)
    return {
        "out": str(out),
        "variant": network.config.name,
        "params": count_parameters(network),
        "dtype": dtype,
        "target": name,
    }
