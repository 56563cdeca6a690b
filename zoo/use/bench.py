"""Benchmarks: throughput, latency and peak memory of a model under several backends, in one process.

Each row is one (model, backend, task, batch size) measured with `warmup` untimed calls and `repeats`
timed ones (the device synchronised around each); times are the model call alone, the neighbour list is
built once beforehand (its cost is reported as `graph_ms`); `max_abs_diff_vs_eager` checks that a
faster backend still gives the eager outputs. Tasks:
- `inference`: forward at `batch_size` (energy + forces for force fields, as predict runs them);
- `latency`: the same at batch size 1;
- `train_step`: forward (forces with create_graph), L1 loss, backward and an AdamW step (eager and
  compile; CUDA-graph backends replay inference only).

Backends: those of zoo.use.runner.load_runner, plus `cuda-graphs` (the eager model replayed as CUDA graphs on
padded inputs) and `compile+cuda-graphs`; accelerated backends are checked against eager when made.
`profile=True` (CLI `--profile`) adds, per call, the aten operators torch.profiler records and, on CUDA,
the GPU kernels, the host's kernel/graph launch calls and the time the GPU was busy (union of its
kernel and copy intervals), from one profiled call after the timed ones.

Workloads are real geometries where available: 512 random QM9 molecules (from the prepared QM9 cache or
qm9pack), MD17 aspirin frames, the OC20 adslab tiled to 68 atoms (from $EQUIZOO_SHARED_DATA / the
checkout's ../shared/data, then the checkout's examples/),
repeated to fill a batch; without them, ASE-built geometries (ase.collections.g2 molecules, a Cu(111)
slab with CO), labelled so in `workload`. `structures=` (CLI `--structures FILE`) overrides.

A variant name (`equizoo variants`) as the model benches a randomly initialised network of that variant.
The `speed` suite gives the rows of the speed table (docs/performance-notes.md): QM9 L2 inference and
training step at batch 128, MD17 L2 and L3 energy+forces for one molecule (latency), MD17 L2 training
step at batch 8, OC20 L1 inference and training step at batch 16 of 68-atom slabs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import resource
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from zoo import keys
from zoo.artifact import EXPORT_FILES
from zoo.data import DataError, Structure
from zoo.device import parse_dtype, pick_device
from zoo.errors import UseError
from zoo.io import atomic_write, progress_bar
from zoo.models.zoo_model import TargetInfo, ZooModel
from zoo.paths import checkout_root, shared_data_dir
from zoo.spec import ModelSpec
from zoo.use.inputs import check_structure, read_inputs
from zoo.use.predict import model_inputs
from zoo.use.runner import Runner, accelerated_runner, constant_weights, load_runner

BENCH_FIELDS = (
    "model", "variant", "backend", "task", "status", "error", "device", "device_name", "dtype", "batch_size",
    "atoms_per_batch", "edges_per_batch", "forces", "workload", "warmup", "repeats", "median_ms", "iqr_ms",
    "min_ms", "max_ms", "structures_per_s", "atoms_per_s", "graph_ms", "peak_memory_mb", "memory_kind",
    "speedup_vs_eager", "max_abs_diff_vs_eager", "aten_calls", "gpu_kernels", "kernel_launches", "gpu_busy_ms",
    "torch", "threads", "cpu",
)  # fmt: skip
TASKS = ("inference", "latency", "train_step")
BENCH_BACKENDS = ("eager", "torchscript", "compile", "cuda-graphs", "compile+cuda-graphs", "aoti", "onnx")
TRAIN_BACKENDS = ("eager", "compile")
SUITES = {
    "speed": (
        ("qm9-l2", "inference", 128),
        ("qm9-l2", "train_step", 128),
        ("md17-l2", "latency", 1),
        ("md17-l3", "latency", 1),
        ("md17-l2", "train_step", 8),
        ("oc20-l1", "inference", 16),
        ("oc20-l1", "train_step", 16),
    )
}
REPO = checkout_root()  # examples/ of a source checkout; None in an ordinary install


# ---------------------------------------------------------------------------------------------- workloads
def _kind(info: ModelSpec) -> str:
    return "oc20" if info.periodic else ("md17" if info.energy_target else "qm9")


def _read(path: Path) -> list[Structure]:
    from zoo.data import read_structures

    return read_structures(path)


def _qm9_sample(count: int = 512) -> tuple[list[Structure], str]:
    """Random QM9 molecules (fixed seed) from the prepared cache, else from qm9pack; ([], "") if neither."""
    from zoo.data import PreparedDataset, iter_qm9pack, prepared_path

    rng = np.random.default_rng(0)
    path = prepared_path("qm9")
    if (path / "manifest.json").is_file():
        dataset = PreparedDataset(path)
        picks = rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)
        return [dataset[int(i)] for i in picks], f"QM9, {len(picks)} random molecules (prepared cache)"
    try:
        molecules = list(iter_qm9pack())
    except (DataError, ImportError, OSError):
        return [], ""
    picks = rng.choice(len(molecules), size=min(count, len(molecules)), replace=False)
    return [molecules[int(i)] for i in picks], f"QM9, {len(picks)} random molecules (qm9pack)"


def _tiled_adslab(path: Path) -> list[Structure]:
    import ase.io

    from zoo.data import structure_from_atoms

    atoms = ase.io.read(path).repeat((2, 1, 1))
    return [structure_from_atoms(atoms, name="oc20-adslab-x2", source=str(path))]


def _ase_molecules(types: set) -> list[Structure]:
    from ase.collections import g2

    from zoo.data import structure_from_atoms

    return [
        structure_from_atoms(a, name=a.get_chemical_formula())
        for a in g2
        if set(a.numbers.tolist()) <= types and len(a) > 2
    ]


def _ase_slab() -> list[Structure]:
    from ase.build import add_adsorbate, fcc111, molecule

    from zoo.data import structure_from_atoms

    slab = fcc111("Cu", size=(4, 4, 4), vacuum=10.0)
    layers = slab.get_tags()  # 1 = top layer .. 4 = bottom
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
    tags = np.where(np.arange(len(slab)) >= len(layers), 2, 0)
    tags[: len(layers)] = np.where(layers <= 2, 1, 0)
    slab.set_tags(tags)
    return [structure_from_atoms(slab, name="Cu111+CO (ASE-built)")]


def workload(info: ModelSpec, structures: Optional[Sequence] = None) -> tuple[list[Structure], str]:
    """Realistic structures for `info`'s kind of model (see the module doc), checked against the model."""
    if structures is not None:
        items = read_inputs(structures)
        candidates, label = [i.structure for i in items if i.structure is not None], "given structures"
    else:
        candidates, label = [], ""
        kind = _kind(info)
        shared = shared_data_dir()
        sources = {
            "qm9": [(shared, "qm9/qm9_reduced_100.xyz", _read), (REPO, "examples/qm9_molecules.extxyz", _read)],
            "md17": [
                (shared, "md17/mdbenchgnn/aspirin/test.npz", _read),
                (REPO, "examples/aspirin_md17.extxyz", _read),
            ],
            "oc20": [
                (shared, "oc20/oc20_adslab_frame.json", _tiled_adslab),
                (REPO, "examples/oc20_adslab.json", _tiled_adslab),
            ],
        }[kind]
        if kind == "qm9":
            candidates, label = _qm9_sample()
        for root, rel, reader in [] if candidates else sources:
            if root is not None and (root / rel).is_file():
                candidates, label = reader(root / rel), f"{rel} ({'shared data' if root is shared else 'examples'})"
                break
        if not candidates:
            candidates = _ase_slab() if kind == "oc20" else _ase_molecules(set(info.type_numbers))
            label = "ASE-built geometries (no real data found)"
    ready = []
    for s in candidates:
        checked, _ = check_structure(s, info)
        if checked is not None:
            ready.append(checked)
    if not ready:
        raise UseError(
            f"no workload structure ({label}) suits model {info.name} (types {info.type_names[:10]}); pass --structures FILE"
        )
    return ready, label


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, warmup: int, repeats: int) -> np.ndarray:
    """Seconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def _memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory_peak(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def machine() -> dict:
    """The machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------- models
