"""Real training runs on CPU with small configurations of the real architecture: QM9 from qm9pack, MD17
aspirin, OC20-format LMDBs (the shared reference files and EMT relaxations made here), kill-and-resume and a
2-process DDP run against 1 process."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
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
from zoo.artifact import WEIGHTS, load_model_dir, read_config
from zoo.data import PreparedDataset
from zoo.graph import attach_graph
from zoo.train import TrainError, dump_recipe, load_recipe, train

MICRO_L2 = {"num_layers": 2, "irreps_node_embedding": "16x0e+4x1e+2x2e", "irreps_head": "8x0e+2x1e+1x2e", "num_heads": 2,
            "irreps_mlp_mid": "32x0e+8x1e+4x2e", "irreps_feature": "32x0e", "num_basis": 16, "radial_hidden": "[16, 16]"}  # fmt: skip
MICRO_L1 = {"num_layers": 2, "irreps_node_embedding": "16x0e+4x1e", "irreps_pre_attn": "16x0e+4x1e", "irreps_head": "8x0e+2x1e",
            "num_heads": 2, "irreps_mlp_mid": "32x0e+8x1e", "irreps_feature": "32x0e", "num_basis": 16, "radial_hidden": "[16, 16]"}  # fmt: skip
QUICK = ["data.num_workers=0", "log.progress=false", "log.plot=false", "device=cpu"]
REPO = Path(__file__).resolve().parents[1]


def model_sets(overrides: dict, **changes) -> list[str]:
    return [f"model.overrides.{k}={v}" for k, v in {**overrides, **changes}.items()]


def quiet() -> Console:
    return Console(file=io.StringIO())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qm9_cache(qm9_full) -> Path:
    """The cache holding the full QM9 (qm9pack, 130,831 molecules) prepared by zoo.data, as the recipes use it
    (conftest's qm9_full: one preparation for these runs and the data tests)."""
    return qm9_full[0].parents[1]


def _subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    return env


def _equizoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoo.cli", *args]


# --- QM9 ------------------------------------------------------------------------------------------------


def test_qm9_small_model_fits_64_real_molecules(qm9_cache, tmp_path):
    sets = [f"data.cache_dir={qm9_cache}", "data.train_limit=64", "data.val_limit=16", "data.test_limit=16", "optim.batch_size=32",
            "optim.max_epochs=20", "optim.lr=5.0e-3", "schedule.warmup_epochs=0", *model_sets(MICRO_L2, alpha_drop=0.0), *QUICK, "log.plot=true"]  # fmt: skip
    recipe = load_recipe("qm9/gap", sets)
    result = train(recipe, out=tmp_path / "run", console=quiet())
    maes = [row["train_mae"] for row in result.history]
    print("\ntrain MAE (eV) per epoch:", " ".join(f"{m:.3f}" for m in maes))
    start = maes[0]
    assert any(m < 0.3 * start for m in maes), maes
    gap = PreparedDataset(qm9_cache / "prepared" / "qm9").split("train").target("gap")[:64]
    assert min(maes[-3:]) < np.abs(gap - gap.mean()).mean(), (
        maes
    )  # better than predicting the mean: it learns structure
    assert len(result.history) == 20 and [row["step"] for row in result.history] == [2 * (e + 1) for e in range(20)]
    for row in result.history:  # the optimizer ran with the timm schedule of this recipe (no warmup here)
        epoch = row["step"] // 2 - 1
        assert row["lr"] == pytest.approx(1e-6 + 0.5 * (5e-3 - 1e-6) * (1 + math.cos(math.pi * epoch / 20)), rel=1e-12)

    run = tmp_path / "run"
    for name in (
        "recipe.yaml",
        "metrics.csv",
        "learning_curve.png",
        "summary.json",
        "model/config.json",
        "model/model.safetensors",
    ):
        assert (run / name).is_file(), name
    assert load_recipe(run / "recipe.yaml") == recipe
    m = result.metrics
    best = m["best_val"]
    assert m["final_weights"] == "best_val" and m["weights_step"] == best["step"]
    assert m["test"]["mae"] == pytest.approx(
        best["test"]["mae"], rel=1e-9
    )  # QM9 result: test MAE at the best-validation epoch
    assert best["val"]["mae"] == min(row["val_mae"] for row in result.history)

    config = read_config(run / "model")
    meta = config["metadata"]
    assert meta["recipe"] == recipe and meta["dataset"]["sizes"] == {"train": 64, "val": 16, "test": 16}
    train_split = PreparedDataset(qm9_cache / "prepared" / "qm9").split("train").subset(np.arange(64))
    assert meta["elements"] == sorted({int(z) for s in train_split for z in s.species})  # the elements the model saw
    assert (
        meta["environment"]["torch"] == torch.__version__
        and meta["hardware"]["processes"] == 1
        and meta["wall_time_s"] > 0
    )
    (target,) = config["targets"]
    assert (target["name"], target["unit"]) == ("gap", "eV")
    assert target["mean"] == pytest.approx(gap.mean()) and target["std"] == pytest.approx(gap.std(ddof=1))

    model = load_model_dir(run / "model")
    val = PreparedDataset(qm9_cache / "prepared" / "qm9").split("val").subset(np.arange(16))
    batch = attach_graph(val.collate(np.arange(16), ["gap"], torch.float32), model.r_max)
    with torch.no_grad():
        pred = model(batch[keys.POSITIONS], batch[keys.SPECIES], batch[keys.EDGE_INDEX], batch[keys.BATCH])["gap"]
    assert float((pred - batch["gap"]).abs().mean()) == pytest.approx(m["val"]["mae"], rel=1e-5)


# --- MD17 -----------------------------------------------------------------------------------------------


def test_md17_aspirin_force_loss_decreases(shared_data, tmp_path):
    source = shared_data / "md17" / "mdbenchgnn" / "aspirin"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.train_limit=16", "data.val_limit=8", "data.test_limit=8",
            "optim.batch_size=4", "optim.max_epochs=4", "schedule.warmup_epochs=0", "eval.test_every_epochs=2", *model_sets(MICRO_L2), *QUICK]  # fmt: skip
    result = train(load_recipe("md17/l2/aspirin", sets), out=tmp_path / "run", console=quiet())
    forces = [row["train_loss_force"] for row in result.history]
    print("\nMD17 aspirin train force loss (L2MAE of F/std) per epoch:", " ".join(f"{f:.4f}" for f in forces))
    assert forces[-1] < forces[0] and all(np.isfinite(forces))
    assert ["test_force_mae" in row for row in result.history] == [False, True, False, True]
    m = result.metrics
    assert (
        m["final_weights"] == "last" and m["weights_step"] == 16 == m["steps"]
    )  # the paper tests the last-epoch weights
    assert (tmp_path / "run" / "best" / f"step_{m['best_val']['step']:09d}.safetensors").is_file()
    assert m["units"] == {"energy_mae": "eV", "force_mae": "eV/Å"}
    model = load_model_dir(
        tmp_path / "run" / "model", dtype=torch.float64
    )  # energies near -17,600 eV: float64 keeps meV
    info = model.target("energy")
    assert info.forces_unit == "eV/Å" and model.energy_target == "energy"
    frames = PreparedDataset(tmp_path / "cache" / "prepared" / "md17-aspirin").split("test").subset(np.arange(8))
    batch = attach_graph(frames.collate(np.arange(8), [keys.ENERGY, keys.FORCES], torch.float64), model.r_max)
    out = model(batch[keys.POSITIONS], batch[keys.SPECIES], batch[keys.EDGE_INDEX], batch[keys.BATCH])
    assert float((out[keys.FORCES] - batch[keys.FORCES]).abs().mean()) == pytest.approx(
        m["test"]["force_mae"], rel=1e-4
    )
    assert float((out[keys.ENERGY].detach() - batch[keys.ENERGY]).abs().mean()) == pytest.approx(
        m["test"]["energy_mae"], rel=1e-4
    )


