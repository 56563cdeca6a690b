"""The metadata that travels inside every exported file (TorchScript `_extra_files`, ONNX metadata props,
safetensors header). All values are strings so that C++ and LAMMPS read them without a JSON parser for the
common keys; `config_json` carries the whole network config for Python."""

from __future__ import annotations

import json

import torch

from zoo._version import __version__
from zoo.device import dtype_name

# keys read by C++ / LAMMPS
R_MAX = "r_max"
TYPE_NUMBERS = "type_numbers"  # comma-separated atomic numbers the model knows, in type order
TYPE_NAMES = "type_names"  # comma-separated element symbols, same order
MODEL_DTYPE = "model_dtype"  # float32 | float64
TARGETS = "targets"  # comma-separated output names (e.g. "energy" or "mu,alpha,homo,...")
UNITS = "units"  # comma-separated units, same order
ENERGY_TARGET = "energy_target"  # name of the output that has forces ("" if none)
PERIODIC = "periodic"  # 1 if the model was trained on periodic cells
NEEDS_TAGS = "needs_tags"  # 1 if the forward needs OC20 tags
NUM_LAYERS = "num_layers"  # receptive field = num_layers * r_max
VARIANT = "variant"
CONFIG_JSON = "config_json"
EQUIZOO_VERSION = "equizoo_version"
TORCH_VERSION = "torch_version"
FORMAT_KEY = "format"
FORMAT = "equizoo-torchscript/1"
ONNX_FORMAT = "equizoo-onnx/1"
AOTI_FORMAT = "equizoo-aoti/1"
# ONNX metadata_props and AOTInductor get_metadata() add:
INPUTS = "inputs"  # comma-separated names of the flat graph inputs, in order (zoo.export.trace)
OUTPUTS = "outputs"  # comma-separated output names, in order
DEVICE = "device"  # AOTInductor: the device type the package was compiled for (cpu | cuda)

KEYS = (
    FORMAT_KEY,
    VARIANT,
    R_MAX,
    TYPE_NUMBERS,
    TYPE_NAMES,
    MODEL_DTYPE,
    TARGETS,
    UNITS,
    ENERGY_TARGET,
    PERIODIC,
    NEEDS_TAGS,
    NUM_LAYERS,
    CONFIG_JSON,
    EQUIZOO_VERSION,
    TORCH_VERSION,
)


def model_metadata(model, extra: dict | None = None) -> dict[str, str]:
    """String metadata describing a ZooModel (or a bare Equiformer) for consumers that never import zoo."""
    from zoo.artifact import as_zoo_model, model_config

    model = as_zoo_model(model)
    first = next(iter(model.networks.values())).config
    dtype = next(model.parameters()).dtype
    meta = {
        FORMAT_KEY: FORMAT,
        VARIANT: ",".join(net.config.name for net in model.networks.values()),
        R_MAX: repr(float(model.r_max)),
        TYPE_NUMBERS: ",".join(str(z) for z in model.type_numbers),
        TYPE_NAMES: ",".join(first.type_names),
        MODEL_DTYPE: dtype_name(dtype),
        TARGETS: ",".join(t.name for t in model.targets),
        UNITS: ",".join(t.unit for t in model.targets),
        ENERGY_TARGET: model.energy_target,
        PERIODIC: "1" if model.periodic else "0",
        NEEDS_TAGS: "1" if model.needs_tags else "0",
        NUM_LAYERS: str(model.num_layers),
        CONFIG_JSON: json.dumps(model_config(model)),
        EQUIZOO_VERSION: __version__,
        TORCH_VERSION: torch.__version__,
    }
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta
