"""Data for training: the prepared dataset and its splits, target normalisation, the batch plan shared by all
processes, noisy nodes and the loaders that collate batches and build their graphs.

Batches are planned globally: epoch e shuffles the training split with ``default_rng([seed, e])`` and cuts
it into global batches of ``optim.batch_size``; process r of W takes the r-th of W contiguous shares of each
global batch. Every process therefore sees the same global batches as a single process would, and the
plan depends only on (seed, epoch), which is what makes DDP runs comparable and resumed runs identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch

from zoo import keys
from zoo.data import DataError, PreparedDataset, load_dataset
from zoo.graph import attach_graph
from zoo.train.dist import DistEnv
from zoo.train.errors import TrainError


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@dataclasses.dataclass
class TaskData:
    """The dataset, the split views a run uses and what it collates."""

    dataset: PreparedDataset
    train: PreparedDataset
    val: PreparedDataset | None
    test: PreparedDataset | None
    targets: list[str]
    target: str  # the per-structure quantity (QM9 target, energy, y_relaxed)
    unit: str
    mean: float
    std: float

    def describe(self, recipe: Mapping) -> dict:
        d = recipe["data"]
        manifest = self.dataset.manifest
        sizes = {"train": len(self.train), "val": len(self.val) if self.val is not None else 0,
                 "test": len(self.test) if self.test is not None else 0}  # fmt: skip
        return {
            "name": manifest.get("name"),
            "path": str(self.dataset.path),
            "target": self.target,
            "unit": self.unit,
            "splits": {"train": d["train_split"], "val": d["val_split"], "test": d["test_split"]},
            "sizes": sizes,
            "limits": {"train": d["train_limit"], "val": d["val_limit"], "test": d["test_limit"]},
            "split_rule": manifest.get("split_rule", ""),
            "source": manifest.get("source", ""),
            "prepared": manifest.get("created", ""),
        }


def _task_targets(recipe: Mapping, aux: bool) -> tuple[str, list[str]]:
    task = recipe["task"]
    if task == "qm9":
        return recipe["data"]["target"], [recipe["data"]["target"]]
    if task == "md17":
        return keys.ENERGY, [keys.ENERGY, keys.FORCES]
    extra = [keys.POS_RELAXED] if aux or recipe["noisy_nodes"]["enabled"] else []
    return keys.Y_RELAXED, [keys.Y_RELAXED] + extra


def open_data(recipe: Mapping, env: DistEnv, aux: bool) -> TaskData:
    """Open (preparing on rank 0 if needed) the recipe's dataset, its splits and the normalisation."""
    d = recipe["data"]
    options = {"source": d["source"], "download": d["download"]} if d["source"] or d["download"] else {}
    dataset = None
    error: Exception | None = None
    if env.main:
        try:
            dataset = load_dataset(d["dataset"], d["cache_dir"], prepare=True, **options)
        except DataError as exc:
            error = exc
    env.barrier()
    if error is not None:
        raise TrainError(f"data.dataset={d['dataset']}: {error}. Prepare it with `equizoo data prepare {d['dataset']} --source PATH` or set data.source / data.download") from error
    if dataset is None:
        try:
            dataset = load_dataset(d["dataset"], d["cache_dir"], prepare=False)
        except DataError as exc:
            raise TrainError(f"data.dataset={d['dataset']}: {exc}") from exc
    target, targets = _task_targets(recipe, aux)
    missing = [t for t in targets if t not in dataset.target_names]
    if missing:
        raise TrainError(f"dataset {dataset.name} ({dataset.path}) has no target {missing[0]!r}; it has {dataset.target_names}. "
                         f"{'Set data.target to one of them' if recipe['task'] == 'qm9' else 'Use a dataset with this target'}")  # fmt: skip
    if recipe["task"] == "oc20" and "tags" not in dataset.manifest.get("fields", []):
        raise TrainError(f"dataset {dataset.name} has no per-atom tags; OC20 training needs OC20 LMDBs with tags")

    def view(key: str, limit_key: str) -> PreparedDataset | None:
        split = d[key]
        if split is None:
            return None
        if split not in dataset.split_names:
            raise TrainError(f"dataset {dataset.name} has no split {split!r} (data.{key}); its splits are {dataset.split_names}")
        out = dataset.split(split)
        if d[limit_key] is not None:
            out = out.subset(np.arange(min(d[limit_key], len(out))))
        if len(out) == 0:
            raise TrainError(f"split {split!r} (data.{key}) of dataset {dataset.name} is empty")
        return out

    train, val, test = view("train_split", "train_limit"), view("val_split", "val_limit"), view("test_split", "test_limit")
    if val is None:
        raise TrainError("data.val_split is null; training selects checkpoints on a validation split, name one")
    mean, std = _normalization(recipe, train, target)
    return TaskData(dataset, train, val, test, targets, target, dataset.units.get(target, ""), mean, std)


def _normalization(recipe: Mapping, train: PreparedDataset, target: str) -> tuple[float, float]:
    norm = recipe["normalization"]
    if norm["mode"] == "none":
        return 0.0, 1.0
    if norm["mode"] == "fixed":
        return float(norm["mean"]), float(norm["std"])
    values = train.target(target)
    if values.ndim != 1:
        raise TrainError(f"target {target!r} is not one number per structure (shape {values.shape[1:]}); it cannot be trained as a scalar")
    if np.isnan(values).any():
        raise TrainError(f"target {target!r} is missing for {int(np.isnan(values).sum())} training structures; choose another split or dataset")
    if len(values) < 2:
        raise TrainError("normalization.mode=train_stats needs at least 2 training structures")
    std = float(values.std(ddof=1))
    if std == 0.0:
        raise TrainError(f"target {target!r} is constant over the training split; use normalization.mode=none")
    return float(values.mean()), std