def test_md17_bf16_autocast_run_keeps_float32_weights(shared_data, tmp_path):
    """`optim.amp=true` (bf16 autocast of the forward and the loss) trains on CPU, says so, and the weights it
    writes stay float32."""
    source = shared_data / "md17" / "mdbenchgnn" / "aspirin"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.train_limit=8", "data.val_limit=4", "data.test_limit=4",
            "optim.batch_size=4", "optim.max_epochs=2", "schedule.warmup_epochs=0", "optim.amp=true", *model_sets(MICRO_L2), *QUICK]  # fmt: skip
    log = io.StringIO()
    result = train(load_recipe("md17/l2/aspirin", sets), out=tmp_path / "run", console=Console(file=log, width=200))
    assert "bf16 autocast (forward and loss)" in log.getvalue()
    losses = [row["train_loss_force"] for row in result.history]
    assert len(losses) == 2 and all(np.isfinite(losses))
    weights = load_file(str(tmp_path / "run" / "model" / WEIGHTS))
    assert {w.dtype for w in weights.values()} == {torch.float32}


# --- OC20 -----------------------------------------------------------------------------------------------


def test_oc20_is2re_on_reference_format_lmdbs(shared_data, tmp_path):
    source = shared_data / "oc20" / "format_reference_not_oc20"
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={source}", "data.train_limit=16", "data.val_split=val", "data.val_limit=4",
            "optim.batch_size=4", "optim.max_epochs=3", "eval.every_steps=2", *model_sets(MICRO_L1), *QUICK]  # fmt: skip
    result = train(load_recipe("oc20/is2re-l1", sets), out=tmp_path / "run", console=quiet())
    assert [row["step"] for row in result.history] == [2, 4, 6, 8, 10, 12]
    warmup, total = 2 * 4, 3 * 4
    for row in result.history:  # LambdaLR stepped per step: the last step of the row ran at k = step - 1
        k = row["step"] - 1
        factor = (
            0.2 * (1 - k / warmup) + k / warmup if k <= warmup else 0.01 + 0.495 * (1 + math.cos(math.pi * k / total))
        )
        assert row["lr"] == pytest.approx(2e-4 * factor, rel=1e-12)
    model = load_model_dir(tmp_path / "run" / "model")
    info = model.target("energy")
    assert (info.mean, info.std, info.unit) == (-1.525913953781128, 2.279365062713623, "eV") and model.needs_tags


