"""Exporters of trained models (TorchScript, ONNX, AOTInductor), each checked against eager.

Which file where (WHERE_TO_USE, also in `equizoo export --help` and the model card):
- Python: the model directory itself (`zoo.load`), or any export.
- C++ and LAMMPS (`pair_style equiformer`, examples/cpp): `model.pt2` (AOTInductor) or `model.torchscript.pt`.
  An AOTInductor package is compiled for ONE device type and ONE torch version: build it on the target
  machine (`--device cpu|cuda`) with the torch the program links. TorchScript is portable across
  devices but deprecated by PyTorch (warnings since 2.10).
- ONNX Runtime (any language, no torch): `model.onnx`.

`export_model(model_dir, formats, dtype, device)` writes `model.torchscript.pt`, `model.onnx` and
`model.pt2` into a model directory (all or nothing: every file is checked against the eager ZooModel on
real structures before any is moved in) and records what each export measured in `exports.json`.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import torch

from zoo.artifact import EXPORT_FILES
from zoo.device import dtype_name, parse_dtype, pick_device
from zoo.export.metadata import model_metadata
from zoo.export.report import EXPORTS, ExportResult, read_exports, write_exports
from zoo.export.torchscript import ExportMismatch, check_outputs, export_torchscript, load_torchscript
from zoo.export.trace import ExportError, quiet
from zoo.io import make_temp_dir

FORMATS = ("torchscript", "onnx", "aoti")
FILES = EXPORT_FILES
WHERE_TO_USE = {
    "torchscript": "C++ (torch::jit::load) and LAMMPS; runs on CPU or GPU with any recent torch; deprecated by PyTorch",
    "onnx": "ONNX Runtime from any language, no torch needed; not for LAMMPS",
    "aoti": "C++ (AOTIModelPackageLoader) and LAMMPS, fastest; compiled for one device type and one torch "
    "version: export it on the target machine with the torch it runs",
}

__all__ = [
    "EXPORTS",
    "FILES",
    "FORMATS",
    "WHERE_TO_USE",
    "ExportError",
    "ExportMismatch",
    "ExportResult",
    "export_model",
    "export_torchscript",
    "load_torchscript",
    "model_metadata",
    "parse_formats",
    "read_exports",
]


def parse_formats(formats: Union[str, Iterable[str], None]) -> list[str]:
    """Formats from "a,b" or a list ("all" or None: every format), validated, in canonical order."""
    if formats is None:
        return list(FORMATS)
    items = [
        f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) for f in f.split(",")
    ]
    items = [f for f in items if f]
    if "all" in items:
        return list(FORMATS)
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ExportError(
            f"unknown export format(s) {unknown or formats!r}; choose from {', '.join(FORMATS)} (comma-separated) or all"
        )
    return [f for f in FORMATS if f in items]


def check_formats_available(formats: Iterable[str]) -> None:
    """ExportError naming what to install when a format's packages are missing (before any work)."""
    from zoo.extras import MissingExtra, require

    if "onnx" in formats:
        try:
            require("onnx", "onnxscript", "onnxruntime", what="export --format onnx")
        except MissingExtra as exc:
            raise ExportError(str(exc)) from None


def _progress():
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _torchscript(model, path: Path, check: list) -> ExportResult:
    from zoo.export.trace import eager_outputs, tolerance

    start = time.perf_counter()
    export_torchscript(model, path, example_inputs=check[0])
    module, _ = load_torchscript(path)
    dtype = next(model.parameters()).dtype
    tol = tolerance("torchscript", dtype)
    worst = 0.0
    with torch.jit.optimized_execution(False):
        for kwargs in check:
            with torch.enable_grad():
                got = module(**kwargs)
            worst = max(
                worst,
                check_outputs(
                    eager_outputs(model, kwargs), got, rtol=tol, atol=tol, what=f"TorchScript export {path.name}"
                ),
            )
    return ExportResult(
        "torchscript", path, dtype_name(dtype), "cpu", worst, tol, time.perf_counter() - start, torch.__version__
    )


