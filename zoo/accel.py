"""Accelerated callables over a ZooModel: torch.compile with dynamic shapes, and CUDA graphs replayed on
inputs padded to capacity buckets.

Both keep the ZooModel call signature (`pos, species, edge_index, batch, edge_shift, tags, num_graphs`
-> dict of outputs) and its `compute_virial` switch, so zoo.use.runner's Runner drives them like the eager
module. zoo.use.runner.load_runner makes them and checks them against eager.

Padding (what the CUDA-graph runner replays on): atoms, edges and structures are padded up to capacity
buckets (`bucket`: four steps per doubling, at most 25% padding). The padding atoms form one extra
structure of their own (the last graph index); every padding edge is a self-loop of the first padding
atom with a fixed shift vector inside the cutoff (a finite, non-zero edge). Messages only reach an edge's
destination atom and per-structure sums only gather their own atoms, so no real atom, edge or structure
sees the padding: the real outputs are those of the unpadded call, and the padding rows are dropped.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Dict, Optional, Tuple

import torch

from zoo import keys
from zoo.errors import ZooError

PER_ATOM_OUTPUTS = (keys.FORCES, keys.AUX_DISPLACEMENT)
# torch.compile(fullgraph=True): the network traces forces (torch.func.grad under dynamo) without a graph
# break; `compile_model(fullgraph=False)` allows breaks for debugging.
FULLGRAPH = True
# The torch.compile backend: $EQUIZOO_COMPILE_BACKEND, default inductor (generated kernels). `aot_eager`
# traces the same graphs (Dynamo + AOTAutograd, forces included) without code generation: minutes less
# of cold compile on a small CPU, for tests and debugging.
COMPILE_BACKEND_ENV = "EQUIZOO_COMPILE_BACKEND"


def is_per_atom(name: str) -> bool:
    """Whether an output of a ZooModel has one row per atom (else one per structure)."""
    return name in PER_ATOM_OUTPUTS or name.startswith("atomic_")


def bucket(n: int, minimum: int = 8) -> int:
    """The capacity for `n` items: the smallest number >= n on a grid of four steps per doubling
    (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...), so padding adds at most 25%."""
    n = max(int(n), int(minimum), 1)
    step = max(1, 2 ** (n.bit_length() - 3))
    return -(-n // step) * step


Capacity = Tuple[int, int, int]


def capacity_for(n_atoms: int, n_edges: int, num_graphs: int) -> Capacity:
    """(atoms, edges, structures) capacities: room for at least one padding atom and one padding structure."""
    return bucket(n_atoms + 1), bucket(n_edges), bucket(num_graphs + 1, minimum=2)


def pad_inputs(
    inputs: Dict[str, Optional[torch.Tensor]],
    num_graphs: int,
    capacity: Capacity,
    pad_species: int,
    pad_length: float,
) -> Dict[str, torch.Tensor]:
    """ZooModel forward arguments padded to `capacity` = (atoms, edges, structures); `num_graphs` of the
    result is capacity[2]. Padding atoms have species `pad_species` (one the model knows), tag 0, sit at
    the origin and belong to the last structure; padding edges are self-loops of the first padding atom
    shifted by (pad_length, 0, 0). Missing edge_shift becomes zeros for the real edges (x + 0 == x)."""
    pos, species, edge_index, batch = inputs["pos"], inputs["species"], inputs["edge_index"], inputs["batch"]
    n, e = pos.shape[0], edge_index.shape[1]
    n_cap, e_cap, g_cap = capacity
    if n_cap <= n or e_cap < e or g_cap <= num_graphs:
        raise ValueError(
            f"capacity {capacity} too small for {n} atoms, {e} edges, {num_graphs} structures (need one padding atom and structure)"
        )
    pn, pe = n_cap - n, e_cap - e
    shift = inputs.get("edge_shift")
    if shift is None:
        shift = pos.new_zeros(e, 3)
    pad_shift = pos.new_zeros(pe, 3)
    pad_shift[:, 0] = pad_length
    out = {
        "pos": torch.cat([pos, pos.new_zeros(pn, 3)]),
        "species": torch.cat([species, species.new_full((pn,), pad_species)]),
        "edge_index": torch.cat([edge_index, edge_index.new_full((2, pe), n)], dim=1),
        "batch": torch.cat([batch, batch.new_full((pn,), g_cap - 1)]),
        "edge_shift": torch.cat([shift.to(pos.dtype), pad_shift]),
    }
    tags = inputs.get("tags")
    if tags is not None:
        out["tags"] = torch.cat([tags, tags.new_zeros(pn)])
    return out


def unpad_outputs(out: Dict[str, torch.Tensor], n_atoms: int, num_graphs: int) -> Dict[str, torch.Tensor]:
    """The real rows of padded outputs (copies, detached): per-atom outputs [:n_atoms], the rest [:num_graphs]."""
    return {
        k: v[:n_atoms].detach().clone() if is_per_atom(k) else v[:num_graphs].detach().clone() for k, v in out.items()
    }


class _Wrapped:
    """Forwards `compute_virial` to the wrapped ZooModel (the switch Runner flips for stress)."""

    model: torch.nn.Module

    @property
    def compute_virial(self) -> bool:
        return bool(self.model.compute_virial)

    @compute_virial.setter
    def compute_virial(self, value: bool) -> None:
        self.model.compute_virial = bool(value)


class CompiledModel(_Wrapped):
    """torch.compile of a ZooModel with dynamic atom/edge/structure counts (forces included).

    `fullgraph` None means FULLGRAPH: one graph with no break once the network allows it; `backend`
    None means $EQUIZOO_COMPILE_BACKEND or inductor."""

    def __init__(self, model: torch.nn.Module, fullgraph: Optional[bool] = None, backend: Optional[str] = None) -> None:
        self.model = model
        self.fullgraph = FULLGRAPH if fullgraph is None else bool(fullgraph)
        self.backend = backend or os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
        self.compiled = torch.compile(model, dynamic=True, fullgraph=self.fullgraph, backend=self.backend)

    def __call__(self, **inputs) -> Dict[str, torch.Tensor]:
        return self.compiled(**inputs)

    def __repr__(self) -> str:
        return f"CompiledModel(backend={self.backend}, fullgraph={self.fullgraph}, dynamic=True)"


def compile_model(
    model: torch.nn.Module, fullgraph: Optional[bool] = None, backend: Optional[str] = None
) -> CompiledModel:
    """torch.compile of `model` (see CompiledModel)."""
    return CompiledModel(model, fullgraph, backend)


class CaptureError(ZooError, RuntimeError):
    """The network cannot be captured as a CUDA graph (e.g. it synchronises with the host)."""


class _Captured:
    def __init__(self, graph, inputs: Dict[str, torch.Tensor], outputs: Dict[str, torch.Tensor]) -> None:
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class CudaGraphModel(_Wrapped):
    """Replays one CUDA graph per capacity bucket of a callable ZooModel (eager or compiled).

    Each call pads its inputs (`pad_inputs`) to the bucket of its size, copies them into the bucket's
    static buffers, replays the graph and returns the real rows of the outputs. A new bucket is captured
    on first use (after `warmup` uncaptured calls on a side stream); all graphs share one memory pool.
    `grad` says whether the captured call records autograd (forces and virial need it)."""

    def __init__(
        self,
        module: Callable,
        model: torch.nn.Module,
        pad_species: int,
        pad_length: float,
        grad: bool = True,
        warmup: int = 2,
    ) -> None:
        if not torch.cuda.is_available():
            raise CaptureError("CUDA graphs need a CUDA GPU and torch sees none")
        self.module = module
        self.model = model
        self.pad_species = int(pad_species)
        self.pad_length = float(pad_length)
        self.grad = grad
        self.warmup = warmup
        self.graphs: Dict[tuple, _Captured] = {}
        self.pool = None

    def __call__(
        self, pos, species, edge_index, batch, edge_shift=None, tags=None, num_graphs: int = -1
    ) -> Dict[str, torch.Tensor]:
        if pos.device.type != "cuda":
            raise CaptureError(f"CUDA graphs need inputs on a CUDA device, got {pos.device}")
        if num_graphs < 0:
            raise ValueError("CUDA graphs need num_graphs (the number of structures) given")
        inputs = {
            "pos": pos,
            "species": species,
            "edge_index": edge_index,
            "batch": batch,
            "edge_shift": edge_shift,
            "tags": tags,
        }
        cap = capacity_for(pos.shape[0], edge_index.shape[1], num_graphs)
        padded = pad_inputs(inputs, num_graphs, cap, self.pad_species, self.pad_length)
        key = cap + (self.compute_virial, tags is not None, pos.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(padded, cap[2])
        else:
            for name, static in entry.inputs.items():
                static.copy_(padded[name])
        entry.graph.replay()
        return unpad_outputs(entry.outputs, pos.shape[0], num_graphs)

    def _capture(self, static: Dict[str, torch.Tensor], num_graphs: int) -> _Captured:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side), torch.set_grad_enabled(self.grad):
                for _ in range(self.warmup):
                    self.module(**static, num_graphs=num_graphs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.set_grad_enabled(self.grad), torch.cuda.graph(graph, pool=self.pool):
                outputs = {k: v.detach() for k, v in self.module(**static, num_graphs=num_graphs).items()}
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CaptureError(
                f"the network could not be captured as a CUDA graph ({first}); use it without --cuda-graphs"
            ) from exc
        self.pool = graph.pool()
        return _Captured(graph, static, outputs)

    @property
    def buckets(self) -> list:
        """The captured (atoms, edges, structures) capacities."""
        return sorted({k[:3] for k in self.graphs})

    def __repr__(self) -> str:
        return f"CudaGraphModel({len(self.graphs)} graphs, buckets {self.buckets})"


def relative_difference(reference: Dict[str, torch.Tensor], candidate: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Per output: max |candidate - reference| / max |reference| (absolute where the reference is all zero)."""
    out = {}
    for name, ref in reference.items():
        if name not in candidate:
            out[name] = math.inf
            continue
        got = candidate[name].detach().to(ref.device, ref.dtype)
        if got.shape != ref.shape:
            out[name] = math.inf
            continue
        if not ref.numel():
            out[name] = 0.0
            continue
        scale = float(ref.detach().abs().max())
        err = float((got - ref.detach()).abs().max())
        out[name] = err / scale if scale > 0 else err
    return out


__all__ = [
    "FULLGRAPH",
    "CaptureError",
    "CompiledModel",
    "CudaGraphModel",
    "bucket",
    "capacity_for",
    "compile_model",
    "pad_inputs",
    "relative_difference",
    "unpad_outputs",
]