def _emt_lmdbs(folder: Path) -> None:
    """OC20-format LMDBs (dicts of OCP fields) of adsorbates relaxed on fcc(111) slabs with ASE's EMT: NOT DFT."""
    lmdb = pytest.importorskip("lmdb", reason="the lmdb package is needed for OC20 files; pip install lmdb")
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    records = []
    for sid, (metal, adsorbate, site) in enumerate(
        [
            ("Cu", "O", "fcc"),
            ("Pt", "C", "hcp"),
            ("Ni", "N", "fcc"),
            ("Cu", "H", "hcp"),
            ("Au", "O", "fcc"),
            ("Pd", "C", "fcc"),
        ]
    ):
        slab = fcc111(metal, size=(2, 2, 3), vacuum=6.0)
        layer = slab.get_tags().copy()  # 1 = top layer
        add_adsorbate(slab, adsorbate, 1.8, site)
        tags = np.concatenate([np.where(layer == 1, 1, 0), [2]])
        fixed = np.concatenate([layer >= 2, [False]])
        slab.set_constraint(FixAtoms(mask=fixed))
        slab.calc = EMT()
        initial, e_init = slab.positions.copy(), slab.get_potential_energy()
        BFGS(slab, logfile=None).run(fmax=0.05, steps=30)
        records.append({
            "pos": torch.tensor(initial, dtype=torch.float32), "cell": torch.tensor(np.asarray(slab.cell), dtype=torch.float32).view(1, 3, 3),
            "atomic_numbers": torch.tensor(slab.numbers, dtype=torch.float32), "natoms": len(slab), "tags": torch.tensor(tags),
            "fixed": torch.tensor(fixed, dtype=torch.float32), "sid": sid, "y_init": float(e_init),
            "y_relaxed": float(slab.get_potential_energy()), "pos_relaxed": torch.tensor(slab.positions, dtype=torch.float32),
        })  # fmt: skip
    folder.mkdir(parents=True)
    for name, part in (("train", records[:4]), ("val", records[4:])):
        env = lmdb.open(str(folder / f"{name}.lmdb"), subdir=False, map_size=1 << 26)
        with env.begin(write=True) as txn:
            for i, record in enumerate(part):
                txn.put(str(i).encode("ascii"), pickle.dumps(record, protocol=-1))
        env.close()


