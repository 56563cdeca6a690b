"""A model directory: `model.safetensors` (weights) + `config.json` (networks, targets, metadata).

Every command that takes a model accepts such a directory; exports (`model.torchscript.pt`, `model.onnx`,
`model.pt2`) and the model card (`README.md`) live beside them. Writes go to a temporary sibling
directory that is renamed into place, so an interrupted save never leaves a half-written model.

config.json:
    {"format": "equizoo-model/1", "name": ..., "dtype": "float32",
     "targets": [TargetInfo...], "networks": {target name: EquiformerConfig}, "metadata": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from zoo._version import __version__
from zoo.device import DTYPES, dtype_name
from zoo.errors import ZooError
from zoo.io import replace_dir
from zoo.models.config import EquiformerConfig
from zoo.models.equiformer import Equiformer
from zoo.models.zoo_model import TargetInfo, ZooModel, wrap

# the files of a model directory (and of what is exported into it); every module names them through these
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
EXPORTS = "exports.json"  # the record of checked exports (zoo.export.report)
EXPORT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "aoti": "model.pt2"}
FORMAT = "equizoo-model/1"


class ArtifactError(ZooError, ValueError):
    """A model directory is missing, incomplete or inconsistent."""


def as_zoo_model(model: Union[ZooModel, Equiformer]) -> ZooModel:
    return model if isinstance(model, ZooModel) else wrap(model)


def model_config(model: ZooModel, name: Optional[str] = None, metadata: Optional[dict] = None) -> dict:
    dtype = next(model.parameters()).dtype
    return {
        "format": FORMAT,
        "name": name or "-".join(net.config.name for net in model.networks.values()),
        "equizoo_version": __version__,
        "torch_version": torch.__version__,
        "dtype": dtype_name(dtype),
        "targets": [t.to_dict() for t in model.targets],
        "networks": {k: net.config.to_dict() for k, net in model.networks.items()},
        "metadata": metadata or {},
    }


def atomic_write_dir(out_dir: Union[str, Path], write, overwrite: bool = False) -> Path:
    """Run `write(tmp_dir)` and move the result to `out_dir` in one rename (replacing it if allowed)."""
    if Path(out_dir).exists() and not overwrite:
        raise ArtifactError(f"{out_dir} already exists; choose another output directory or overwrite it")
    return replace_dir(out_dir, write)


def save_model_dir(
    model: Union[ZooModel, Equiformer],
    out_dir: Union[str, Path],
    metadata: Optional[dict[str, Any]] = None,
    name: Optional[str] = None,
    overwrite: bool = False,
) -> Path:
    """Write weights (in the model's dtype) and config.json to `out_dir` atomically."""
    from safetensors.torch import save_file

    model = as_zoo_model(model)
    config = model_config(model, name, metadata)

    def write(tmp: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(
            state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "name": config["name"], "dtype": config["dtype"]}
        )
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return atomic_write_dir(out_dir, write, overwrite=overwrite)


def read_config(model_dir: Union[str, Path]) -> dict:
    """config.json of a model directory, checked key by key (see `check_config`)."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if not path.is_file():
        raise ArtifactError(f"{model_dir} is not an equizoo model directory: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    return check_config(config, path)


_FIELD_TYPES = {
    "str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict,
    "Optional[str]": (str, type(None)), "Optional[int]": (int, type(None)), "Optional[float]": (int, float, type(None)),
}  # fmt: skip


def _type_problem(value, annotation) -> str:
    """Why `value` does not fit a dataclass field annotation (a type or its source text), "" if it does."""
    if not isinstance(annotation, str):
        annotation = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
    if annotation == "tuple[int, ...]":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return "" if ok else f"must be a list of integers, got {value!r}"[:200]
    expected = _FIELD_TYPES.get(annotation)
    if expected is None:
        return ""
    if isinstance(value, bool) and annotation != "bool":
        return f"must be {annotation}, got a boolean"
    return "" if isinstance(value, expected) else f"must be {annotation}, got {type(value).__name__} {value!r}"[:200]


def check_config(config: Any, path: Union[str, Path]) -> dict:
    """The parsed config.json if every key the loaders use is present and well typed; otherwise one
    ArtifactError naming the file and the key."""
    import dataclasses

    from e3nn import o3

    def bad(key: str, why: str) -> ArtifactError:
        return ArtifactError(f"{path}: {key} {why}; fix {CONFIG} or export the model again")

    if not isinstance(config, dict):
        raise bad("the top level", f"must be a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{path} has format {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("dtype", "float32") not in DTYPES:
        raise bad("key 'dtype'", f"is {config.get('dtype')!r}, not one of {', '.join(DTYPES)}")
    targets, networks = config.get("targets"), config.get("networks")
    if not isinstance(targets, list) or not targets:
        raise bad("key 'targets'", "is missing or not a non-empty list of targets")
    if not isinstance(networks, dict) or not networks:
        raise bad("key 'networks'", "is missing or not a non-empty object of networks by target name")
    target_fields = {f.name: f.type for f in dataclasses.fields(TargetInfo)}
    for i, target in enumerate(targets):
        if not isinstance(target, dict):
            raise bad(f"key 'targets[{i}]'", "is not an object")
        try:
            TargetInfo.from_dict(target)
        except (TypeError, ValueError) as exc:
            raise bad(f"key 'targets[{i}]'", f"is invalid ({exc})") from None
        for name, value in target.items():
            problem = _type_problem(value, target_fields[name])
            if problem:
                raise bad(f"key 'targets[{i}].{name}'", problem)
    names = [t["name"] for t in targets]
    if sorted(names) != sorted(networks):
        raise bad("key 'networks'", f"names {sorted(networks)} but the targets are {names}")
    network_fields = {f.name: f.type for f in dataclasses.fields(EquiformerConfig)}
    for name, network in networks.items():
        if not isinstance(network, dict):
            raise bad(f"key 'networks.{name}'", "is not an object")
        for key, value in network.items():
            problem = _type_problem(value, network_fields.get(key, ""))
            if problem:
                raise bad(f"key 'networks.{name}.{key}'", problem)
        for key in (
            "irreps_node_embedding",
            "irreps_sh",
            "irreps_head",
            "irreps_mlp_mid",
            "irreps_feature",
            "irreps_pre_attn",
        ):
            if isinstance(network.get(key), str):
                try:
                    o3.Irreps(network[key])
                except (ValueError, AssertionError) as exc:
                    raise bad(f"key 'networks.{name}.{key}'", f"is not an irreps string ({exc})") from None
        try:
            EquiformerConfig.from_dict(network)
        except (TypeError, ValueError) as exc:
            raise bad(f"key 'networks.{name}'", f"is invalid ({exc})") from None
    return config


def build_from_config(config: dict) -> ZooModel:
    targets = [TargetInfo.from_dict(t) for t in config["targets"]]
    networks = {name: Equiformer(EquiformerConfig.from_dict(c)) for name, c in config["networks"].items()}
    return ZooModel(networks, targets)


_SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # real floating point only
_SAFETENSORS_OTHER = {
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "C64": 8,
    "C128": 16,
}


def read_weights_header(weights: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of every tensor in a safetensors file, from its header alone, with the header
    checked against the file size; weights that are not real floating point are refused."""
    size = weights.stat().st_size
    with open(weights, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > min(size - 8, 100 << 20):
            raise ArtifactError(
                f"{weights} is not a safetensors file (header length {length} for {size} bytes); pull or export it again"
            )
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"{weights} has a damaged safetensors header ({exc}); pull or export it again"
            ) from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{weights} has a damaged safetensors header; pull or export it again")
    data_size = size - 8 - length
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in _SAFETENSORS_DTYPES:
            kind = f"dtype {dtype}" if dtype in _SAFETENSORS_OTHER else f"an unknown dtype {dtype!r}"
            raise ArtifactError(
                f"{weights}: tensor {name!r} has {kind}; equizoo weights are real floating point (float32/float64). The file is not an equizoo model; pull or export it again"
            )
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):  # fmt: skip
            raise ArtifactError(f"{weights}: tensor {name!r} has a damaged header entry; pull or export it again")
        numel = 1
        for n in shape:
            numel *= n
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != numel * _SAFETENSORS_DTYPES[dtype]:
            raise ArtifactError(
                f"{weights}: tensor {name!r} of shape {shape} does not fit the file ({size} bytes); the file is truncated or damaged, pull or export it again"
            )
        out[name] = (dtype, tuple(shape))
    return out


