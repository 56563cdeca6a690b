"""TorchScript export: the file C++ (`torch::jit::load`) and the LAMMPS pair style load.

Contract of the scripted module's forward (all tensors on one device; float tensors in `model_dtype`):
    forward(pos [N,3], species [N] int64 atomic numbers, edge_index [2,E] int64 (src=neighbour, dst=centre),
            batch [N] int64, edge_shift [E,3] or None, tags [N] int64 or None, num_graphs: int = -1)
        -> Dict[str, Tensor]: every target by name ([G], physical units) and its per-atom parts
           (`atomic_<name>`, [N]); for the energy target `forces` [N,3] when the module attribute
           `compute_forces` is true and `virial` [G,3,3] (-dE/dstrain) when `compute_virial` is true;
           `aux_displacement` [N,3] for IS2RS models. (A ZooModel; zoo.models.zoo_model.)
The edge vector is pos[src] + edge_shift - pos[dst]; only pairs closer than `r_max` may be edges.
Metadata (zoo.export.metadata) is stored in `_extra_files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from zoo.errors import ZooError
from zoo.export.metadata import KEYS, model_metadata
from zoo.io import atomic_path


class ExportMismatch(ZooError, RuntimeError):
    """An exported model disagrees with the eager model it came from."""


def check_outputs(reference: dict, candidate: dict, rtol: float, atol: float, what: str) -> float:
    """Compare output dicts; raise ExportMismatch naming the field. Returns the largest abs error."""
    worst = 0.0
    for key, ref in reference.items():
        if key not in candidate:
            raise ExportMismatch(f"{what}: output {key!r} is missing")
        got = candidate[key].detach().to(ref.device, ref.dtype)
        err = (got - ref.detach()).abs().max().item() if ref.numel() else 0.0
        if not torch.allclose(got, ref.detach(), rtol=rtol, atol=atol):
            raise ExportMismatch(f"{what}: output {key!r} differs from eager by {err:.3e} (rtol={rtol}, atol={atol})")
        worst = max(worst, err)
    return worst


def export_torchscript(
    model,
    path,
    example_inputs: Optional[dict] = None,
    extra_metadata: Optional[dict] = None,
    compute_forces: Optional[bool] = None,
) -> Path:
    """Script `model`, save it atomically with its metadata, reload and check it against eager on
    `example_inputs` (a dict of forward kwargs); abort (and write nothing) on mismatch."""
    from zoo.artifact import as_zoo_model

    path = Path(path)
    model = as_zoo_model(model).eval()
    if compute_forces is not None:
        model.compute_forces = compute_forces
    scripted = torch.jit.script(model)
    meta = model_metadata(model, extra_metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, tmp, _extra_files={k: v.encode() for k, v in meta.items()})
        if example_inputs is not None:
            loaded, _ = load_torchscript(tmp)
            dtype = next(model.parameters()).dtype
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            check_outputs(
                model(**example_inputs),
                loaded(**example_inputs),
                rtol=tol,
                atol=tol,
                what=f"TorchScript export {path.name}",
            )
    return path


def load_torchscript(path, map_location: Optional[str] = None) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """Load an exported TorchScript model and its metadata (no zoo import needed to use the module)."""
    files = {k: "" for k in KEYS}
    module = torch.jit.load(str(path), map_location=map_location, _extra_files=files)
    meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in files.items() if v}
    return module.eval(), meta