def test_oc20_auxiliary_task_and_noisy_nodes_on_emt_relaxations(tmp_path):
    _emt_lmdbs(tmp_path / "emt")
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.source={tmp_path / 'emt'}", "data.val_split=val", "optim.batch_size=2",
            "optim.max_epochs=3", *model_sets(MICRO_L1, irreps_feature="32x0e+8x1e"), *QUICK]  # fmt: skip
    recipe = load_recipe("oc20/is2re-l1-aux18-noisy-nodes", sets)
    assert recipe["noisy_nodes"]["enabled"] and recipe["loss"]["aux_weight"] == 15.0
    result = train(recipe, out=tmp_path / "run", console=quiet())
    total = 2 * 3
    for row in result.history:  # the mean auxiliary weight over the epoch's steps, decaying 15 -> 1 over all steps
        steps = range(row["step"] - 2, row["step"])
        expected = np.mean([15 - 14 * min(1.0, (s + 1) / total) for s in steps])
        assert row["train_aux_weight"] == pytest.approx(expected, rel=1e-6)
        assert np.isfinite(row["train_loss_aux"]) and row["train_loss_aux"] > 0
    model = load_model_dir(tmp_path / "run" / "model")
    assert model.target("energy").aux_scale == 0.8771552443504333
    view = PreparedDataset(tmp_path / "cache" / "prepared" / "oc20-is2re").split("val")
    batch = attach_graph(view.collate(np.arange(2), [keys.Y_RELAXED], torch.float32), model.r_max, 500)
    out = model(
        batch[keys.POSITIONS],
        batch[keys.SPECIES],
        batch[keys.EDGE_INDEX],
        batch[keys.BATCH],
        batch[keys.EDGE_SHIFT],
        batch[keys.TAGS],
    )
    assert out[keys.AUX_DISPLACEMENT].shape == batch[keys.POSITIONS].shape
    assert float((out["energy"].detach() - batch[keys.Y_RELAXED]).abs().mean()) == pytest.approx(
        result.metrics["val"]["energy_mae"], rel=1e-4
    )


# --- resume, DDP, errors ----------------------------------------------------------------------------------


def _qm9_cli_sets(cache: Path, **model_changes) -> list[str]:
    sets = [f"data.cache_dir={cache}", "data.train_limit=32", "data.val_limit=8", "data.test_limit=8", "optim.batch_size=8",
            "optim.max_epochs=2", *model_sets(MICRO_L2, **model_changes), *QUICK]  # fmt: skip
    return [arg for s in sets for arg in ("--set", s)]


