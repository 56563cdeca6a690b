"""`equizoo predict`, `equizoo eval` and `equizoo bench`: parse, call zoo.use.predict / evaluate / bench,
print a table, write the file.

Exit codes (all three commands):
    0  everything asked for was done
    1  predict: some structures failed (their reasons are printed; the others were predicted and written)
    2  bad input: unknown model / dataset / option, unreadable file, missing export; nothing was done
    3  predict: every structure failed
    4  an unexpected internal error (the traceback is printed; please report it)
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from zoo.cli_console import console, err_console
from zoo.errors import ZooError

EXIT_OK, EXIT_PARTIAL, EXIT_INPUT, EXIT_ALL_FAILED, EXIT_CRASH = 0, 1, 2, 3, 4
MAX_ERROR_LINES = 10

ModelOption = typer.Option(
    None,
    "--model",
    "-m",
    help="Model directory, registry name, hf-hub: id or TorchScript file (default: the embedded default model).",
)
DeviceOption = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda.")
DtypeOption = typer.Option(None, "--dtype", help="float32 or float64 (default: the model's own).")
AllowUnseenOption = typer.Option(
    False,
    "--allow-unseen-elements",
    help="Predict also for elements the model's training data did not contain (normally an error per structure).",
)
BackendOption = typer.Option(
    "eager",
    "--backend",
    help="eager, torchscript, compile (torch.compile, checked against eager), aoti or onnx (aoti/onnx need `equizoo export MODEL_DIR --format aoti|onnx` first).",
)
CudaGraphsOption = typer.Option(
    False,
    "--cuda-graphs",
    help="Replay the eager/compiled model as CUDA graphs on inputs padded to size buckets (needs a CUDA device; fastest for small systems).",
)


def _guarded(command):
    """Map an unexpected exception to exit code 4 (so 1 keeps meaning partial failure), traceback printed."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt, ZooError):
            raise  # a ZooError is the app-wide handler's (zoo.cli): one line, exit 2
        except Exception as exc:  # noqa: BLE001 - the point is to catch what nothing else did
            from zoo.extras import missing_extra

            if missing_extra(exc) is not None:
                raise  # the app-wide guard says in one line what to install
            err_console.print_exception(show_locals=False)
            raise typer.Exit(EXIT_CRASH) from None

    return run


def _missing(value) -> bool:
    """No value to show: None, or a NaN/inf that pandas left in a failed row."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _fmt(value, digits: int = 6) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 100 else f"{value:.{digits}g}"
    return escape(str(value))


def _fmt_count(value) -> str:
    """A count with thousands separators ('-' where there is none: a row that failed)."""
    if _missing(value):
        return "-"
    return f"{int(value):,}"


def _fmt_measured(value, digits: int = 4) -> str:
    """A measurement to `digits` significant digits, without an exponent (3277.4 -> 3277, 9.7641 -> 9.764)."""
    if isinstance(value, float) and not _missing(value):
        return f"{value:.0f}" if abs(value) >= 10 ** (digits - 1) else f"{value:.{digits}g}"
    return _fmt(value, digits)


def _print_predictions(result, rows: int, output: Optional[Path]) -> None:
    """The first `rows` predictions as a table, with a line on how many more there are."""
    from zoo.use.results import column

    info = result.info
    table = Table(title=escape(f"{info.name} ({result.backend}, {result.device}, {result.dtype})"))
    for name in ("file", "frame", "formula", "n_atoms"):
        table.add_column(name, justify="right" if name in ("frame", "n_atoms") else "left")
    value_columns = [column(t.name, t.unit) for t in info.targets]
    for name in value_columns:
        table.add_column(escape(name), justify="right")
    table.add_column("status")
    frame = result.frame(per_atom=False)
    for _, row in frame.head(rows).iterrows():
        status = "[green]ok[/green]" if row["status"] == "ok" else "[red]error[/red]"
        table.add_row(
            escape(Path(row["file"]).name),
            str(row["frame"]) if row["frame"] >= 0 else "-",
            row["formula"],
            str(row["n_atoms"]),
            *(_fmt(row[c]) for c in value_columns),
            status,
        )
    console.print(table)
    if len(frame) > rows:
        console.print(
            escape(
                f"... {len(frame) - rows} more rows"
                + (f" in {output}" if output else " (write them all with --output)")
            )
        )


def _print_notes(result, output: Optional[Path]) -> None:
    """The model's caveat, a note when it records no training elements, and the first failures."""
    from zoo.use.results import model_caveat

    info = result.info
    caveat = model_caveat(info)
    if caveat:
        console.print(f"[yellow]caveat:[/yellow] {escape(caveat)}", highlight=False)
    if info.elements is None:
        console.print(
            escape(
                f"note: {info.name} does not record the elements of its training data; structures with other elements are not flagged"
            ),
            highlight=False,
        )
    for source, frame_index, reason in result.errors[:MAX_ERROR_LINES]:
        where = f"frame {frame_index}" if frame_index >= 0 else "the whole file"
        err_console.print(f"[red]failed[/red] {escape(source)} ({where}): {escape(reason)}")
    if result.n_failed > MAX_ERROR_LINES:
        where = (
            f"the error column of {output}"
            if output is not None and output.suffix.lower() != ".extxyz"
            else "--output x.csv"
        )
        err_console.print(
            escape(f"... and {result.n_failed - MAX_ERROR_LINES} more failed structures (every reason: {where})")
        )