def _variant_model(name: str) -> ZooModel:
    """A randomly initialised variant, its weights constants as in a model loaded for inference."""
    from zoo.models import build_model

    net = build_model(name)
    target = (
        TargetInfo("energy", "eV", forces_unit="eV/Å")
        if net.output_key == keys.ENERGY
        else TargetInfo("property", "raw")
    )
    return constant_weights(ZooModel({target.name: net}, [target]))


def _is_variant(spec) -> bool:
    from zoo.models import list_variants

    return isinstance(spec, str) and not Path(spec).expanduser().exists() and spec in list_variants()


@dataclasses.dataclass
class _Model:
    """The model under test, loaded once per bench: its spec, the eager runner (also used by compile and
    the training step) and what it is."""

    spec: object
    name: str
    variant: str
    eager: Runner
    runners: dict = dataclasses.field(default_factory=dict)

    @property
    def info(self) -> ModelSpec:
        return self.eager.info

    @classmethod
    def load(cls, spec, device: torch.device, dtype: Optional[torch.dtype]) -> _Model:
        if _is_variant(spec):
            model = _variant_model(spec).to(dtype or torch.float32)
            runner = load_runner(model, backend="eager", device=device)
            runner.info = dataclasses.replace(runner.info, name=f"{spec} (random init)")
            return cls(model, runner.info.name, spec, runner)
        runner = load_runner(spec, backend="eager", device=device, dtype=dtype)
        return cls(spec, runner.info.name, ",".join(runner.info.variants), runner)

    def runner(self, backend: str) -> Runner:
        """The runner of `backend`, made once (a compile or CUDA-graph capture is reused across tasks)."""
        if backend == "eager":
            return self.eager
        if backend not in self.runners:
            if backend in ("compile", "cuda-graphs", "compile+cuda-graphs"):
                if "cuda-graphs" in backend and self.eager.device.type != "cuda":
                    raise UseError(f"backend {backend} needs a CUDA device (the device is {self.eager.device})")
                self.runners[backend] = accelerated_runner(
                    self.eager, compile="compile" in backend, cuda_graphs="cuda-graphs" in backend
                )
            else:
                self.runners[backend] = load_runner(
                    self.spec, backend=backend, device=self.eager.device, dtype=self.eager.dtype
                )
        return self.runners[backend]


