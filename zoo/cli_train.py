"""`equizoo train`: run a training recipe (thin wrapper over zoo.train)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from zoo.cli_console import console


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("recipes")(recipes)


def train(
    recipe: str | None = typer.Argument(
        None, help="Recipe YAML file, or a name under recipes/ such as qm9/gap or md17/l2/aspirin."
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a recipe key, e.g. --set optim.lr=1.0e-4 --set model.overrides.num_layers=2 (repeatable).",
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="Continue the run in this folder (or checkpoint folder); --set may then change only run-time keys such as optim.max_steps.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run folder to create (default runs/<variant>-<target>-<time>)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the recipe, build the model, print the resolved recipe and stop."
    ),
    bf16: bool = typer.Option(
        False, "--bf16", help="bf16 autocast for the forward and loss (same as --set optim.amp=true; float32 models)."
    ),
    tf32: bool = typer.Option(
        False, "--tf32", help="TF32 matrix products on CUDA (same as --set optim.tf32=true; float32 models)."
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="Wall-clock budget, e.g. 90s, 9m, 1h30m (same as --set budget.wall_time=9m): the step count and the schedule are fitted to it.",
    ),
    device_data: bool | None = typer.Option(
        None,
        "--device-data/--no-device-data",
        help="Hold the splits on the device with neighbour lists built once (default: the recipe's data.on_device, auto = where they fit).",
    ),
) -> None:
    """Train an Equiformer from a recipe; ends with a model directory in <run>/model.

    Multi-GPU / multi-node: torchrun --nproc_per_node=G -m zoo.cli train RECIPE (optim.batch_size is global;
    a --budget is global too: rank 0 times the steps and every process follows its step count).
    SIGTERM or Ctrl-C ends the run after the current step with a checkpoint and a model directory.
    """
    from zoo.train.budget import process_age

    origin = time.perf_counter() - process_age()
    from zoo.train import RecipeError, build_network, dump_recipe, load_recipe, resume_recipe
    from zoo.train import train as run_training

    set_ = list(set_) + (["optim.amp=true"] if bf16 else []) + (["optim.tf32=true"] if tf32 else [])
    set_ += ([f"budget.wall_time={budget}"] if budget is not None else []) + (
        [f"data.on_device={str(device_data).lower()}"] if device_data is not None else []
    )
    if recipe is not None:
        resolved = load_recipe(recipe, set_)
    elif resume is not None and set_:
        resolved = resume_recipe(resume, set_)
    else:
        resolved = None
    if dry_run:
        if resolved is None:
            raise RecipeError("--dry-run needs a recipe")
        from zoo.models import count_parameters

        network = build_network(resolved)
        console.print(dump_recipe(resolved), markup=False, highlight=False)
        console.print(f"model {network.config.name}: {count_parameters(network):,} parameters")
        return
    result = run_training(resolved, out=out, resume=resume, console=console, origin=origin)
    if result.model_dir is not None and result.stopped is not None:
        console.print(
            f"stopped by {result.stopped} after step {result.metrics['steps']}: checkpoint and model directory written "
            f"([bold]{result.model_dir}[/bold], not evaluated); continue with --resume {result.run_dir}"
        )
    elif result.model_dir is not None:
        m = result.metrics
        summary = ", ".join(
            f"{split} {k} {v:.5g} {m['units'].get(k, '')}" for split in ("val", "test") for k, v in m[split].items()
        )
        console.print(
            f"done: {m['steps']} steps ({m['epochs']:g} epochs); {m['final_weights']} weights (step {m['weights_step']}): {summary}"
        )
        console.print(f"model directory: [bold]{result.model_dir}[/bold]; metrics {result.run_dir / 'metrics.csv'}")
    if result.stopped is not None:
        raise typer.Exit(128 + result.signal_number)


def recipes() -> None:
    """List the published training recipes (names for `equizoo train NAME`)."""
    from zoo.train import list_recipes

    for name in list_recipes():
        typer.echo(name)
