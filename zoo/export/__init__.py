"""Exporters of trained models (TorchScript; ONNX and AOTInductor where they work) with parity checks."""

from zoo.export.metadata import model_metadata
from zoo.export.torchscript import export_torchscript, load_torchscript

__all__ = ["export_torchscript", "load_torchscript", "model_metadata"]
