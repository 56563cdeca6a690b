"""Data for training: the prepared dataset and its splits, target normalisation, the batch plan shared by all
processes, noisy nodes, the loaders that collate batches and build their graphs, and splits held on the
device with their neighbour lists built once (molecules: MD17, rMD17, MD22, QM9).

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
        raise TrainError(
            f"data.dataset={d['dataset']}: {error}. Prepare it with `equizoo data prepare {d['dataset']} --source PATH` or set data.source / data.download"
        ) from error
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
            raise TrainError(
                f"dataset {dataset.name} has no split {split!r} (data.{key}); its splits are {dataset.split_names}"
            )
        out = dataset.split(split)
        if d[limit_key] is not None:
            out = out.subset(np.arange(min(d[limit_key], len(out))))
        if len(out) == 0:
            raise TrainError(f"split {split!r} (data.{key}) of dataset {dataset.name} is empty")
        return out

    train, val, test = (
        view("train_split", "train_limit"),
        view("val_split", "val_limit"),
        view("test_split", "test_limit"),
    )
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
        raise TrainError(
            f"target {target!r} is not one number per structure (shape {values.shape[1:]}); it cannot be trained as a scalar"
        )
    if np.isnan(values).any():
        raise TrainError(
            f"target {target!r} is missing for {int(np.isnan(values).sum())} training structures; choose another split or dataset"
        )
    if len(values) < 2:
        raise TrainError("normalization.mode=train_stats needs at least 2 training structures")
    std = float(values.std(ddof=1))
    if std == 0.0:
        raise TrainError(f"target {target!r} is constant over the training split; use normalization.mode=none")
    return float(values.mean()), std


class BatchPlan:
    """The global batches of each epoch and this process's share of them."""

    def __init__(
        self, n: int, batch_size: int, world: int, rank: int, seed: int, shuffle: bool = True, drop_last: bool = True
    ) -> None:
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        full, rest = divmod(n, batch_size)
        self.steps_per_epoch = full + (1 if rest >= world and not drop_last else 0)
        if self.steps_per_epoch == 0:
            raise TrainError(
                f"the training split has {n} structures, fewer than one batch of {batch_size}; lower optim.batch_size or set data.drop_last=false"
            )
        if batch_size < world:
            raise TrainError(
                f"optim.batch_size={batch_size} is the global batch; it must be at least the number of processes ({world})"
            )

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


DEVICE_SHARE = 0.25  # data on the device may take at most this share of the free device (or host) memory
_GRAPH_CHUNK = 4096  # structures per neighbour-list build when a split moves to the device


