"""The training loop: one recipe, one run folder, one model directory at the end.

Run folder (``--out``)::

    recipe.yaml           the resolved recipe (every knob)
    metrics.csv           one row per evaluation: epoch, step, lr, train loss/MAE, val and test MAE
    learning_curve.png    the same as plots
    checkpoints/step_N/   resumable state (zoo.train.checkpoint), the newest ``checkpoint.keep``
    best/step_N.safetensors  weights of the best validation score so far
    model/                the trained model directory (zoo.artifact): ZooModel + normalisation + metadata

Launch with ``equizoo train RECIPE`` on one device, or ``torchrun --nproc_per_node=G -m zoo.cli train RECIPE``
for DDP (NCCL on GPUs, gloo on CPU); ``optim.batch_size`` is the global batch in both cases.

With ``budget.wall_time`` (``--budget 9m``) the run fits a wall-clock budget (zoo.train.budget): rank 0 times
the steps and decides the step count, which every process follows. A first SIGTERM or SIGINT ends any run
after the step in flight: a checkpoint to resume from and the model directory of that step (not evaluated
again), and the command exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zoo import keys
from zoo._version import __version__
from zoo.train import checkpoint as ckpt
from zoo.train.budget import GROW, Budget, CompressedSchedule, StopSignals, describe_seconds, warmup_fraction
from zoo.train.data import (
    BatchPlan,
    DeviceSplit,
    EvalBatches,
    TaskData,
    TrainBatches,
    device_data_choice,
    loader,
    mix_seed,
    open_data,
)
from zoo.train.dist import DistEnv, setup
from zoo.train.errors import RecipeError, TrainError
from zoo.train.objective import Objective, add_sums, reduce_sums
from zoo.train.optim import build_optimizer
from zoo.train.recipe import build_network, dump_recipe, model_config, resolve_recipe
from zoo.train.report import plot_curves, write_csv
from zoo.train.schedule import LRSchedule

RUN_RECIPE = "recipe.yaml"
METRICS_CSV = "metrics.csv"
CURVE_PNG = "learning_curve.png"
MODEL_DIR = "model"
BEST_DIR = "best"
SUMMARY = "summary.json"
STATE_FORMAT = "equizoo-train/1"
PLOT_EVERY_S = 60.0  # redraw the learning curve at most this often during training (and always at the end)
SYNC_EVERY = 10  # DDP: processes agree on signals and budget re-plans every this many steps (one small all-reduce)
RESUME_SAFE = ("description", "device", "data.num_workers", "data.on_device", "data.cache_dir", "data.source", "data.download", "optim.max_steps",
               "budget.wall_time", "budget.margin", "checkpoint.every_steps", "checkpoint.keep", "log.every_steps", "log.progress", "log.plot")  # fmt: skip


@dataclasses.dataclass
class TrainResult:
    """What a run produced (``model_dir`` is None on processes other than rank 0; ``stopped`` names the signal
    that ended it early)."""

    run_dir: Path
    model_dir: Path | None
    metrics: dict
    history: list
    stopped: str | None = None
    signal_number: int = 0


class EMA:
    """Exponential moving average of the floating-point state (parameters and buffers), evaluated and saved in
    place of the raw weights. The decay warms up as min(decay, (1 + k) / (10 + k)) after k updates, so the
    random initial weights are forgotten within the first steps instead of weighing decay**steps at the end."""

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, net: torch.nn.Module, updates: int) -> None:
        """Blend in the weights after the optimizer step that follows ``updates`` earlier ones."""
        state = net.state_dict()
        weight = 1.0 - self.decay_at(updates)
        for k, v in self.shadow.items():
            v.lerp_(state[k], weight)

    def load(self, weights: Mapping[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(weights))
        if missing:
            raise TrainError(f"the checkpoint's EMA weights lack {missing[:3]}; it was written by another model")
        for k, v in self.shadow.items():
            v.copy_(weights[k])

    @contextlib.contextmanager
    def applied(self, net: torch.nn.Module):
        state = net.state_dict()
        backup = {k: state[k].detach().clone() for k in self.shadow}
        with torch.no_grad():
            for k, v in self.shadow.items():
                state[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in backup.items():
                    state[k].copy_(v)


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and not (prefix + k).startswith("model.overrides"):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _run_recipe(run_dir: Path) -> dict:
    path = run_dir / RUN_RECIPE
    if not path.is_file():
        raise TrainError(
            f"{run_dir} is not a training run folder ({RUN_RECIPE} is missing); give the --out folder of a run to --resume"
        )
    try:
        return resolve_recipe(yaml.safe_load(path.read_text()) or {}, str(path))
    except yaml.YAMLError as exc:
        raise TrainError(f"{path} is not valid YAML ({exc}); the run folder is damaged") from exc


def resume_recipe(resume: str | Path, overrides: list[str]) -> dict:
    """The recipe of the run being resumed with ``--set`` overrides applied (only RESUME_SAFE keys may change)."""
    from zoo.train.recipe import load_recipe

    return load_recipe(ckpt.latest_checkpoint(resume).parent.parent / RUN_RECIPE, overrides)


def prepare_run(
    recipe: Mapping | None, out: str | Path | None, resume: str | Path | None
) -> tuple[dict, Path, Path | None]:
    """Decide the run folder and the recipe; for ``resume``, the checkpoint to continue from. Writes nothing."""
    if resume is not None:
        resume = Path(resume)
        checkpoint = ckpt.latest_checkpoint(resume)
        run_dir = checkpoint.parent.parent
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise TrainError(
                f"--out {out} differs from the resumed run {run_dir}; a resumed run continues in its own folder"
            )
        saved = _run_recipe(run_dir)
        if recipe is None:
            return saved, run_dir, checkpoint
        new, old = _flat(recipe), _flat(saved)
        changed = [k for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k) and k not in RESUME_SAFE]
        if changed:
            k = changed[0]
            raise TrainError(f"the recipe differs from the run's {run_dir / RUN_RECIPE} at {k} ({old.get(k)!r} -> {new.get(k)!r}); "
                             f"a resumed run may only change {', '.join(RESUME_SAFE)}")  # fmt: skip
        return dict(recipe), run_dir, checkpoint
    if recipe is None:
        raise TrainError("give a recipe to train, or --resume RUN_DIR to continue a run")
    if out is None:
        config = model_config(recipe)
        name = "-".join(x for x in (config.name, recipe["data"]["target"] or recipe["task"]) if x)
        out = Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(out)
    if (run_dir / RUN_RECIPE).exists() or ckpt.checkpoint_dirs(run_dir):
        raise TrainError(
            f"{run_dir} already holds a training run; continue it with --resume {run_dir} or choose another --out"
        )
    return dict(recipe), run_dir, None


def train(recipe: Mapping | None = None, out: str | Path | None = None, resume: str | Path | None = None,
          console: Any = None, origin: float | None = None) -> TrainResult:  # fmt: skip
    """Train a resolved recipe (zoo.train.load_recipe) into ``out``, or continue the run ``resume``.

    ``origin``: the ``time.perf_counter()`` value a wall-clock budget counts from (default: now)."""
    origin = time.perf_counter() if origin is None else origin
    if recipe is None and resume is not None:
        device = _run_recipe(ckpt.latest_checkpoint(resume).parent.parent)["device"]
    else:
        device = recipe["device"] if recipe is not None else "auto"
    env = setup(device)
    try:
        if env.world > 1:
            payload: list = [None]
            if env.main:
                try:
                    payload = [prepare_run(recipe, out, resume)]
                except (TrainError, RecipeError) as exc:
                    payload = [exc]
            torch.distributed.broadcast_object_list(payload, src=0)
            if isinstance(payload[0], Exception):
                raise payload[0]
            run_recipe, run_dir, checkpoint = payload[0]
        else:
            run_recipe, run_dir, checkpoint = prepare_run(recipe, out, resume)
        return _Run(run_recipe, run_dir, checkpoint, env, console, origin).fit()
    finally:
        env.close()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what platform knows), for the hardware record."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """TF32 for CUDA float32 matrix products and convolutions while inside (restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _Run:
    def __init__(
        self, recipe: dict, run_dir: Path, checkpoint: Path | None, env: DistEnv, console: Any, origin: float
    ) -> None:
        from rich.console import Console

        self.r, self.run_dir, self.checkpoint, self.env, self.origin = recipe, run_dir, checkpoint, env, origin
        self.console = console if console is not None else Console()
        self.budget: Budget | None = None
        self.device_data: dict[str, DeviceSplit] | None = None

    # --- setup ------------------------------------------------------------------------------------
    def _build(self) -> None:
        r, env = self.r, self.env
        torch.manual_seed(r["seed"])
        self.config = model_config(r)
        self.dtype = getattr(torch, r["model"]["dtype"])
        net = build_network(r)
        self.net = net.to(device=env.device, dtype=self.dtype)
        self.data: TaskData = open_data(r, env, aux=self.config.aux_head)
        o, d = r["optim"], r["data"]
        self.plan = BatchPlan(
            len(self.data.train), o["batch_size"], env.world, env.rank, r["seed"], d["shuffle"], d["drop_last"]
        )
        self.spe = self.plan.steps_per_epoch
        self.total_steps = self.spe * o["max_epochs"]
        self.stop = min(self.total_steps, o["max_steps"] or self.total_steps)
        self.base_schedule = LRSchedule.from_recipe(r, self.spe)
        self.schedule: Any = self.base_schedule
        on_device, self.data_path = device_data_choice(r, self.data, self.config.periodic, env.device, self.dtype)
        if on_device:
            args = (self.data.targets, self.dtype, self.config.r_max, self.config.max_neighbors, env.device)
            self.device_data = {
                name: DeviceSplit(view, *args)
                for name, view in (("train", self.data.train), ("val", self.data.val), ("test", self.data.test))
                if view is not None
            }
        self.optimizer = build_optimizer(self.net, o)
        self.objective = Objective(
            r, self.data.target, self.data.mean, self.data.std, self.net.output_key, self.total_steps, env
        )
        self.ema = EMA(self.net, o["ema_decay"]) if o["ema_decay"] else None
        self.eval_bs = o["eval_batch_size"] or o["batch_size"]
        self.units = {m: self._unit(m) for m in self.objective.metric_names}
        self.state = {"format": STATE_FORMAT, "step": 0, "steps_per_epoch": self.spe, "best": {"score": math.inf, "step": None},
                      "history": [], "accum": None, "wall_s": 0.0, "budget": None}  # fmt: skip
        if self.checkpoint is not None:
            state, ema = ckpt.load_checkpoint(self.checkpoint, self.net, self.optimizer, env.device)
            if state.get("format") != STATE_FORMAT:
                raise TrainError(f"{self.checkpoint} was written by another trainer version ({state.get('format')!r})")
            if state["steps_per_epoch"] != self.spe:
                raise TrainError(f"{self.checkpoint} has {state['steps_per_epoch']} steps per epoch but the data now gives {self.spe}; "
                                 "the dataset or batch size changed since the run started")  # fmt: skip
            if self.ema is not None:
                if ema is None:
                    raise TrainError(f"{self.checkpoint} has no EMA weights but optim.ema_decay is set")
                self.ema.load(ema)
            state.setdefault("budget", None)
            self.state = state
        self.model = self.net
        if env.world > 1:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    def _unit(self, metric: str) -> str:
        if metric == "force_mae":
            return self.data.dataset.units.get(keys.FORCES, "")
        return self.data.unit

    # --- evaluation -------------------------------------------------------------------------------
    def _forward(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict:
        c = self.config
        return model(batch[keys.POSITIONS], batch[keys.SPECIES], batch[keys.EDGE_INDEX], batch[keys.BATCH],
                     batch[keys.EDGE_SHIFT] if c.periodic else None, batch[keys.TAGS] if c.num_tags > 0 else None,
                     int(batch[keys.NUM_ATOMS].shape[0]))  # fmt: skip

    def _autocast(self):
        return torch.autocast(device_type=self.env.device.type, dtype=torch.bfloat16, enabled=self.r["optim"]["amp"])

    def _precision(self) -> str:
        """What the arithmetic of this run is, said at the start (never silently lower than model.dtype)."""
        o, cuda = self.r["optim"], self.env.device.type == "cuda"
        parts = [self.r["model"]["dtype"]]
        if o["tf32"]:
            parts.append(
                "TF32 matrix products" if cuda else "TF32 asked for but has no effect on " + self.env.device.type
            )
        if o["amp"]:
            parts.append("bf16 autocast (forward and loss)")
        return ", ".join(parts)

    def _eval_batches(self, split: str, limit: int | None):
        view = getattr(self.data, split)
        if self.device_data is not None:
            n = len(view) if limit is None else min(limit, len(view))
            ids = np.array_split(np.arange(n), self.env.world)[self.env.rank]
            for i in range(0, len(ids), self.eval_bs):
                yield self.device_data[split].batch(ids[i : i + self.eval_bs])
            return
        batches = EvalBatches(
            view,
            self.eval_bs,
            self.env,
            self.data.targets,
            self.dtype,
            self.config.r_max,
            self.config.max_neighbors,
            limit,
        )
        for batch in loader(batches, self.r["data"]["num_workers"], self.env.device.type == "cuda"):
            yield _to(batch, self.env.device)

    def _train_batches(self, epoch: int, first: int, noisy: Mapping | None):
        if self.device_data is not None:
            order, split = self.plan.order(epoch), self.device_data["train"]
            for i in range(first, self.spe):
                yield split.batch(self.plan.local(self.plan.global_batch(order, i)))
            return
        r = self.r
        batches = TrainBatches(self.data.train, self.plan, epoch, first, self.data.targets, self.dtype, self.config.r_max,
                               self.config.max_neighbors, noisy, r["seed"])  # fmt: skip
        for batch in loader(batches, r["data"]["num_workers"], self.env.device.type == "cuda"):
            yield _to(batch, self.env.device)

    def _evaluate(self, split: str, limit: int | None = None) -> dict:
        sums: dict = {}
        self.net.eval()
        for batch in self._eval_batches(split, limit):
            with torch.set_grad_enabled(self.config.forces), self._autocast():
                out = self._forward(self.net, batch)
            sums = add_sums(sums, self.objective.metric_sums(out, batch))
        if not sums:
            sums = {m: torch.zeros(2, dtype=torch.float64, device=self.env.device) for m in self.objective.metric_names}
        return reduce_sums(sums, self.env)

    def _weights_in_use(self):
        return self.ema.applied(self.net) if self.ema is not None else contextlib.nullcontext()

    # --- bookkeeping ------------------------------------------------------------------------------
    def _accum_to_json(self, acc: dict | None) -> dict | None:
        if acc is None:
            return None
        return {"steps": acc["steps"], "loss": {k: v.item() for k, v in acc["loss"].items()},
                "metrics": {k: v.tolist() for k, v in acc["metrics"].items()}}  # fmt: skip

    def _accum_from_json(self, data: dict | None) -> dict | None:
        if data is None:
            return None
        dev = self.env.device
        return {"steps": data["steps"], "loss": {k: torch.tensor(v, dtype=torch.float64, device=dev) for k, v in data["loss"].items()},
                "metrics": {k: torch.tensor(v, dtype=torch.float64, device=dev) for k, v in data["metrics"].items()}}  # fmt: skip

    def _train_means(self, acc: dict | None) -> dict:
        if acc is None:
            return {}
        names = [n for n in self.objective.loss_names if n in acc["loss"]]
        steps = self.env.sum(torch.tensor([float(acc["steps"])], dtype=torch.float64, device=self.env.device))
        losses = self.env.sum(torch.stack([acc["loss"][n] for n in names])) / steps
        out = {f"train_{n}": v for n, v in zip(names, losses.cpu().tolist())}
        out.update({f"train_{k}": v for k, v in reduce_sums(acc["metrics"], self.env).items()})
        return out

    def _best_path(self, step: int) -> Path:
        return self.run_dir / BEST_DIR / f"step_{step:09d}.safetensors"

    def _prune_best(self) -> None:
        keep = {self.state["best"]["step"]}
        for folder in ckpt.checkpoint_dirs(self.run_dir):
            keep.add(json.loads((folder / "state.json").read_text())["best"]["step"])
        folder = self.run_dir / BEST_DIR
        for path in folder.glob("*step_*.safetensors*") if folder.is_dir() else []:
            if path.name.startswith(".") or int(path.stem[len("step_") :]) not in keep:
                path.unlink()

    def _save_checkpoint(self, acc: dict | None) -> None:
        self.state["accum"] = self._accum_to_json(acc)
        self.state["wall_s"] = self.wall0 + time.perf_counter() - self.session_start
        if self.env.main:
            ckpt.save_checkpoint(self.run_dir, self.state["step"], self.net, self.optimizer, self.ema.shadow if self.ema else None,
                                 self.state, self.r["checkpoint"]["keep"])  # fmt: skip
            self._prune_best()
        self.env.barrier()

    def _record(self, row: dict) -> None:
        self.state["history"].append(row)
        if not self.env.main:
            return
        write_csv(self.state["history"], self.run_dir / METRICS_CSV)
        if time.perf_counter() - self.last_plot > PLOT_EVERY_S:
            self._plot()

    def _plot(self) -> None:
        if self.r["log"]["plot"] and self.env.main and self.state["history"]:
            plot_curves(self.state["history"], self.run_dir / CURVE_PNG, self._title(), self.units)
        self.last_plot = time.perf_counter()

    def _title(self) -> str:
        return f"{self.config.name} on {self.data.dataset.name} ({self.data.target}), {self.run_dir.name}"

    def _evaluation_row(self, step: int, acc: dict | None, test: bool) -> dict:
        epoch_float = step / self.spe
        row: dict = {"epoch": round(epoch_float, 6), "step": step, "lr": self.schedule(step - 1)}
        row.update(self._train_means(acc))
        with self._weights_in_use():
            started = time.perf_counter()
            val = self._evaluate("val")
            self.val_eval_s = time.perf_counter() - started
            tests = {}
            if test and self.data.test is not None:
                limit = self.r["eval"]["test_max_batches"]
                tests = self._evaluate("test", limit * self.eval_bs if limit else None)
            score = self.objective.score(val)
            improved = score < self.state["best"]["score"]
            if improved:
                self.state["best"] = {
                    "score": score,
                    "step": step,
                    "epoch": round(epoch_float, 6),
                    "val": val,
                    "test": tests,
                }
                if self.env.main:
                    ckpt.save_weights(self._best_path(step), self.net.state_dict(), {"step": step, "score": score})
                self.env.barrier()
        row.update({f"val_{k}": v for k, v in val.items()})
        row["val_score"] = score
        row.update({f"test_{k}": v for k, v in tests.items()})
        row["best"] = improved
        row["seconds"] = round(time.perf_counter() - self.row_start, 3)
        self.row_start = time.perf_counter()
        self._record(row)
        self._print_row(row)
        return row

    def _print_row(self, row: dict) -> None:
        if not self.env.main:
            return
        parts = [f"epoch {row['epoch']:.2f}", f"step {row['step']}", f"lr {row['lr']:.3g}"]
        if "train_loss" in row:
            parts.append(f"loss {row['train_loss']:.4g}")
        for split in ("train", "val", "test"):
            vals = [f"{m} {row[f'{split}_{m}']:.4g}" for m in self.objective.metric_names if f"{split}_{m}" in row]
            if vals:
                parts.append(f"{split} " + " ".join(vals))
        self.console.print(" | ".join(parts) + (" [green]best[/green]" if row["best"] else ""))

    def _progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        enabled = self.env.main and self.r["log"]["progress"]
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, disable=not enabled)  # fmt: skip

    # --- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        with tf32_matmuls(self.r["optim"]["tf32"]):
            return self._fit()

    def _fit(self) -> TrainResult:
        self._build()
        r, env = self.r, self.env
        o = r["optim"]
        if env.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.checkpoint is None:
                ckpt.atomic_write_text(self.run_dir / RUN_RECIPE, dump_recipe(r))
            elif self.state["history"]:
                write_csv(self.state["history"], self.run_dir / METRICS_CSV)
            self._announce()
        env.barrier()
        self.session_start = self.row_start = self.last_plot = time.perf_counter()
        self.wall0 = self.state["wall_s"]
        step = self.first_step = self.state["step"]
        self._setup_budget(step)
        acc = self._accum_from_json(self.state["accum"])
        noisy = r["noisy_nodes"] if r["noisy_nodes"]["enabled"] else None
        stopped, saved_at = None, None
        with self._progress() as progress, StopSignals() as signals:
            self.signals, self.progress = signals, progress
            self.task = progress.add_task(
                f"epoch {step // self.spe + 1}/{o['max_epochs']}", total=self.stop, completed=step, info=""
            )
            epoch = step // self.spe
            while step < self.stop and epoch < o["max_epochs"] and stopped is None:
                progress.update(self.task, description=f"epoch {epoch + 1}/{o['max_epochs']}")
                for batch in self._train_batches(epoch, step - epoch * self.spe, noisy):
                    acc = self._step(batch, step, acc)
                    step += 1
                    self.state["step"] = step
                    end_of_epoch = step % self.spe == 0
                    if step % r["log"]["every_steps"] == 0 or end_of_epoch or step == self.stop:
                        value = float(self.last_parts["loss"])
                        if not math.isfinite(value):
                            raise TrainError(
                                f"the loss became {value} at step {step}; lower optim.lr or enable optim.clip_grad_norm"
                            )
                        progress.update(self.task, completed=step, info=f"loss {value:.4g} lr {self.last_lr:.3g}")
                    busy = time.perf_counter()
                    due, test = self._evaluation_due(step, epoch, end_of_epoch)
                    if due:
                        self._evaluation_row(step, acc, test)
                        acc = None
                        if (
                            self.budget is not None and self.budget.measured
                        ):  # the evaluation costs under the load of now
                            self._evaluation_costs(time.perf_counter() - busy)
                    if step % r["checkpoint"]["every_steps"] == 0 or step == self.stop:
                        self._save_checkpoint(acc)
                        saved_at = step
                    measured = self._measure_due(step)
                    if measured:
                        self._measure(step, acc, busy)
                        acc, saved_at = None, step
                    elif self.budget is not None:
                        self.budget.exclude(time.perf_counter() - busy)
                        if step - self.first_step == self.skip_steps:
                            self.budget.sample(step, time.perf_counter())
                    stopped = self._control(step, measured)
                    if stopped is not None or step >= self.stop:
                        break
                epoch += 1
            if saved_at != step:
                self._save_checkpoint(acc)
        return self._finish(stopped)

    def _step(self, batch: dict, step: int, acc: dict | None) -> dict:
        """One optimizer step on ``batch`` at the schedule's learning rate of ``step``; returns the running sums."""
        r, o = self.r, self.r["optim"]
        lr = self.last_lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(mix_seed(r["seed"], step, self.env.rank, 1))
        self.model.train()
        with self._autocast():
            out = self._forward(self.model, batch)
            loss, parts = self.objective.loss(out, batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o["clip_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), o["clip_grad_norm"])
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.net, step)
        acc = acc or {"steps": 0, "loss": {}, "metrics": {}}
        acc["steps"] += 1
        acc["loss"] = add_sums(acc["loss"], {k: v.double() for k, v in parts.items()})
        acc["metrics"] = add_sums(acc["metrics"], self.objective.metric_sums(out, batch))
        self.last_parts = parts
        return acc

    def _evaluation_due(self, step: int, epoch: int, end_of_epoch: bool) -> tuple[bool, bool]:
        """(validate now, test too): by epochs and steps as the recipe says, or, under a budget, budget.evals
        validations spread over the planned steps and the test only at the end."""
        ev = self.r["eval"]
        if self.budget is not None:
            done = self.state["budget"]["evals_done"]
            if step == self.stop:
                return True, False
            if done < self.budget.evals - 1 and step >= math.ceil(self.stop * (done + 1) / self.budget.evals):
                self.state["budget"]["evals_done"] = done + 1
                return True, False
            return False, False
        epoch_eval = end_of_epoch and (epoch + 1) % ev["every_epochs"] == 0
        step_eval = ev["every_steps"] is not None and step % ev["every_steps"] == 0
        test = end_of_epoch and ev["test_every_epochs"] > 0 and (epoch + 1) % ev["test_every_epochs"] == 0
        return epoch_eval or step_eval or step == self.stop, test

    # --- the budget -------------------------------------------------------------------------------
    def _setup_budget(self, step: int) -> None:
        r, saved = self.r, self.state["budget"]
        seconds = r["budget"]["wall_time"]
        if seconds is None:
            if saved is not None:
                raise TrainError(
                    f"{self.checkpoint} is a budgeted run; resume it with a budget (--budget, or budget.wall_time)"
                )
            return
        if saved is None and step > 0:
            raise TrainError(
                f"{self.checkpoint} was started without a budget; resume it without --budget (its schedule is by epochs)"
            )
        cap = self.stop
        if saved is None:
            saved = self.state["budget"] = {
                "wall_time": seconds,
                "total": cap,
                "anchor": [0, 0.0],
                "evals_done": 0,
                "step_time": None,
            }
        b = r["budget"]
        left = seconds - self.state["wall_s"]
        plot_every = PLOT_EVERY_S if r["log"]["plot"] else None
        self.budget = Budget(
            left,
            self.origin,
            b["margin"],
            b["evals"],
            b["measure_steps"],
            cap,
            r["checkpoint"]["every_steps"],
            plot_every,
        )
        self.budget.margin = max(2.0, b["margin"] * seconds)
        self.skip_steps = min(2, b["measure_steps"] - 1)
        if self.skip_steps == 0:
            self.budget.sample(step, time.perf_counter())
        self.schedule = CompressedSchedule(
            self.base_schedule, warmup_fraction(r), saved["total"], tuple(saved["anchor"])
        )
        self.stop = min(saved["total"], cap)
        self.objective.total_steps = self.stop
        if self.env.main:
            spent = f", {describe_seconds(self.state['wall_s'])} of it spent" if self.state["wall_s"] else ""
            self.console.print(f"budget {describe_seconds(seconds)}{spent}: timing {b['measure_steps']} steps, then planning the "
                               f"step count (at most {cap}); warm-up {warmup_fraction(r):.1%} of the steps, cosine to "
                               f"{self.base_schedule.floor:.3g} at the last")  # fmt: skip
        if left <= 0:
            self._apply_plan(step, step)

    def _measure_due(self, step: int) -> bool:
        return (
            self.budget is not None
            and not self.budget.measured
            and step - self.first_step >= self.budget.measure_steps
            and step < self.stop
        )

    def _sync_device(self) -> None:
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)

    def _measure(self, step: int, acc: dict | None, t0: float) -> None:
        """Time the steps so far, one validation, one checkpoint and one plot: the costs the plan needs."""
        b = self.budget
        self._sync_device()
        t1 = time.perf_counter()
        b.costs.step = b.step_time(step, t0) or (t1 - self.session_start) / max(step - self.first_step, 1)
        self._evaluation_row(step, acc, test=False)
        self._sync_device()
        t2 = time.perf_counter()
        self._save_checkpoint(None)
        t3 = time.perf_counter()
        if self.r["log"]["plot"] and self.env.main:
            self._plot()
        t4 = time.perf_counter()
        c = b.costs
        c.checkpoint, c.plot = t3 - t2, t4 - t3
        self._evaluation_costs(t2 - t1)
        b.measured = True
        b.exclude(t4 - t0)

    def _evaluation_costs(self, row_s: float) -> None:
        """A validation row's seconds, and the final test evaluation's as the validation's scaled by batches;
        later measurements are averaged in with weight 1/2 (the test estimate multiplies the noise)."""
        b = self.budget
        c, first = b.costs, not b.measured
        evaluation = self.val_eval_s
        if not first:
            row_s, evaluation = 0.5 * (row_s + c.val), 0.5 * (evaluation + self.val_eval_avg)
        c.val, self.val_eval_avg = row_s, evaluation
        if self.data.test is not None:
            c.test = (
                evaluation * -(-len(self.data.test) // self.eval_bs) / max(1, -(-len(self.data.val) // self.eval_bs))
            )

    def _control(self, step: int, measured: bool) -> str | None:
        """After each step: budget re-plans and whether to stop now (a signal, or the deadline is near).
        Rank 0 decides; under DDP every process follows at the same step."""
        env, b = self.env, self.budget
        if env.world > 1 and not measured and step % SYNC_EVERY and self.stop - step > 2 * SYNC_EVERY:
            return None  # processes agree every SYNC_EVERY steps, and at every one of the last steps
        flags = [1.0 if self.signals.received else 0.0, 0.0, 0.0]
        if b is not None and b.measured and env.main:
            now = time.perf_counter()
            evals_left = max(0, b.evals - 1 - self.state["budget"]["evals_done"])
            if measured or b.due(now) or b.behind(now, step, self.stop, evals_left):
                self._sync_device()
                now = time.perf_counter()
                flags[2] = float(self._replan(step, now, measured))
            flags[1] = 1.0 if b.expired(now) and step < (flags[2] or self.stop) else 0.0
        if env.world > 1:
            shared = torch.tensor(flags, dtype=torch.float64, device=env.device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            flags = shared.tolist()
        if flags[2] and int(flags[2]) != self.stop:
            self._apply_plan(step, int(flags[2]))
        if flags[0]:
            return self.signals.received or "a signal to another process"
        if flags[1]:
            if env.main:
                self.console.print(
                    f"[yellow]budget: the deadline is near at step {step} of {self.stop}; ending the run now[/yellow]"
                )
            return "budget"
        return None

    def _replan(self, step: int, now: float, first: bool) -> int:
        """The step count to follow from now (0: keep the current one)."""
        b = self.budget
        measured = b.step_time(step, now)
        if measured is not None and not first:
            b.costs.step = measured
        b.sample(step, now)
        b.last_check = now
        evals_left = max(0, b.evals - 1 - self.state["budget"]["evals_done"])
        total = max(b.steps_that_fit(step, now, evals_left), step)
        if first and self.env.main:
            c = b.costs
            self.console.print(f"budget: {c.step:.3g} s/step; validation {c.val:.3g} s, test ~{c.test:.3g} s, checkpoint {c.checkpoint:.3g} s "
                               f"-> {total} steps ({total / self.spe:.3g} epochs), {describe_seconds(max(b.left(now), 0))} left")  # fmt: skip
            if total <= step:
                self.console.print(f"[yellow]budget: {describe_seconds(b.seconds)} holds no more training: the final evaluation alone "
                                   f"takes ~{c.end:.3g} s; the run ends now (raise the budget or set data.test_limit)[/yellow]")  # fmt: skip
        if first or total < self.stop or total > GROW * self.stop:
            if not first and self.env.main and abs(total - self.stop) > 0.05 * self.stop:
                self.console.print(
                    f"budget: step time now {b.costs.step:.3g} s; re-planned to {total} steps (was {self.stop})"
                )
            return total
        return 0

    def _apply_plan(self, step: int, total: int) -> None:
        self.schedule.replan(step, total)
        self.stop = total
        self.objective.total_steps = max(total, 1)
        self.state["budget"].update(self.schedule.to_state())
        self.state["budget"]["step_time"] = self.budget.costs.step
        if getattr(self, "progress", None) is not None:
            self.progress.update(self.task, total=total)

    def _announce(self) -> None:
        c, d = self.config, self.data
        resumed = f", resuming at step {self.state['step']}" if self.checkpoint is not None else ""
        self.console.print(
            f"training [bold]{c.name}[/bold] ({sum(p.numel() for p in self.net.parameters()):,} parameters) on {d.dataset.name}/{d.target} "
            f"[{d.unit}]: {len(d.train)} train, {len(d.val)} val, {len(d.test) if d.test is not None else 0} test; "
            f"{self.spe} steps/epoch x {self.r['optim']['max_epochs']} epochs (stop at step {self.stop}), "
            f"{self.env.world} process(es) on {self.env.device}{resumed}; run folder {self.run_dir}"
        )
        self.console.print(f"precision: {self._precision()}; data: {self.data_path}")

    # --- the end ----------------------------------------------------------------------------------
    def _finish(self, stopped: str | None = None) -> TrainResult:
        """Evaluate the final weights (validation reused where the last row measured the same weights) and
        write the model directory; after a signal, write it at once without evaluating."""
        r, env = self.r, self.env
        best = self.state["best"]
        choice = r["eval"]["final_weights"]
        signalled = stopped is not None and stopped != "budget"
        names = self.objective.metric_names
        if choice == "best_val" and best["step"] is not None:
            self.net.load_state_dict(ckpt.load_weights(self._best_path(best["step"]), env.device))
            weights_step = best["step"]
            use = contextlib.nullcontext()
            known_val = best["val"]
        else:
            weights_step = self.state["step"]
            use = self._weights_in_use()
            last = self.state["history"][-1] if self.state["history"] else None
            known_val = (
                {m: last[f"val_{m}"] for m in names} if last is not None and last["step"] == weights_step else None
            )
        with use:
            if signalled:
                final_val, final_test = known_val or {}, {}
            else:
                final_val = known_val if known_val is not None else self._evaluate("val")
                final_test = self._evaluate("test") if self.data.test is not None else {}
            model_dir = self._save_model(weights_step, final_val, final_test, stopped) if env.main else None
        self._plot()
        env.barrier()
        metrics = self._metrics(weights_step, final_val, final_test, stopped)
        if env.main:
            ckpt.atomic_write_text(self.run_dir / SUMMARY, json.dumps(metrics, indent=2) + "\n")
        number = self.signals.number if signalled else 0
        return TrainResult(
            self.run_dir, model_dir, metrics, self.state["history"], stopped if signalled else None, number
        )

    def _metrics(self, weights_step: int, val: dict, test: dict, stopped: str | None = None) -> dict:
        best = self.state["best"]
        out = {
            "final_weights": self.r["eval"]["final_weights"],
            "weights_step": weights_step,
            "weights_epoch": round(weights_step / self.spe, 6),
            "val": val,
            "test": test,
            "units": self.units,
            "best_val": {k: best.get(k) for k in ("step", "epoch", "score", "val", "test")},
            "steps": self.state["step"],
            "epochs": round(self.state["step"] / self.spe, 6),
            "normalization": {"mean": self.data.mean, "std": self.data.std},
        }
        if stopped is not None:
            out["stopped"] = "budget deadline" if stopped == "budget" else stopped
        if self.budget is not None:
            b = self.state["budget"]
            out["budget"] = {"wall_time_s": b["wall_time"], "planned_steps": b["total"], "step_time_s": b["step_time"],
                             "warmup_fraction": warmup_fraction(self.r), "last_lr": self.schedule(max(self.state["step"] - 1, 0)),
                             "min_lr": self.base_schedule.floor}  # fmt: skip
        return out

    def _target_info(self):
        from zoo.models.zoo_model import TargetInfo

        d, task = self.data, self.r["task"]
        if task == "qm9":
            return TargetInfo(name=d.target, unit=d.unit, mean=d.mean, std=d.std, description=f"QM9 {d.target}")
        if task == "md17":
            return TargetInfo(name=keys.ENERGY, unit=d.unit, mean=d.mean, std=d.std, description=f"potential energy ({d.dataset.name})",
                              forces_unit=d.dataset.units.get(keys.FORCES))  # fmt: skip
        aux = self.r["loss"]["aux_position_std"] if self.config.aux_head else None
        return TargetInfo(name=keys.ENERGY, unit=d.unit, mean=d.mean, std=d.std,
                          description="relaxed adsorption energy from the initial structure (IS2RE)", aux_scale=aux)  # fmt: skip

    def _save_model(self, weights_step: int, val: dict, test: dict, stopped: str | None = None) -> Path:
        import e3nn

        from zoo.artifact import save_model_dir
        from zoo.models.zoo_model import ZooModel

        target = self._target_info()
        model = ZooModel({target.name: self.net}, [target])
        env = self.env
        device_name = (
            torch.cuda.get_device_name(env.device)
            if env.device.type == "cuda"
            else (platform.processor() or platform.machine())
        )
        metadata = {
            "metrics": self._metrics(weights_step, val, test, stopped),
            "recipe": self.r,
            "dataset": self.data.describe(self.r),
            "elements": self.data.train.elements(),  # atomic numbers of the training data: what the model covers
            "environment": {
                "equizoo": __version__,
                "torch": torch.__version__,
                "e3nn": e3nn.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "cuda": torch.version.cuda,
                "platform": platform.platform(),
                "device": str(env.device),
                "device_name": device_name,
            },
            "hardware": {
                "processes": env.world,
                "device_type": env.device.type,
                "device_name": device_name,
                "cpu_count": os.cpu_count(),
                "cpu_model": cpu_model(),
                "torch_threads": torch.get_num_threads(),
            },
            "wall_time_s": round(self.wall0 + time.perf_counter() - self.session_start, 3),
            "run_dir": str(self.run_dir.resolve()),
        }
        name = f"{self.config.name}-{self.data.target}"
        return save_model_dir(model, self.run_dir / MODEL_DIR, metadata=metadata, name=name, overwrite=True)
