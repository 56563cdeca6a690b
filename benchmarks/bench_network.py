"""The network alone on CPU: aten calls per call and eager latency, against a baseline commit in one run.

Two calls are measured, single-threaded, float32, eager, random weights (seed 0):
  md17-l2 energy+forces of one MD17 aspirin frame (21 atoms, ../shared/data/md17/mdbenchgnn/aspirin/test.npz)
  qm9-l2 inference (no grad) of 128 QM9 molecules (../shared/data/qm9/qm9_reduced_100.xyz, cycled)
Each is profiled once with torch.profiler (every `aten::` event, nested ones included) and timed as the
median of `--repeats` calls after one warm-up. The same measurement runs, in the same invocation, on the
network as of `--baseline` (checked out in a temporary `git worktree`, imported through PYTHONPATH in a
subprocess, one per call and side), in `--rounds` rounds. Within a round each call is measured on the two
networks back to back, so that a machine whose speed drifts (shared or throttled cores) slows both alike:
the speed-up reported is the median of the per-round ratios, the latencies the medians over rounds. The
table fits 80 columns; `--json` saves the numbers, every round's included.

`--compile` also compiles the full md17-l2 energy+forces call of this checkout with
`torch.compile(fullgraph=True, dynamic=True)` (`--compile-backend`, default inductor) and reports the cold
compile time, the compiled latency and the largest relative difference from eager.

Usage: python benchmarks/bench_network.py [--baseline 9e9c3c0] [--repeats 5] [--rounds 3] [--json bench_network.json]
       [--no-baseline] [--compile] [--compile-backend inductor]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EQUIZOO_SHARED_DATA", ROOT.parent / "shared" / "data"))
ASPIRIN = SHARED / "md17" / "mdbenchgnn" / "aspirin" / "test.npz"
QM9 = SHARED / "qm9" / "qm9_reduced_100.xyz"
CASES = ("md17-l2 energy+forces, 1 aspirin", "qm9-l2 inference, 128 QM9")


def _aten_calls(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def _latency_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def _inputs():
    """(md17 args, qm9 args) as keyword dicts of float32 tensors with their radius graphs."""
    import numpy as np
    import torch
    from ase.io import read

    from zoo.graph import radius_graph

    frame = np.load(ASPIRIN)
    z = torch.from_numpy(frame["atomic_numbers"].reshape(-1)).long()
    pos = torch.from_numpy(frame["pos"][0]).float()
    batch = torch.zeros(len(z), dtype=torch.long)
    md17 = {"pos": pos, "species": z, "edge_index": radius_graph(pos, batch, 5.0), "batch": batch, "num_graphs": 1}

    mols = read(QM9, index=":")
    mols = [mols[i % len(mols)] for i in range(128)]
    z = torch.cat([torch.from_numpy(m.numbers).long() for m in mols])
    pos = torch.cat([torch.from_numpy(m.positions).float() for m in mols])
    batch = torch.cat([torch.full((len(m),), i, dtype=torch.long) for i, m in enumerate(mols)])
    qm9 = {"pos": pos, "species": z, "edge_index": radius_graph(pos, batch, 5.0), "batch": batch, "num_graphs": 128}
    return md17, qm9


def measure(repeats: int, case: int) -> dict:
    """Measure call `CASES[case]` with the `zoo` found on sys.path (this checkout or the baseline's)."""
    import torch

    from zoo.models import build_model

    torch.set_num_threads(1)
    md17_in, qm9_in = _inputs()
    torch.manual_seed(0)
    if case == 0:
        model = build_model("md17-l2").eval()
        inputs = md17_in

        def fn():
            return model(**inputs)

    else:
        model = build_model("qm9-l2").eval()
        inputs = qm9_in

        def fn():
            with torch.no_grad():
                return model(**inputs)

    result = fn()
    out = {
        "aten_calls": _aten_calls(fn),
        "latency_ms": _latency_ms(fn, repeats),
        "atoms": len(inputs["pos"]),
        "edges": inputs["edge_index"].shape[1],
    }
    if case == 0:
        out["check"] = {"energy": result["energy"].tolist(), "forces_sum_abs": float(result["forces"].abs().sum())}
    return out


def measure_compile(backend: str, repeats: int) -> dict:
    """Cold compile time, latency and largest relative difference from eager of the compiled md17-l2
    energy+forces call (this checkout only: forces inside torch.compile need its functional gradient)."""
    import torch

    from zoo.models import build_model

    torch.set_num_threads(1)
    md17_in, _ = _inputs()
    torch.manual_seed(0)
    model = build_model("md17-l2").eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    start = time.perf_counter()
    out = compiled(**md17_in)
    cold = time.perf_counter() - start
    eager = model(**md17_in)
    diff = max(float((out[k] - eager[k]).abs().max() / eager[k].abs().max()) for k in eager)
    return {
        "backend": backend,
        "cold_compile_s": cold,
        "latency_ms": _latency_ms(lambda: compiled(**md17_in), repeats),
        "max_rel_diff": diff,
    }


def _run_worker(src: Path, repeats: int, extra: tuple) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--repeats", str(repeats), *extra]
    proc = subprocess.run(cmd, env=env, cwd=str(src), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement in {src} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _BaselineTree:
    """The network as of a commit, checked out in a temporary `git worktree` for the length of a `with`."""

    def __init__(self, commit: str) -> None:
        self.commit = commit
        self._tmp = tempfile.TemporaryDirectory(prefix="equizoo-baseline-")
        self.tree = Path(self._tmp.name) / "tree"

    def __enter__(self) -> Path:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(self.tree), self.commit],
            check=True,
            capture_output=True,
        )
        return self.tree

    def __exit__(self, *exc) -> None:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.tree)], check=False, capture_output=True
        )
        self._tmp.cleanup()


