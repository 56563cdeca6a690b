"""Train a recipe within a wall-clock window and make a release of it, in one process (scripts/gpu-train.sh).

    scripts/gpu-train.sh RECIPE MINUTES OUT [--name NAME] [--formats torchscript,onnx] [--release-reserve S]
                         [--set KEY=VALUE ...]

The window counts from the start of the command. Before training, the script prepares the recipe's dataset
and estimates what the release will cost after it: the evaluation of the validation and test splits with
the code behind `equizoo eval` (eager, on the CPU: one batch of the untrained network is timed and scaled to
the splits) and the exports (TorchScript and ONNX, each checked against eager, per block of the network).
Training gets the rest as its budget (`budget.wall_time`), which itself holds the final evaluation of the
test split on the training device. When the CPU evaluation of whole splits would take more than
EVAL_SHARE of the window, the release evaluates their first N structures (its card says test[:N]); the
test MAE of the whole split is the training run's, in run/summary.json.

OUT afterwards: run/ (the training run: recipe, metrics, checkpoints, model/), releases/NAME/ (the release
folder: weights, config with evaluation, TorchScript, ONNX, exports.json, card, manifest), registry.json
(its registry entry) and gpu-train.json (the time of every phase and the numbers). A later
`equizoo release OUT/run --name NAME` re-evaluates on whole splits; `equizoo publish OUT/releases/NAME
--repo ORG/NAME --registry-file OUT/registry.json` publishes the folder as it is.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's equizoo, whatever is installed

EXPORT_S_PER_BLOCK = {"torchscript": 5.0, "onnx": 40.0}  # estimates: the 2-block CPU network took 9 s and 149 s on a shared 2-core CPU
FIXED_RELEASE_S = 5.0  # copying, elements, card, registry and manifest (~2 s measured)
EVAL_SHARE = 0.25  # at most this share of the window for the release's CPU evaluation
MIN_TRAIN_S = 20.0


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu-train.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe file or name under recipes/, e.g. budget/md17-l2-ethanol-10m")
    parser.add_argument("minutes", help="the whole window in minutes (training, evaluation, exports and release), e.g. 10")
    parser.add_argument("out", type=Path, help="output folder (created; must not hold a run yet)")
    parser.add_argument("--name", default=None, help="release name (default: equiformer-<recipe name>, the minutes last)")
    parser.add_argument("--formats", default="torchscript,onnx", help="exports of the release (default: torchscript,onnx)")
    parser.add_argument("--release-reserve", type=float, default=None, help="seconds kept for the release (default: estimated)")
    parser.add_argument("--set", action="append", default=[], dest="sets", help="recipe override KEY=VALUE (repeatable)")
    args = parser.parse_args(argv)
    try:
        args.window = float(args.minutes) * 60.0
    except ValueError:
        fail(f"MINUTES must be a number of minutes, e.g. 10; got {args.minutes!r}")
    if not math.isfinite(args.window) or args.window <= 0:
        fail(f"MINUTES must be positive, got {args.minutes!r}")
    return args


def release_name(recipe_arg: str, minutes: str) -> str:
    stem = Path(recipe_arg).stem.lower()
    parts = stem.split("-")
    if parts and parts[-1].endswith("m") and parts[-1][:-1].replace(".", "", 1).isdigit():
        parts = parts[:-1]
    return "equiformer-" + "-".join(parts + [f"{minutes}m"])


def eval_seconds_per_structure(recipe: dict, view) -> float:
    """CPU eager seconds per structure of the recipe's network (untrained: the same arithmetic), one batch."""
    import numpy as np
    import torch

    from zoo import keys
    from zoo.graph import attach_graph
    from zoo.train import build_network, model_config
    from zoo.train.data import model_inputs

    config = model_config(recipe)
    dtype = getattr(torch, recipe["model"]["dtype"])
    net = build_network(recipe).to(dtype=dtype).eval()
    n = min(len(view), 16)
    batch = attach_graph(model_inputs(view.collate(np.arange(n), [], torch.float64), dtype), config.r_max, config.max_neighbors)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.set_grad_enabled(config.forces):
            out = net(batch[keys.POSITIONS], batch[keys.SPECIES], batch[keys.EDGE_INDEX], batch[keys.BATCH], None, None, n)
            float(next(iter(out.values())).detach().sum())
        times.append(time.perf_counter() - start)
    return min(times) / n


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    from zoo.train.budget import process_age

    origin = time.perf_counter() - process_age()
    deadline = origin + args.window
    phases: dict = {}

    from rich.console import Console
    from rich.table import Table

    from zoo.data import DataError, load_dataset
    from zoo.export import parse_formats
    from zoo.release import ReleaseError, release_model
    from zoo.train import RecipeError, TrainError, load_recipe, model_config, train

    console = Console(soft_wrap=True)
    out: Path = args.out
    run_dir, releases, registry = out / "run", out / "releases", out / "registry.json"
    name = args.name or release_name(args.recipe, args.minutes)
    try:
        formats = parse_formats(args.formats)
        recipe = load_recipe(args.recipe, args.sets)
    except (RecipeError, ValueError) as exc:
        fail(str(exc))
    if (run_dir / "recipe.yaml").exists() or (releases / name).exists():
        fail(f"{out} already holds a run or the release {name}; choose another OUT")

    t = time.perf_counter()
    d = recipe["data"]
    options = {"source": d["source"], "download": d["download"]} if d["source"] or d["download"] else {}
    try:
        dataset = load_dataset(d["dataset"], d["cache_dir"], prepare=True, **options)
        val = dataset.split(d["val_split"])
        sizes = {"val": min(len(val), d["val_limit"] or len(val))}
        if d["test_split"] is not None:
            sizes["test"] = min(len(dataset.split(d["test_split"])), d["test_limit"] or 10**12)
    except DataError as exc:
        fail(f"data.dataset={d['dataset']}: {exc}")
    per = eval_seconds_per_structure(recipe, val)
    phases["prepare"] = time.perf_counter() - t

    blocks = model_config(recipe).num_layers
    exports = sum(EXPORT_S_PER_BLOCK[f] * blocks for f in formats)
    evaluation = 1.2 * per * sum(sizes.values())
    limits = {s: d[f"{s}_limit"] for s in sizes}
    if evaluation > EVAL_SHARE * args.window:
        each = max(1, int(EVAL_SHARE * args.window / (1.2 * per) / len(sizes)))
        limits = {s: min(n, each) for s, n in sizes.items()}
        evaluation = 1.2 * per * sum(limits.values())
        console.print(f"the release evaluates the first {each} structures of each split on the CPU (whole splits: ~{1.2 * per * sum(sizes.values()):.0f} s); "
                      "the training run tests the whole split on its device")  # fmt: skip
    reserve = args.release_reserve if args.release_reserve is not None else evaluation + exports + FIXED_RELEASE_S
    budget = deadline - time.perf_counter() - reserve
    console.print(f"window {args.window:.0f} s: {phases['prepare']:.1f} s preparing, {reserve:.0f} s kept for the release "
                  f"(CPU evaluation ~{evaluation:.0f} s at {per * 1e3:.1f} ms/structure, exports ~{exports:.0f} s), {budget:.0f} s to train")  # fmt: skip
    if budget < MIN_TRAIN_S:
        fail(f"{args.minutes} minutes leave {budget:.0f} s to train after the release's ~{reserve:.0f} s; give more minutes or --release-reserve")

    t = time.perf_counter()
    recipe["budget"]["wall_time"] = budget
    try:
        result = train(recipe, out=run_dir, console=console, origin=time.perf_counter())
    except (RecipeError, TrainError, DataError) as exc:
        fail(str(exc))
    phases["train"] = time.perf_counter() - t
    if result.stopped is not None:
        console.print(f"stopped by {result.stopped}: the model directory is in {run_dir / 'model'}; no release made")
        raise SystemExit(128 + result.signal_number)

    t = time.perf_counter()
    left = deadline - t
    if left < 0.8 * reserve:
        console.print(f"[yellow]{left:.0f} s left of the window for a release estimated at {reserve:.0f} s; it will overrun[/yellow]")
    try:
        rel = release_model(run_dir, name, source=d["source"], limits=limits, formats=formats, onnx_optimize=False, releases=releases,
                            registry_file=registry, cache_dir=d["cache_dir"], progress=True)  # fmt: skip
    except (ReleaseError, DataError) as exc:
        fail(f"release: {exc}; the trained model is in {run_dir / 'model'}")
    phases["release"] = time.perf_counter() - t
    total = time.perf_counter() - origin

    m = result.metrics
    record = {"recipe": args.recipe, "sets": args.sets, "window_s": args.window, "wall_s": round(total, 3),
              "phases_s": {k: round(v, 3) for k, v in phases.items()}, "train_budget_s": round(budget, 3),
              "release_reserve_s": round(reserve, 3), "steps": m["steps"], "epochs": m["epochs"], "test": m["test"], "val": m["val"],
              "units": m["units"], "release": str(rel.path), "release_evaluation": rel.evaluation["results"],
              "exports": {k: {"max_abs_error": v.get("max_abs_error"), "seconds": v.get("seconds")} for k, v in rel.exports.items()}}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-train.json").write_text(json.dumps(record, indent=1) + "\n")

    table = Table(title=f"{args.recipe} in {args.minutes} min: {total:.0f} s used")
    for col in ("phase", "seconds", "result"):
        table.add_column(col)
    table.add_row("prepare", f"{phases['prepare']:.1f}", "dataset, release estimate")
    results = ", ".join(f"{k} {v:.4g} {m['units'].get(k, '')}" for k, v in m["test"].items())
    table.add_row("train", f"{phases['train']:.1f}", f"{m['steps']} steps; test {results}")
    checked = ", ".join(f"{k} {v.get('max_abs_error', float('nan')):.2g}" for k, v in rel.exports.items())
    table.add_row("release", f"{phases['release']:.1f}", f"{name}; |export - eager| {checked}")
    console.print(table)
    console.print(f"release: {rel.path}; publish with: equizoo publish {rel.path} --repo ORG/{name} --registry-file {registry}", highlight=False)


if __name__ == "__main__":
    main(sys.argv[1:])
