"""Graph capture shared by the ONNX and AOTInductor exporters, and the real structures every export is
checked on.

A ZooModel computes forces with `torch.autograd.grad` inside its forward, which `torch.export` cannot
capture directly. The forward (forces included) is first traced into one aten graph with
`make_fx(tracing_mode="symbolic")`, with the backward ops ONNX lacks decomposed and index_add written as
scatter_add (onnxruntime races on the ScatterND that index_add becomes); Python float literals of a
float64 model become float64 tensor constants (the ONNX exporter would store them as float32); then the
graph is exported with dynamic atom, edge and structure counts.

Flat signature of the exported graph (names in `GraphSignature.inputs`):
    pos [N,3] float, species [N] int64, edge_index [2,E] int64, batch [N] int64, edge_shift [E,3] float,
    tags [N] int64 (only for models that need tags), natoms [G] int64 (atoms per structure; its length
    is the number of structures); AOTInductor graphs of energy models add energy_weight [N] float.
Outputs: the ZooModel's output dict, in `GraphSignature.outputs` order. With `energy_weight` (w), the
forces are -d(sum_i w_i E_i)/dpos and `virial` [G,3,3] (-dE_w/dstrain) is always present: w = 1 gives
the model's own forces and virial; LAMMPS on several ranks gives ghost atoms w = 0, so that forces are
those of the owned atoms' energy (zoo/lammps/src/pair_equiformer.cpp).
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from zoo import keys
from zoo.data import Structure
from zoo.errors import ZooError
from zoo.export.metadata import INPUTS, OUTPUTS
from zoo.forward import structure_inputs

CHECK_STRUCTURES = Path(__file__).resolve().parent / "check_structures.json"
NATOMS = keys.NUM_ATOMS
ENERGY_WEIGHT = "energy_weight"


class ExportError(ZooError, RuntimeError):
    """A model cannot be exported to a format (or an exported file cannot be used as asked)."""


@dataclass(frozen=True)
class GraphSignature:
    """Names of the flat inputs and outputs of an exported graph."""

    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]

    def to_metadata(self) -> Dict[str, str]:
        return {INPUTS: ",".join(self.inputs), OUTPUTS: ",".join(self.outputs)}

    @classmethod
    def from_metadata(cls, meta: Dict[str, str], where: str) -> GraphSignature:
        if INPUTS not in meta or OUTPUTS not in meta:
            raise ExportError(
                f"{where} carries no equizoo input/output metadata; export it again with `equizoo export`"
            )
        return cls(tuple(meta[INPUTS].split(",")), tuple(meta[OUTPUTS].split(",")))


_NOISY_LOGGERS = (
    "torch.onnx",
    "onnx_ir",
    "onnxscript",
    "torch.export",
    "torch._export",
    "torch.fx.experimental.symbolic_shapes",
)


@contextlib.contextmanager
def quiet():
    """Silence the exporters' chatter (deprecations, torchvision notices, ONNX attribute defaults)."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def input_names(model, energy_weight: bool = False) -> Tuple[str, ...]:
    """Flat graph inputs; `energy_weight` (AOTInductor, models with an energy target) adds per-atom
    weights of the energy whose gradient the forces are."""
    names = [keys.POSITIONS, keys.SPECIES, keys.EDGE_INDEX, keys.BATCH, keys.EDGE_SHIFT]
    if model.needs_tags:
        names.append(keys.TAGS)
    names.append(NATOMS)
    if energy_weight and model.energy_target:
        names.append(ENERGY_WEIGHT)
    return tuple(names)


