"""AOTInductor export (`torch._inductor.aoti_compile_and_package`) of the traced forward, forces included,
with dynamic atom, edge and structure counts, and a runner with the ZooModel calling convention.

A `.pt2` package is compiled for one device type (the one named at export); it loads from Python
(`load_aoti`) and from C++ (`torch::inductor::AOTIModelPackageLoader`), which reads the same metadata
(`get_metadata()`: the keys of zoo.export.metadata plus `inputs`, `outputs`, `device`).

    runner = load_aoti("model.pt2", device="cpu")
    out = runner(pos=pos, species=z, edge_index=edge_index, batch=batch)   # dict of torch tensors
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

from zoo.device import dtype_name, parse_dtype, pick_device
from zoo.export.metadata import AOTI_FORMAT, DEVICE, FORMAT_KEY, TORCH_VERSION, model_metadata
from zoo.export.report import ExportResult
from zoo.export.trace import (
    ExportError,
    GraphSignature,
    check_inputs,
    eager_outputs,
    export_program,
    first_line,
    flat_inputs,
    input_names,
    quiet,
    tolerance,
)
from zoo.io import atomic_path

FORMAT = AOTI_FORMAT
DEVICE_KEY = DEVICE


def _device(device: Union[str, torch.device]) -> torch.device:
    device = pick_device(device, error=ExportError)
    if device.type not in ("cpu", "cuda"):
        raise ExportError(f"AOTInductor packages are built for cpu or cuda, not {device.type}")
    return device


COMPILE_RULE = ("an AOTInductor package is compiled for one device type and one torch version: export it on the target machine "
                "with `equizoo export MODEL_DIR --format aoti --device cpu|cuda`, or use the TorchScript export")  # fmt: skip


def package_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The metadata stored in a package's archive, read without loading its compiled code ({} if none)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/aotinductor/" in name and name.endswith("_metadata.json"):
                    return {str(k): str(v) for k, v in json.loads(archive.read(name)).items()}
    except (OSError, zipfile.BadZipFile, ValueError):
        return {}
    return {}


def _base_version(version: str) -> str:
    return version.split("+")[0]


class AotiRunner:
    """Runs an AOTInductor package: `runner(**ZooModel.forward kwargs) -> dict[str, Tensor]`."""

    def __init__(self, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> None:
        self.path = Path(path)
        self.device = _device(device)
        if not self.path.is_file():
            raise ExportError(f"{self.path} does not exist; export the model with `equizoo export DIR --format aoti`")
        stored = package_metadata(self.path)
        built_torch = stored.get(TORCH_VERSION, "")
        if built_torch and _base_version(built_torch) != _base_version(torch.__version__):
            raise ExportError(
                f"torch version mismatch: {self.path} was compiled with torch {built_torch} but this is torch {torch.__version__}; {COMPILE_RULE}"
            )
        if stored.get(DEVICE_KEY) and stored[DEVICE_KEY] != self.device.type:
            raise ExportError(
                f"{self.path} was built for {stored[DEVICE_KEY]} and cannot run on {self.device}; {COMPILE_RULE}"
            )
        try:
            index = self.device.index if self.device.index is not None else -1
            with quiet():
                self.package = torch._inductor.aoti_load_package(str(self.path), device_index=index)
            self.metadata: Dict[str, str] = dict(self.package.get_metadata())
        except Exception as exc:  # noqa: BLE001 - the package loader raises RuntimeError and friends
            raise ExportError(
                f"{self.path} cannot be loaded as an AOTInductor package ({str(exc).splitlines()[0]}); {COMPILE_RULE}"
            ) from exc
        if self.metadata.get(FORMAT_KEY) != FORMAT:
            raise ExportError(
                f"{self.path} is not an equizoo AOTInductor export (format {self.metadata.get(FORMAT_KEY)!r}); export it with `equizoo export`"
            )
        built_for = self.metadata.get(DEVICE_KEY, "cpu")
        if built_for != self.device.type:
            raise ExportError(f"{self.path} was built for {built_for} and cannot run on {self.device}; {COMPILE_RULE}")
        self.signature = GraphSignature.from_metadata(self.metadata, str(self.path))
        self.dtype = parse_dtype(self.metadata.get("model_dtype", "float32"), error=ExportError)

    def __call__(
        self,
        pos: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        edge_shift: Optional[torch.Tensor] = None,
        tags: Optional[torch.Tensor] = None,
        num_graphs: int = -1,
    ) -> Dict[str, torch.Tensor]:
        tensors = flat_inputs(
            self.signature.inputs,
            self.dtype,
            self.device,
            pos,
            species,
            edge_index,
            batch,
            edge_shift,
            tags,
            num_graphs,
        )
        with torch.no_grad():
            out = self.package(*tensors)
        return {name: out[name] for name in self.signature.outputs}

    def __repr__(self) -> str:
        return f"AotiRunner({str(self.path)!r}, device={self.device}, dtype={self.dtype}, outputs={list(self.signature.outputs)})"


def load_aoti(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> AotiRunner:
    """A runner for an equizoo AOTInductor package on `device` (the device type it was built for)."""
    return AotiRunner(path, device)


def export_aoti(
    model,
    path: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    check: Optional[Sequence[dict]] = None,
    program=None,
    extra_metadata: Optional[dict] = None,
    inductor_configs: Optional[dict] = None,
) -> ExportResult:
    """Compile `model` (eval ZooModel) into an AOTInductor package for `device` at `path`, atomically;
    check it against eager on `check` (forward kwargs on `device`; default: real check structures) and
    raise ExportMismatch (writing nothing) if it disagrees. `program` is a (ExportedProgram,
    GraphSignature) traced on the same device with `input_names(model, energy_weight=True)`;
    `inductor_configs` pass through to the compiler."""
    from zoo.artifact import as_zoo_model
    from zoo.export.torchscript import check_outputs

    start = time.perf_counter()
    device = _device(device)
    model = as_zoo_model(model).eval().to(device)
    dtype = next(model.parameters()).dtype
    check = list(check) if check is not None else check_inputs(model, dtype, device)
    names = input_names(model, energy_weight=True)
    if program is None:
        example = flat_inputs(names, dtype, device, **check[-1])
        program = export_program(model, example, names)
    ep, signature = program
    meta = model_metadata(model, extra_metadata)
    meta.update(signature.to_metadata())
    meta[FORMAT_KEY] = FORMAT
    meta[DEVICE_KEY] = device.type
    path = Path(path)
    with atomic_path(path, suffix=".pt2") as tmp:
        os.remove(tmp)  # the packager creates the file itself
        configs = {"aot_inductor.metadata": meta, **(inductor_configs or {})}
        try:
            with quiet():
                torch._inductor.aoti_compile_and_package(ep, package_path=tmp, inductor_configs=configs)
        except Exception as exc:  # noqa: BLE001 - inductor raises many types (lowering, C++ compiler)
            raise ExportError(f"AOTInductor compilation for {device.type} failed: {type(exc).__name__}: {first_line(exc)} "
                              "(it needs a working C++ compiler; CUDA builds need nvcc); the torchscript and onnx formats may still work") from exc  # fmt: skip
        runner = AotiRunner(tmp, device)
        tol = tolerance("aoti", dtype)
        worst = 0.0
        for kwargs in check:
            worst = max(
                worst,
                check_outputs(
                    eager_outputs(model, kwargs),
                    runner(**kwargs),
                    rtol=tol,
                    atol=tol,
                    what=f"AOTInductor export {path.name}",
                ),
            )
    return ExportResult(
        "aoti", path, dtype_name(dtype), device.type, worst, tol, time.perf_counter() - start, torch.__version__
    )