def predict_command(
    files: List[str] = typer.Argument(
        ...,
        help="Structure files, quoted globs or FILE@SELECTION (ASE index syntax, e.g. traj.extxyz@-1): any ASE format (xyz, extxyz, cif, traj, json, db, ...), MD npz, OC20 LMDB, QM9 xyz.",
    ),
    model: Optional[str] = ModelOption,
    device: str = DeviceOption,
    batch_size: int = typer.Option(
        32, "--batch-size", help="Structures per batch at most (batches group structures of similar size)."
    ),
    max_atoms: int = typer.Option(8192, "--max-atoms", help="Atoms per batch at most."),
    backend: str = BackendOption,
    dtype: Optional[str] = DtypeOption,
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Write the results: .csv (per structure), .json (all, with per-atom arrays) or .extxyz (structures with energy/forces).",
    ),
    rows: int = typer.Option(20, "--rows", help="Rows of the printed table (0: none)."),
    allow_unseen_elements: bool = AllowUnseenOption,
    cuda_graphs: bool = CudaGraphsOption,
) -> None:
    """Predict the properties of every structure in FILES (energies, forces, QM9 targets, adsorption energies)."""
    from zoo.use.predict import Predictor
    from zoo.use.results import OUTPUT_FORMATS, check_output

    written = False
    if output is not None:
        check_output(output, OUTPUT_FORMATS, "--output")
    predictor = Predictor(
        model,
        backend=backend,
        device=device,
        dtype=dtype,
        allow_unseen_elements=allow_unseen_elements,
        cuda_graphs=cuda_graphs,
    )
    result = predictor.run(files, batch_size=batch_size, max_atoms=max_atoms, progress=True)
    if output is not None and (len(result.items) > result.n_failed or output.suffix.lower() in (".csv", ".json")):
        written = bool(result.write(output))
    if rows > 0:
        _print_predictions(result, rows, output)
    _print_notes(result, output)
    ok = len(result.items) - result.n_failed
    summary = f"{ok} of {len(result.items)} structures predicted"
    if written:
        summary += f"; wrote {output}"
    (err_console if result.n_failed else console).print(escape(summary))
    if result.n_failed:
        raise typer.Exit(EXIT_ALL_FAILED if ok == 0 else EXIT_PARTIAL)