def flat_inputs(
    names: Sequence[str],
    dtype: torch.dtype,
    device: torch.device,
    pos: torch.Tensor,
    species: torch.Tensor,
    edge_index: torch.Tensor,
    batch: torch.Tensor,
    edge_shift: Optional[torch.Tensor] = None,
    tags: Optional[torch.Tensor] = None,
    num_graphs: int = -1,
) -> List[torch.Tensor]:
    """ZooModel.forward arguments as the exported graph's flat tensors (float inputs cast to `dtype`)."""
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ExportError(f"pos must have shape [N, 3], got {list(pos.shape)}")
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ExportError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.shape[1] == 0:
        raise ExportError(
            "the graph has no edges (every atom is farther than r_max from all others); exported models need at least one edge, use the eager model"
        )
    if num_graphs < 0:
        num_graphs = int(batch.max().item()) + 1 if batch.numel() else 0
    values = {
        keys.POSITIONS: pos.to(device=device, dtype=dtype),
        keys.SPECIES: species.to(device=device, dtype=torch.long),
        keys.EDGE_INDEX: edge_index.to(device=device, dtype=torch.long),
        keys.BATCH: batch.to(device=device, dtype=torch.long),
        keys.EDGE_SHIFT: (edge_shift if edge_shift is not None else pos.new_zeros(edge_index.shape[1], 3)).to(
            device=device, dtype=dtype
        ),
    }
    if keys.TAGS in names:
        if tags is None:
            raise ExportError("this model needs per-atom OC20 tags (0 subsurface, 1 surface, 2 adsorbate); pass tags=")
        values[keys.TAGS] = tags.to(device=device, dtype=torch.long)
    values[NATOMS] = (
        torch.bincount(values[keys.BATCH], minlength=num_graphs)[:num_graphs] if num_graphs > 0 else batch.new_zeros(0)
    )
    if ENERGY_WEIGHT in names:
        values[ENERGY_WEIGHT] = torch.ones(pos.shape[0], dtype=dtype, device=device)
    return [values[n] for n in names]


class FlatModel(torch.nn.Module):
    """The ZooModel behind the flat signature (what gets traced)."""

    def __init__(self, model, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: torch.Tensor) -> Dict[str, torch.Tensor]:
        a = dict(zip(self.names, tensors))
        if ENERGY_WEIGHT in a:
            return self._weighted(a)
        return self.model(
            a[keys.POSITIONS], a[keys.SPECIES], a[keys.EDGE_INDEX], a[keys.BATCH], a[keys.EDGE_SHIFT],
            a.get(keys.TAGS), a[NATOMS].shape[0],
        )  # fmt: skip

    def _weighted(self, a: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Outputs with forces = -d(sum_i w_i E_i)/dpos and virial = -dE_w/dstrain, per structure: the
        strain moves positions and edge shifts, so virial = -(sum_i pos_i (x) dE_w/dpos_i + sum_e
        shift_e (x) dE_w/dshift_e), grouped by structure (of the atom; of the edge's centre)."""
        model, num_graphs = self.model, a[NATOMS].shape[0]
        pos = a[keys.POSITIONS].detach().clone().requires_grad_(True)
        shift = a[keys.EDGE_SHIFT].detach().clone().requires_grad_(True)
        batch, edge_index = a[keys.BATCH], a[keys.EDGE_INDEX]
        forces, virial = model.compute_forces, model.compute_virial
        model.compute_forces, model.compute_virial = False, False
        try:
            out = dict(model(pos, a[keys.SPECIES], edge_index, batch, shift, a.get(keys.TAGS), num_graphs))
        finally:
            model.compute_forces, model.compute_virial = forces, virial
        weighted = (out["atomic_" + model.energy_target] * a[ENERGY_WEIGHT]).sum()
        g_pos, g_shift = torch.autograd.grad([weighted], [pos, shift], allow_unused=True)
        g_pos = torch.zeros_like(pos) if g_pos is None else g_pos
        g_shift = torch.zeros_like(shift) if g_shift is None else g_shift
        out[keys.FORCES] = -g_pos
        per_atom = (pos.unsqueeze(-1) * g_pos.unsqueeze(-2)).reshape(-1, 9)
        per_edge = (shift.unsqueeze(-1) * g_shift.unsqueeze(-2)).reshape(-1, 9)
        w = torch.zeros(num_graphs, 9, dtype=pos.dtype, device=pos.device)
        w = w.index_add(0, batch, per_atom).index_add(0, batch.index_select(0, edge_index[1]), per_edge)
        out[keys.VIRIAL] = -w.reshape(num_graphs, 3, 3)
        return {k: v.detach() for k, v in out.items()}


def _slice_backward(default):
    """slice_backward as one zero pad where the sliced size is static (half the nodes of the default
    new_zeros + slice_scatter, and an ONNX Pad)."""

    def decomposition(grad, input_sizes, dim, start, end, step):
        ndim = len(input_sizes)
        dim = dim % ndim
        size = input_sizes[dim]
        if step != 1 or not all(isinstance(v, int) for v in (size, start, end)):
            return default(grad, input_sizes, dim, start, end, step)
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, start), size)
        return torch.ops.aten.constant_pad_nd(grad, [0, 0] * (ndim - 1 - dim) + [start, size - end], 0.0)

    return decomposition


