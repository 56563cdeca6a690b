"""``equizoo data``: prepare, inspect and list datasets (thin wrappers over zoo.data)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import DataError

app = typer.Typer(help="Prepare, inspect and list datasets (QM9, MD17/rMD17/MD22, OC20 IS2RE).", no_args_is_help=True)
console = Console()

CacheOption = typer.Option(None, "--cache-dir", help="Cache root (default $EQUIZOO_CACHE or ~/.cache/equizoo).")


@contextmanager
def _progress():
    """A rich progress bar behind the ``progress(description, completed, total)`` callback."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(description: str, completed: int, total: int | None) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=completed, total=total)

        yield update


def _fail(exc: DataError) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(code=1)


@app.command()
def prepare(
    name: str = typer.Argument(..., help="Dataset name (see `list`), or a new name with --source."),
    source: Optional[str] = typer.Option(None, help="Local file/folder or http(s) URL of the raw data."),
    cache_dir: Optional[Path] = CacheOption,
    download: bool = typer.Option(False, help="Download the official files (checksummed, resumable)."),
    mirror: Optional[str] = typer.Option(None, help="Base URL replacing the official host."),
    force: bool = typer.Option(False, help="Prepare again even if already prepared."),
    energy_unit: Optional[str] = typer.Option(None, help="Energy unit of extxyz sources (eV, meV, kcal/mol, Hartree)."),
    split: Optional[int] = typer.Option(None, help="rMD17 official split number 1..5."),
    train_size: Optional[int] = typer.Option(None, help="Training structures (MD17/MD22/extxyz; default 950)."),
    val_size: Optional[int] = typer.Option(None, help="Validation structures (default 50)."),
) -> None:
    """Read a dataset's raw files once and write the compact prepared format."""
    from .prepare import dataset_info, prepare_dataset

    given = {"energy_unit": energy_unit, "split": split, "train_size": train_size, "val_size": val_size}
    options = {k: v for k, v in given.items() if v is not None}
    try:
        with _progress() as update:
            path = prepare_dataset(
                name, source, cache_dir, force=force, download=download, mirror=mirror, progress=update, **options
            )
        info = dataset_info(path)
    except DataError as exc:
        _fail(exc)
    counts = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    console.print(f"prepared [bold]{info['name']}[/bold]: {info['n_structures']} structures ({counts}) in {path}")


@app.command()
def info(
    dataset: str = typer.Argument(..., help="Dataset name or prepared folder."),
    cache_dir: Optional[Path] = CacheOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Counts per split, units per target and the cache path."""
    from .prepare import dataset_info

    try:
        data = dataset_info(dataset, cache_dir)
    except DataError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"{data['name']}: {data.get('description', '')}", show_header=False)
    table.add_row("prepared", str(data["prepared"]))
    table.add_row("path", data["path"])
    if data["prepared"]:
        table.add_row("structures", str(data["n_structures"]))
        table.add_row("atoms", str(data["n_atoms"]))
        for split, count in data["splits"].items():
            table.add_row(f"split {split}", str(count))
        table.add_row("split rule", data["split_rule"])
        for target, unit in data["targets"].items():
            source_unit = data["source_units"].get(target)
            table.add_row(f"target {target}", unit + (f"  (source: {source_unit})" if source_unit else ""))
    else:
        table.add_row("official files", "\n".join(data["official_files"]))
    console.print(table)


@app.command("list")
def list_(
    cache_dir: Optional[Path] = CacheOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every known dataset and whether it is prepared in the cache."""
    from .prepare import list_datasets

    rows = list_datasets(cache_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="datasets")
    for column in ("name", "prepared", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], "yes" if row["prepared"] else "", row["description"])
    console.print(table)


@app.command()
def stats(
    dataset: str = typer.Argument(..., help="Dataset name or prepared folder."),
    split: str = typer.Option("train", help="Split to compute statistics on."),
    cutoff: float = typer.Option(5.0, help="Radius for the average degree, Å."),
    cache_dir: Optional[Path] = CacheOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Target mean/std, average atoms and average degree (the numbers recipes need)."""
    from .prepare import load_dataset
    from .stats import compute_statistics

    try:
        result = compute_statistics(load_dataset(dataset, cache_dir, prepare=False), split, cutoff=cutoff)
    except DataError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['dataset']} [{split}]: {result['n_structures']} structures")
    for column in ("quantity", "mean", "std", "unit"):
        table.add_column(column)
    table.add_row("atoms per structure", f"{result['avg_num_atoms']:.6g}", "", "")
    table.add_row(f"degree (r < {cutoff:g} Å)", f"{result['avg_degree']:.6g}", "", "")
    for name, entry in result["targets"].items():
        table.add_row(name, str(entry["mean"]), str(entry["std"]), entry["unit"])
    console.print(table)
