"""The network alone on CPU: aten calls per call and eager latency, against a baseline commit in one run.

Two calls are measured, float32, eager, random weights (seed 0), on `--threads` intra-op threads (default 1):
  md17-l2 energy+forces of one MD17 aspirin frame (21 atoms, ../shared/data/md17/mdbenchgnn/aspirin/test.npz)
  qm9-l2 inference (no grad) of 128 QM9 molecules (../shared/data/qm9/qm9_reduced_100.xyz, cycled)
Each is profiled once with torch.profiler at 1 thread (every `aten::` event, nested ones included) and,
after warm-up, timed one call at a time. The same runs, in the same invocation, on the network as of
`--baseline` (checked out in a temporary `git worktree`, imported through PYTHONPATH in a worker process
of its own): in each of `--rounds` rounds one call is timed on each network, back to back, the first side
alternating, so that a machine whose speed drifts (shared or throttled cores) slows both sides of a round
alike. The speed-up reported is the median of the per-round ratios; the latencies are the medians of each
side's calls. The table fits 80 columns; `--json` saves the numbers, every call's included.

Both sides run with the C allocator the environment gives them (glibc's defaults, under which each call
faults much of its memory in again, on both sides). For both under the `equizoo` command's setting
(`zoo.host.keep_freed_memory`), run with its two values in
`GLIBC_TUNABLES=glibc.malloc.trim_threshold=2147483647:glibc.malloc.mmap_threshold=33554432`.

`--compile` also compiles both calls of this checkout with `torch.compile(fullgraph=True, dynamic=True)`
(`--compile-backend`, default inductor), each in a process of its own on `--threads` threads, and reports
per call the cold compile time (with an empty inductor cache), the compiled call's aten calls (on those
threads: the matrix products it leaves to aten, with their nested calls) and latency next to eager's in
the same process, and the largest relative difference from eager.

Usage: python benchmarks/bench_network.py [--baseline 9e9c3c0] [--rounds 11] [--json bench_network.json]
       [--threads 1] [--no-baseline] [--compile] [--compile-backend inductor]
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


def _median(values: list) -> float:
    return sorted(values)[len(values) // 2]


def _latency_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * _median(times)


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


def _call(case: int):
    """(model, inputs, call) of `CASES[case]` with the `zoo` found on sys.path (this checkout or the
    baseline's): the model in eval mode, random weights (seed 0); `call(module)` runs `module` on `inputs`."""
    import torch

    from zoo.models import build_model

    md17_in, qm9_in = _inputs()
    torch.manual_seed(0)
    if case == 0:
        return build_model("md17-l2").eval(), md17_in, lambda module: module(**md17_in)

    def inference(module):
        with torch.no_grad():
            return module(**qm9_in)

    return build_model("qm9-l2").eval(), qm9_in, inference


def serve(case: int, threads: int) -> None:
    """Worker: build call `CASES[case]`, print its aten calls and sizes as one JSON line, then time one call
    per line read from stdin."""
    import torch

    torch.set_num_threads(1)
    model, inputs, call = _call(case)

    def fn():
        return call(model)

    result = fn()
    ready = {"aten_calls": _aten_calls(fn), "atoms": len(inputs["pos"]), "edges": inputs["edge_index"].shape[1]}
    torch.set_num_threads(threads)
    if case == 0:
        ready["check"] = {"energy": result["energy"].tolist(), "forces_sum_abs": float(result["forces"].abs().sum())}
    fn()
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() != "call":
            break
        start = time.perf_counter()
        fn()
        print(json.dumps(1000.0 * (time.perf_counter() - start)), flush=True)


class _Worker:
    """A `serve` subprocess on the network of `tree`: `ready` holds its counts, `call()` times one call."""

    def __init__(self, tree: Path, case: int, threads: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(case), "--threads", str(threads)]
        self.tree = tree
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would stall the worker
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=str(tree), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.ready = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"measurement in {self.tree} failed:\n{self.log.read()[-4000:]}")
        return json.loads(line)

    def call(self) -> float:
        self.proc.stdin.write("call\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


def measure_compile(case: int, backend: str, repeats: int, threads: int) -> dict:
    """Cold compile time, aten calls, latency and largest relative difference from eager of call
    `CASES[case]` compiled and run on `threads` threads (this checkout only: forces inside torch.compile
    need its functional gradient). Everything runs on those threads: Dynamo guards the thread count, so
    a call on another count would compile again."""
    import torch

    from zoo.accel import relative_difference

    torch.set_num_threads(threads)
    model, _, call = _call(case)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    start = time.perf_counter()
    out = call(compiled)
    cold = time.perf_counter() - start
    eager = call(model)
    return {
        "backend": backend,
        "cold_compile_s": cold,
        "aten_calls": _aten_calls(lambda: call(compiled)),
        "latency_ms": _latency_ms(lambda: call(compiled), repeats),
        "eager_latency_ms": _latency_ms(lambda: call(model), repeats),
        "max_rel_diff": max(relative_difference(eager, out).values()),
    }


def _run_worker(src: Path, repeats: int, threads: int, extra: tuple, env_extra: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), **env_extra)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rounds", str(repeats), "--threads", str(threads), *extra]
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