def _index_add_as_scatter_add(self, dim, index, source, alpha=1):
    """index_add as scatter_add: ONNX exports index_add as ScatterND(reduction=add), which onnxruntime runs
    with several threads racing on repeated indices (wrong, varying sums); scatter_add becomes
    ScatterElements(reduction=add), which it computes exactly."""
    dim = dim % max(source.dim(), 1)
    shape = [1] * source.dim()
    shape[dim] = -1
    expanded = index.view(shape).expand_as(source)
    if alpha != 1:
        source = source * alpha
    return torch.ops.aten.scatter_add(self, dim, expanded, source)


def _index_add_inplace_as_scatter_add(self, dim, index, source, alpha=1):
    """index_add_ (the network's segment sums into fresh zeros) through `_index_add_as_scatter_add`."""
    return self.copy_(_index_add_as_scatter_add(self, dim, index, source, alpha))


def _decompositions() -> dict:
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    table = get_decompositions(
        [
            aten.silu_backward,
            aten.sigmoid_backward,
            aten.select_backward,
            aten.slice_backward,
            aten.native_layer_norm,  # ONNX LayerNormalization returns float32 statistics for float64 inputs
            aten.native_layer_norm_backward,
        ]
    )
    table[aten.slice_backward.default] = _slice_backward(table[aten.slice_backward.default])
    table[aten.index_add.default] = _index_add_as_scatter_add
    table[aten.index_add_.default] = _index_add_inplace_as_scatter_add
    return table


def _exact_in_float32(value: float) -> bool:
    return (
        struct.unpack("f", struct.pack("f", value))[0] == value
        if abs(value) < 3.4e38
        else value in (float("inf"), float("-inf"))
    )


def _float_literal_ops() -> dict:
    aten = torch.ops.aten
    same = [
        aten.mul.Tensor,
        aten.add.Tensor,
        aten.sub.Tensor,
        aten.div.Tensor,
        aten.maximum.default,
        aten.minimum.default,
    ]
    ops = {op: op for op in same}
    ops.update({
        aten.mul.Scalar: aten.mul.Tensor, aten.add.Scalar: aten.add.Tensor, aten.sub.Scalar: aten.sub.Tensor,
        aten.div.Scalar: aten.div.Tensor, aten.rsub.Scalar: aten.rsub.Tensor, aten.pow.Tensor_Scalar: aten.pow.Tensor_Tensor,
        aten.lt.Scalar: aten.lt.Tensor, aten.le.Scalar: aten.le.Tensor, aten.gt.Scalar: aten.gt.Tensor, aten.ge.Scalar: aten.ge.Tensor,
    })  # fmt: skip
    return ops


def float_literals_to_tensors(gm: torch.fx.GraphModule, dtype: torch.dtype) -> int:
    """Replace Python float literals that float32 cannot hold exactly (in arithmetic on `dtype` tensors)
    by 0-d `dtype` constants, so that exporters that store literals as float32 keep them exact. Returns the
    number of literals replaced."""
    ops = _float_literal_ops()
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ops or not node.args:
            continue
        first = node.args[0]
        val = first.meta.get("val") if isinstance(first, torch.fx.Node) else None
        if not isinstance(val, torch.Tensor) or val.dtype != dtype:
            continue
        args = list(node.args)
        changed = False
        for i, a in enumerate(args[1:], start=1):
            if isinstance(a, float) and not _exact_in_float32(a):
                name = f"_float_literal_{count}"
                gm.register_buffer(name, torch.tensor(a, dtype=dtype, device=val.device))
                with gm.graph.inserting_before(node):
                    args[i] = gm.graph.get_attr(name)
                count += 1
                changed = True
        if changed:
            node.args = tuple(args)
            node.target = ops[node.target]
    gm.graph.lint()
    gm.recompile()
    return count


