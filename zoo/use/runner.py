"""A model behind one backend (eager, TorchScript, torch.compile, CUDA graphs, AOTInductor, ONNX): the
Runner, and `load_runner`, which builds it from any model spec and checks accelerated backends against eager."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from zoo.artifact import EXPORT_FILES, as_zoo_model, load_model_dir, read_config
from zoo.device import dtype_name, parse_dtype, pick_device
from zoo.errors import UseError
from zoo.models.zoo_model import ZooModel
from zoo.spec import ModelSpec
from zoo.use.resolve import resolve_model_dir

BACKENDS = ("eager", "torchscript", "compile", "aoti", "onnx")


class Runner:
    """A model behind one backend: `runner(inputs, num_graphs, virial=False)` -> dict of detached tensors.

    `inputs` holds the forward arguments of ZooModel (pos, species, edge_index, batch, edge_shift, tags) on
    `device` in `dtype`. `virial` asks eager/TorchScript modules for the virial as well.
    """

    allow_unseen_elements = False  # predict for elements outside the training data (set by load_runner)

    def __init__(
        self,
        module: Callable,
        info: ModelSpec,
        backend: str,
        device: torch.device,
        dtype: torch.dtype,
        grad: bool,
        virial_attr: bool,
    ):
        self.module = module
        self.info = info
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.needs_grad = grad and bool(info.energy_target)
        self.supports_virial = virial_attr and bool(info.energy_target)

    def __call__(self, inputs: dict, num_graphs: int, virial: bool = False) -> dict[str, torch.Tensor]:
        virial = virial and self.supports_virial
        if virial:
            self.module.compute_virial = True
        try:
            with torch.set_grad_enabled(self.needs_grad):
                out = self.module(**inputs, num_graphs=num_graphs)
        finally:
            if virial:
                self.module.compute_virial = False
        return {k: v.detach() for k, v in out.items()}

    def __repr__(self) -> str:
        return f"Runner({self.info.name!r}, backend={self.backend}, device={self.device}, dtype={self.dtype})"


@contextlib.contextmanager
def quiet_jit():
    """Silence the deprecation warnings every torch.jit call raises on torch >= 2.10."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def script_model(model: ZooModel) -> torch.jit.ScriptModule:
    """TorchScript of a ZooModel in this process (the deprecation warnings of torch.jit silenced)."""
    with quiet_jit():
        return torch.jit.script(model)


def _torchscript_runner(path: Path, device: torch.device, dtype: Optional[torch.dtype]) -> Runner:
    from zoo.export.metadata import CONFIG_JSON
    from zoo.export.torchscript import load_torchscript

    try:
        with quiet_jit():
            module, meta = load_torchscript(path, map_location=str(device))
    except RuntimeError as exc:
        raise UseError(
            f"{path}: not a loadable TorchScript model ({str(exc).splitlines()[0]}); export it again"
        ) from None
    if CONFIG_JSON not in meta:
        raise UseError(
            f"{path}: TorchScript file without equizoo metadata ({CONFIG_JSON}); export it with `equizoo export MODEL_DIR --format torchscript`"
        )
    info = ModelSpec.from_config(json.loads(meta[CONFIG_JSON]), str(path))
    saved = getattr(torch, meta.get("model_dtype", "float32"))
    if dtype is not None and dtype != saved:
        module = module.to(dtype)
    return Runner(constant_weights(module), info, "torchscript", device, dtype or saved, grad=True, virial_attr=True)


def constant_weights(module: torch.nn.Module) -> torch.nn.Module:
    """`module`, loaded or built by equizoo for inference, with its weights as constants for good: a force
    call then records and keeps only the autograd graph of the positions (md17-l2 energy+forces on CPU: 13 %
    faster in TorchScript, which cannot leave them out per call as an eager eval-mode call does). A module
    the caller passes in keeps its parameters as they are: it may still be trained."""
    for p in module.parameters():  # ScriptModules have no requires_grad_
        p.requires_grad_(False)
    return module


def check_backend(backend: str) -> None:
    """A known backend whose runtime is installed (checked before anything is loaded or computed)."""
    if backend not in BACKENDS:
        raise UseError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "onnx":
        from zoo.extras import MissingExtra, require

        try:
            require("onnxruntime", what="--backend onnx")
        except MissingExtra as exc:
            raise UseError(str(exc)) from None


def load_runner(
    model: Union[str, Path, ZooModel, Runner, None] = None,
    backend: str = "eager",
    device: Union[str, torch.device, None] = "auto",
    dtype: Union[str, torch.dtype, None] = None,
    allow_unseen_elements: bool = False,
    cuda_graphs: bool = False,
) -> Runner:
    """Load `model` (a model directory, registry name, `hf-hub:` id, TorchScript file, ZooModel, or None for
    the embedded default) behind `backend` on `device`; dtype None keeps the model's own. A ZooModel is
    moved to the device and dtype in place. `allow_unseen_elements` lets structures with elements outside
    the model's training data (config `metadata.elements`) through; by default each gets an error.

    `compile` is torch.compile of the eager model (dynamic shapes); `cuda_graphs` replays the eager or
    compiled model as CUDA graphs on capacity-padded inputs (zoo.accel). Both are checked against eager
    on real structures here, before any input is run."""
    if isinstance(model, Runner):
        runner = model
    else:
        check_backend(backend)
        dev, dt = pick_device(device), parse_dtype(dtype)
        if cuda_graphs and backend not in ("eager", "compile"):
            raise UseError(
                f"--cuda-graphs replays the eager or compiled model; backend {backend} cannot be combined with it (use --backend eager or compile)"
            )
        if cuda_graphs and dev.type != "cuda":
            raise UseError(
                f"--cuda-graphs needs a CUDA device, but the device is {dev}"
                + ("" if torch.cuda.is_available() else " (torch sees no CUDA GPU here)")
                + "; drop --cuda-graphs or use --device cuda"
            )
        if backend == "compile" or cuda_graphs:
            runner = accelerated_runner(
                _load_runner(model, "eager", dev, dt), compile=backend == "compile", cuda_graphs=cuda_graphs
            )
        else:
            runner = _load_runner(model, backend, dev, dt)
    runner.allow_unseen_elements = bool(allow_unseen_elements) or runner.allow_unseen_elements
    return runner


