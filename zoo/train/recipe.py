"""Training recipes: YAML files with shared bases, a strict schema and `--set key=value` overrides.

A recipe is a nested mapping. `base:` (a path or a list of paths, relative to the file) names files it
extends; mappings merge key by key, the extending file winning. Every key is checked against
:data:`SCHEMA`: unknown keys, wrong types and missing required values are errors that name the key and
the file. :func:`load_recipe` returns the fully resolved dict (every knob present), which is what a run
records.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from zoo.paths import RECIPES_ENV, recipes_dir
from zoo.train.errors import RecipeError

TASKS = ("qm9", "md17", "oc20")
SCHEDULES = ("epoch_cosine", "step_cosine", "constant")


_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One recipe knob: accepted type, default (``_REQUIRED`` if none) and allowed values."""

    kind: str  # int, float, bool, str, floats (list of float), mapping, switch (true/false/auto), duration (seconds)
    default: Any = None
    choices: tuple | None = None


SCHEMA: dict = {
    "task": Field("str", _REQUIRED, TASKS),
    "description": Field("str", ""),
    "seed": Field("int", 0),
    "device": Field("str", "auto"),
    "model": {
        "variant": Field("str", _REQUIRED),
        "overrides": Field("mapping", {}),
        "dtype": Field("str", "float32", ("float32", "float64")),
    },
    "data": {
        "dataset": Field("str", _REQUIRED),
        "source": Field("str", None),
        "download": Field("bool", False),
        "cache_dir": Field("str", None),
        "target": Field("str", None),
        "train_split": Field("str", "train"),
        "val_split": Field("str", "val"),
        "test_split": Field("str", "test"),
        "train_limit": Field("int", None),
        "val_limit": Field("int", None),
        "test_limit": Field("int", None),
        "shuffle": Field("bool", True),
        "drop_last": Field("bool", True),
        "num_workers": Field("int", 0),
        "on_device": Field("switch", "auto"),
    },
    "normalization": {
        "mode": Field("str", "train_stats", ("train_stats", "fixed", "none")),
        "mean": Field("float", None),
        "std": Field("float", None),
    },
    "optim": {
        "optimizer": Field("str", "adamw", ("adamw",)),
        "lr": Field("float", _REQUIRED),
        "weight_decay": Field("float", _REQUIRED),
        "betas": Field("floats", [0.9, 0.999]),
        "eps": Field("float", 1e-8),
        "batch_size": Field("int", _REQUIRED),
        "eval_batch_size": Field("int", None),
        "max_epochs": Field("int", _REQUIRED),
        "max_steps": Field("int", None),
        "clip_grad_norm": Field("float", None),
        "amp": Field("bool", False),
        "tf32": Field("bool", False),
        "ema_decay": Field("float", None),
    },
    "schedule": {
        "kind": Field("str", _REQUIRED, SCHEDULES),
        "warmup_epochs": Field("float", 0.0),
        "warmup_lr": Field("float", None),
        "min_lr": Field("float", None),
        "warmup_factor": Field("float", None),
        "lr_min_factor": Field("float", None),
    },
    "loss": {
        "energy_weight": Field("float", 1.0),
        "force_weight": Field("float", None),
        "aux_weight": Field("float", None),
        "aux_min_weight": Field("float", 1.0),
        "aux_position_std": Field("float", None),
    },
    "noisy_nodes": {
        "enabled": Field("bool", False),
        "probability": Field("float", 0.5),
        "min_factor": Field("float", 0.0),
        "noise_std": Field("float", 0.3),
    },
    "eval": {
        "every_epochs": Field("int", 1),
        "every_steps": Field("int", None),
        "test_every_epochs": Field("int", 1),
        "test_max_batches": Field("int", None),
        "final_weights": Field("str", "best_val", ("best_val", "last")),
    },
    "budget": {
        "wall_time": Field("duration", None),
        "warmup_fraction": Field("float", None),
        "measure_steps": Field("int", 8),
        "evals": Field("int", 10),
        "margin": Field("float", 0.01),
    },
    "checkpoint": {
        "every_steps": Field("int", 1000),
        "keep": Field("int", 2),
    },
    "log": {
        "every_steps": Field("int", 20),
        "progress": Field("bool", True),
        "plot": Field("bool", True),
    },
}