class BatchPlan:
    """The global batches of each epoch and this process's share of them."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, shuffle: bool = True, drop_last: bool = True) -> None:
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        full, rest = divmod(n, batch_size)
        self.steps_per_epoch = full + (1 if rest >= world and not drop_last else 0)
        if self.steps_per_epoch == 0:
            raise TrainError(f"the training split has {n} structures, fewer than one batch of {batch_size}; lower optim.batch_size or set data.drop_last=false")
        if batch_size < world:
            raise TrainError(f"optim.batch_size={batch_size} is the global batch; it must be at least the number of processes ({world})")

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def global_batch(self, order: np.ndarray, step: int) -> np.ndarray:
        return order[step * self.batch_size : (step + 1) * self.batch_size]

    def local(self, batch: np.ndarray) -> np.ndarray:
        return np.array_split(batch, self.world)[self.rank]


def apply_noisy_nodes(batch: dict, ids: np.ndarray, epoch: int, seed: int, cfg: Mapping) -> dict:
    """Noisy nodes (reference `interpolate_init_relaxed_pos`), drawn per structure from (seed, epoch, id).

    With probability ``cfg['probability']`` a structure's free atoms (tags > 0) move to
    f pos + (1 - f) pos_relaxed + eps, f ~ U(min_factor, 1) per atom and eps ~ N(0, noise_std^2) per
    component; the auxiliary target then is pos_relaxed minus the moved position.
    """
    pos, relaxed, tags = batch[keys.POSITIONS], batch[keys.POS_RELAXED], batch[keys.TAGS]
    new = pos.clone()
    start = 0
    for g, n in enumerate(batch[keys.NUM_ATOMS].tolist()):
        gen = torch.Generator().manual_seed(mix_seed(seed, epoch, int(ids[g]), 7))
        draw = torch.rand((), generator=gen, dtype=torch.float64)
        factor = torch.empty(n, 1, dtype=pos.dtype).uniform_(cfg["min_factor"], 1.0, generator=gen)
        noise = torch.empty(n, 3, dtype=pos.dtype).normal_(0.0, cfg["noise_std"], generator=gen)
        if draw < cfg["probability"]:
            p, r = pos[start : start + n], relaxed[start : start + n]
            moved = factor * p + (1.0 - factor) * r + noise
            free = tags[start : start + n] > 0
            new[start : start + n][free] = moved[free]
        start += n
    out = dict(batch)
    out[keys.POSITIONS] = new
    return out


class TrainBatches(torch.utils.data.Dataset):
    """Item i: this process's batch for step ``first + i`` of ``epoch``, collated, noised and with its graph."""

    def __init__(self, view: PreparedDataset, plan: BatchPlan, epoch: int, first: int, targets: list[str], dtype: torch.dtype,
                 r_max: float, max_neighbors: int | None, noisy: Mapping | None, seed: int) -> None:  # fmt: skip
        self.view, self.plan, self.epoch, self.first = view, plan, epoch, first
        self.targets, self.dtype, self.r_max, self.max_neighbors = targets, dtype, r_max, max_neighbors
        self.noisy, self.seed = noisy, seed
        self.order = plan.order(epoch)

    def __len__(self) -> int:
        return self.plan.steps_per_epoch - self.first

    def __getitem__(self, i: int) -> dict:
        ids = self.plan.local(self.plan.global_batch(self.order, self.first + i))
        batch = self.view.collate(ids, self.targets, torch.float64)
        if self.noisy is not None:
            batch = apply_noisy_nodes(batch, ids, self.epoch, self.seed, self.noisy)
        return attach_graph(model_inputs(batch, self.dtype), self.r_max, self.max_neighbors)


def model_inputs(batch: dict, dtype: torch.dtype) -> dict:
    """Geometry in the model's dtype; targets stay float64 (MD17 energies near -1e4 eV need it to keep meV)."""
    out = dict(batch)
    out[keys.POSITIONS] = batch[keys.POSITIONS].to(dtype)
    out[keys.CELL] = batch[keys.CELL].to(dtype)
    return out


class EvalBatches(torch.utils.data.Dataset):
    """This process's contiguous shard of a split (optionally its first ``limit`` structures), in batches."""

    def __init__(self, view: PreparedDataset, batch_size: int, env: DistEnv, targets: list[str], dtype: torch.dtype,
                 r_max: float, max_neighbors: int | None, limit: int | None = None) -> None:  # fmt: skip
        n = len(view) if limit is None else min(limit, len(view))
        self.ids = np.array_split(np.arange(n), env.world)[env.rank]
        self.view, self.batch_size, self.targets, self.dtype = view, batch_size, targets, dtype
        self.r_max, self.max_neighbors = r_max, max_neighbors

    def __len__(self) -> int:
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i * self.batch_size : (i + 1) * self.batch_size]
        batch = self.view.collate(ids, self.targets, torch.float64)
        return attach_graph(model_inputs(batch, self.dtype), self.r_max, self.max_neighbors)


def loader(batches: torch.utils.data.Dataset, num_workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """A DataLoader that yields the prepared batches in order (one item = one batch)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin,
                                       persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)  # fmt: skip
