"""ONNX export (torch.onnx dynamo exporter) and an onnxruntime runner with the ZooModel calling convention.

The graph is the traced forward of zoo.export.trace (forces and virials included where the model computes
them), so one ONNX file gives per-structure properties, per-atom parts and forces. Never the legacy
exporter: it drops index_add's reduction and gives silently wrong sums. Float64 models keep their float
literals exact (trace.float_literals_to_tensors); measured deviations from eager are in the export report.

    runner = load_onnx("model.onnx")
    out = runner(pos=pos, species=z, edge_index=edge_index, batch=batch)   # dict of torch tensors
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

from zoo.device import dtype_name, parse_dtype
from zoo.export.metadata import FORMAT_KEY, ONNX_FORMAT, model_metadata
from zoo.export.report import ExportResult
from zoo.export.trace import (
    ExportError,
    GraphSignature,
    check_inputs,
    eager_outputs,
    export_program,
    first_line,
    flat_inputs,
    input_names,
    quiet,
    tolerance,
)
from zoo.io import atomic_path

FORMAT = ONNX_FORMAT


class OnnxRunner:
    """Runs an exported ONNX model in onnxruntime: `runner(**ZooModel.forward kwargs) -> dict[str, Tensor]`."""

    def __init__(self, path: Union[str, Path], providers: Optional[Sequence[str]] = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path} does not exist; export the model with `equizoo export DIR --format onnx`")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"{self.path} cannot be loaded by onnxruntime ({exc}); export it again") from exc
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get(FORMAT_KEY) != FORMAT:
            raise ExportError(
                f"{self.path} is not an equizoo ONNX export (format {self.metadata.get(FORMAT_KEY)!r}); export it with `equizoo export`"
            )
        self.signature = GraphSignature.from_metadata(self.metadata, str(self.path))
        self.dtype = parse_dtype(self.metadata.get("model_dtype", "float32"), error=ExportError)
        self._onnx_inputs = [i.name for i in self.session.get_inputs()]
        self._onnx_outputs = [o.name for o in self.session.get_outputs()]

    def __call__(
        self,
        pos: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        edge_shift: Optional[torch.Tensor] = None,
        tags: Optional[torch.Tensor] = None,
        num_graphs: int = -1,
    ) -> Dict[str, torch.Tensor]:
        tensors = flat_inputs(
            self.signature.inputs,
            self.dtype,
            torch.device("cpu"),
            pos,
            species,
            edge_index,
            batch,
            edge_shift,
            tags,
            num_graphs,
        )
        feeds = {name: t.detach().contiguous().numpy() for name, t in zip(self._onnx_inputs, tensors)}
        results = self.session.run(self._onnx_outputs, feeds)
        return {name: torch.from_numpy(r).to(pos.device) for name, r in zip(self.signature.outputs, results)}

    def __repr__(self) -> str:
        return f"OnnxRunner({str(self.path)!r}, dtype={self.dtype}, outputs={list(self.signature.outputs)})"


def load_onnx(path: Union[str, Path], providers: Optional[Sequence[str]] = None) -> OnnxRunner:
    """An onnxruntime runner for an equizoo ONNX file (CPU unless other execution providers are given)."""
    return OnnxRunner(path, providers)


def _refuse_racy_scatters(model) -> None:
    """onnxruntime computes ScatterND with a reduction on several threads that race on repeated indices."""
    for node in model.graph.all_nodes():
        if node.op_type == "ScatterND":
            reduction = node.attributes.get("reduction")
            value = reduction.value if reduction is not None else "none"
            if value != "none":
                raise ExportError(f"the ONNX graph has ScatterND(reduction={value}) ({node.name}), which onnxruntime computes with racing threads; "
                                  "this is an exporter bug in equizoo (index_add must be traced as scatter_add)")  # fmt: skip


def export_onnx(
    model,
    path: Union[str, Path],
    check: Optional[Sequence[dict]] = None,
    program=None,
    extra_metadata: Optional[dict] = None,
    optimize: bool = False,
) -> ExportResult:
    """Export `model` (eval ZooModel on CPU) to ONNX at `path`, atomically; check it in onnxruntime against
    eager on `check` (forward kwargs; default: real check structures) and raise ExportMismatch (writing
    nothing) if it disagrees. `program` is a (ExportedProgram, GraphSignature) from trace.export_program.
    `optimize` runs onnxscript's optimizer (minutes on these graphs; onnxruntime optimizes at load anyway)."""
    from zoo.artifact import as_zoo_model
    from zoo.export.torchscript import check_outputs

    start = time.perf_counter()
    model = as_zoo_model(model).eval()
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ExportError(f"ONNX export traces on the CPU; the model is on {device}: move it to the CPU first")
    check = list(check) if check is not None else check_inputs(model, dtype, device)
    names = input_names(model)
    if program is None:
        example = flat_inputs(names, dtype, device, **check[-1])
        program = export_program(model, example, names)
    ep, signature = program
    meta = model_metadata(model, extra_metadata)
    meta.update(signature.to_metadata())
    meta[FORMAT_KEY] = FORMAT
    try:
        with quiet():
            onnx_program = torch.onnx.export(
                ep,
                dynamo=True,
                input_names=list(signature.inputs),
                output_names=list(signature.outputs),
                optimize=optimize,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        raise ExportError(
            f"ONNX export failed: {type(exc).__name__}: {first_line(exc)}; the torchscript and aoti formats may still work"
        ) from exc
    _refuse_racy_scatters(onnx_program.model)
    onnx_program.model.metadata_props.update(meta)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx_program.save(tmp, external_data=False)
        runner = OnnxRunner(tmp)
        tol = tolerance("onnx", dtype)
        worst = 0.0
        for kwargs in check:
            worst = max(
                worst,
                check_outputs(
                    eager_outputs(model, kwargs), runner(**kwargs), rtol=tol, atol=tol, what=f"ONNX export {path.name}"
                ),
            )
    return ExportResult(
        "onnx", path, dtype_name(dtype), "cpu", worst, tol, time.perf_counter() - start, torch.__version__
    )
