"""Prediction: structure files (or ASE Atoms / Structures) in, physical outputs of a model out.

One straight path: file -> zoo.data `Structure` -> checks against the model -> batches by atom count ->
zoo.graph neighbour list -> the model behind a backend (eager, TorchScript, AOTInductor, ONNX) -> outputs in
the model's units -> a pandas DataFrame -> CSV, JSON or extxyz.

What comes out, by kind of model:
- QM9 models: every target they carry (`mu [D]`, `homo [eV]`, ...), one row per structure;
- force-field models (an energy target with forces): `energy [eV]`, per-atom `forces [eV/Å]` and
  `atomic_energy [eV]` (and `stress_* [eV/Å^3]` for 3D-periodic structures on eager/TorchScript);
- OC20 models: the relaxed adsorption energy they were trained on; they need OC20 tags (0 subsurface,
  1 surface, 2 adsorbate), taken from the file (see `oc20_tags`).

A structure the model cannot handle (an element outside its type list, no periodic cell for a periodic
model, missing tags, NaN coordinates) gets `status = "error"` and a reason; the others still run.
Inputs are paths (many structures per file), shell-style globs, `file@selection` in ASE's index syntax
(`traj.extxyz@-1`, `data.lmdb@:100`), ase.Atoms or zoo.data Structures.

`zoo.predict(...)` is this module's `predict` (the module is callable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from zoo import keys
from zoo._version import __version__
from zoo.artifact import as_zoo_model, load_model_dir, read_config
from zoo.errors import UseError
from zoo.data import DataError, Structure, collate, read_structures, structure_from_atoms
from zoo.graph import attach_graph, periodic_cell_problem, periodic_graph, radius_graph
from zoo.io import atomic_write
from zoo.models.zoo_model import TargetInfo, ZooModel

BACKENDS = ("eager", "torchscript", "compile", "aoti", "onnx")
EXPORT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "aoti": "model.pt2"}  # zoo.export.FILES
OUTPUT_FORMATS = {".csv": "csv", ".json": "json", ".extxyz": "extxyz", ".xyz": "extxyz"}
VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_ATOMS = 8192
MIN_DISTANCE = 0.1  # Å: atoms closer than this are a broken structure (forces would be meaningless)


# ---------------------------------------------------------------------------------------------- options
def pick_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UseError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UseError(f"device {name!r} asked for but torch sees no CUDA GPU here; use --device cpu or auto")
    return dev


def parse_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """None (the model's own dtype), `float32` or `float64`."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "float64": torch.float64, "fp32": torch.float32, "fp64": torch.float64}
    if str(dtype) not in table:
        raise UseError(f"unknown dtype {dtype!r}; use float32 or float64")
    return table[str(dtype)]


def check_output(path: Union[str, os.PathLike], formats: dict, what: str = "output") -> str:
    """The format of an output file from its suffix (`formats`: suffix -> format), checked with the
    writability of its location before any work; UseError naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        known = ", ".join(sorted(formats))
        raise UseError(f"{what} {path}: unknown file type {suffix or '(no suffix)'!r}; use a file name ending in {known}")
    from zoo.io import unwritable_reason

    reason = unwritable_reason(path)
    if reason:
        raise UseError(f"{what} {path}: {reason}")
    return formats[suffix]


# ---------------------------------------------------------------------------------------------- the model
@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the use layer needs to know about a model, whatever backend runs it."""

    name: str
    source: str
    targets: tuple[TargetInfo, ...]
    energy_target: str
    r_max: float
    max_neighbors: Optional[int]
    type_numbers: tuple[int, ...]
    periodic: bool
    needs_tags: bool
    variants: tuple[str, ...]
    dtype: torch.dtype
    elements: Optional[tuple[int, ...]] = None  # atomic numbers of the training data (config metadata.elements); None: unknown

    @classmethod
    def from_config(cls, config: dict, source: str) -> ModelInfo:
        """From a model directory's config.json (or the `config_json` of an export)."""
        networks = config["networks"]
        first = next(iter(networks.values()))
        energy = [name for name, c in networks.items() if c.get("forces")]
        elements = (config.get("metadata") or {}).get("elements")
        return cls(
            name=str(config.get("name") or "model"),
            source=str(source),
            targets=tuple(TargetInfo.from_dict(t) for t in config["targets"]),
            energy_target=energy[0] if energy else "",
            r_max=float(first["r_max"]),
            max_neighbors=first.get("max_neighbors"),
            type_numbers=tuple(int(z) for z in first["type_numbers"]),
            periodic=bool(first.get("periodic", False)),
            needs_tags=int(first.get("num_tags", 0)) > 0,
            variants=tuple(str(c["name"]) for c in networks.values()),
            dtype=getattr(torch, str(config.get("dtype", "float32"))),
            elements=tuple(sorted(int(z) for z in elements)) if elements else None,
        )

    @classmethod
    def from_model(cls, model: ZooModel, name: str = "", source: str = "<in memory>") -> ModelInfo:
        from zoo.artifact import model_config

        return cls.from_config(model_config(model, name or None), source)

    def target(self, name: str) -> TargetInfo:
        for t in self.targets:
            if t.name == name:
                return t
        raise UseError(f"model {self.name} has no target {name!r}; it predicts {[t.name for t in self.targets]}")

    @property
    def type_names(self) -> list[str]:
        return element_names(self.type_numbers)

    def unseen_elements(self, species: Iterable[int]) -> list[int]:
        """Atomic numbers in `species` that the model's training data did not contain ([] when unknown)."""
        if self.elements is None:
            return []
        return sorted(set(int(z) for z in species) - set(self.elements))


def element_names(numbers: Iterable[int]) -> list[str]:
    """Chemical symbols of atomic numbers (`Z0` for a number without one)."""
    from ase.data import chemical_symbols

    return [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}" for z in numbers]


CAVEAT_PHRASE = "less accurate than the paper"  # what the card of a briefly trained model says (zoo.registry descriptions)


def model_caveat(info: ModelInfo) -> str:
    """One line for under a prediction table when the model's card says it is far less accurate than the
    paper: its recorded test error ("" for other models or without a card)."""
    folder = Path(info.source)
    folder = folder.parent if folder.is_file() else folder
    card = folder / "README.md"
    if not card.is_file() or CAVEAT_PHRASE not in card.read_text(encoding="utf-8", errors="replace"):
        return ""
    try:
        results = ((read_config(folder).get("metadata") or {}).get("evaluation") or {}).get("results") or []
    except ValueError:
        results = []
    test = [r for r in results if str(r.get("split", "")).startswith("test")]
    measured = ", ".join(f"{r['quantity']} {r['metric']} {r['value']:.3g} {r['unit']}" for r in test[:2])
    error = f" (its card: {test[0]['split']} {measured})" if test else ""
    return f"{info.name} is a small model trained briefly on a CPU, far less accurate than the paper{error}; for trying the tools, not for science"


class Runner:
    """A model behind one backend: `runner(inputs, num_graphs, virial=False)` -> dict of detached tensors.

    `inputs` holds the forward arguments of ZooModel (pos, species, edge_index, batch, edge_shift, tags) on
    `device` in `dtype`. `virial` asks eager/TorchScript modules for the virial as well.
    """

    allow_unseen_elements = False  # predict for elements outside the training data (set by load_runner)

    def __init__(self, module: Callable, info: ModelInfo, backend: str, device: torch.device, dtype: torch.dtype, grad: bool, virial_attr: bool):
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


def resolve_model_dir(spec: Union[str, Path, None]) -> Path:
    """A local model directory for a spec (None: the embedded default)."""
    if spec is None:
        from zoo.artifact import ArtifactError
        from zoo.pretrained import default_model_dir, default_model_spec

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
        raise UseError(f"model {spec}: not a model directory (give a directory with config.json, a registry name, an hf-hub: id or a TorchScript .pt file)")
    if not text.startswith("hf-hub:") and (os.sep in text or text.startswith((".", "~"))):
        raise UseError(f"model {spec}: no such model directory; give a directory with config.json, a registry name or an hf-hub: id")
    from zoo.api import resolve

    try:
        return resolve(text)
    except ModuleNotFoundError as exc:
        if exc.name not in ("zoo.hub", "huggingface_hub"):
            raise
        raise UseError(f"model {spec!r}: no such directory, and registry names / hf-hub ids need zoo.hub ({exc.name} is not installed)") from None
    except Exception as exc:  # noqa: BLE001 - the Hub client raises many types (network, lookup, checksum)
        raise UseError(f"model {spec!r}: {type(exc).__name__}: {exc}") from None


def _torchscript_runner(path: Path, device: torch.device, dtype: Optional[torch.dtype]) -> Runner:
    from zoo.export.metadata import CONFIG_JSON
    from zoo.export.torchscript import load_torchscript

    try:
        with quiet_jit():
            module, meta = load_torchscript(path, map_location=str(device))
    except RuntimeError as exc:
        raise UseError(f"{path}: not a loadable TorchScript model ({str(exc).splitlines()[0]}); export it again") from None
    if CONFIG_JSON not in meta:
        raise UseError(f"{path}: TorchScript file without equizoo metadata ({CONFIG_JSON}); export it with `equizoo export MODEL_DIR --format torchscript`")
    info = ModelInfo.from_config(json.loads(meta[CONFIG_JSON]), str(path))
    saved = getattr(torch, meta.get("model_dtype", "float32"))
    if dtype is not None and dtype != saved:
        module = module.to(dtype)
    return Runner(module, info, "torchscript", device, dtype or saved, grad=True, virial_attr=True)


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
            raise UseError(f"--cuda-graphs replays the eager or compiled model; backend {backend} cannot be combined with it (use --backend eager or compile)")
        if cuda_graphs and dev.type != "cuda":
            raise UseError(f"--cuda-graphs needs a CUDA device, but the device is {dev}" + ("" if torch.cuda.is_available() else " (torch sees no CUDA GPU here)") + "; drop --cuda-graphs or use --device cuda")
        if backend == "compile" or cuda_graphs:
            runner = accelerated_runner(_load_runner(model, "eager", dev, dt), compile=backend == "compile", cuda_graphs=cuda_graphs)
        else:
            runner = _load_runner(model, backend, dev, dt)
    runner.allow_unseen_elements = bool(allow_unseen_elements) or runner.allow_unseen_elements
    return runner


def _load_runner(model, backend: str, dev: torch.device, dt: Optional[torch.dtype]) -> Runner:
    if isinstance(model, torch.nn.Module):
        zm = as_zoo_model(model)
        info = ModelInfo.from_model(zm)
        zm = zm.to(device=dev, dtype=dt or info.dtype).eval()
        if backend == "eager":
            return Runner(zm, info, "eager", dev, dt or info.dtype, grad=True, virial_attr=True)
        if backend == "torchscript":
            return Runner(script_model(zm), info, "torchscript", dev, dt or info.dtype, grad=True, virial_attr=True)
        raise UseError(f"backend {backend} needs an exported file; pass a model directory that has {EXPORT_FILES[backend]}")
    if model is not None and Path(model).expanduser().is_file():
        path = Path(model).expanduser()
        if backend not in ("eager", "torchscript"):
            raise UseError(f"{path} is a file; backend {backend} loads the export inside a model directory, pass the directory")
        return _torchscript_runner(path, dev, dt)
    model_dir = resolve_model_dir(model)
    config = read_config(model_dir)
    info = ModelInfo.from_config(config, str(model_dir))
    if backend == "eager":
        return Runner(load_model_dir(model_dir, dtype=dt, device=dev), info, "eager", dev, dt or info.dtype, grad=True, virial_attr=True)
    file = model_dir / EXPORT_FILES[backend]
    if backend == "torchscript":
        if file.is_file():
            return _torchscript_runner(file, dev, dt)
        module = script_model(load_model_dir(model_dir, dtype=dt, device=dev))
        return Runner(module, info, "torchscript", dev, dt or info.dtype, grad=True, virial_attr=True)
    if not file.is_file():
        raise UseError(f"model {model_dir} has no {file.name}: run `equizoo export {model_dir} --format {backend}` first, then run this again")
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
        raise UseError(f"{file} runs in the dtype it was exported in ({exported}); drop --dtype or export again with --dtype {str(dt).replace('torch.', '')}")
    return Runner(fn, info, backend, dev, exported, grad=False, virial_attr=False)


def accelerated_runner(eager: Runner, compile: bool, cuda_graphs: bool) -> Runner:
    """The eager runner's model compiled and/or replayed as CUDA graphs, checked against eager."""
    from zoo import accel

    model, info = eager.module, eager.info
    module = accel.compile_model(model) if compile else model
    name = "compile" if compile else "eager"
    if cuda_graphs:
        module = accel.CudaGraphModel(module, model, pad_species=info.type_numbers[0], pad_length=0.5 * info.r_max, grad=eager.needs_grad)
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
            raise UseError(f"backend {runner.backend} failed on the check structures ({type(exc).__name__}: {first}); use --backend eager") from exc
        for name, diff in relative_difference(eager(kwargs, n), got).items():
            if not diff <= rtol:
                raise UseError(
                    f"backend {runner.backend} differs from eager on output {name!r} by {diff:.3g} relative (allowed {rtol:g}, "
                    f"{str(eager.dtype).replace('torch.', '')}, {n} check structure(s)); use --backend eager and report this"
                )  # fmt: skip
            worst = max(worst, diff)
    return worst


ACCELERATED_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


# ---------------------------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class Item:
    """One input structure and, after a run, its outputs (or the reason it has none)."""

    source: str
    frame: int
    structure: Optional[Structure]
    name: str = ""
    formula: str = ""
    n_atoms: int = 0
    error: str = ""
    values: dict = dataclasses.field(default_factory=dict)
    per_atom: dict = dataclasses.field(default_factory=dict)
    stress: Optional[np.ndarray] = None

    @property
    def ok(self) -> bool:
        return not self.error


def _formula(numbers) -> str:
    from ase.symbols import Symbols

    return Symbols(np.asarray(numbers, dtype=int)).get_chemical_formula() if len(numbers) else ""


def _item(source: str, frame: int, structure: Optional[Structure], error: str = "", atoms=None) -> Item:
    numbers = structure.species if structure is not None else (atoms.numbers if atoms is not None else [])
    name = structure.name if structure is not None and structure.name else ""
    if not name and structure is not None and structure.index >= 0 and source.endswith((".lmdb", ".aselmdb")):
        name = f"sid {structure.index}"
    return Item(source, frame, structure, name=name, formula=_formula(numbers), n_atoms=len(numbers), error=error)


def _frame_numbers(index: str, count: int) -> list[int]:
    """Frame numbers in the file of the structures an ASE-style `index` selected (positions if unknown)."""
    from ase.io.formats import string2index

    selected = string2index(index)
    if isinstance(selected, int):
        return [selected] if selected >= 0 else [0]
    start, step = selected.start or 0, selected.step or 1
    if start < 0 or step < 0:
        return list(range(count))
    return [start + k * step for k in range(count)]


def _read_file(path: Path, index: str = ":") -> list[Item]:
    """The structures of a file (ASE `index` selection); one that cannot be read is an error item, the
    others still come back."""
    try:
        structures = read_structures(path, index=index)
        return [_item(str(path), f, s) for f, s in zip(_frame_numbers(index, len(structures)), structures)]
    except DataError as exc:
        first_error = str(exc)
    except (IndexError, ValueError) as exc:
        raise UseError(f"{path}@{index}: bad frame selection ({exc}); use ASE syntax such as file.extxyz@0 or file.extxyz@:10") from None
    import ase.io

    try:
        frames = ase.io.read(path, index=index)
        frames = frames if isinstance(frames, list) else [frames]
    except Exception:  # noqa: BLE001 - any reader failure: report the reader's own message for the file
        return [Item(str(path), -1, None, error=first_error)]
    items = []
    for i, atoms in zip(_frame_numbers(index, len(frames)), frames):
        try:
            items.append(_item(str(path), i, structure_from_atoms(atoms, index=i, source=f"{path} (frame {i})")))
        except DataError as exc:
            items.append(_item(str(path), i, None, str(exc), atoms=atoms))
    return items


def expand_paths(patterns: Iterable[Union[str, os.PathLike]]) -> list[tuple[Path, str]]:
    """(file, ASE frame selection) for every file named, matched by a glob (`**` recursive) or written as
    `file@selection` (e.g. `traj.extxyz@-1`, `data.lmdb@:100`); raises UseError when nothing matches."""
    out: list[tuple[Path, str]] = []
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        index = ":"
        if not Path(text).exists() and "@" in text:
            text, index = text.rsplit("@", 1)
        path = Path(text)
        if path.exists():
            if path.is_dir():
                raise UseError(f"{path} is a directory; give structure files or a glob such as '{path}/*.xyz'")
            out.append((path, index))
        elif any(c in text for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise UseError(f"no file matches {text!r}; check the pattern (quote it so the shell does not expand it)")
            out.extend((m, index) for m in matches)
        else:
            raise UseError(f"{text}: no such file; give structure files (xyz, extxyz, cif, traj, json, db, npz, lmdb, ...)")
    return out


def read_inputs(inputs) -> list[Item]:
    """Items from paths, globs, ase.Atoms, Structures or a list mixing them."""
    if isinstance(inputs, (str, os.PathLike, Structure)) or _is_atoms(inputs):
        inputs = [inputs]
    items: list[Item] = []
    for n, entry in enumerate(inputs):
        if isinstance(entry, Structure):
            items.append(_item("<structures>", n, entry))
        elif _is_atoms(entry):
            try:
                items.append(_item("<atoms>", n, structure_from_atoms(entry, index=n, source=f"atoms #{n}")))
            except DataError as exc:
                items.append(_item("<atoms>", n, None, str(exc), atoms=entry))
        elif isinstance(entry, (str, os.PathLike)):
            for path, index in expand_paths([entry]):
                items.extend(_read_file(path, index))
        else:
            raise UseError(f"cannot predict on {type(entry).__name__}; give file paths, ase.Atoms or zoo.data.Structure")
    if not items:
        raise UseError("no input structures given")
    return items


def _is_atoms(obj) -> bool:
    import ase

    return isinstance(obj, ase.Atoms)


# ---------------------------------------------------------------------------------------------- checks
def oc20_tags(structure: Structure) -> tuple[Optional[np.ndarray], str]:
    """OC20 tags (0 subsurface, 1 surface, 2 adsorbate) of a structure, or (None, reason).

    Tags in the file are used as OC20 tags when their values lie in 0..2, with one exception: the
    ASE/fairchem convention of 1 = adsorbate, 0 = slab, recognised by FixAtoms on slab atoms only and free
    slab atoms tagged 0, is converted (fixed slab atoms -> 0, free slab atoms -> 1, adsorbate -> 2).
    """
    tags, fixed = structure.tags, structure.fixed
    hint = (
        "OC20 models need per-atom tags (0 subsurface, 1 surface, 2 adsorbate): set them in the file "
        "(ASE atoms.set_tags, the extxyz 'tags' column), or tag the adsorbate 1 and the slab 0 with FixAtoms on the fixed slab atoms"
    )
    if tags is None:
        return None, f"no tags in the input; {hint}"
    values = set(np.unique(tags).tolist())
    if values == {0, 1} and fixed is not None and fixed.any() and not tags[fixed].any() and ((tags == 0) & ~fixed).any():
        return np.where(tags == 1, 2, np.where(fixed, 0, 1)).astype(np.int64), ""
    if values <= {0, 1, 2}:
        return tags, ""
    return None, f"tags {sorted(values)} are not OC20 tags; {hint}"


def check_structure(structure: Structure, info: ModelInfo, allow_unseen_elements: bool = False) -> tuple[Optional[Structure], str]:
    """The structure ready for the model (tags resolved), or (None, why the model cannot handle it).

    The one place that refuses elements outside the model's training data (predict, eval, bench and the
    ASE calculator all come through here): the network embeds them, but what it predicts for them is
    meaningless. `allow_unseen_elements` lets them through."""
    try:
        structure.check(structure.label)
    except DataError as exc:
        return None, str(exc)
    if structure.n_atoms == 0:
        return None, "structure has no atoms"
    unknown = sorted(set(structure.species.tolist()) - set(info.type_numbers))
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in unknown)
        allowed = " ".join(info.type_names) if len(info.type_numbers) <= 12 else f"Z in {min(info.type_numbers)}..{max(info.type_numbers)}"
        return None, f"element(s) {names} not among the model's types ({allowed}); use a model trained on them"
    unseen = info.unseen_elements(structure.species.tolist())
    if unseen and not allow_unseen_elements:
        return None, (
            f"element(s) {', '.join(element_names(unseen))} not in the training data of {info.name} (it saw only "
            f"{' '.join(element_names(info.elements))}), so its prediction would be meaningless; use a model trained on them, "
            "or pass --allow-unseen-elements (Python: allow_unseen_elements=True) to predict anyway"
        )
    if info.periodic and not structure.pbc.any():
        return None, "the model is periodic (trained on cells/slabs) but this structure is an isolated molecule without a periodic cell; give a cell and pbc"
    if structure.pbc.any() and abs(np.linalg.det(structure.cell)) < 1e-9:
        return None, "periodic structure with a singular (zero-volume) cell; fix the cell"
    if info.needs_tags:
        tags, reason = oc20_tags(structure)
        if tags is None:
            return None, reason
        if tags is not structure.tags:
            structure = dataclasses.replace(structure, tags=tags)
    problem = geometry_problem(structure, info.r_max)
    if problem:
        return None, problem
    return structure, ""


def geometry_problem(structure: Structure, r_max: float) -> str:
    """Why the geometry cannot be predicted ("" if it can): a periodic cell that is absurd for the cutoff
    (see zoo.graph.periodic_cell_problem), or two atoms (or an atom and a periodic image) closer than
    MIN_DISTANCE. Found with an O(N) neighbour list at MIN_DISTANCE, before any model runs."""
    if structure.pbc.any():
        problem = periodic_cell_problem(structure.cell, structure.pbc, structure.n_atoms, r_max)
        if problem:
            return problem
    pos = torch.from_numpy(structure.positions)
    batch = torch.zeros(structure.n_atoms, dtype=torch.long)
    try:
        if structure.pbc.any():
            edges, _, shift = periodic_graph(pos, torch.from_numpy(structure.cell)[None], torch.from_numpy(structure.pbc)[None], batch, MIN_DISTANCE)
        else:
            edges, shift = radius_graph(pos, batch, MIN_DISTANCE), torch.zeros(0, 3, dtype=pos.dtype)
    except ValueError as exc:
        return str(exc)
    if edges.shape[1] == 0:
        return ""
    vec = pos[edges[0]] - pos[edges[1]] + (shift if shift.shape[0] else 0)
    k = int(torch.argmin(vec.norm(dim=1)))
    src, dst = int(edges[0, k]), int(edges[1, k])
    imaged = shift.shape[0] > 0 and bool(shift[k].any())
    pair = f"atom {dst} and a periodic image of atom {src} are" if imaged else f"atoms {min(src, dst)} and {max(src, dst)} are"
    return (
        f"{pair} {float(vec[k].norm()):.3g} Å apart, closer than {MIN_DISTANCE} Å; "
        "fix the coordinates (duplicated atom? wrong units?)"
    )


# ---------------------------------------------------------------------------------------------- running
def plan_batches(n_atoms: Sequence[int], batch_size: int, max_atoms: int) -> list[list[int]]:
    """Group indices by atom count (ascending): at most `batch_size` structures and `max_atoms` atoms per
    batch (a larger structure runs alone)."""
    if batch_size < 1 or max_atoms < 1:
        raise UseError(f"batch size and atom budget must be positive, got {batch_size} and {max_atoms}")
    order = np.argsort(np.asarray(n_atoms, dtype=np.int64), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    atoms = 0
    for i in order.tolist():
        n = int(n_atoms[i])
        if current and (len(current) >= batch_size or atoms + n > max_atoms):
            batches.append(current)
            current, atoms = [], 0
        current.append(i)
        atoms += n
    if current:
        batches.append(current)
    return batches


def model_inputs(structures: Sequence[Structure], info: ModelInfo, device: torch.device, dtype: torch.dtype) -> tuple[dict, int]:
    """Forward arguments (graph built on the CPU in float64) and the number of structures."""
    batch = attach_graph(collate(structures, targets=[], dtype=torch.float64), info.r_max, info.max_neighbors)
    inputs = {
        "pos": batch[keys.POSITIONS].to(device=device, dtype=dtype),
        "species": batch[keys.SPECIES].to(device),
        "edge_index": batch[keys.EDGE_INDEX].to(device),
        "batch": batch[keys.BATCH].to(device),
        "edge_shift": batch[keys.EDGE_SHIFT].to(device=device, dtype=dtype),
        "tags": batch[keys.TAGS].to(device),
    }
    return inputs, len(structures)


def _is_3d_periodic(s: Structure) -> bool:
    return bool(s.pbc.all()) and s.cell is not None and abs(np.linalg.det(s.cell)) > 1e-9


def outputs_per_structure(out: dict, structures: Sequence[Structure], info: ModelInfo) -> list[tuple[dict, dict, Optional[np.ndarray]]]:
    """Split a batch's outputs: (values by target, per-atom arrays, stress 3x3 or None) per structure."""
    host = {k: v.to("cpu", torch.float64).numpy() for k, v in out.items()}
    offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in structures])])
    rows = []
    for g, s in enumerate(structures):
        a, b = offsets[g], offsets[g + 1]
        values = {t.name: float(host[t.name][g]) for t in info.targets}
        per_atom = {}
        stress = None
        if info.energy_target:
            if keys.FORCES in host:
                per_atom[keys.FORCES] = host[keys.FORCES][a:b]
            atomic = "atomic_" + info.energy_target
            if atomic in host:
                per_atom[atomic] = host[atomic][a:b]
            if keys.VIRIAL in host and _is_3d_periodic(s):
                stress = -host[keys.VIRIAL][g] / abs(np.linalg.det(s.cell))
        rows.append((values, per_atom, stress))
    return rows