def eval_command(
    dataset: str = typer.Argument(
        ..., help="qm9[:TARGET,...], md17:MOLECULE, rmd17:MOLECULE, oc20-is2re, or a local dataset path."
    ),
    model: Optional[str] = ModelOption,
    split: Optional[str] = typer.Option(
        None, "--split", help="Split (default: test; OC20: val_id; val_ood_ads, val_ood_cat, val_ood_both)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N structures of the split."),
    target: Optional[str] = typer.Option(
        None, "--target", help="QM9 target(s), comma-separated (default: all the model predicts)."
    ),
    source: Optional[Path] = typer.Option(
        None,
        "--source",
        "--data",
        help="Local copy of the dataset's files, to prepare it if it is not prepared yet (--data: the same).",
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Dataset cache root (default $EQUIZOO_CACHE or ~/.cache/equizoo)."
    ),
    energy_unit: Optional[str] = typer.Option(
        None, "--energy-unit", help="Energy unit of an extxyz --source (eV, meV, kcal/mol, Hartree)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Structures per batch at most."),
    device: str = DeviceOption,
    backend: str = BackendOption,
    dtype: Optional[str] = DtypeOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the metrics as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a parity plot (PNG)."),
    allow_unseen_elements: bool = AllowUnseenOption,
) -> None:
    """Evaluate a model on a dataset split with the paper's metrics, beside the paper's numbers."""
    from zoo.use.evaluate import run_evaluation
    from zoo.use.results import check_output

    if output is not None:
        check_output(output, {".json": "json"}, "--output")
    if plot is not None:
        check_output(plot, {".png": "png"}, "--plot")
    result = run_evaluation(
        dataset, model, split=split, limit=limit, target=target, source=source, cache_dir=cache_dir,
        energy_unit=energy_unit, backend=backend, device=device, dtype=dtype, batch_size=batch_size, progress=True,
        allow_unseen_elements=allow_unseen_elements,
    )  # fmt: skip
    if output is not None:
        result.write_json(output)
    if plot is not None:
        result.plot(plot)
    info = result.info
    table = Table(
        title=escape(f"{info['model']} on {info['dataset']} / {info['split']} ({info['n_structures']} structures)")
    )
    for name in ("quantity", "metric", "unit", "measured", "paper", "paper source"):
        table.add_column(name, justify="right" if name in ("measured", "paper") else "left")
    for _, row in result.metrics.iterrows():
        table.add_row(
            escape(row["quantity"]),
            row["metric"],
            escape(row["unit"]),
            _fmt(row["value"], 4),
            _fmt(row["paper"], 4),
            escape(row["paper_source"] or "-"),
        )
    console.print(table)
    for path in (output, plot):
        if path is not None:
            console.print(escape(f"wrote {path}"))


def bench_command(
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Model directory, registry name, or a variant name (benches a randomly initialised network).",
    ),
    device: str = DeviceOption,
    batch_size: int = typer.Option(32, "--batch-size", help="Structures per batch for throughput and training steps."),
    backend: List[str] = typer.Option(
        ["eager"],
        "--backend",
        help="eager, torchscript, compile, cuda-graphs, compile+cuda-graphs, aoti, onnx; repeat for several.",
    ),
    compile: bool = typer.Option(False, "--compile", help="Also run torch.compile (cold compiles take minutes)."),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Run eager, TorchScript (+ compile, + exports present) in this process and report speedups.",
    ),
    task: List[str] = typer.Option(
        ["inference", "latency"], "--task", help="inference, latency, train_step; repeat for several."
    ),
    train: bool = typer.Option(False, "--train", help="Add the training step (eager)."),
    dtype: Optional[str] = DtypeOption,
    warmup: int = typer.Option(3, "--warmup", help="Untimed calls before timing."),
    repeats: int = typer.Option(10, "--repeats", help="Timed calls (median and spread are reported)."),
    structures: Optional[List[Path]] = typer.Option(
        None, "--structures", help="Bench on these structure files instead of the built-in workload."
    ),
    suite: Optional[str] = typer.Option(
        None, "--suite", help="A named set of cases; 'speed' gives the rows of the speed table."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write all fields as .json or .csv."),
    wide: bool = typer.Option(False, "--wide", help="All columns (needs a wide terminal); --output has every field."),
    as_json: bool = typer.Option(False, "--json", help="Print every field of every row as JSON instead of a table."),
    profile: bool = typer.Option(
        False,
        "--profile",
        help="Also count per call: aten operators (torch.profiler) and, on CUDA, kernels, launches and GPU-busy time.",
    ),
) -> None:
    """Throughput, latency at batch 1 and peak memory of a model under several backends."""
    from zoo.use.bench import bench, write_bench

    tasks = list(dict.fromkeys(list(task) + (["train_step"] if train else [])))
    _check_bench_options(backend, output)
    frame = bench(
        model, backends=backend, compare=compare, compile=compile, tasks=tasks, batch_size=batch_size, device=device,
        dtype=dtype, warmup=warmup, repeats=repeats, structures=[str(p) for p in structures] if structures else None,
        suite=suite, progress=True, profile=profile,
    )  # fmt: skip
    if output is not None:
        write_bench(frame, output)
    if as_json:
        typer.echo(frame.to_json(orient="records", indent=1))
        return
    errors = _print_bench_table(frame, wide)
    if profile:
        _print_profile(frame)
    for n, error in enumerate(errors, 1):
        err_console.print(escape(f"error {n}: {error}"), highlight=False)
    first = frame.iloc[0]
    if not wide:
        console.print(
            "--wide: atoms, spread, atoms/s, peak memory; --output FILE.json|csv: every field",
            highlight=False,
            soft_wrap=False,
        )
    console.print(
        escape(f"workload: {first['workload']}; {first['warmup']} warm-up and {first['repeats']} timed calls per row"),
        soft_wrap=False,
    )
    if output is not None:
        console.print(escape(f"wrote {output}"))