_POSITIVE = {"optim.lr", "optim.batch_size", "optim.eval_batch_size", "optim.max_epochs", "optim.max_steps",
             "checkpoint.every_steps", "checkpoint.keep", "log.every_steps", "eval.every_epochs", "eval.every_steps",
             "data.train_limit", "data.val_limit", "data.test_limit", "normalization.std", "loss.aux_position_std",
             "budget.wall_time", "budget.measure_steps", "budget.evals"}  # fmt: skip
_NON_NEGATIVE = {"optim.weight_decay", "optim.eps", "optim.clip_grad_norm", "data.num_workers", "schedule.warmup_epochs",
                 "loss.energy_weight", "loss.force_weight", "loss.aux_weight", "loss.aux_min_weight",
                 "noisy_nodes.noise_std", "eval.test_every_epochs", "eval.test_max_batches"}  # fmt: skip
_FRACTIONS = {"noisy_nodes.probability", "noisy_nodes.min_factor", "optim.ema_decay", "schedule.warmup_factor",
              "schedule.lr_min_factor", "budget.warmup_fraction", "budget.margin"}  # fmt: skip


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"9m"``, ``"1h"``, ``"1h30m"`` or ``"1h30m15s"`` (a ValueError says why not)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write seconds or e.g. 90s, 9m, 1h30m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.fullmatch(text)
            if not text or match is None or not any(match.groups()):
                raise ValueError(f"{value!r} is not a duration; write seconds or e.g. 90s, 9m, 1h30m") from None
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = 3600.0 * h + 60.0 * m + s
    else:
        raise ValueError(f"{value!r} is not a duration; write seconds or e.g. 90s, 9m, 1h30m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration; write seconds or e.g. 90s, 9m, 1h30m")
    return seconds


