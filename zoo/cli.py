"""The `equizoo` command line. Commands are thin: they parse, call one function, print."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from zoo import cli_artifacts, cli_lammps, cli_train, cli_use
from zoo.cli_console import console, error_line, fail
from zoo.convert import convert_reference_checkpoint
from zoo.data.cli import app as data_app
from zoo.errors import ZooError
from zoo.extras import missing_extra
from zoo.host import keep_freed_memory
from zoo.models.summary import variant_summaries

app = typer.Typer(
    help="equizoo: trained, verified, fast Equiformer models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
convert_app = typer.Typer(
    help="Convert checkpoints from other code bases into equizoo model directories.", no_args_is_help=True
)
app.add_typer(convert_app, name="convert")


def _hide_flag_placeholders() -> None:
    """Typer's help shows `<bool>` beside every flag, which takes no value; show nothing there."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "hides_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.hides_flags = True
    TyperOption.display_type_rich = display_type_rich


_hide_flag_placeholders()

app.add_typer(data_app, name="data")


def _register_commands() -> None:
    """Commands of the other areas live beside their code; each module has `register(app)`."""
    for module in (cli_artifacts, cli_use, cli_train, cli_lammps):
        module.register(app)
    _guard(app)


def _handled(command):
    """The one error handler of the command line: a ZooError (bad input, missing export, unknown name, ...)
    and a missing optional package (huggingface_hub, onnx, lmdb, ...) are one line on stderr, no traceback,
    exit code ZooError.exit_code (2)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ZooError, ImportError) as exc:
            message = missing_extra(exc) or (str(exc) if isinstance(exc, ZooError) else None)
            if message is None:
                raise
            error_line(message)
            raise typer.Exit(getattr(exc, "exit_code", ZooError.exit_code)) from None

    return run


def _guard(group: typer.Typer) -> None:
    for info in group.registered_commands:
        info.callback = _handled(info.callback)
    for sub in group.registered_groups:
        _guard(sub.typer_instance)


@app.command()
def variants(
    pattern: str = typer.Argument("*", help="Shell-style wildcard over variant names, e.g. 'qm9-*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the network variants (architectures) with their parameter counts and what they predict."""
    rows = variant_summaries(pattern)
    if not rows:
        fail(f"no variant matches {pattern!r}; `equizoo variants` lists all", code=1)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Equiformer variants")
    for col in ("name", "params", "lmax", "layers", "irreps_node_embedding", "r_max", "predicts"):
        table.add_column(
            col,
            justify="right" if col in ("params", "lmax", "layers", "r_max") else "left",
            no_wrap=col in ("name", "params"),
        )
    for r in rows:
        table.add_row(
            r["name"],
            f"{r['params']:,}",
            str(r["lmax"]),
            str(r["num_layers"]),
            r["irreps_node_embedding"],
            f"{r['r_max']:g}",
            r["predicts"],
        )
    console.print(table)


@convert_app.command("reference")
def convert_reference(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint of the authors' code: torch.save'd dict (with 'state_dict') or safetensors."
    ),
    variant: str = typer.Option(
        ..., "--variant", help="equizoo variant the checkpoint was trained as (see `equizoo variants`)."
    ),
    out: Path = typer.Option(..., "--out", help="Model directory to write (safetensors + config.json)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
    target: Optional[str] = typer.Option(None, "--target", help="Output name (default: energy or property)."),
    unit: Optional[str] = typer.Option(None, "--unit", help="Physical unit of the target, e.g. eV."),
    mean: float = typer.Option(
        0.0, "--mean", help="Target mean the reference normalised with (physical = mean + std * raw)."
    ),
    std: float = typer.Option(1.0, "--std", help="Target std the reference normalised with."),
) -> None:
    """Convert a reference Equiformer checkpoint into an equizoo model directory."""
    try:
        info = convert_reference_checkpoint(
            checkpoint, variant, out, dtype=dtype, overwrite=overwrite, target=target, unit=unit, mean=mean, std=std
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:  # torch and safetensors raise these for a bad file
        fail(str(exc))
    console.print(
        f"wrote [bold]{info['out']}[/bold]: variant {info['variant']}, {info['params']:,} parameters, {info['dtype']}"
    )


_register_commands()


def main() -> None:  # pragma: no cover - console entry
    keep_freed_memory()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
