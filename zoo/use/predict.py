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

`zoo.predict(...)` is this module's `predict`.
"""

from __future__ import annotations

import math
import os
from typing import Sequence, Union

import numpy as np
import torch

from zoo.data import Structure
from zoo.device import dtype_name
from zoo.errors import UseError
from zoo.forward import structure_inputs
from zoo.io import progress_bar
from zoo.spec import ModelSpec
from zoo.use.inputs import Item, check_structure, read_inputs
from zoo.use.results import OUTPUT_FORMATS, PredictionSet, _is_3d_periodic, check_output, outputs_per_structure
from zoo.use.runner import Runner, load_runner

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_ATOMS = 8192


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


def model_inputs(
    structures: Sequence[Structure], info: ModelSpec, device: torch.device, dtype: torch.dtype
) -> tuple[dict, int]:
    """Forward arguments of `structures` for the model `info` describes (zoo.forward) and their number."""
    return structure_inputs(structures, info.r_max, info.max_neighbors, device, dtype)


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


class Predictor:
    """A loaded model ready to predict many inputs (loads once; `run` as often as needed)."""

    def __init__(
        self,
        model=None,
        backend: str = "eager",
        device="auto",
        dtype=None,
        allow_unseen_elements: bool = False,
        cuda_graphs: bool = False,
    ):
        self.runner = load_runner(
            model,
            backend=backend,
            device=device,
            dtype=dtype,
            allow_unseen_elements=allow_unseen_elements,
            cuda_graphs=cuda_graphs,
        )

    @property
    def info(self) -> ModelSpec:
        return self.runner.info

    def run(
        self, inputs, batch_size: int = DEFAULT_BATCH_SIZE, max_atoms: int = DEFAULT_MAX_ATOMS, progress: bool = False
    ) -> PredictionSet:
        items = read_inputs(inputs)
        run_items(self.runner, items, batch_size=batch_size, max_atoms=max_atoms, progress=progress)
        r = self.runner
        return PredictionSet(r.info, r.backend, str(r.device), dtype_name(r.dtype), items)


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
    result = Predictor(
        model,
        backend=backend,
        device=device,
        dtype=dtype,
        allow_unseen_elements=allow_unseen_elements,
        cuda_graphs=cuda_graphs,
    ).run(inputs, batch_size=batch_size, max_atoms=max_atoms, progress=progress)
    if output is not None:
        result.write(output)
    return result.frame()
