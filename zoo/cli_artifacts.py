"""Artifact commands of `equizoo`: list, info, export, card, release, verify, publish, pull, and `hub serve`.

Each command parses, calls one function of zoo.registry / zoo.export / zoo.cards / zoo.hub, and prints;
errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from zoo.cli_console import console, fail
from zoo.errors import ZooError

hub_app = typer.Typer(
    help="A local Hugging Face Hub-compatible server (for tests and team hubs).", no_args_is_help=True
)


def _metric_text(entry, count: int = 3) -> str:
    from zoo.registry import base_split

    rows = [m for m in entry.metrics if base_split(m.split) == "test"] or list(entry.metrics)
    return ", ".join(f"{m.target} {m.value:.4g} {m.unit}" for m in rows[:count])


def list_command(
    pattern: str = typer.Argument("*", help="Shell-style wildcard over model names, e.g. 'equiformer-md17-*'."),
    published: bool = typer.Option(False, "--published", help="Only models whose files are published (pullable)."),
    wide: bool = typer.Option(
        False, "--wide", help="All columns: dataset, outputs, network, revision (needs a wide terminal)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the registered pretrained models, the ones you can use first: status and test error."""
    from zoo.registry import list_models

    models = list_models(pattern, published_only=published)
    if not models:
        fail(
            f"no registered model matches {pattern!r}{' among the published ones' if published else ''}; `equizoo list` shows all"
        )
    models = sorted(
        models, key=lambda m: (not m.published, m.status != "published")
    )  # stable: registry order within a group
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in models], indent=2))
        return
    from rich import box

    short = {"published": "published", "local release": "local"}
    table = Table(title="equizoo pretrained models", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = (
        ("name", "dataset", "predicts", "variant", "status", "test metrics")
        if wide
        else ("name", "status", "test metric")
    )
    for col in columns:
        table.add_column(col, no_wrap=col in ("name", "status"), overflow="fold")
    for m in models:
        metric = escape(_metric_text(m, 3 if wide else 1)) or "—"
        if wide:
            status = m.status if m.status != "published" else f"published @{m.revision[:10]}"
            table.add_row(
                m.name,
                m.dataset,
                escape(", ".join(f"{t} [{u}]" for t, u in m.targets)),
                m.variant.split(" (")[0],
                status,
                metric,
            )
        else:
            table.add_row(m.name, short.get(m.status, "not yet"), metric)
    console.print(table)
    pending = sum(not m.published for m in models)
    if not wide:
        note = f"{pending} not published yet; " if pending else ""
        console.print(escape(f"{note}--wide: dataset, outputs, network"), highlight=False)


def info_command(
    name: str = typer.Argument(..., help="Registry name (see `equizoo list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Everything the registry knows about one model: meaning, location, file hashes, metrics."""
    from zoo.registry import get_model

    m = get_model(name)
    if as_json:
        typer.echo(json.dumps(m.to_dict(), indent=2))
        return
    console.print(f"[bold]{escape(m.name)}[/bold]: {escape(m.description)}", highlight=False)
    console.print(
        escape(f"dataset {m.dataset}; task {m.task}; network {m.variant}; license {m.license}"), highlight=False
    )
    console.print(escape("predicts: " + ", ".join(f"{t} [{u}]" for t, u in m.targets)), highlight=False)
    if m.status == "published":
        console.print(
            f"published: {m.repo_id} @ {m.revision}  (load with zoo.load({m.name!r}) or `equizoo pull {m.name}`)",
            highlight=False,
        )
    elif m.status == "local release":
        console.print(f"local release: {m.release_dir()}", highlight=False)
        from zoo.artifact import read_config
        from zoo.spec import element_names

        elements = (read_config(m.release_dir()).get("metadata") or {}).get("elements")
        seen = (
            " ".join(element_names(elements))
            if elements
            else "unknown (config.json has no metadata.elements; other elements are not refused)"
        )
        console.print(escape(f"elements of its training data: {seen}"), highlight=False)
    else:
        console.print("status: not published yet (no trained weights released for this name)", highlight=False)
    if m.files:
        table = Table(title="files")
        table.add_column("file")
        table.add_column("bytes", justify="right")
        table.add_column("sha256")
        for f in m.files:
            table.add_row(f.path, f"{f.size:,}" if f.size >= 0 else "?", f.sha256)
        console.print(table)
    rows = [("measured", x) for x in m.metrics] + [("paper", x) for x in m.paper]
    if rows:
        table = Table(title="metrics")
        for col in ("source", "split", "output", "metric", "value"):
            table.add_column(col)
        for src, x in rows:
            table.add_row(x.source or src, x.split, x.target, x.metric, f"{x.value:.4g} {x.unit}")
        console.print(table)


def _model_dir_for(spec: str, out: Optional[Path]) -> Path:
    from zoo.hub import copy_model, model_dir_of, pull

    path = Path(spec).expanduser()
    if path.is_dir():
        src = model_dir_of(path)
        return copy_model(src, out) if out is not None else src
    if path.exists() or os.sep in spec or spec.startswith((".", "~")):
        fail(
            f"{spec}: no such model directory; give a model directory, a training run directory, a registry name or hf-hub:ORG/NAME@REV"
        )
    if out is None:
        fail(
            f"{spec} is not a directory: to export a registry model or Hub id give --out DIR (it is copied there, the Hugging Face cache stays untouched)"
        )
    return copy_model(pull(spec), out)


def export_command(
    model: str = typer.Argument(
        ..., help="Model directory, training run directory, registry name or hf-hub:ORG/NAME@REV."
    ),
    formats: str = typer.Option(
        "torchscript,onnx,aoti", "--format", "-f", help="Comma-separated: torchscript, onnx, aoti (or all)."
    ),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 or float64 (default: the saved dtype)."),
    device: str = typer.Option(
        "cpu", "--device", help="cpu or cuda[:N]: the device the AOTInductor package is built for."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Copy the model here and export there (required for registry names / Hub ids)."
    ),
    onnx_optimize: bool = typer.Option(
        False,
        "--onnx-optimize",
        help="Run onnxscript's optimizer on the ONNX graph (minutes; a force field's file shrinks about 4x).",
    ),
    aoti_option: List[str] = typer.Option(
        [],
        "--aoti-option",
        help="Inductor config KEY=VALUE for the AOTInductor build (repeatable), e.g. cpp.simdlen=1.",
    ),
) -> None:
    """Export a model to TorchScript, ONNX and AOTInductor, each checked against eager on real structures.

    \b
    Which format where:
      torchscript  C++ (torch::jit::load) and LAMMPS; CPU or GPU; deprecated by PyTorch
      onnx         ONNX Runtime from any language, no torch; not for LAMMPS
      aoti         C++ (AOTIModelPackageLoader) and LAMMPS (pair_coeff * * model.pt2 ...), fastest.
                   A package is compiled for ONE device type (--device) and ONE torch version:
                   export it on the target machine, with the torch the program links.
    """
    from zoo.export import WHERE_TO_USE, check_formats_available, export_model, parse_formats

    chosen = parse_formats(formats)
    check_formats_available(chosen)
    configs = {}
    for item in aoti_option:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--aoti-option {item!r} must be KEY=VALUE")
        try:
            configs[key] = json.loads(value)
        except json.JSONDecodeError:
            configs[key] = value
    model_dir = _model_dir_for(model, out)
    results = export_model(
        model_dir, chosen, dtype=dtype, device=device, inductor_configs=configs or None, onnx_optimize=onnx_optimize
    )
    table = Table(title=f"exported {model_dir}")
    for col in ("format", "file", "dtype", "device", "max |Δ| vs eager", "tolerance", "seconds"):
        table.add_column(col)
    for r in results.values():
        table.add_row(
            r.format, r.path.name, r.dtype, r.device, f"{r.max_abs_error:.2e}", f"{r.tolerance:.0e}", f"{r.seconds:.0f}"
        )
    console.print(table)
    for r in results.values():
        console.print(
            f"{r.path.name}: {WHERE_TO_USE[r.format]}"
            + (f" (this one: {r.device}, torch {r.torch_version})" if r.format == "aoti" else ""),
            highlight=False,
        )


def card_command(
    model_dir: Path = typer.Argument(..., help="Model directory (or training run directory)."),
    name: Optional[str] = typer.Option(
        None, "--name", help="Registry name whose meaning and paper numbers the card uses."
    ),
) -> None:
    """Render the model card (README.md) of a model directory from its metadata."""
    from zoo.cards import write_card
    from zoo.hub import model_dir_of

    path = write_card(model_dir_of(model_dir), name)
    console.print(f"wrote {path}", highlight=False)


def release_command(
    model: Path = typer.Argument(..., help="Model directory or training run directory (RUN/model)."),
    name: str = typer.Option(..., "--name", help="Release and registry name, e.g. equiformer-md17-aspirin-l2."),
    data: Optional[str] = typer.Option(
        None, "--data", help="`equizoo eval` dataset spec (default: the model's training dataset)."
    ),
    source: Optional[str] = typer.Option(
        None, "--source", help="Raw files of that dataset, if it is not prepared yet."
    ),
    splits: str = typer.Option("val,test", "--split", help="Comma-separated splits to evaluate and record."),
    limit: List[str] = typer.Option(
        [], "--limit", help="SPLIT=N: evaluate the first N structures of SPLIT (default: the training run's limits)."
    ),
    formats: str = typer.Option(
        "torchscript,onnx", "--format", "-f", help="Exports to ship (torchscript, onnx, aoti), or 'none'."
    ),
    onnx_optimize: bool = typer.Option(
        True, "--onnx-optimize/--no-onnx-optimize", help="Shrink the ONNX graph with onnxscript's optimizer (minutes)."
    ),
    note: Optional[str] = typer.Option(None, "--note", help="A sentence the card shows in bold under the description."),
    hardware_note: Optional[str] = typer.Option(
        None, "--hardware-note", help="What the hardware record cannot say (e.g. a shared machine)."
    ),
    releases: Optional[Path] = typer.Option(
        None, "--releases-dir", help="Where releases live (default: $EQUIZOO_RELEASES, else the checkout's releases/)."
    ),
    registry_file: Optional[Path] = typer.Option(
        None,
        "--registry-file",
        help="Registry JSON to write (default: the last of $EQUIZOO_REGISTRY, else the packaged one).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing release of that name."),
    default: bool = typer.Option(
        False, "--default", help="Also install it as the embedded default model of the package."
    ),
) -> None:
    """Make a local release: evaluate, export, card and register a trained model in releases/NAME."""
    from zoo.release import release_model

    limits = None
    if limit:
        limits = {}
        for item in limit:
            split, sep, value = item.partition("=")
            if not sep or not value.isdigit():
                fail(f"--limit {item!r} must be SPLIT=N with N a positive integer, e.g. --limit test=1000")
            limits[split] = int(value)
    chosen = [] if formats.strip().lower() == "none" else formats
    rel = release_model(model, name, data=data, source=source, splits=[s for s in splits.split(",") if s], limits=limits, formats=chosen, onnx_optimize=onnx_optimize,
                        note=note, hardware_note=hardware_note, releases=releases, registry_file=registry_file, overwrite=overwrite)  # fmt: skip
    if default:
        from zoo.pretrained import install_default_model

        installed = install_default_model(rel.path)
    table = Table(title=f"released {rel.entry.name} in {rel.path}")
    for col in ("split", "output", "metric", "value", "paper"):
        table.add_column(col)
    from zoo.registry import base_split

    paper = {(m.split, m.target): m for m in rel.entry.paper}
    for r in rel.evaluation["results"]:
        p = paper.get((base_split(r["split"]), r["quantity"]))
        table.add_row(
            r["split"],
            r["quantity"],
            r["metric"],
            f"{r['value']:.4g} {r['unit']}",
            f"{p.value:.4g} {p.unit}" if p else "—",
        )
    console.print(table)
    for command in rel.evaluation["commands"]:
        console.print(f"reproduce: {command}", highlight=False)
    console.print(
        f"registered {rel.entry.name} ({len(rel.entry.files)} files with sha256) in {rel.entry.source}", highlight=False
    )
    if default:
        console.print(f"installed as the embedded default in {installed}", highlight=False)


def restate_command(
    name: str = typer.Argument(..., help="Registry name of a local release."),
    source: Optional[str] = typer.Option(
        None, "--source", help="Raw files of its training dataset, if it is not prepared yet (to record its elements)."
    ),
    hardware_model: Optional[str] = typer.Option(
        None, "--hardware-model", help="The CPU or GPU model it was trained on, if the record lacks it."
    ),
    hardware_note: Optional[str] = typer.Option(None, "--hardware-note", help="Replace the hardware note."),
    releases: Optional[Path] = typer.Option(
        None, "--releases-dir", help="Where releases live (default: $EQUIZOO_RELEASES, else the checkout's releases/)."
    ),
    registry_file: Optional[Path] = typer.Option(
        None,
        "--registry-file",
        help="Registry JSON to write (default: the last of $EQUIZOO_REGISTRY, else the packaged one).",
    ),
) -> None:
    """Rewrite a release's public record (elements, no machine paths, hardware), card, hashes and manifest;
    weights, exports and measured numbers stay."""
    from zoo.release import restate_release

    rel = restate_release(
        name,
        source=source,
        hardware_model=hardware_model,
        hardware_note=hardware_note,
        releases=releases,
        registry_file=registry_file,
    )
    console.print(
        f"restated {rel.entry.name} in {rel.path} ({len(rel.entry.files)} files with sha256 in {rel.entry.source})",
        highlight=False,
    )


def verify_command(
    name: str = typer.Argument(..., help="Registry name of a release (`equizoo list --published`)."),
    source: Optional[str] = typer.Option(
        None,
        "--source",
        "--data",
        help="Local copy of the release's dataset: the recorded folder found elsewhere, or raw files to prepare it from (as for `equizoo eval --source`; --data: the same).",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write the recorded and re-measured numbers as JSON."
    ),
) -> None:
    """Check a release: sha256 of its files, then re-run its recorded evaluation and compare with its card."""
    from zoo.extras import MissingExtra, require
    from zoo.release import check_release
    from zoo.use.results import check_output

    try:
        require("huggingface_hub", what="equizoo verify (model cards)")
        if output is not None:
            check_output(output, {".json": "json"}, "--output")
        pairs = check_release(name, source=source, progress=True)
    except MissingExtra as exc:
        fail(str(exc))
    except ZooError as exc:
        fail(str(exc), code=1)
    table = Table(title=f"{name}: card vs `equizoo eval` now")
    for col in ("split/output", "card", "measured now", "round-off bound"):
        table.add_column(col, justify="left" if col == "split/output" else "right")
    for key, (recorded, measured, tolerance) in pairs.items():
        table.add_row(key, f"{recorded:.6g}", f"{measured:.6g}", f"{tolerance:.2g}")
    console.print(table)
    if output is not None:
        from zoo.io import atomic_write_text

        atomic_write_text(
            output,
            json.dumps({k: {"card": a, "measured": b, "roundoff_bound": c} for k, (a, b, c) in pairs.items()}, indent=1)
            + "\n",
        )
        console.print(f"wrote {output}", highlight=False)
    console.print(
        "every number on the card is reproduced (within the float round-off bound of each number, the same on any CPU)",
        highlight=False,
    )


def publish_command(
    run_dir: Path = typer.Argument(
        ..., help="Model directory, training run directory (RUN/model) or the name of a local release."
    ),
    repo: str = typer.Option(..., "--repo", help="Hub repository ORG/NAME (created if needed)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Tag for the commit (default: the next free vN)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    register: Optional[str] = typer.Option(
        None, "--register", help="Write the pinned revision and hashes into the registry under this name."
    ),
    registry_file: Optional[Path] = typer.Option(
        None,
        "--registry-file",
        help="Registry JSON to write (default: the last of $EQUIZOO_REGISTRY, else the packaged one).",
    ),
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", help="Hub endpoint (default: $HF_ENDPOINT, else huggingface.co)."
    ),
    card: bool = typer.Option(
        True,
        "--card/--no-card",
        help="Render README.md from the metadata before uploading (--no-card keeps an existing one).",
    ),
) -> None:
    """Publish a model to a Hugging Face Hub: upload, tag, print the pinned revision and sha256 of every file.

    For a local release (`equizoo publish equiformer-md17-aspirin-l2-small-cpu --repo ORG/NAME`) the
    verified release folder is uploaded as it is, card included, and the registry entry moves to the Hub."""
    from zoo.hub import model_dir_of, pull
    from zoo.publish import publish
    from zoo.registry import get_model, is_registry_name, metrics_from_config
    from zoo.registry import register as register_entry

    spec = str(run_dir)
    if not run_dir.exists() and is_registry_name(spec) and get_model(spec).release:
        src = pull(spec)
        register = register or spec
        card = False
    else:
        src = model_dir_of(run_dir)
    if card:
        from zoo.cards import write_card

        write_card(src, register if register and is_registry_name(register) else None)
    pub = publish(src, repo, tag=tag, private=private, endpoint_url=endpoint)
    if register:
        from zoo.artifact import read_config
        from zoo.registry import fields_from_config, in_catalogue

        config = read_config(src)
        meaning = {} if in_catalogue(register) else fields_from_config(config)
        entry = register_entry(
            register,
            pub.files,
            repo_id=pub.repo_id,
            revision=pub.revision,
            metrics=metrics_from_config(config),
            registry_file=registry_file,
            **meaning,
        )
    console.print(
        f"published [bold]{pub.repo_id}[/bold] at revision {pub.revision} (tag {pub.tag}) on {pub.endpoint}",
        highlight=False,
    )
    table = Table(title="files")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("sha256")
    for name, info in sorted(pub.files.items()):
        table.add_row(name, f"{info['size']:,}", info["sha256"])
    console.print(table)
    console.print(f"load it with zoo.load({pub.hub_id!r})", highlight=False)
    if register:
        console.print(f"registered as {entry.name} in {entry.source}", highlight=False)


def pull_command(
    spec: str = typer.Argument(..., help="Registry name, hf-hub:ORG/NAME@REV or a model directory."),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", help="Hub endpoint (default: $HF_ENDPOINT, else huggingface.co)."
    ),
) -> None:
    """Fetch a model at its pinned revision into the Hugging Face cache, verify every sha256, print its path."""
    from zoo.hub import pull

    path = pull(spec, endpoint_url=endpoint, force=force)
    typer.echo(str(path))


@hub_app.command("serve")
def hub_serve(
    root: Path = typer.Argument(..., help="Folder the server stores repositories in (created if needed)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    token: List[str] = typer.Option(
        [],
        "--token",
        help="Accepted token, TOKEN or TOKEN=USER (repeatable; none: one is generated and printed). Writes need one.",
    ),
    max_body_mb: float = typer.Option(1024.0, "--max-body-mb", help="Largest request body (one upload) in MiB."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds a connection may stay silent before it is closed."),
    verbose: bool = typer.Option(False, "--verbose", help="Log every request."),
) -> None:
    """Serve a Hub-compatible API from ROOT (point HF_ENDPOINT at it, HF_TOKEN at a token); Ctrl-C stops it."""
    import time

    from zoo.hub.server import parse_tokens, start_hub

    if max_body_mb <= 0 or timeout <= 0:
        fail("--max-body-mb and --timeout must be positive")
    try:
        tokens = parse_tokens(token)
    except ValueError as exc:
        fail(str(exc))
    try:
        hub = start_hub(
            root,
            host=host,
            port=port,
            tokens=tokens,
            verbose=verbose,
            max_body=int(max_body_mb * (1 << 20)),
            timeout=timeout,
        )
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc}); choose another --port")
    console.print(f"serving {root} at {hub.url}  (export HF_ENDPOINT={hub.url})", highlight=False)
    if hub.generated:
        console.print(
            f"write token (user equizoo): {hub.token}  (export HF_TOKEN={hub.token}; --token TOKEN=USER sets your own)",
            highlight=False,
        )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


def register(app: typer.Typer) -> None:
    """Add list, info, export, card, publish, pull and `hub serve` to the `equizoo` app."""
    app.command("list")(list_command)
    app.command("info")(info_command)
    app.command("export")(export_command)
    app.command("card")(card_command)
    app.command("release")(release_command)
    app.command("restate")(restate_command)
    app.command("verify")(verify_command)
    app.command("publish")(publish_command)
    app.command("pull")(pull_command)
    app.add_typer(hub_app, name="hub")
