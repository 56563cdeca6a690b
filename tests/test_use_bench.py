"""`zoo.bench` and `equizoo bench`: documented fields, backends compared in one run, realistic workloads.
Tiny CPU benches only; no assertion is about speed."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from clihelpers import run_cli
from test_use_support import REPO, model_dir

from zoo.errors import UseError
from zoo.use.bench import BENCH_FIELDS, SUITES, bench, workload
from zoo.use.runner import load_runner

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_bench_compare_writes_the_documented_fields(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--model", model_dir("md17"), "--batch-size", "2", "--warmup", "1", "--repeats", "2", "--compare", "--train",
                   "--profile", "-o", out, env={"COLUMNS": "80"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "torchscript" in proc.stdout and "vs eager" in proc.stdout
    # the operator counts, with thousands separators, and no profiler chatter on stderr
    assert "per call (torch.profiler)" in proc.stdout and re.search(r"\b\d{1,3},\d{3}\b", proc.stdout)
    assert "profiler_start" not in proc.stderr
    table = proc.stdout.split("workload:")[
        0
    ].splitlines()  # title, table and hints (the file path after them may be long)
    assert max(len(line) for line in table) <= 80 and "…" not in proc.stdout  # the default columns fit a terminal
    payload = json.loads(out.read_text())
    assert payload["fields"] == list(BENCH_FIELDS) and payload["machine"]["torch"] == torch.__version__
    rows = pd.DataFrame(payload["rows"])
    assert list(rows.columns) == list(BENCH_FIELDS)
    assert set(zip(rows["backend"], rows["task"])) == {
        ("eager", "inference"), ("torchscript", "inference"), ("eager", "latency"), ("torchscript", "latency"), ("eager", "train_step"),
    }  # fmt: skip
    assert (rows["status"] == "ok").all(), rows["error"]
    assert (
        (rows["median_ms"] > 0).all()
        and (rows["min_ms"] <= rows["median_ms"]).all()
        and (rows["median_ms"] <= rows["max_ms"]).all()
    )
    inference = rows[rows["task"] == "inference"].iloc[0]
    assert inference["batch_size"] == 2 and inference["atoms_per_batch"] == 42 and inference["forces"]
    assert inference["structures_per_s"] == pytest.approx(2000 / inference["median_ms"])
    assert "aspirin" in inference["workload"]
    assert rows[rows["backend"] == "eager"]["speedup_vs_eager"].eq(1.0).all()
    scripted = rows[(rows["backend"] == "torchscript") & (rows["task"] == "inference")].iloc[0]
    assert scripted["max_abs_diff_vs_eager"] < 1e-9  # float64 model: TorchScript gives the eager outputs


def test_variant_bench_and_errors_per_row():
    frame = bench("oc20-l1", tasks=("latency",), backends=("eager", "onnx"), warmup=0, repeats=1)
    eager, onnx = frame.iloc[0], frame.iloc[1]
    assert eager["status"] == "ok" and eager["model"] == "oc20-l1 (random init)" and eager["atoms_per_batch"] == 68
    assert onnx["status"] == "error" and "exported file" in onnx["error"] and np.isnan(onnx["median_ms"])
    with pytest.raises(UseError, match="unknown suite"):
        bench(suite="no-such-suite")
    assert {task for _, task, _ in SUITES["speed"]} == {"inference", "train_step", "latency"}


def test_workloads_are_real_geometries(shared_data):
    qm9 = load_runner(model_dir("qm9")).info
    structures, label = workload(qm9, structures=[str(REPO / "examples" / "qm9_molecules.extxyz")])
    assert len(structures) == 7 and label == "given structures"
    oc20 = load_runner(model_dir("oc20")).info
    slabs, label = workload(oc20)
    assert slabs[0].n_atoms == 68 and sorted(set(slabs[0].tags.tolist())) == [0, 1, 2] and "oc20_adslab" in label


def test_profile_counts_operators_and_cuda_only_backends_say_why():
    frame = bench(
        model_dir("md17"),
        tasks=("latency",),
        backends=("eager", "cuda-graphs"),
        device="cpu",
        warmup=0,
        repeats=1,
        profile=True,
    )
    eager, graphs = frame.iloc[0], frame.iloc[1]
    assert (
        eager["status"] == "ok" and eager["aten_calls"] > 100 and np.isnan(eager["gpu_kernels"])
    )  # no CUDA counters on the CPU
    assert graphs["status"] == "error" and "needs a CUDA device" in graphs["error"]


def test_speed_suite_has_the_speed_table_cases():
    assert set(SUITES["speed"]) == {
        ("qm9-l2", "inference", 128), ("qm9-l2", "train_step", 128), ("md17-l2", "latency", 1), ("md17-l3", "latency", 1),
        ("md17-l2", "train_step", 8), ("oc20-l1", "inference", 16), ("oc20-l1", "train_step", 16),
    }  # fmt: skip
