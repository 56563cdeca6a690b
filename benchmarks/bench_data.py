"""Benchmark the data layer on CPU: QM9 prepare/load time and collate throughput (structures/s).

Usage: python benchmarks/bench_data.py [--cache-dir DIR] [--batch-size 128] [--batches 200] [--force]
Needs qm9pack==1.0.3 (the full QM9); prepares it into a temporary cache unless --cache-dir is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.data import PreparedDataset, collate, prepare_dataset  # noqa: E402


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="cache root (default: a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--force", action="store_true", help="prepare again even if cached")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console()

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        path, prepare_s = _timed(
            lambda: prepare_dataset("qm9", cache_dir=cache, force=args.force or args.cache_dir is None)
        )
        dataset, open_s = _timed(lambda: PreparedDataset(path))
        _, load_s = _timed(lambda: [np.array(a) for a in dataset._arrays.values()])
        train = dataset.split("train")
        rng = np.random.default_rng(0)
        order = rng.permutation(len(train))[: args.batch_size * args.batches]
        structures, records_s = _timed(lambda: [train[int(i)] for i in order])
        chunks = [structures[i : i + args.batch_size] for i in range(0, len(structures), args.batch_size)]
        _, collate_s = _timed(lambda: [collate(c) for c in chunks])
        index_chunks = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        _, fast_s = _timed(lambda: [train.collate(c) for c in index_chunks])
        n = len(order)

        table = Table(title=f"equizoo data benchmark: QM9 ({len(dataset)} molecules), CPU, 1 torch thread")
        table.add_column("step")
        table.add_column("time", justify="right")
        table.add_column("throughput", justify="right")
        table.add_row(
            "prepare from qm9pack (parse + write)", f"{prepare_s:.2f} s", f"{len(dataset) / prepare_s:,.0f} mol/s"
        )
        table.add_row("open prepared (mmap)", f"{open_s * 1e3:.1f} ms", "")
        table.add_row("read all arrays into memory", f"{load_s * 1e3:.1f} ms", "")
        table.add_row(f"build {n} Structure records", f"{records_s:.2f} s", f"{n / records_s:,.0f} structures/s")
        table.add_row(
            f"collate(Structures), batch {args.batch_size}", f"{collate_s:.2f} s", f"{n / collate_s:,.0f} structures/s"
        )
        table.add_row(
            f"PreparedDataset.collate, batch {args.batch_size}", f"{fast_s:.2f} s", f"{n / fast_s:,.0f} structures/s"
        )
        console.print(table)
        console.print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        )


if __name__ == "__main__":
    main()