def export_model(
    model_dir: Union[str, Path],
    formats: Union[str, Iterable[str], None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    device: Union[str, torch.device] = "cpu",
    virial: Optional[bool] = None,
    inductor_configs: Optional[dict] = None,
    progress: bool = True,
    onnx_optimize: bool = False,
) -> Dict[str, ExportResult]:
    """Export the model of `model_dir` into that directory in `formats` (default all), in `dtype` (default:
    the saved one), the AOTInductor package built for `device`. Every file is checked against the eager
    model on real structures; on any mismatch ExportMismatch is raised and nothing is written. `virial`
    (default: periodic force fields) bakes the virial into the ONNX graph (AOTInductor packages of energy
    models always carry it: LAMMPS needs it). `onnx_optimize` runs
    onnxscript's optimizer on the ONNX graph (minutes; a force field's file shrinks about 4x)."""
    from zoo.artifact import load_model_dir
    from zoo.export.trace import check_inputs

    model_dir = Path(model_dir)
    chosen = parse_formats(formats)
    check_formats_available(chosen)
    dtype = parse_dtype(dtype, error=ExportError)
    device = pick_device(device, error=ExportError)
    model = load_model_dir(model_dir, dtype=dtype)
    dtype = next(model.parameters()).dtype
    if virial is None:
        virial = bool(model.periodic and model.energy_target)
    model.compute_virial = bool(virial)
    check = check_inputs(model, dtype, torch.device("cpu"))
    staging = make_temp_dir(model_dir, ".export-")
    results: Dict[str, ExportResult] = {}
    try:
        with _progress() if progress else _Quiet() as bar:
            for fmt in chosen:
                task = bar.add_task(f"{fmt}: export and check against eager", total=None)
                say = functools.partial(bar.update, task)
                results[fmt] = _export_one(
                    fmt, model, staging / FILES[fmt], check, device, virial, say, onnx_optimize, inductor_configs
                )
                bar.remove_task(task)
        results = _install_exports(model_dir, staging, results)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results


def _export_one(fmt: str, model, staged: Path, check: list, device: torch.device, virial: bool, say, onnx_optimize: bool,
                inductor_configs: Optional[dict]) -> ExportResult:  # fmt: skip
    """Write one format of `model` to `staged` and check it against eager on `check`; `say(description=...)`
    tells the progress bar which step runs."""
    from zoo.export.trace import export_program, flat_inputs, input_names

    if fmt == "torchscript":
        model.compute_virial = False  # a runtime switch in TorchScript
        with quiet():
            result = _torchscript(model, staged, check)
        model.compute_virial = bool(virial)
        return result
    if fmt == "onnx":
        from zoo.export.onnx import export_onnx

        say(description="onnx: tracing forward and forces")
        names = input_names(model)
        program = export_program(
            model, flat_inputs(names, next(model.parameters()).dtype, torch.device("cpu"), **check[-1]), names
        )
        say(description="onnx: exporting and checking in onnxruntime")
        if onnx_optimize:
            say(description="onnx: exporting, optimizing (minutes) and checking in onnxruntime")
        return export_onnx(model, staged, check=check, program=program, optimize=onnx_optimize)
    from zoo.export.aoti import export_aoti

    if device.type == "cpu":
        say(description="aoti: tracing and compiling with AOTInductor (minutes)")
        return export_aoti(model, staged, device, check=check, inductor_configs=inductor_configs)
    say(description=f"aoti: tracing and compiling for {device} (minutes)")
    on_device = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in c.items()} for c in check]
    result = export_aoti(model.to(device), staged, device, check=on_device, inductor_configs=inductor_configs)
    model.to("cpu")
    return result


def _install_exports(model_dir: Path, staging: Path, results: Dict[str, ExportResult]) -> Dict[str, ExportResult]:
    """Move the checked files from `staging` into `model_dir`, record them in its exports record and drop the
    stale publish manifest; the results then name the final paths."""
    records = read_exports(model_dir)
    installed: Dict[str, ExportResult] = {}
    for fmt, result in results.items():
        final = model_dir / FILES[fmt]
        (staging / FILES[fmt]).replace(final)
        installed[fmt] = ExportResult(
            result.format,
            final,
            result.dtype,
            result.device,
            result.max_abs_error,
            result.tolerance,
            result.seconds,
            torch.__version__,
        )
        records[fmt] = installed[fmt].to_dict()
    write_exports(model_dir, records)
    stale = model_dir / "manifest.json"  # hashes of the files as last published; republishing rewrites it
    if stale.is_file():
        stale.unlink()
    return installed


class _Quiet:
    """A stand-in for the progress bar when progress is off."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        return None

    def remove_task(self, *args, **kwargs) -> None:
        return None