def test_killed_run_resumes_bitwise(qm9_cache, tmp_path):
    """A run SIGKILLed after its step-2 checkpoint (mid-epoch, dropout on) and resumed reproduces the weights,
    optimizer state and metrics of an uninterrupted run at step 4 = 2k and at the end, bit for bit on CPU."""
    args = [
        "train",
        "qm9/gap",
        *_qm9_cli_sets(qm9_cache),
        "--set",
        "checkpoint.every_steps=2",
        "--set",
        "checkpoint.keep=10",
    ]
    env = _subprocess_env()
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(
        _equizoo(*args, "--out", str(whole)), env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    proc = subprocess.Popen(
        _equizoo(*args, "--out", str(killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = killed / "checkpoints" / "step_000000002" / "state.json"
    deadline = time.time() + 600
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert left and left[-1] < "step_000000008", left  # killed before the end
    assert not (killed / "model").exists()
    resumed = subprocess.run(
        _equizoo("train", "--resume", str(killed)), env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming at step" in resumed.stdout
    for step in ("step_000000004", "step_000000008"):
        for name in ("model.safetensors", "optimizer.pt"):
            assert (whole / "checkpoints" / step / name).read_bytes() == (
                killed / "checkpoints" / step / name
            ).read_bytes(), (step, name)
    rows = [json.loads((d / "summary.json").read_text()) for d in (whole, killed)]
    assert rows[0]["val"] == rows[1]["val"] and rows[0]["test"] == rows[1]["test"]
    csv = [(d / "metrics.csv").read_text().splitlines() for d in (whole, killed)]
    strip = [[",".join(line.split(",")[:-1]) for line in lines] for lines in csv]  # all columns but the seconds
    assert strip[0] == strip[1] and len(strip[0]) == 3
    state = torch.load(killed / "checkpoints" / "step_000000008" / "optimizer.pt", weights_only=True)
    assert int(state["state"][1]["step"]) == 8


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="torch without gloo"
)
def test_ddp_two_processes_match_one(qm9_cache, tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch of 8 trains the same model as 1 process."""
    args = ["train", "qm9/gap", *_qm9_cli_sets(qm9_cache, alpha_drop=0.0), "--set", "schedule.warmup_epochs=0"]
    env = _subprocess_env()
    one = subprocess.run(
        _equizoo(*args, "--out", str(tmp_path / "one")),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert one.returncode == 0, one.stdout + one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "zoo.cli"]
    two = subprocess.run(
        [*torchrun, *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "2 process(es) on cpu" in two.stdout
    history = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    for split in ("val", "test"):
        assert history[1][split]["mae"] == pytest.approx(history[0][split]["mae"], rel=1e-5)
    lines = [(tmp_path / d / "metrics.csv").read_text().splitlines() for d in ("one", "two")]
    for a, b in zip(lines[0][1:], lines[1][1:]):
        values = [[float(v) for v in line.split(",")[:-2]] for line in (a, b)]
        np.testing.assert_allclose(values[1], values[0], rtol=1e-5)
    w1, w2 = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("one", "two"))
    assert w1.keys() == w2.keys()
    for k in w1:
        # float32 sums in another order; AdamW turns rounding-level differences of near-zero gradients into
        # parameter differences of up to a fraction of one step (lr 5e-4)
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=5e-4, msg=k)
    close = sum(bool(torch.allclose(w1[k], w2[k], rtol=0, atol=1e-6)) for k in w1)
    assert close >= 0.9 * len(w1)


def test_run_folder_and_data_errors(qm9_cache, tmp_path):
    recipe = load_recipe("qm9/gap", [f"data.cache_dir={qm9_cache}", *QUICK])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "recipe.yaml").write_text(dump_recipe(recipe))
    with pytest.raises(TrainError, match="already holds a training run; continue it with --resume"):
        train(recipe, out=busy, console=quiet())
    ckpt = busy / "checkpoints" / "step_000000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    changed = load_recipe("qm9/gap", [f"data.cache_dir={qm9_cache}", *QUICK, "optim.lr=1.0e-3"])
    with pytest.raises(TrainError, match=r"differs from the run's .* at optim.lr \(0.0005 -> 0.001\)"):
        train(changed, resume=busy, console=quiet())
    with pytest.raises(TrainError, match="holds no checkpoint"):
        train(None, resume=tmp_path / "nothing", console=quiet())
    missing = load_recipe("md17/l2/benzene", [f"data.cache_dir={tmp_path / 'empty'}", "data.download=false", *QUICK])
    with pytest.raises(
        TrainError, match=r"data.dataset=md17-benzene: .*no source given.*equizoo data prepare md17-benzene"
    ):
        train(missing, out=tmp_path / "md17", console=quiet())
    wrong = load_recipe("qm9/gap", [f"data.cache_dir={qm9_cache}", "data.val_split=valid", *QUICK])
    with pytest.raises(
        TrainError, match=r"no split 'valid' \(data.val_split\); its splits are \['train', 'val', 'test'\]"
    ):
        train(wrong, out=tmp_path / "wrong", console=quiet())