class DeviceSplit:
    """A split as tensors on the device, with every structure's neighbour list built once.

    Positions are fixed per structure (no noisy nodes, no periodic cell), so the graph a batch needs is the
    union of its structures' own graphs: built here with :func:`zoo.graph.attach_graph` on the CPU (as the
    loader does), kept as per-structure local indices, and batched by index: gather the atoms and edges of
    the chosen structures and add each structure's atom offset in the batch. :meth:`batch` returns the dict
    the loader path gives for the same structures, with the same keys, values, dtypes and edge order.
    """

    def __init__(self, view: PreparedDataset, targets: list[str], dtype: torch.dtype, r_max: float, max_neighbors: int | None,
                 device: torch.device) -> None:  # fmt: skip
        n = len(view)
        self.device, self.dtype = device, dtype
        host = model_inputs(view.collate(np.arange(n), targets, torch.float64), dtype)
        counts = host[keys.NUM_ATOMS]
        atom_ptr = torch.zeros(n + 1, dtype=torch.int64)
        atom_ptr[1:] = torch.cumsum(counts, 0)
        srcs, dsts, edge_counts = [], [], []
        for a in range(0, n, _GRAPH_CHUNK):
            b = min(a + _GRAPH_CHUNK, n)
            lo, hi = int(atom_ptr[a]), int(atom_ptr[b])
            part = {keys.POSITIONS: host[keys.POSITIONS][lo:hi], keys.BATCH: host[keys.BATCH][lo:hi] - a}
            edges = attach_graph(part, r_max, max_neighbors)[keys.EDGE_INDEX]
            owner = part[keys.BATCH][edges[1]]
            local_start = atom_ptr[a:b][owner] - lo
            srcs.append((edges[0] - local_start).to(torch.int32))
            dsts.append((edges[1] - local_start).to(torch.int32))
            edge_counts.append(torch.bincount(owner, minlength=b - a))
        edge_counts_t = torch.cat(edge_counts)
        edge_ptr = torch.zeros(n + 1, dtype=torch.int64)
        edge_ptr[1:] = torch.cumsum(edge_counts_t, 0)
        self.natoms_host = counts.numpy().copy()
        self.nedges_host = edge_counts_t.numpy().copy()
        per_atom = {keys.POSITIONS, keys.SPECIES, keys.TAGS, keys.FIXED} | {
            t for t in targets if view.manifest["targets"][t]["per_atom"]
        }
        self.atom_fields = {k: v.to(device) for k, v in host.items() if k in per_atom}
        self.graph_fields = {k: v.to(device) for k, v in host.items() if k not in per_atom and k != keys.BATCH}
        self.atom_ptr, self.edge_ptr = atom_ptr.to(device), edge_ptr.to(device)
        self.src, self.dst = torch.cat(srcs).to(device), torch.cat(dsts).to(device)
        self.nedges = edge_counts_t.to(device)
        self.order = list(host)  # the loader's key order, then the graph keys

    def __len__(self) -> int:
        return len(self.natoms_host)

    @property
    def nbytes(self) -> int:
        tensors = [
            *self.atom_fields.values(),
            *self.graph_fields.values(),
            self.atom_ptr,
            self.edge_ptr,
            self.src,
            self.dst,
            self.nedges,
        ]
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(self, ids: np.ndarray) -> dict:
        """The structures ``ids`` (in this order) as one batch with its graph, on the device."""
        ids = np.asarray(ids, dtype=np.int64)
        total = int(self.natoms_host[ids].sum())
        edges = int(self.nedges_host[ids].sum())
        dev = self.device
        index = torch.from_numpy(ids).to(dev, non_blocking=True)
        counts = self.graph_fields[keys.NUM_ATOMS].index_select(0, index)
        first = torch.cumsum(counts, 0) - counts
        atom = torch.repeat_interleave(self.atom_ptr.index_select(0, index) - first, counts, output_size=total)
        atom += torch.arange(total, device=dev)
        ecounts = self.nedges.index_select(0, index)
        efirst = torch.cumsum(ecounts, 0) - ecounts
        edge = torch.repeat_interleave(self.edge_ptr.index_select(0, index) - efirst, ecounts, output_size=edges)
        edge += torch.arange(edges, device=dev)
        shift = torch.repeat_interleave(first, ecounts, output_size=edges)
        out = {}
        for key in self.order:
            if key == keys.BATCH:
                out[key] = torch.repeat_interleave(torch.arange(len(ids), device=dev), counts, output_size=total)
            elif key in self.atom_fields:
                out[key] = self.atom_fields[key].index_select(0, atom)
            else:
                out[key] = self.graph_fields[key].index_select(0, index)
        out[keys.EDGE_INDEX] = torch.stack(
            [self.src.index_select(0, edge).long() + shift, self.dst.index_select(0, edge).long() + shift]
        )
        out[keys.CELL_OFFSETS] = torch.zeros(edges, 3, dtype=torch.long, device=dev)
        out[keys.EDGE_SHIFT] = torch.zeros(edges, 3, dtype=self.dtype, device=dev)
        return out


def device_data_estimate(views: list[PreparedDataset], targets: list[str], dtype: torch.dtype) -> int:
    """Bytes the splits take on the device, counting every pair of atoms of a structure as an edge (an upper
    bound: molecules of MD17 and QM9 are nearly fully connected at a 5 Å cutoff)."""
    size = torch.finfo(dtype).bits // 8
    total = 0
    for view in views:
        natoms = view.natoms.astype(np.int64)
        per_atom = 3 * size + 8 + 8 + 1 + 3 * 8 * sum(1 for t in targets if t == keys.FORCES)
        total += (
            int(natoms.sum()) * per_atom
            + int((natoms * (natoms - 1)).sum()) * 4 * 2
            + len(natoms) * (9 * size + 3 + 8 + 8 + 8 * len(targets) + 24)
        )
    return total


def memory_room(device: torch.device) -> int:
    """Free bytes of the device (CUDA) or of the host (Linux MemAvailable; else 4 GiB assumed)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 4 << 30


def device_data_choice(
    recipe: Mapping, data: TaskData, periodic: bool, device: torch.device, dtype: torch.dtype
) -> tuple[bool, str]:
    """Whether the splits go to the device (data.on_device: auto / true / false) and why, in words."""
    setting = recipe["data"]["on_device"]
    if setting is False:
        return False, "loader (data.on_device=false)"
    views = [v for v in (data.train, data.val, data.test) if v is not None]
    if recipe["task"] == "oc20" or periodic or recipe["noisy_nodes"]["enabled"]:
        return False, "loader (periodic structures are batched by the loader)"
    need, room = device_data_estimate(views, data.targets, dtype), memory_room(device)
    if need > DEVICE_SHARE * room:
        if setting is True:
            raise TrainError(f"data.on_device=true: the splits need about {need / 2**30:.2f} GiB, more than {DEVICE_SHARE:.0%} of the "
                             f"{room / 2**30:.1f} GiB free on {device}; set data.on_device to auto or false")  # fmt: skip
        return (
            False,
            f"loader (the splits need ~{need / 2**30:.2f} GiB, more than {DEVICE_SHARE:.0%} of the free {room / 2**30:.1f} GiB)",
        )
    return True, f"on {device} (~{need / 2**20:.0f} MiB, neighbour lists built once)"