def _measure_case(case: int, trees: dict, pairs: int, threads: int, progress, task) -> dict:
    """One call on each network in `trees` ("this", "baseline"): counts from each worker, then `pairs` rounds
    that time one call on each side back to back (the side that goes first alternates); the speed-up is the
    median of the per-round ratios, so that a drift of the machine's speed cancels in each ratio."""
    workers = {}
    try:
        for side, tree in trees.items():
            workers[side] = _Worker(tree, case, threads)
        times: dict = {side: [] for side in workers}
        for r in range(pairs):
            order = list(workers) if r % 2 == 0 else list(reversed(list(workers)))
            for side in order:
                times[side].append(workers[side].call())
            progress.advance(task)
    finally:
        for w in workers.values():
            w.close()
    out = {side: dict(workers[side].ready, latency_ms=_median(t), calls_ms=t) for side, t in times.items()}
    if "baseline" in times:
        ratios = [b / t for b, t in zip(times["baseline"], times["this"])]
        out["speedup"] = _median(ratios)
        out["rounds_speedup"] = ratios
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="9e9c3c0", help="commit to compare against (default: 9e9c3c0)")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument(
        "--rounds", type=int, default=11, help="timed calls per call and side, the two sides in turn (default 11)"
    )
    parser.add_argument("--json", default="bench_network.json", help="where to save the numbers")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of both calls")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of the timed calls and of --compile (default 1; eager counts are taken at 1)",
    )
    parser.add_argument("--serve", type=int, choices=range(len(CASES)), help=argparse.SUPPRESS)
    parser.add_argument("--worker-compile", type=int, choices=range(len(CASES)), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.serve is not None:
        serve(args.serve, args.threads)
        return
    if args.worker_compile is not None:
        print(json.dumps(measure_compile(args.worker_compile, args.compile_backend, args.rounds, args.threads)))
        return
    for path in (ASPIRIN, QM9):
        if not path.exists():
            parser.error(f"benchmark data {path} is missing: set EQUIZOO_SHARED_DATA to the shared data folder")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    results = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("measuring", total=(args.rounds + args.compile) * len(CASES))
        with contextlib.ExitStack() as stack:
            trees = {"this": ROOT}
            if not args.no_baseline:
                trees["baseline"] = stack.enter_context(_BaselineTree(args.baseline))
            for c, case in enumerate(CASES):
                progress.update(task, description=case.split(",")[0])
                results[case] = _measure_case(c, trees, args.rounds, args.threads, progress, task)
        if args.compile:
            results["compile"] = {}
            for c, case in enumerate(CASES):
                progress.update(task, description=f"torch.compile ({args.compile_backend}), {case.split(',')[0]}")
                # an empty inductor cache, so that the compile is cold even after an earlier run on this machine
                with tempfile.TemporaryDirectory(prefix="equizoo-inductor-cache-") as cache:
                    results["compile"][case] = _run_worker(
                        ROOT,
                        args.rounds,
                        args.threads,
                        ("--worker-compile", str(c), "--compile-backend", args.compile_backend),
                        {"TORCHINDUCTOR_CACHE_DIR": cache},
                    )
                progress.advance(task)

    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    table = Table(title=f"equizoo network, CPU, {threads}, float32, eager", width=80)
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
            Console().print(f"{case.split(',')[0]}, speed-up per round: {ratios}")
    if args.compile:
        for case, c in results["compile"].items():
            Console().print(
                f"{case}, torch.compile(fullgraph=True, dynamic=True, backend={c['backend']!r}): cold compile "
                f"{c['cold_compile_s']:.1f} s, {c['aten_calls']:,} aten calls and {c['latency_ms']:.1f} ms per call "
                f"(eager in the same process: {c['eager_latency_ms']:.1f} ms), largest relative difference from "
                f"eager {c['max_rel_diff']:.1e}"
            )
    import platform

    import torch

    record = {
        "baseline_commit": None if args.no_baseline else args.baseline,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "threads": args.threads,
        "results": results,
    }
    Path(args.json).write_text(json.dumps(record, indent=2))
    Console().print(f"saved {args.json}")


if __name__ == "__main__":
    main()