# ---------------------------------------------------------------------------------------------- cases
def _batch(structures: list[Structure], size: int) -> list[Structure]:
    return [structures[i % len(structures)] for i in range(size)]


def _train_step_fn(model: ZooModel, inputs: dict, n: int, compile: bool = False):
    from zoo.accel import compile_model

    model.train().requires_grad_(True)  # a copy of the runner's model, whose weights were loaded as constants
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    energy = model.energy_target
    forward = compile_model(model) if compile else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = forward(**inputs, num_graphs=n)
        loss = sum(out[t.name].abs().mean() for t in model.targets)
        if energy and keys.FORCES in out:
            loss = loss + out[keys.FORCES].abs().mean()
        loss.backward()
        optimizer.step()

    return step


def _row_base(
    m: _Model,
    backend: str,
    task: str,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
    label: str,
    warmup: int,
    repeats: int,
    mach: dict,
) -> dict:
    row = {f: math.nan for f in BENCH_FIELDS}
    row.update(
        model=m.name, variant=m.variant, backend=backend, task=task, status="ok", error="", device=str(device),
        device_name=mach["gpu"] if device.type == "cuda" else mach["cpu"], dtype=str(dtype).replace("torch.", ""),
        batch_size=batch_size, forces=bool(m.info.energy_target), workload=label, warmup=warmup, repeats=repeats,
        memory_kind="", torch=mach["torch"], threads=mach["threads"], cpu=mach["cpu"],
    )  # fmt: skip
    return row


def profile_call(fn, device: torch.device) -> dict:
    """One call of `fn` under torch.profiler: aten operators (nested ones included) and, on CUDA, GPU
    kernels, host launch calls (kernel and CUDA-graph launches) and GPU-busy milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    # torch 2.13's profiler (kineto) writes a start and a stop line to stderr per profiled call, between the
    # progress bar and the table; read when the profiler first starts, and a level the user set is kept
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(device)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    events = prof.events()
    out = {"aten_calls": sum(1 for e in events if e.name.startswith("aten::"))}
    if cuda:
        on_gpu = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
        out["gpu_kernels"] = sum(1 for e in on_gpu if not e.name.startswith(("Memcpy", "Memset")))
        out["kernel_launches"] = sum(1 for e in events if e.name in LAUNCH_CALLS)
        out["gpu_busy_ms"] = _union_ms([(e.time_range.start, e.time_range.end) for e in on_gpu])
    return out


LAUNCH_CALLS = frozenset(
    {
        "cudaLaunchKernel",
        "cudaLaunchKernelExC",
        "cuLaunchKernel",
        "cuLaunchKernelEx",
        "cudaLaunchCooperativeKernel",
        "cudaGraphLaunch",
    }
)


def _union_ms(intervals: list) -> float:
    """Total length of the union of (start, end) microsecond intervals, in ms."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total / 1000