def trace(model, example: Sequence[torch.Tensor], names: Sequence[str]) -> torch.fx.GraphModule:
    """One aten graph of the model's forward, forces included, with symbolic sizes."""
    from torch.fx.experimental.proxy_tensor import make_fx

    flat = FlatModel(model, names).eval()
    with torch.enable_grad():
        gm = make_fx(flat, tracing_mode="symbolic", decomposition_table=_decompositions(), _allow_non_fake_inputs=True)(
            *example
        )
    dtype = example[0].dtype
    if dtype == torch.float64:
        float_literals_to_tensors(gm, dtype)
    return gm


def dynamic_shapes(names: Sequence[str]) -> tuple:
    from torch.export import Dim

    atoms, edges, graphs = Dim("atoms", min=1), Dim("edges", min=1), Dim("structures", min=1)
    table = {
        keys.POSITIONS: {0: atoms}, keys.SPECIES: {0: atoms}, keys.EDGE_INDEX: {1: edges}, keys.BATCH: {0: atoms},
        keys.EDGE_SHIFT: {0: edges}, keys.TAGS: {0: atoms}, NATOMS: {0: graphs}, ENERGY_WEIGHT: {0: atoms},
    }  # fmt: skip
    return tuple(table[n] for n in names)


def export_program(model, example: Sequence[torch.Tensor], names: Sequence[str]):
    """(ExportedProgram, GraphSignature) of the model with dynamic atom, edge and structure counts."""
    with torch.enable_grad():
        outputs = tuple(FlatModel(model, names)(*example).keys())
    try:
        with quiet():
            gm = trace(model, example, names)
            ep = torch.export.export(gm, tuple(example), dynamic_shapes=dynamic_shapes(names), strict=False)
    except Exception as exc:  # noqa: BLE001 - make_fx / torch.export raise many types
        raise ExportError(f"tracing the forward (forces included) for ONNX/AOTInductor failed: {type(exc).__name__}: {first_line(exc)}; "
                          "the TorchScript export does not need tracing") from exc  # fmt: skip
    return ep, GraphSignature(tuple(names), outputs)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# ------------------------------------------------------------------------------------ check structures
@lru_cache(maxsize=1)
def _structures() -> list:
    return json.loads(CHECK_STRUCTURES.read_text())["structures"]


def check_inputs(model, dtype: torch.dtype, device: torch.device) -> List[dict]:
    """Forward kwargs of real structures the model can take, as two batches of different sizes (one
    structure; two structures), for checking exports against eager. Built by zoo.forward like every input;
    edge_shift and tags are left out where the model takes none."""
    known = set(model.type_numbers)
    usable = [s for s in _structures() if bool(s["periodic"]) == bool(model.periodic) and set(s["numbers"]) <= known]
    if not usable:
        raise ExportError(
            f"none of the check structures in {CHECK_STRUCTURES.name} fits this model (periodic={model.periodic}, elements "
            f"{sorted(known)[:12]}...); pass example inputs to check the export on"
        )
    batches = [usable[:1], (usable * 2)[:2]]
    out = []
    for group in batches:
        structures = [_structure(s, model.periodic, model.needs_tags) for s in group]
        kwargs, n = structure_inputs(structures, model.r_max, None, device, dtype)
        if not model.periodic:
            del kwargs["edge_shift"]
        if not model.needs_tags:
            del kwargs["tags"]
        out.append({**kwargs, "num_graphs": n})
    return out


def _structure(record: dict, periodic: bool, tags: bool) -> Structure:
    """A check structure of check_structures.json as a zoo.data Structure (cell and tags where used)."""
    return Structure(
        species=np.asarray(record["numbers"], dtype=np.int64),
        positions=np.asarray(record["positions"], dtype=np.float64),
        cell=np.asarray(record["cell"], dtype=np.float64) if periodic else None,
        pbc=np.asarray(record["pbc"], dtype=bool) if periodic else None,
        tags=np.asarray(record["tags"], dtype=np.int64) if tags else None,
    )


def eager_outputs(model, kwargs: dict) -> Dict[str, torch.Tensor]:
    with torch.enable_grad():
        return {k: v.detach() for k, v in model(**kwargs).items()}


def tolerance(fmt: str, dtype: torch.dtype) -> float:
    """Largest accepted deviation from eager (absolute and relative, as in torch.allclose)."""
    if dtype == torch.float64:
        return {"torchscript": 1e-10, "aoti": 1e-9, "onnx": 1e-9}[fmt]
    return {"torchscript": 1e-5, "aoti": 1e-4, "onnx": 1e-4}[fmt]