class _AllocationBudget:
    """While active, refuses (before allocating) any tensor creation once `limit` bytes were created:
    building a model from a config must not allocate much more than its weights file holds."""

    def __init__(self, limit: int, message: str) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        budget = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                budget.charge(func, args, kwargs)
                return func(*args, **kwargs)

        self.limit, self.used, self.message, self.mode = limit, 0, message, Mode()

    def charge(self, func, args, kwargs) -> None:
        values = {
            a.name: (args[i] if i < len(args) else kwargs.get(a.name)) for i, a in enumerate(func._schema.arguments)
        }
        size = values.get("size")
        if isinstance(size, (list, tuple)) and all(isinstance(n, int) for n in size):
            numel = 1
            for n in size:
                numel *= max(n, 0)
        elif isinstance(values.get("steps"), int):
            numel = values["steps"]
        elif func.__name__.startswith("eye") and isinstance(values.get("n"), int):
            numel = values["n"] * (values.get("m") if isinstance(values.get("m"), int) else values["n"])
        else:
            return
        dtype = values.get("dtype") or torch.get_default_dtype()
        self.used += numel * (dtype.itemsize if isinstance(dtype, torch.dtype) else 8)
        if self.used > self.limit:
            raise ArtifactError(self.message.format(used=self.used, limit=self.limit))

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for n in shape:
        numel *= n
    return numel


def load_model_dir(
    model_dir: Union[str, Path], dtype: Optional[torch.dtype] = None, device: Union[str, torch.device] = "cpu"
) -> ZooModel:
    """Load a model directory into an eval-mode ZooModel (dtype: the saved one unless given)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{model_dir} has no {WEIGHTS}")
    header = read_weights_header(weights)
    file_bytes = sum(_numel(shape) * 8 for _, shape in header.values())
    message = (
        f"{model_dir / CONFIG} describes a model far larger than {weights} holds (building it passed "
        "{limit:,} bytes); the config's dimensions do not match its weights, fix or re-export the model"
    )
    try:
        with _AllocationBudget(8 * file_bytes + (1 << 30), message):
            model = build_from_config(config)
    except (ValueError, TypeError, AssertionError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(
            f"{model_dir / CONFIG}: the networks cannot be built ({type(exc).__name__}: {exc}); fix or re-export the model"
        ) from None
    model = model.to(DTYPES[config.get("dtype", "float32")])
    expected = model.state_dict()
    missing = [k for k, v in expected.items() if k not in header and v.numel() > 0]
    unexpected = [k for k in header if k not in expected]
    wrong = [k for k in header if k in expected and header[k][1] != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ArtifactError(
            f"{weights} does not match {CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise ArtifactError(f"{weights} cannot be read ({exc}); the file is damaged, pull or export it again") from exc
    model.load_state_dict(state, strict=False)
    return model.to(device=device, dtype=dtype or next(model.parameters()).dtype).eval()