def find_recipe(name: str | Path) -> Path:
    """A recipe file from a path, or from a name under the repository's recipes/ (``qm9/gap``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    root = recipes_dir()
    if root is None:
        raise RecipeError(f"recipe {str(name)!r} is not a file, and there is no recipes folder to look it up in: give a YAML file, "
                          f"or set {RECIPES_ENV} to a recipes/ folder (a source checkout has its own)")  # fmt: skip
    for candidate in (root / name, root / f"{name}.yml", root / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(list_recipes()[:8])
    raise RecipeError(f"recipe {str(name)!r} not found: give a YAML file or a name under {root} (e.g. {known}, ...)")


def list_recipes() -> list[str]:
    """Names of the published recipes (files under recipes/ that are not shared bases)."""
    root = recipes_dir()
    if root is None or not root.is_dir():
        return []
    return sorted(
        str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yml") if not p.name.startswith("base")
    )


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, top: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise RecipeError(f"recipe bases form a cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise RecipeError(f"{path}: 'base' must be a path or a list of paths relative to the file")
    merged: dict = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise RecipeError(f"{path}: base recipe {base!r} not found (looked for {base_path})")
        merged = _merge(merged, _load_tree(base_path, chain + (path,)))
    return _merge(merged, data)


def _coerce(value: Any, field: Field, key: str, origin: str) -> Any:
    if value is None:
        return None
    kind = field.kind
    bad = RecipeError(f"{origin}: {key} must be {_describe(field)}, got {value!r}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif kind == "float":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise bad
    elif kind == "floats":
        if not isinstance(value, list):
            raise bad
        value = [_coerce(v, Field("float"), key, origin) for v in value]
    elif kind == "mapping":
        if not isinstance(value, Mapping):
            raise bad
        value = dict(value)
    elif kind == "switch":
        if value != "auto" and not isinstance(value, bool):
            raise bad
    elif kind == "duration":
        try:
            value = parse_duration(value)
        except ValueError as exc:
            raise RecipeError(f"{origin}: {key}: {exc}") from None
    if field.choices is not None and value not in field.choices:
        raise RecipeError(f"{origin}: {key} must be one of {list(field.choices)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key in _POSITIVE and value <= 0:
            raise RecipeError(f"{origin}: {key} must be positive, got {value!r}")
        if key in _NON_NEGATIVE and value < 0:
            raise RecipeError(f"{origin}: {key} must not be negative, got {value!r}")
        if key in _FRACTIONS and not 0 <= value <= 1:
            raise RecipeError(f"{origin}: {key} must lie in [0, 1], got {value!r}")
    return value


def _describe(field: Field) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "floats": "a list of numbers", "mapping": "a mapping", "switch": "true, false or auto",
            "duration": "a duration"}[field.kind] + " (or null)"  # fmt: skip


def _check_known(tree: Mapping, schema: Mapping, origin: str, prefix: str = "") -> None:
    unknown = sorted(set(tree) - set(schema))
    if unknown:
        where = f"section {prefix[:-1]!r}" if prefix else "the top level"
        raise RecipeError(
            f"{origin}: unknown recipe key {prefix + unknown[0]!r}; known keys at {where}: {sorted(schema)}"
        )
    for key, spec in schema.items():
        if isinstance(spec, dict) and isinstance(tree.get(key), Mapping):
            _check_known(tree[key], spec, origin, prefix + key + ".")


def _resolve(tree: Mapping, schema: Mapping, origin: str, prefix: str = "") -> dict:
    out = {}
    for key, spec in schema.items():
        full = prefix + key
        if isinstance(spec, dict):
            sub = tree.get(key, {})
            if sub is None:
                sub = {}
            if not isinstance(sub, Mapping):
                raise RecipeError(f"{origin}: {full} must be a section (mapping), got {sub!r}")
            out[key] = _resolve(sub, spec, origin, full + ".")
            continue
        if key in tree:
            out[key] = _coerce(tree[key], spec, full, origin)
        elif spec.default is _REQUIRED:
            out[key] = None
        else:
            out[key] = copy.deepcopy(spec.default)
        if out[key] is None and spec.default is _REQUIRED:
            raise RecipeError(
                f"{origin}: required recipe key {full!r} is missing; set it in the recipe or with --set {full}=..."
            )
    return out


def parse_set(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are YAML scalars (``null``, ``true``, ``2``, ``1.0e-4``, text)."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=1.0e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item!r}: the value is not a YAML scalar ({exc})") from None
        out.append((key, value))
    return out


def _leaf_paths(schema: Mapping, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            for leaf, paths in _leaf_paths(spec, prefix + key + ".").items():
                out.setdefault(leaf, []).extend(paths)
        else:
            out.setdefault(key, []).append(prefix + key)
    return out


def qualify(key: str) -> str:
    """``max_epochs`` -> ``optim.max_epochs``: a key without its section is accepted when only one section has it."""
    first = key.split(".")[0]
    if first in SCHEMA:
        return key
    paths = _leaf_paths(SCHEMA).get(first, [])
    if len(paths) == 1 and "." not in key:
        return paths[0]
    if len(paths) > 1:
        raise RecipeError(f"--set {key}: {first!r} is ambiguous; write one of {paths}")
    return key


def apply_overrides(tree: dict, overrides: Sequence[tuple[str, Any]]) -> dict:
    """Set dotted keys (``optim.lr``, ``model.overrides.num_layers``; ``lr`` alone where unambiguous) in a tree."""
    tree = copy.deepcopy(tree)
    for key, value in overrides:
        key = qualify(key)
        parts = key.split(".")
        schema: Any = SCHEMA
        node = tree
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            free = isinstance(schema, Field) and schema.kind == "mapping"
            if not free:
                if not isinstance(schema, dict) or part not in schema:
                    scope = ".".join(parts[:depth]) or "the top level"
                    known = sorted(schema) if isinstance(schema, dict) else []
                    raise RecipeError(f"--set {key}: unknown recipe key {key!r}; known keys at {scope}: {known}")
                schema = schema[part]
            if last:
                if isinstance(schema, dict):
                    raise RecipeError(
                        f"--set {key}: {key!r} is a section; set one of its keys, e.g. {key}.{next(iter(schema))}=..."
                    )
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return tree


def resolve_recipe(tree: Mapping, origin: str = "<recipe>") -> dict:
    """Validate an unresolved tree against the schema and the per-task rules; fill every default."""
    _check_known(tree, SCHEMA, origin)
    recipe = _resolve(tree, SCHEMA, origin)
    _check(recipe, origin)
    return recipe


def load_recipe(path: str | Path, overrides: Sequence[str | tuple[str, Any]] = ()) -> dict:
    """Load a recipe file (with its bases), apply ``--set`` overrides and resolve it."""
    path = find_recipe(path)
    tree = _load_tree(path)
    pairs = [o if isinstance(o, tuple) else parse_set([o])[0] for o in overrides]
    tree = apply_overrides(tree, pairs)
    origin = str(path) + (" with --set " + " ".join(f"{k}={v}" for k, v in pairs) if pairs else "")
    return resolve_recipe(tree, origin)


def _check(r: dict, origin: str) -> None:
    """Cross-field rules: what each task and schedule needs, and the model overrides."""

    def fail(msg: str) -> None:
        raise RecipeError(f"{origin}: {msg}")

    config = _checked_model(r, fail)
    _check_optim(r, fail)
    _check_schedule(r["schedule"], fail)
    _check_normalization(r["normalization"], fail)
    _check_task(r, config, fail)
    _check_run(r, config, fail)


def _checked_model(r: dict, fail: Callable[[str], None]):
    """The recipe's variant with its overrides applied (each override an EquiformerConfig field)."""
    from zoo.models.config import EquiformerConfig
    from zoo.models.variants import get_variant

    try:
        config = get_variant(r["model"]["variant"])
    except KeyError as exc:
        fail(f"model.variant: {exc.args[0]}")
    fields = {f.name for f in dataclasses.fields(EquiformerConfig)} - {"name"}
    unknown = sorted(set(r["model"]["overrides"]) - fields)
    if unknown:
        fail(
            f"unknown model override {('model.overrides.' + unknown[0])!r}; the overrides are EquiformerConfig fields: {sorted(fields)}"
        )
    try:
        config = config.replace(**_override_values(r["model"]["overrides"]))
    except (TypeError, ValueError) as exc:
        fail(f"model.overrides: {exc}")
    return config