def bench_case(
    m: _Model,
    backend: str,
    task: str,
    batch_size: int,
    structures: list[Structure],
    label: str,
    warmup: int,
    repeats: int,
    mach: dict,
    profile: bool = False,
) -> dict:
    """One measured row (status `error` with the reason when the backend cannot run it)."""
    device, dtype = m.eager.device, m.eager.dtype
    size = 1 if task == "latency" else batch_size
    row = _row_base(m, backend, task, device, dtype, size, label, warmup, repeats, mach)
    try:
        batch = _batch(structures, size)
        start = time.perf_counter()
        inputs, n = model_inputs(batch, m.info, device, dtype)
        row["graph_ms"] = 1000 * (time.perf_counter() - start)
        row["atoms_per_batch"] = int(sum(s.n_atoms for s in batch))
        row["edges_per_batch"] = int(inputs["edge_index"].shape[1])
        if task == "train_step":
            if backend not in TRAIN_BACKENDS:
                raise UseError(f"training steps are measured on the {' and '.join(TRAIN_BACKENDS)} backends only")
            import copy

            fn = _train_step_fn(copy.deepcopy(m.eager.module), inputs, n, compile=backend == "compile")
        else:
            runner = m.runner(backend)

            def fn() -> None:
                runner(inputs, n)

        _memory_reset(device)
        times = time_calls(fn, device, warmup, repeats)
        peak, kind = _memory_peak(device)
        if profile:
            row.update(profile_call(fn, device))
        if task != "train_step":
            row["max_abs_diff_vs_eager"] = (
                0.0 if backend == "eager" else _max_difference(m.eager(inputs, n), runner(inputs, n))
            )
    except (
        UseError,
        ArithmeticError,
        RuntimeError,
        ValueError,
        DataError,
        ImportError,
        NotImplementedError,
        torch.cuda.OutOfMemoryError,
    ) as exc:
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return row
    median = float(np.median(times))
    q75, q25 = np.percentile(times, [75, 25])
    row.update(
        median_ms=1000 * median, iqr_ms=1000 * float(q75 - q25), min_ms=1000 * float(times.min()), max_ms=1000 * float(times.max()),
        structures_per_s=size / median, atoms_per_s=row["atoms_per_batch"] / median, peak_memory_mb=peak, memory_kind=kind,
    )  # fmt: skip
    return row


def _max_difference(reference: dict, candidate: dict) -> float:
    """Largest absolute difference over the outputs both backends give (targets, forces, ...)."""
    common = [k for k in reference if k in candidate and reference[k].numel()]
    if not common:
        return math.nan
    return max(float((candidate[k].to(reference[k]) - reference[k]).abs().max()) for k in common)


def _compare_backends(m: _Model, compile: bool) -> list[str]:
    names = ["eager", "torchscript"] + (["compile"] if compile else [])
    source = Path(m.info.source)
    names += [b for b in ("aoti", "onnx") if source.is_dir() and (source / EXPORT_FILES[b]).is_file()]
    return names


