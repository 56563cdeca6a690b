"""Training on a wall-clock budget and with the data on the device: the compressed schedule, the batches of
the device path against the loader's, a 60 s budget that ends on time with its model, and a SIGTERM that
leaves the model of the last finished step (both in a subprocess, as a user runs them)."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from zoo import keys
from zoo.artifact import load_model_dir
from zoo.data import PreparedDataset, prepare_dataset
from zoo.graph import attach_graph
from zoo.train import LRSchedule, RecipeError, build_network, load_recipe, train
from zoo.train.budget import CompressedSchedule, warmup_fraction
from zoo.train.data import DeviceSplit, model_inputs

REPO = Path(__file__).resolve().parents[1]
MICRO = {"num_layers": 2, "irreps_node_embedding": "16x0e+4x1e+2x2e", "irreps_head": "8x0e+2x1e+1x2e", "num_heads": 2,
         "irreps_mlp_mid": "32x0e+8x1e+4x2e", "irreps_feature": "32x0e", "num_basis": 16, "radial_hidden": "[16, 16]"}  # fmt: skip
QUICK = ["log.progress=false", "log.plot=false", "device=cpu"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    return env


def _sets(items: list[str]) -> list[str]:
    return [arg for s in items for arg in ("--set", s)]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the schedule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["budget/cpu-md17-l2-ethanol-29m", "qm9/gap", "oc20/is2re-l1"])
def test_compressed_schedule_warms_up_then_reaches_its_minimum_at_the_last_step(name):
    recipe = load_recipe(name, ["budget.warmup_fraction=0.1"])
    base = LRSchedule.from_recipe(recipe, 100)
    schedule = CompressedSchedule(base, warmup_fraction(recipe), total=201)
    lrs = [schedule(k) for k in range(201)]
    assert lrs[-1] == pytest.approx(base.floor, rel=1e-12) and min(lrs) == pytest.approx(base.floor, rel=1e-12)
    peak = int(np.argmax(lrs))
    assert 19 <= peak <= 21 and all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))  # warm-up: the first 10 %
    assert all(a >= b for a, b in zip(lrs[peak + 1 :], lrs[peak + 2 :]))  # then only down
    # a re-plan keeps the learning rate of the step where it happens and still ends at the minimum
    before = schedule(120)
    schedule.replan(120, 150)
    assert schedule(120) == pytest.approx(before, rel=1e-12)
    assert schedule(149) == pytest.approx(base.floor, rel=1e-12) and schedule(140) > base.floor
    schedule.replan(130, 400)
    assert schedule(399) == pytest.approx(base.floor, rel=1e-12)


def test_budget_keys_and_bad_budgets():
    r = load_recipe("budget/cpu-md17-l2-ethanol-29m")
    assert r["budget"]["wall_time"] == 29 * 60 and r["optim"]["ema_decay"] == 0.999 and r["data"]["on_device"] == "auto"
    for text, seconds in (("90s", 90), ("9m", 540), ("1h", 3600), ("1h30m", 5400), ("600", 600), ("2.5m", 150)):
        assert load_recipe("md17/l2/ethanol", [f"budget.wall_time={text}"])["budget"]["wall_time"] == seconds
    for bad in ("9x", "0", "-5m", "true", "m"):
        with pytest.raises(
            RecipeError,
            match=r"budget.wall_time: .* is not a (positive )?duration; write seconds or e.g. 90s, 9m, 1h30m",
        ):
            load_recipe("md17/l2/ethanol", [f"budget.wall_time={bad}"])
    with pytest.raises(RecipeError, match="data.on_device=true holds molecules"):
        load_recipe("oc20/is2re-l1", ["data.on_device=true"])
    with pytest.raises(RecipeError, match="data.on_device must be true, false or auto"):
        load_recipe("qm9/gap", ["data.on_device=sometimes"])


def test_a_budget_already_spent_ends_after_the_timed_steps_with_a_model(shared_data, tmp_path):
    """A budget that cannot hold even the final evaluation (here: counted from 2 minutes ago) trains only its
    timed steps, says why, and still writes a complete model directory and summary."""
    source = shared_data / "md17" / "mdbenchgnn" / "aspirin"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.train_limit=16", "data.val_limit=4", "data.test_limit=4",
            "optim.batch_size=2", "budget.wall_time=60", "budget.measure_steps=3", *[f"model.overrides.{k}={v}" for k, v in MICRO.items()], *QUICK]  # fmt: skip
    text = io.StringIO()
    result = train(
        load_recipe("md17/l2/aspirin", sets),
        out=tmp_path / "run",
        console=Console(file=text, width=200),
        origin=time.perf_counter() - 120,
    )
    assert "holds no more training: the final evaluation alone takes" in text.getvalue()
    assert result.metrics["steps"] == 3 and result.metrics["budget"]["planned_steps"] == 3 and result.stopped is None
    assert (
        math.isfinite(result.metrics["test"]["force_mae"])
        and load_model_dir(tmp_path / "run" / "model").target("energy").unit == "eV"
    )


# --- data on the device --------------------------------------------------------------------------------


def _loader_batch(view, ids, targets, dtype, r_max):
    return attach_graph(model_inputs(view.collate(ids, targets, torch.float64), dtype), r_max)


@pytest.mark.parametrize("data", ["qm9", "md17"])
def test_device_split_gives_the_loader_batches(shared_data, tmp_path, data):
    """Real QM9 molecules of 3 to 9 heavy atoms (different sizes in one batch) and MD17 aspirin frames: every
    key of every batch is exactly the loader's, and so is what a network computes from them."""
    if data == "qm9":
        view = PreparedDataset(
            prepare_dataset("qm9", source=shared_data / "qm9" / "dsgdb9nsd_xyz_samples", cache_dir=tmp_path)
        )
        targets, recipe = ["gap"], "qm9/gap"
    else:
        source = shared_data / "md17" / "mdbenchgnn" / "aspirin"
        view = (
            PreparedDataset(prepare_dataset("md17-aspirin", source=source, cache_dir=tmp_path))
            .split("test")
            .subset(np.arange(40))
        )
        targets, recipe = [keys.ENERGY, keys.FORCES], "md17/l2/aspirin"
    net = build_network(load_recipe(recipe, [f"model.overrides.{k}={v}" for k, v in MICRO.items()]))
    net.eval()
    split = DeviceSplit(view, targets, torch.float32, net.config.r_max, None, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for size in (1, 3, 7, len(view)):
        ids = rng.permutation(len(view))[:size]
        mine, theirs = split.batch(ids), _loader_batch(view, ids, targets, torch.float32, net.config.r_max)
        assert list(mine) == list(theirs)
        for key in theirs:
            assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), (size, key)
        outs = []
        for batch in (mine, theirs):
            with torch.set_grad_enabled(net.config.forces):
                out = net(
                    batch[keys.POSITIONS],
                    batch[keys.SPECIES],
                    batch[keys.EDGE_INDEX],
                    batch[keys.BATCH],
                    None,
                    None,
                    int(batch[keys.NUM_ATOMS].shape[0]),
                )
            outs.append({k: v.detach() for k, v in out.items()})
        for key in outs[1]:
            assert torch.equal(outs[0][key], outs[1][key]), key
    assert split.batch(np.arange(len(view)))[keys.EDGE_INDEX].shape[1] == int(split.nedges_host.sum())


