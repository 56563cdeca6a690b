"""Seconds per training step of a recipe with the splits on the device (neighbour lists built once, batched by
index) and with the loader (collation and graph building every step), measured in one process.

    OMP_NUM_THREADS=1 python scripts/train-step-time.py cpu/md17-ethanol-l2-small --steps 60 \
        --set data.cache_dir=/tmp/cache --set device=cpu

Both paths train the same freshly initialised network on the same batches (epoch 0 of the recipe's batch
plan), alternating blocks of 10 steps so that a shared machine's load falls on both alike; the first --warmup
steps are not timed. Prints one table (and --json FILE).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from zoo.train import load_recipe
from zoo.train.dist import setup
from zoo.train.trainer import _Run


class DataPath:
    """One data path: a run built from the recipe and its batches of epoch 0."""

    def __init__(self, recipe: dict, on_device: bool, tmp: str) -> None:
        self.env = setup(recipe["device"])
        self.run = _Run(dict(recipe, data=dict(recipe["data"], on_device=on_device)), tmp, None, self.env, Console(file=io.StringIO()), time.perf_counter())
        self.run._build()
        self.batches = self.run._train_batches(0, 0, None)
        self.step, self.acc, self.times = 0, None, []

    def steps(self, n: int, timed: bool) -> None:
        for _ in range(n):
            start = time.perf_counter()
            self.acc = self.run._step(next(self.batches), self.step, self.acc)
            float(self.run.last_parts["loss"])
            if self.env.device.type == "cuda":
                torch.cuda.synchronize(self.env.device)
            if timed:
                self.times.append(time.perf_counter() - start)
            self.step += 1


def measure(recipe: dict, steps: int, warmup: int, block: int = 10) -> dict:
    """Both paths, alternating blocks of ``block`` steps so that a change of machine load hits both alike."""
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        paths = {"device": DataPath(recipe, True, a), "loader": DataPath(recipe, False, b)}
        for p in paths.values():
            p.steps(warmup, timed=False)
        done = 0
        while done < steps:
            n = min(block, steps - done)
            for p in paths.values():
                p.steps(n, timed=True)
            done += n
    return {name: {"data": p.run.data_path, "steps": len(p.times), "mean_s": statistics.fmean(p.times), "median_s": statistics.median(p.times)}
            for name, p in paths.items()}  # fmt: skip


def recipe_steps(recipe: dict) -> int:
    """Steps in one epoch of the recipe's training split (what one batch plan holds)."""
    from zoo.data import load_dataset

    d = recipe["data"]
    n = len(load_dataset(d["dataset"], d["cache_dir"], prepare=False).split(d["train_split"]))
    n = min(n, d["train_limit"] or n)
    return n // recipe["optim"]["batch_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="sets", help="recipe override KEY=VALUE (repeatable)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.sets)
    if args.warmup + args.steps > recipe_steps(recipe):
        parser.error(f"--warmup + --steps ({args.warmup + args.steps}) exceed the {recipe_steps(recipe)} steps of one epoch; lower them")
    rows = measure(recipe, args.steps, args.warmup)
    table = Table(title=f"{args.recipe}: s/step, batch {recipe['optim']['batch_size']}, {torch.get_num_threads()} thread(s)")
    for col in ("data path", "steps", "mean s", "median s"):
        table.add_column(col)
    for row in rows.values():
        table.add_row(row["data"][:40], str(row["steps"]), f"{row['mean_s']:.4f}", f"{row['median_s']:.4f}")
    Console().print(table)
    ratio = rows["loader"]["mean_s"] / rows["device"]["mean_s"]
    print(f"loader / device: {ratio:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"recipe": args.recipe, "sets": args.sets, "rows": rows, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
