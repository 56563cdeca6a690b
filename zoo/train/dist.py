"""The process group of a `torchrun` launch (NCCL on CUDA, gloo on CPU) and the few collectives used."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from zoo.train.errors import TrainError


@dataclasses.dataclass
class DistEnv:
    """Rank, world size and device of this process; ``world == 1`` means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    started: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduce sum (a copy; the input is left alone)."""
        out = values.clone()
        if self.world > 1:
            dist.all_reduce(out)
        return out

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()
            self.started = False


def setup(device: str = "auto") -> DistEnv:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK, pick the device and start the process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError("device cuda requested but torch sees no CUDA device; use device=cpu or auto")
        dev = torch.device("cuda", local_rank if device == "cuda" else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise TrainError(f"recipe key device must be auto, cpu, cuda or cuda:N, got {device!r}")
    env = DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        env.started = True
    return env