def bench(
    model=None,
    *,
    backends: Sequence[str] = ("eager",),
    compare: bool = False,
    compile: bool = False,
    tasks: Sequence[str] = ("inference", "latency"),
    batch_size: int = 32,
    device="auto",
    dtype=None,
    warmup: int = 3,
    repeats: int = 10,
    structures=None,
    suite: Optional[str] = None,
    progress: bool = False,
    profile: bool = False,
):
    """Benchmark rows (a DataFrame with BENCH_FIELDS) for `model` (directory, registry name, variant name,
    ZooModel; None: the embedded default) or for every case of `suite`.

    `compare` runs eager, TorchScript (+ torch.compile with `compile`, + AOTInductor/ONNX when the model
    directory has those exports) in this one process and fills `speedup_vs_eager`. `profile` fills
    aten_calls (and on CUDA gpu_kernels, kernel_launches, gpu_busy_ms) per call.
    """
    import pandas as pd

    dev = pick_device(device)
    dt = parse_dtype(dtype)
    _check_bench_args(backends, tasks, warmup, repeats, batch_size)
    cases = _suite_cases(suite) if suite is not None else [(model, task, batch_size) for task in tasks]
    plan = _bench_plan(cases, dev, dt, structures, backends, compare, compile)
    mach = machine()
    rows = _run_plan(plan, warmup, repeats, mach, profile, progress)
    frame = pd.DataFrame(rows, columns=list(BENCH_FIELDS))
    eager = {
        (r["model"], r["task"], r["batch_size"]): r["median_ms"]
        for r in rows
        if r["backend"] == "eager" and r["status"] == "ok"
    }
    frame["speedup_vs_eager"] = [
        eager.get((r["model"], r["task"], r["batch_size"]), math.nan) / r["median_ms"] for r in rows
    ]
    frame.attrs["machine"] = mach
    return frame


def _check_bench_args(
    backends: Sequence[str], tasks: Sequence[str], warmup: int, repeats: int, batch_size: int
) -> None:
    """Refuse unknown backends and tasks and impossible counts before any model is loaded."""
    unknown = [b for b in backends if b not in BENCH_BACKENDS]
    if unknown:
        raise UseError(f"unknown backend(s) {unknown}; use {', '.join(BENCH_BACKENDS)}")
    bad_tasks = [t for t in tasks if t not in TASKS]
    if bad_tasks:
        raise UseError(f"unknown task(s) {bad_tasks}; use {', '.join(TASKS)}")
    if warmup < 0 or repeats < 1 or batch_size < 1:
        raise UseError("warmup must be >= 0, repeats and batch size >= 1")


def _suite_cases(suite: str) -> list:
    """The (model, task, batch size) cases of a named suite."""
    if suite not in SUITES:
        raise UseError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    return [(variant, task, size) for variant, task, size in SUITES[suite]]


def _bench_plan(cases, dev, dt, structures, backends: Sequence[str], compare: bool, compile: bool) -> list:
    """One row to time per case and backend: each model loaded once with its workload; the training step only
    where a backend can take gradients."""
    loaded: dict = {}
    plan = []
    for spec, task, size in cases:
        key = spec if isinstance(spec, (str, type(None))) else id(spec)
        if key not in loaded:
            m = _Model.load(spec if spec is not None else _default_spec(), dev, dt)
            loaded[key] = (m, *workload(m.info, structures))
        m, structs, label = loaded[key]
        names = (
            _compare_backends(m, compile)
            if compare
            else list(backends) + (["compile"] if compile and "compile" not in backends else [])
        )
        for backend in names:
            if task == "train_step" and backend not in TRAIN_BACKENDS:
                continue
            plan.append((m, backend, task, size, structs, label))
    return plan


def _run_plan(plan: list, warmup: int, repeats: int, mach: dict, profile: bool, progress: bool) -> list:
    """Time every row of the plan (a progress bar when asked); a failing row records its error."""
    rows = []
    bar = None
    if progress:
        bar, job = progress_bar(len(plan), "benchmarking")
        bar.start()
    try:
        for m, backend, task, size, structs, label in plan:
            rows.append(bench_case(m, backend, task, size, structs, label, warmup, repeats, mach, profile=profile))
            if bar is not None:
                bar.advance(job)
    finally:
        if bar is not None:
            bar.stop()
    return rows


def _default_spec():
    from zoo.pretrained import default_model_dir

    return default_model_dir()


def write_bench(frame, path) -> Path:
    """Write bench rows as CSV or JSON (with the machine description), atomically."""
    import json

    path = Path(path)
    if path.suffix.lower() == ".csv":
        return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    if path.suffix.lower() != ".json":
        raise UseError(f"{path}: bench writes .csv or .json")
    rows = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in frame.to_dict(orient="records")
    ]
    payload = {"machine": frame.attrs.get("machine", machine()), "fields": list(BENCH_FIELDS), "rows": rows}
    return atomic_write(
        path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    )


__all__ = [
    "BENCH_BACKENDS",
    "BENCH_FIELDS",
    "SUITES",
    "TASKS",
    "bench",
    "bench_case",
    "machine",
    "profile_call",
    "time_calls",
    "workload",
    "write_bench",
]