def _check_optim(r: dict, fail: Callable[[str], None]) -> None:
    """Device syntax, and optimiser options that need a float32 model or a valid Adam beta pair."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", r["device"]):
        fail(f"device must be auto, cpu, cuda or cuda:N, got {r['device']!r}")
    if r["optim"]["amp"] and r["model"]["dtype"] != "float32":
        fail(
            f"optim.amp (bf16 autocast) needs model.dtype float32; autocast leaves a {r['model']['dtype']} model in {r['model']['dtype']}"
        )
    if r["optim"]["tf32"] and r["model"]["dtype"] != "float32":
        fail(f"optim.tf32 (TF32 matrix products on CUDA) needs model.dtype float32, got {r['model']['dtype']}")
    betas = r["optim"]["betas"]
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        fail(f"optim.betas must be two numbers in [0, 1), got {betas}")


def _check_schedule(sched: dict, fail: Callable[[str], None]) -> None:
    """Each schedule kind takes its own pair of warm-up / floor keys and refuses the other kinds' keys."""
    if sched["kind"] == "epoch_cosine":
        need, other = ("warmup_lr", "min_lr"), ("warmup_factor", "lr_min_factor")
    elif sched["kind"] == "step_cosine":
        need, other = ("warmup_factor", "lr_min_factor"), ("warmup_lr", "min_lr")
    else:
        need, other = (), ("warmup_lr", "min_lr", "warmup_factor", "lr_min_factor")
    for key in need:
        if sched[key] is None:
            fail(f"schedule.{key} is required for schedule.kind={sched['kind']}")
    for key in other:
        if sched[key] is not None:
            fail(f"schedule.{key} does not apply to schedule.kind={sched['kind']}; remove it (set it to null)")