def test_device_data_trains_the_same_weights_as_the_loader(shared_data, tmp_path):
    source = shared_data / "md17" / "mdbenchgnn" / "aspirin"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.train_limit=12", "data.val_limit=4", "data.test_limit=4",
            "optim.batch_size=4", "optim.max_epochs=2", "schedule.warmup_epochs=0", "optim.ema_decay=0.9", "data.num_workers=0",
            *[f"model.overrides.{k}={v}" for k, v in MICRO.items()], *QUICK]  # fmt: skip
    runs = {}
    for flag in ("true", "false"):
        runs[flag] = train(
            load_recipe("md17/l2/aspirin", [*sets, f"data.on_device={flag}"]),
            out=tmp_path / flag,
            console=Console(file=io.StringIO()),
        )
    assert (
        runs["true"].metrics["val"] == runs["false"].metrics["val"]
        and runs["true"].metrics["test"] == runs["false"].metrics["test"]
    )
    weights = [load_file(str(tmp_path / flag / "model" / "model.safetensors")) for flag in ("true", "false")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --- acceptance: a 60 s budget, and a SIGTERM --------------------------------------------------------------


def test_budget_of_60s_ends_on_time_with_a_complete_model(shared_data, tmp_path):
    """The CPU budget recipe of MD17 ethanol (the reduced network) with --budget 60s, counted from the start of
    the command (data preparation included): it ends 60 s +- 10 s after it started, with a loadable model
    directory, and its last step ran at the schedule's minimum learning rate."""
    source = shared_data / "md17" / "mdbenchgnn" / "ethanol"
    cmd = [sys.executable, "-m", "zoo.cli", "train", "budget/cpu-md17-l2-ethanol-29m", "--budget", "60s", "--out", str(tmp_path / "run"),
           *_sets([f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", *QUICK])]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - started
    print(
        f"\n60 s budget: the command took {wall:.1f} s\n"
        + "\n".join(line for line in done.stdout.splitlines() if not line.startswith("epoch"))
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert 50.0 <= wall <= 70.0, wall
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    b = summary["budget"]
    assert (
        b["wall_time_s"] == 60 and b["planned_steps"] == summary["steps"] > 8
    )  # it trained past the timed warm-up, to its plan
    assert b["last_lr"] == pytest.approx(b["min_lr"], rel=1e-9) and b["min_lr"] == 1e-6
    rows = [line.split(",") for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()]
    lr = [float(row[rows[0].index("lr")]) for row in rows[1:]]
    assert lr[-1] == pytest.approx(1e-6, rel=1e-9) and max(lr) > 1e-4
    model = load_model_dir(tmp_path / "run" / "model", dtype=torch.float64)
    frames = PreparedDataset(tmp_path / "cache" / "prepared" / "md17-ethanol").split("test").subset(np.arange(10))
    batch = attach_graph(frames.collate(np.arange(10), [keys.ENERGY, keys.FORCES], torch.float64), model.r_max)
    out = model(batch[keys.POSITIONS], batch[keys.SPECIES], batch[keys.EDGE_INDEX], batch[keys.BATCH])
    assert torch.isfinite(out[keys.FORCES]).all() and out[keys.ENERGY].shape == (10,)
    assert (
        math.isfinite(summary["test"]["force_mae"]) and summary["test"]["force_mae"] < 1.0
    )  # eV/Å: it learned something


def test_sigterm_mid_run_leaves_the_model_of_the_last_step(shared_data, tmp_path):
    """SIGTERM during training: the command exits with 128 + 15 after writing a checkpoint and a model directory
    of the step it finished; the model holds exactly the checkpoint's weights and the run resumes from there."""
    source = shared_data / "md17" / "mdbenchgnn" / "aspirin"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.train_limit=16", "data.val_limit=4", "data.test_limit=4",
            "optim.batch_size=4", "optim.max_epochs=1000", "checkpoint.every_steps=1000", *[f"model.overrides.{k}={v}" for k, v in MICRO.items()], *QUICK]  # fmt: skip
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "zoo.cli", "train", "md17/l2/aspirin", "--out", str(run), *_sets(sets)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 300
    while (
        not (run / "metrics.csv").is_file() and proc.poll() is None and time.time() < deadline
    ):  # training is under way (epoch 1 done)
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM after step" in output
    summary = json.loads((run / "summary.json").read_text())
    step = summary["steps"]
    assert summary["stopped"] == "SIGTERM" and step >= 4 and step < 4000
    checkpoint = run / "checkpoints" / f"step_{step:09d}"
    assert (checkpoint / "state.json").is_file() and json.loads((checkpoint / "state.json").read_text())["step"] == step
    saved, model_weights = (
        load_file(str(checkpoint / "model.safetensors")),
        load_file(str(run / "model" / "model.safetensors")),
    )
    assert len(model_weights) == len(saved)
    assert all(torch.equal(model_weights[f"networks.energy.{k}"], v) for k, v in saved.items())
    assert load_model_dir(run / "model").target("energy").forces_unit == "eV/Å"
    resumed = subprocess.run([sys.executable, "-m", "zoo.cli", "train", "--resume", str(run), "--set", f"optim.max_steps={step + 2}"],
                             env=_env(), capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming at step {step}" in resumed.stdout
    final = json.loads((run / "summary.json").read_text())
    assert final["steps"] == step + 2 and "stopped" not in final and math.isfinite(final["test"]["force_mae"])


# --- the one-call script -------------------------------------------------------------------------------------


def test_gpu_train_script_trains_and_releases_within_its_window_on_cpu(shared_data, tmp_path):
    """scripts/gpu-train.sh with a 1-minute window on the CPU (a micro network, TorchScript only: the ONNX export
    of even the 2-block network takes minutes on 2 cores and has its own tests): a training run, a release
    folder whose evaluation is the trained model's, its TorchScript checked against eager, and the record."""
    source = shared_data / "md17" / "mdbenchgnn" / "ethanol"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.val_limit=20", "data.test_limit=100", *QUICK,
            *[f"model.overrides.{k}={v}" for k, v in MICRO.items()]]  # fmt: skip
    out = tmp_path / "out"
    cmd = [
        "bash",
        str(REPO / "scripts" / "gpu-train.sh"),
        "budget/cpu-md17-l2-ethanol-29m",
        "1",
        str(out),
        "--formats",
        "torchscript",
        *_sets(sets),
    ]
    done = subprocess.run(
        cmd, env=dict(_env(), PYTHON=sys.executable), capture_output=True, text=True, timeout=600, check=False
    )
    print("\n" + "\n".join(line for line in done.stdout.splitlines() if not line.startswith("epoch")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "gpu-train.json").read_text())
    assert set(record["phases_s"]) == {"prepare", "train", "release"} and record["window_s"] == 60
    release = out / "releases" / "equiformer-cpu-md17-l2-ethanol-1m"
    for name in (
        "config.json",
        "model.safetensors",
        "model.torchscript.pt",
        "exports.json",
        "README.md",
        "manifest.json",
    ):
        assert (release / name).is_file(), name
    exports = json.loads((release / "exports.json").read_text())["exports"]
    assert exports["torchscript"]["max_abs_error"] <= exports["torchscript"]["tolerance"]
    summary = json.loads((out / "run" / "summary.json").read_text())
    rows = {(r["split"], r["quantity"]): r for r in record["release_evaluation"]}
    assert set(rows) == {
        ("val[:20]", "energy"),
        ("val[:20]", "forces"),
        ("test[:100]", "energy"),
        ("test[:100]", "forces"),
    }
    for (
        split,
        quantity,
    ), row in rows.items():  # the release evaluated the trained weights: the run's numbers, to float32 round-off
        trained = (
            1000 * summary[split.split("[")[0]]["energy_mae" if quantity == "energy" else "force_mae"]
        )  # eV -> meV
        assert abs(row["value"] - trained) <= row["roundoff"], (split, quantity, row, trained)
    assert json.loads(
        (out / "registry.json").read_text()
    )  # the release's registry entry, outside the packaged registry
    bad = subprocess.run(["bash", str(REPO / "scripts" / "gpu-train.sh"), "budget/cpu-md17-l2-ethanol-29m", "ten", str(tmp_path / "x")],
                         env=dict(_env(), PYTHON=sys.executable), capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert bad.returncode == 2 and "MINUTES must be a number of minutes" in bad.stderr
