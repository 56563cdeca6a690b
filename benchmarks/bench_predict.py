"""End-to-end prediction throughput: file -> structures -> neighbour lists -> model -> DataFrame.

`equizoo bench` times the model call alone; this times what `equizoo predict` does as a whole (reading,
checks, batching, graphs, model, output assembly), so the two together show where time goes.

Usage: python benchmarks/bench_predict.py [--model DIR|VARIANT] [--files F ...] [--batch-size 32]
       [--repeats 3] [--device auto] [--dtype float32] [--backend eager]
Defaults: the md17-l2 variant (random weights) on the 1000 MD17 aspirin test frames of the shared data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.models import build_model, list_variants  # noqa: E402
from zoo.models.zoo_model import TargetInfo, ZooModel  # noqa: E402
from zoo.use.bench import machine  # noqa: E402
from zoo.use.predict import Predictor  # noqa: E402

SHARED = Path(os.environ.get("EQUIZOO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _model(spec: str):
    if spec in list_variants() and not Path(spec).exists():
        net = build_model(spec)
        target = (
            TargetInfo("energy", "eV", forces_unit="eV/Å")
            if net.config.output == "energy"
            else TargetInfo("property", "raw")
        )
        return ZooModel({target.name: net}, [target])
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="md17-l2", help="model directory, registry name or variant name")
    parser.add_argument("--files", nargs="+", default=[str(SHARED / "md17" / "mdbenchgnn" / "aspirin" / "test.npz")])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--backend", default="eager")
    args = parser.parse_args()

    predictor = Predictor(_model(args.model), backend=args.backend, device=args.device, dtype=args.dtype)
    start = time.perf_counter()
    first = predictor.run(args.files, batch_size=args.batch_size)
    cold = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor.run(args.files, batch_size=args.batch_size)
        times.append(time.perf_counter() - start)
    n = len(first.items) - first.n_failed
    atoms = sum(item.n_atoms for item in first.items if item.ok)
    median = float(np.median(times))
    info = machine()
    table = Table(
        title=f"zoo.predict end to end on {info['gpu'] or info['cpu']} (torch {info['torch']}, {info['threads']} threads)"
    )
    for column in (
        "model",
        "backend",
        "device",
        "dtype",
        "structures",
        "batch",
        "first run s",
        "median s",
        "structures/s",
        "atoms/s",
    ):
        table.add_column(column)
    r = predictor.runner
    table.add_row(
        r.info.name, r.backend, str(r.device), str(r.dtype).replace("torch.", ""), str(n), str(args.batch_size),
        f"{cold:.2f}", f"{median:.2f}", f"{n / median:.1f}", f"{atoms / median:.0f}",
    )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