def _load_runner(model, backend: str, dev: torch.device, dt: Optional[torch.dtype]) -> Runner:
    if isinstance(model, torch.nn.Module):
        zm = as_zoo_model(model)
        info = ModelSpec.from_model(zm)
        zm = zm.to(device=dev, dtype=dt or info.dtype).eval()
        if backend == "eager":
            return Runner(zm, info, "eager", dev, dt or info.dtype, grad=True, virial_attr=True)
        if backend == "torchscript":
            return Runner(script_model(zm), info, "torchscript", dev, dt or info.dtype, grad=True, virial_attr=True)
        raise UseError(
            f"backend {backend} needs an exported file; pass a model directory that has {EXPORT_FILES[backend]}"
        )
    if model is not None and Path(model).expanduser().is_file():
        path = Path(model).expanduser()
        if backend not in ("eager", "torchscript"):
            raise UseError(
                f"{path} is a file; backend {backend} loads the export inside a model directory, pass the directory"
            )
        return _torchscript_runner(path, dev, dt)
    model_dir = resolve_model_dir(model)
    config = read_config(model_dir)
    info = ModelSpec.from_config(config, str(model_dir))
    if backend == "eager":
        return Runner(
            constant_weights(load_model_dir(model_dir, dtype=dt, device=dev)),
            info,
            "eager",
            dev,
            dt or info.dtype,
            grad=True,
            virial_attr=True,
        )
    file = model_dir / EXPORT_FILES[backend]
    if backend == "torchscript":
        if file.is_file():
            return _torchscript_runner(file, dev, dt)
        module = script_model(constant_weights(load_model_dir(model_dir, dtype=dt, device=dev)))
        return Runner(module, info, "torchscript", dev, dt or info.dtype, grad=True, virial_attr=True)
    if not file.is_file():
        raise UseError(
            f"model {model_dir} has no {file.name}: run `equizoo export {model_dir} --format {backend}` first, then run this again"
        )
    from zoo.export.trace import ExportError

    try:
        if backend == "onnx":
            from zoo.export.onnx import load_onnx

            fn = load_onnx(file)
        else:
            from zoo.export.aoti import load_aoti

            fn = load_aoti(file, dev)
    except ExportError as exc:
        raise UseError(str(exc)) from None
    exported = getattr(fn, "dtype", info.dtype)
    if dt is not None and dt != exported:
        raise UseError(
            f"{file} runs in the dtype it was exported in ({exported}); drop --dtype or export again with --dtype {dtype_name(dt)}"
        )
    return Runner(fn, info, backend, dev, exported, grad=False, virial_attr=False)


def accelerated_runner(eager: Runner, compile: bool, cuda_graphs: bool) -> Runner:
    """The eager runner's model compiled and/or replayed as CUDA graphs, checked against eager."""
    from zoo import accel

    model, info = eager.module, eager.info
    module = accel.compile_model(model) if compile else model
    name = "compile" if compile else "eager"
    if cuda_graphs:
        module = accel.CudaGraphModel(
            module, model, pad_species=info.type_numbers[0], pad_length=0.5 * info.r_max, grad=eager.needs_grad
        )
        name += "+cuda-graphs"
    runner = Runner(module, info, name, eager.device, eager.dtype, grad=True, virial_attr=True)
    check_against_eager(runner, eager)
    return runner


def check_against_eager(runner: Runner, eager: Runner) -> float:
    """Run `runner` and `eager` on the real check structures (one, then two per batch; zoo.export) and
    raise UseError naming the output if they differ by more than ACCELERATED_RTOL relative to the output's
    largest value. Returns the largest relative difference."""
    from zoo.accel import CaptureError, relative_difference
    from zoo.export.trace import ExportError, check_inputs

    rtol = ACCELERATED_RTOL[eager.dtype]
    try:
        checks = check_inputs(eager.module, eager.dtype, eager.device)
    except ExportError as exc:
        raise UseError(f"backend {runner.backend}: cannot check it against eager: {exc}") from None
    worst = 0.0
    for kwargs in checks:
        n = kwargs.pop("num_graphs")
        pos = kwargs["pos"]  # the argument form model_inputs gives, so the check compiles what runs later
        kwargs.setdefault("edge_shift", pos.new_zeros(kwargs["edge_index"].shape[1], 3))
        kwargs.setdefault("tags", torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device))
        try:
            got = runner(kwargs, n)
        except CaptureError as exc:
            raise UseError(str(exc)) from None
        except RuntimeError as exc:  # torch.compile's errors (Dynamo, Inductor) derive from RuntimeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UseError(
                f"backend {runner.backend} failed on the check structures ({type(exc).__name__}: {first}); use --backend eager"
            ) from exc
        for name, diff in relative_difference(eager(kwargs, n), got).items():
            if not diff <= rtol:
                raise UseError(
                    f"backend {runner.backend} differs from eager on output {name!r} by {diff:.3g} relative (allowed {rtol:g}, "
                    f"{dtype_name(eager.dtype)}, {n} check structure(s)); use --backend eager and report this"
                )  # fmt: skip
            worst = max(worst, diff)
    return worst


ACCELERATED_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