def progress_bar(total: int, description: str):
    """A started-later rich progress bar on stderr with one task; returns (bar, task id)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    room = max(12, console.width - 50)  # the bar (20), counts and times take the rest: the line fits the terminal
    if len(description) > room:
        description = description[: room - 1] + "…"
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )  # fmt: skip
    task = bar.add_task(description, total=total)
    return bar, task


def run_items(
    runner: Runner,
    items: Sequence[Item],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    progress: bool = False,
) -> None:
    """Check every item against the model and fill in its outputs (or its error), batch by batch.

    A batch that fails as a whole (e.g. out of memory) is retried structure by structure, so one bad
    structure never costs the others their results.
    """
    info = runner.info
    ready: list[tuple[Item, Structure]] = []
    for item in items:
        if item.error or item.structure is None:
            item.error = item.error or "structure could not be read"
            continue
        structure, reason = check_structure(item.structure, info, runner.allow_unseen_elements)
        if structure is None:
            item.error = reason
        else:
            ready.append((item, structure))
    bar = task = None
    if progress and ready:
        bar, task = progress_bar(len(ready), f"predicting with {info.name}")
        bar.start()
    try:
        for batch in plan_batches([s.n_atoms for _, s in ready], batch_size, max_atoms):
            chunk = [ready[i] for i in batch]
            _run_chunk(runner, chunk)
            if bar is not None:
                bar.advance(task, len(chunk))
    finally:
        if bar is not None:
            bar.stop()


def failure_reason(exc: BaseException, structure: Structure) -> str:
    """The error row of a structure the model failed on (out of memory said as such)."""
    message = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, MemoryError) or "can't allocate memory" in message or "out of memory" in message.lower():
        return (
            f"out of memory on this structure of {structure.n_atoms} atoms ({type(exc).__name__} {message}); "
            "run it on a machine with more memory"
        )
    return f"the model failed on this structure: {type(exc).__name__}: {message}"


def _run_chunk(runner: Runner, chunk: list[tuple[Item, Structure]]) -> None:
    structures = [s for _, s in chunk]
    virial = runner.supports_virial and any(_is_3d_periodic(s) for s in structures)
    try:
        inputs, n = model_inputs(structures, runner.info, runner.device, runner.dtype)
        rows = outputs_per_structure(runner(inputs, n, virial=virial), structures, runner.info)
    except Exception as exc:  # noqa: BLE001 - any failure (MemoryError too) costs this structure only
        if len(chunk) > 1:
            for pair in chunk:
                _run_chunk(runner, [pair])
            return
        chunk[0][0].error = failure_reason(exc, chunk[0][1])
        return
    for (item, _), (values, per_atom, stress) in zip(chunk, rows):
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            item.error = f"the model gave non-finite {', '.join(bad)}"
            continue
        item.values, item.per_atom, item.stress = values, per_atom, stress


# ---------------------------------------------------------------------------------------------- results
def column(name: str, unit: str) -> str:
    """A column name with its unit, e.g. `energy [eV]`."""
    return f"{name} [{unit}]" if unit else name


def per_atom_units(info: ModelInfo) -> dict[str, str]:
    if not info.energy_target:
        return {}
    t = info.target(info.energy_target)
    return {keys.FORCES: t.forces_unit or f"{t.unit}/Å", "atomic_" + t.name: t.unit}


@dataclasses.dataclass
class PredictionSet:
    """The items of one prediction run with the model that made them; writes CSV, JSON and extxyz."""

    info: ModelInfo
    backend: str
    device: str
    dtype: str
    items: list[Item]

    @property
    def n_failed(self) -> int:
        return sum(not item.ok for item in self.items)

    @property
    def errors(self) -> list[tuple[str, int, str]]:
        """(file, frame, reason) of every structure without results."""
        return [(item.source, item.frame, item.error) for item in self.items if not item.ok]

    def units(self) -> dict[str, str]:
        """Unit of every output column."""
        out = {column(t.name, t.unit): t.unit for t in self.info.targets}
        if any(item.stress is not None for item in self.items):
            unit = f"{self.info.target(self.info.energy_target).unit}/Å^3"
            out.update({column(f"stress_{c}", unit): unit for c in VOIGT})
        out.update({column(k, u): u for k, u in per_atom_units(self.info).items()})
        return out

    def frame(self, per_atom: bool = True):
        """One row per input structure: file, frame, name, formula, n_atoms, status, error, the targets
        with units in the column names, Voigt stress where computed, and (if `per_atom`) per-atom arrays."""
        import pandas as pd

        has_stress = any(item.stress is not None for item in self.items)
        atom_units = per_atom_units(self.info) if per_atom else {}
        rows = []
        for item in self.items:
            row: dict[str, Any] = {
                "file": item.source, "frame": item.frame, "name": item.name, "formula": item.formula,
                "n_atoms": item.n_atoms, "status": "ok" if item.ok else "error", "error": item.error,
            }  # fmt: skip
            for t in self.info.targets:
                row[column(t.name, t.unit)] = item.values.get(t.name, math.nan)
            if has_stress:
                unit = f"{self.info.target(self.info.energy_target).unit}/Å^3"
                voigt = _voigt(item.stress) if item.stress is not None else [math.nan] * 6
                for c, v in zip(VOIGT, voigt):
                    row[column(f"stress_{c}", unit)] = v
            for name, unit in atom_units.items():
                row[column(name, unit)] = item.per_atom.get(name)
            rows.append(row)
        frame = pd.DataFrame(rows)
        frame.attrs.update(model=self.info.name, backend=self.backend, device=self.device, dtype=self.dtype)
        return frame

    def to_atoms(self) -> list:
        """ase.Atoms of the structures with results: energy/forces/stress/energies as calculator results
        (eV, eV/Å), other targets in `info`, `info['units']` naming every unit."""
        import ase
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for item in self.items:
            if not item.ok:
                continue
            s = item.structure
            atoms = ase.Atoms(numbers=s.species, positions=s.positions, cell=s.cell if s.cell is not None else np.zeros((3, 3)), pbc=s.pbc)
            if s.tags is not None:
                atoms.set_tags(s.tags)
            atoms.info.update(source_file=item.source, source_frame=item.frame)
            if item.name:
                atoms.info["name"] = item.name
            results, units = {}, {}
            for t in self.info.targets:
                key = "energy" if t.name == self.info.energy_target else t.name
                units[key] = t.unit
                if key == "energy":
                    results["energy"] = item.values[t.name]
                else:
                    atoms.info[t.name] = item.values[t.name]
            if self.info.energy_target:
                atom_units = per_atom_units(self.info)
                if keys.FORCES in item.per_atom:
                    results["forces"], units["forces"] = item.per_atom[keys.FORCES], atom_units[keys.FORCES]
                if "atomic_" + self.info.energy_target in item.per_atom:
                    results["energies"], units["energies"] = item.per_atom["atomic_" + self.info.energy_target], units["energy"]
                if item.stress is not None:
                    results["stress"], units["stress"] = np.asarray(_voigt(item.stress)), f"{units['energy']}/Å^3"
            atoms.info["units"] = " ".join(f"{k}={v}" for k, v in units.items())
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            out.append(atoms)
        return out

    def to_json(self) -> dict:
        frame = self.frame()
        return {
            "model": self.info.name,
            "model_source": self.info.source,
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
            "equizoo_version": __version__,
            "units": self.units(),
            "n_structures": len(self.items),
            "n_failed": self.n_failed,
            "structures": [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict(orient="records")],
        }

    def write(self, path: Union[str, os.PathLike], fmt: Optional[str] = None) -> Path:
        """Write `csv` (one row per structure, per-atom arrays left out), `json` (everything) or `extxyz`
        (structures with results); the format follows the suffix unless given. Atomic (temp + rename)."""
        path = Path(path)
        fmt = fmt or check_output(path, OUTPUT_FORMATS)
        if fmt not in ("csv", "json", "extxyz"):
            raise UseError(f"{path}: unknown output format {fmt!r}; use csv, json or extxyz")
        if fmt == "csv":
            return atomic_write(path, lambda tmp: self.frame(per_atom=False).to_csv(tmp, index=False))
        if fmt == "json":
            return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n"))
        import ase.io

        atoms = self.to_atoms()
        if not atoms:
            raise UseError(f"{path}: no structure has results, nothing to write as extxyz")
        return atomic_write(path, lambda tmp: ase.io.write(tmp, atoms, format="extxyz"))


def _voigt(stress: np.ndarray) -> list[float]:
    s = np.asarray(stress)
    return [float(s[0, 0]), float(s[1, 1]), float(s[2, 2]), float(s[1, 2]), float(s[0, 2]), float(s[0, 1])]


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------- the API
class Predictor:
    """A loaded model ready to predict many inputs (loads once; `run` as often as needed)."""

    def __init__(self, model=None, backend: str = "eager", device="auto", dtype=None, allow_unseen_elements: bool = False, cuda_graphs: bool = False):
        self.runner = load_runner(model, backend=backend, device=device, dtype=dtype, allow_unseen_elements=allow_unseen_elements, cuda_graphs=cuda_graphs)

    @property
    def info(self) -> ModelInfo:
        return self.runner.info

    def run(self, inputs, batch_size: int = DEFAULT_BATCH_SIZE, max_atoms: int = DEFAULT_MAX_ATOMS, progress: bool = False) -> PredictionSet:
        items = read_inputs(inputs)
        run_items(self.runner, items, batch_size=batch_size, max_atoms=max_atoms, progress=progress)
        r = self.runner
        return PredictionSet(r.info, r.backend, str(r.device), str(r.dtype).replace("torch.", ""), items)


def predict(
    inputs,
    model=None,
    *,
    output: Union[str, os.PathLike, None] = None,
    backend: str = "eager",
    device="auto",
    dtype=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    progress: bool = False,
    allow_unseen_elements: bool = False,
    cuda_graphs: bool = False,
):
    """Predict every structure of `inputs` (paths, globs, ase.Atoms, Structures) with `model` (directory,
    registry name, `hf-hub:` id, TorchScript file, ZooModel; None: the embedded default).

    Returns a pandas DataFrame, one row per structure (`status`/`error` say which failed and why), outputs
    in columns named with their units, per-atom arrays (forces, atomic energies) as array-valued columns.
    `output` also writes it (.csv, .json or .extxyz). Structures with elements outside the model's training
    data get an error unless `allow_unseen_elements`. `backend="compile"`
    and `cuda_graphs` as in load_runner.
    """
    if output is not None:
        check_output(output, OUTPUT_FORMATS)
    result = Predictor(model, backend=backend, device=device, dtype=dtype, allow_unseen_elements=allow_unseen_elements, cuda_graphs=cuda_graphs).run(inputs, batch_size=batch_size, max_atoms=max_atoms, progress=progress)
    if output is not None:
        result.write(output)
    return result.frame()


class _CallableModule(types.ModuleType):
    """Importing zoo.predict replaces the lazy `zoo.predict` function with this module; keep it callable."""

    def __call__(self, *args, **kwargs):
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