def _check_bench_options(backends: List[str], output: Optional[Path]) -> None:
    """Refuse an unknown backend, a missing ONNX Runtime or an unwritable --output before any timing."""
    from zoo.errors import UseError
    from zoo.use.bench import BENCH_BACKENDS
    from zoo.use.results import check_output
    from zoo.use.runner import check_backend

    if output is not None:
        check_output(output, {".json": "json", ".csv": "csv"}, "--output")
    for name in backends:
        if name not in BENCH_BACKENDS:
            raise UseError(f"unknown backend {name!r}; use {', '.join(BENCH_BACKENDS)}")
        if name in ("onnx",):
            check_backend(name)


def _print_bench_table(frame, wide: bool) -> List[str]:
    """The bench table (narrow: failed rows say `error N`); returns the errors the narrow table numbered."""
    from rich import box

    first = frame.iloc[0]
    models = list(dict.fromkeys(str(m) for m in frame["model"]))
    title = f"equizoo bench{' of ' + models[0] if len(models) == 1 else ''} on {first['device_name']} ({first['device']}, torch {first['torch']}, {first['threads']} thread{'s' if first['threads'] != 1 else ''})"
    columns = [
        "model",
        "backend",
        "task",
        "batch",
        "atoms",
        "median ms",
        "iqr ms",
        "structures/s",
        "atoms/s",
        "peak MB",
        "vs eager",
        "status",
    ]
    if not wide:
        columns = (["model"] if len(models) > 1 else []) + [
            "backend",
            "task",
            "batch",
            "median ms",
            "structures/s",
            "vs eager",
            "status",
        ]
    console.print(
        escape(title), soft_wrap=False, highlight=False
    )  # wrapped at the terminal width, unlike a table title
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in columns:
        table.add_column(
            name, justify="left" if name in ("model", "backend", "task", "status") else "right", overflow="fold"
        )
    errors = []
    for _, r in frame.iterrows():
        if r["status"] == "ok":
            status = "[green]ok[/green]"
        elif wide:
            status = f"[red]{escape(r['error'])}[/red]"
        else:
            errors.append(f"{r['model']} {r['backend']} {r['task']}: {r['error']}")
            status = f"[red]error {len(errors)}[/red]"
        cells = {
            "model": escape(str(r["model"])), "backend": r["backend"], "task": r["task"], "batch": str(r["batch_size"]),
            "atoms": _fmt(r["atoms_per_batch"]), "median ms": _fmt_measured(r["median_ms"]),
            "iqr ms": _fmt_measured(r["iqr_ms"], 2), "structures/s": _fmt_measured(r["structures_per_s"]),
            "atoms/s": _fmt_measured(r["atoms_per_s"]), "peak MB": _fmt_measured(r["peak_memory_mb"]),
            "vs eager": _fmt_measured(r["speedup_vs_eager"], 3), "status": status,
        }  # fmt: skip
        table.add_row(*(cells[c] for c in columns))
    console.print(table)
    return errors


def _print_profile(frame) -> None:
    """Per-call operation counts of `bench --profile` (one profiled call per row)."""
    cuda = frame["gpu_kernels"].notna().any()
    table = Table(title="per call (torch.profiler)")
    names = ["model", "backend", "task", "batch", "aten calls"] + (
        ["kernels", "launches", "GPU busy ms"] if cuda else []
    )
    for name in names:
        table.add_column(name, justify="left" if name in ("model", "backend", "task") else "right")
    for _, r in frame.iterrows():
        counts = [_fmt_count(r["aten_calls"])] + (
            [_fmt_count(r["gpu_kernels"]), _fmt_count(r["kernel_launches"]), _fmt_measured(r["gpu_busy_ms"])]
            if cuda
            else []
        )
        table.add_row(escape(str(r["model"])), r["backend"], r["task"], str(r["batch_size"]), *counts)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add predict, eval and bench to the `equizoo` app."""
    app.command("predict")(_guarded(predict_command))
    app.command("eval")(_guarded(eval_command))
    app.command("bench")(_guarded(bench_command))