def _combine(this: list, base: list) -> dict:
    """One case over the rounds: the first round's counts and sizes, the median of the per-round latencies
    and, against the baseline, the median of the per-round speed-ups (each round's two measurements are
    taken back to back, so a drift of the machine's speed cancels in their ratio)."""

    def median(values: list) -> float:
        return sorted(values)[len(values) // 2]

    rounds_ms = [r["latency_ms"] for r in this]
    out = {"this": dict(this[0], latency_ms=median(rounds_ms), rounds_ms=rounds_ms)}
    if base:
        base_ms = [r["latency_ms"] for r in base]
        ratios = [b / t for b, t in zip(base_ms, rounds_ms)]
        out["baseline"] = dict(base[0], latency_ms=median(base_ms), rounds_ms=base_ms)
        out["speedup"] = median(ratios)
        out["rounds_speedup"] = ratios
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="9e9c3c0", help="commit to compare against (default: 9e9c3c0)")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round (their median is the round's)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, this checkout and the baseline in turn (median over rounds)"
    )
    parser.add_argument("--json", default="bench_network.json", help="where to save the numbers")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of md17-l2 energy+forces")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    parser.add_argument("--worker", type=int, choices=range(len(CASES)), help=argparse.SUPPRESS)
    parser.add_argument("--worker-compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be at least 1")
    if args.worker is not None:
        print(json.dumps(measure(args.repeats, args.worker)))
        return
    if args.worker_compile:
        print(json.dumps(measure_compile(args.compile_backend, args.repeats)))
        return
    for path in (ASPIRIN, QM9):
        if not path.exists():
            parser.error(f"benchmark data {path} is missing: set EQUIZOO_SHARED_DATA to the shared data folder")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    results = {}
    with Progress(transient=True) as progress:
        sides = 1 if args.no_baseline else 2
        task = progress.add_task("measuring", total=args.rounds * len(CASES) * sides + args.compile)
        rounds: dict = {case: {"this": [], "baseline": []} for case in CASES}
        with contextlib.ExitStack() as stack:
            trees = {"this": ROOT}
            if not args.no_baseline:
                trees["baseline"] = stack.enter_context(_BaselineTree(args.baseline))
            for r in range(args.rounds):
                for c, case in enumerate(CASES):
                    for side, tree in trees.items():
                        name = "this checkout" if side == "this" else f"baseline {args.baseline}"
                        progress.update(task, description=f"round {r + 1}/{args.rounds}, {case.split(',')[0]}: {name}")
                        rounds[case][side].append(_run_worker(tree, args.repeats, ("--worker", str(c))))
                        progress.advance(task)
        for case in CASES:
            results[case] = _combine(rounds[case]["this"], rounds[case]["baseline"])
        if args.compile:
            progress.update(task, description=f"torch.compile ({args.compile_backend})")
            results["compile"] = _run_worker(
                ROOT, args.repeats, ("--worker-compile", "--compile-backend", args.compile_backend)
            )
            progress.advance(task)

    table = Table(title="equizoo network, CPU, 1 thread, float32, eager", width=80)
    table.add_column("call", max_width=22)
    table.add_column("aten calls", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("base aten", justify="right")
    table.add_column("base ms", justify="right")
    table.add_column("speed-up", justify="right")
    for case in CASES:
        now = results[case]["this"]
        base = results[case].get("baseline")
        row = [case, f"{now['aten_calls']:,}", f"{now['latency_ms']:.1f}"]
        if base:
            row += [f"{base['aten_calls']:,}", f"{base['latency_ms']:.1f}", f"{results[case]['speedup']:.2f}x"]
        else:
            row += ["", "", ""]
        table.add_row(*row)
    Console().print(table)
    if not args.no_baseline:
        for case in CASES:
            ratios = ", ".join(f"{x:.2f}" for x in results[case]["rounds_speedup"])
            Console().print(f"{case.split(',')[0]} speed-up per round: {ratios}")
    if args.compile:
        c = results["compile"]
        Console().print(
            f"md17-l2 energy+forces, torch.compile(fullgraph=True, dynamic=True, backend={c['backend']!r}): cold compile "
            f"{c['cold_compile_s']:.1f} s, {c['latency_ms']:.1f} ms per call, largest relative difference from eager {c['max_rel_diff']:.1e}"
        )
    import platform

    import torch

    record = {
        "baseline_commit": None if args.no_baseline else args.baseline,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "results": results,
    }
    Path(args.json).write_text(json.dumps(record, indent=2))
    Console().print(f"saved {args.json}")


if __name__ == "__main__":
    main()