def _check_normalization(norm: dict, fail: Callable[[str], None]) -> None:
    """A fixed normalisation gives mean and std; the other modes give neither."""
    if norm["mode"] == "fixed" and (norm["mean"] is None or norm["std"] is None):
        fail("normalization.mode=fixed needs normalization.mean and normalization.std")
    if norm["mode"] != "fixed" and (norm["mean"] is not None or norm["std"] is not None):
        fail(f"normalization.mean/std only apply to normalization.mode=fixed (mode is {norm['mode']})")


def _check_task(r: dict, config, fail: Callable[[str], None]) -> None:
    """What the task (qm9, md17, oc20) needs of the data, the variant and the loss."""
    task, loss = r["task"], r["loss"]
    if task == "qm9":
        if not r["data"]["target"]:
            fail("task qm9 needs data.target (one of mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G, Cv)")
        if config.forces or config.output != "property":
            fail(f"task qm9 needs a property variant (qm9-*), got {config.name}")
    if task == "md17":
        if not config.forces:
            fail(f"task md17 needs a variant that predicts forces (md17-*), got {config.name}")
        if loss["force_weight"] is None:
            fail("task md17 needs loss.force_weight")
    elif loss["force_weight"] is not None:
        fail(f"loss.force_weight only applies to task md17 (task is {task})")
    if task == "oc20":
        if not config.periodic:
            fail(f"task oc20 needs a periodic OC20 variant (oc20-*), got {config.name}")
        if config.aux_head and (loss["aux_weight"] is None or loss["aux_position_std"] is None):
            fail(f"variant {config.name} has the IS2RS head: set loss.aux_weight and loss.aux_position_std")
        if not config.aux_head and loss["aux_weight"] is not None:
            fail(f"loss.aux_weight needs a variant with the IS2RS auxiliary head (oc20-l1-aux*), got {config.name}")
    else:
        if loss["aux_weight"] is not None or loss["aux_position_std"] is not None:
            fail(f"loss.aux_weight/aux_position_std only apply to task oc20 (task is {task})")
        if r["noisy_nodes"]["enabled"]:
            fail(f"noisy_nodes only applies to task oc20 (task is {task})")


def _check_run(r: dict, config, fail: Callable[[str], None]) -> None:
    """Run-time options: device-held data, the budget's warm-up share, noisy nodes."""
    task = r["task"]
    if r["data"]["on_device"] is True and (task == "oc20" or config.periodic):
        fail(
            "data.on_device=true holds molecules with precomputed neighbour lists (md17, qm9); periodic cells and noisy nodes "
            "need the loader: set data.on_device to auto or false"
        )
    fraction = r["budget"]["warmup_fraction"]
    if fraction is not None and fraction >= 1.0:
        fail(
            f"budget.warmup_fraction is the share of the budgeted steps spent warming up; it must be below 1, got {fraction}"
        )
    if r["noisy_nodes"]["enabled"] and not config.aux_head:
        fail("noisy_nodes.enabled needs a variant with the IS2RS auxiliary head (its target is the relaxed position)")


def _override_values(overrides: Mapping) -> dict:
    out = {}
    for key, value in overrides.items():
        out[key] = tuple(value) if key in ("type_numbers", "radial_hidden") and isinstance(value, list) else value
    return out


def model_config(recipe: Mapping):
    """The EquiformerConfig a recipe trains: the variant with ``model.overrides`` applied. An overridden
    network is no longer the paper's, so it carries no paper parameter count (unless the overrides give one)."""
    from zoo.models.variants import get_variant

    base = get_variant(recipe["model"]["variant"])
    overrides = _override_values(recipe["model"]["overrides"])
    config = base.replace(**overrides)
    if config != base and "paper_params" not in overrides:
        config = config.replace(paper_params=None)
    return config


def build_network(recipe: Mapping):
    """The untrained Equiformer of a recipe; a configuration that cannot be built is a RecipeError."""
    from zoo.models.equiformer import Equiformer

    config = model_config(recipe)
    try:
        return Equiformer(config)
    except (ValueError, TypeError, KeyError, AssertionError, IndexError) as exc:
        raise RecipeError(
            f"model {config.name} with model.overrides {dict(recipe['model']['overrides'])} cannot be built: {exc}"
        ) from exc


def dump_recipe(recipe: Mapping) -> str:
    """The resolved recipe as YAML text (sections in schema order)."""
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=False)
