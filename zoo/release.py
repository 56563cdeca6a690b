"""Local releases: a trained model made into `releases/<name>/`, the form a maintainer then publishes.

`release_model` copies a model directory (or training run), evaluates it with the code behind
`equizoo eval` on the splits it was trained against, records those numbers and the command that
reproduces them in `config.json` (`metadata.evaluation`), writes exports checked against eager
(TorchScript, ONNX), registers the folder with the sha256 of every file, renders the model card from all
of that, and writes `manifest.json`. The card therefore shows only numbers `equizoo eval` reproduces from
the shipped files, next to the paper's. `equizoo publish NAME --repo ORG/NAME` puts a release on a Hub.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

from zoo.artifact import CONFIG, WEIGHTS, ArtifactError, atomic_write_dir, read_config
from zoo.cards import is_local_path
from zoo.paths import releases_dir
from zoo.registry import base_split

EVALUATION = "evaluation"
EPS = {"float32": 2.0**-23, "float64": 2.0**-52}  # unit round-off of the dtype a release is evaluated in
NETWORK_ULPS = 100  # round-off of the network's own arithmetic, in units of EPS relative to the metric
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ReleaseError(ArtifactError):
    """A model cannot be released as asked (bad name, no data to evaluate on, a failed check)."""


@dataclass(frozen=True)
class Release:
    """What `release_model` wrote: the folder, its registry entry and the recorded evaluation."""

    path: Path
    entry: object  # zoo.registry.PretrainedModel
    evaluation: dict
    exports: dict


def split_label(split: str, limit: Optional[int], total: int) -> str:
    """`test` for a whole split, `test[:1000]` for its first 1,000 structures."""
    return split if limit is None or limit >= total else f"{split}[:{limit}]"


def default_data(config: Mapping) -> str:
    """The `equizoo eval` dataset spec of a trained model's own dataset (qm9:TARGET, md17:MOLECULE, oc20-is2re)."""
    metadata = config.get("metadata") or {}
    task = str((metadata.get("recipe") or {}).get("task") or "")
    dataset = metadata.get("dataset") or {}
    name = str(dataset.get("name") or "")
    if task == "qm9":
        return f"qm9:{dataset.get('target')}"
    if task == "md17" and "-" in name:
        kind, molecule = name.split("-", 1)
        return f"{kind}:{molecule}"
    if task == "oc20":
        return "oc20-is2re"
    raise ReleaseError(
        f"cannot tell which dataset to evaluate {config.get('name')} on (no training record); pass --data"
    )


def roundoff_tolerance(metric: str, value: float, ref, pred, dtype: str) -> float:
    """How far a metric recomputed on other hardware may differ from the recorded one by round-off alone.

    Different CPUs (SIMD kernels, summation order) change each prediction by about one unit in its last
    place, EPS * |prediction|: a float32 energy near -17,600 eV is only stored to ~2 meV. Propagated to
    the metric: MAE moves by at most mean(EPS * |pred|), MSE by 2 * mean(|error| * EPS * |pred|), EwT by
    the share of structures whose error lies within EPS * |pred| of the threshold. On top, NETWORK_ULPS
    * EPS relative to the metric covers the round-off accumulated inside the network."""
    import numpy as np

    eps = EPS.get(str(dtype), EPS["float32"])
    ref, pred = np.asarray(ref, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    ulp = eps * np.abs(pred)
    err = np.abs(pred - ref)
    if metric == "MAE":
        bound = float(ulp.mean())
    elif metric == "MSE":
        bound = float(2.0 * np.mean(err * ulp + ulp**2))
    elif metric.startswith("EwT"):
        from zoo.use.evaluate import EWT_THRESHOLD

        bound = 100.0 * float(np.mean(np.abs(err - EWT_THRESHOLD) <= ulp))
    else:
        bound = 0.0
    return bound + NETWORK_ULPS * eps * abs(float(value))


def _eval_command(name: str, data: str, source: Optional[str], split: str, limit: Optional[int]) -> str:
    words = ["equizoo", "eval", data, "--model", name, "--split", split]
    if limit is not None:
        words += ["--limit", str(limit)]
    if source is not None:
        words += ["--source", source]
    return " ".join(shlex.quote(w) for w in words)


def source_placeholder(path: Union[str, Path]) -> str:
    """A public stand-in for a local data folder: `.../mdbenchgnn/ethanol` -> `PATH_TO_MDBENCHGNN_ETHANOL`."""
    parts = [p for p in Path(str(path).rstrip("/")).parts[-2:] if p not in ("", ".", "..", "/")]
    return "PATH_TO_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_").upper() for p in parts)


def public_evaluation(record: Mapping, name: str, config: Mapping) -> dict:
    """The evaluation record with a local data folder replaced by the public dataset spec and a placeholder."""
    record = dict(record)
    local = (
        record.get("source")
        if is_local_path(record.get("source"))
        else (record.get("data") if is_local_path(record.get("data")) else None)
    )
    if local is None:
        return record
    placeholder = source_placeholder(local)
    try:
        spec = default_data(config) if is_local_path(record.get("data")) else str(record["data"])
    except ReleaseError:  # no training record says which dataset: the placeholder is the dataset path
        spec, placeholder = placeholder, None
    labels = list(dict.fromkeys(r["split"] for r in record.get("results", [])))
    commands = [_eval_command(name, spec, placeholder, base_split(lb), next((r["n"] for r in record["results"] if r["split"] == lb), None) if lb != base_split(lb) else None)
                for lb in labels]  # fmt: skip
    record.update(data=spec, source=None, source_placeholder=placeholder, commands=commands)
    return record


def public_metadata(metadata: Mapping, name: str, config: Mapping) -> dict:
    """`metadata` without paths of the machine that trained or released the model (see the module doc)."""
    from zoo.cards import dataset_facts

    out = {k: v for k, v in metadata.items() if k != "run_dir"}
    if isinstance(out.get("dataset"), Mapping):
        ds = {k: v for k, v in out["dataset"].items() if k != "path"}
        if is_local_path(ds.get("source")):
            facts = dataset_facts({"dataset": ds})
            ds["source"] = facts.source if facts is not None else source_placeholder(ds["source"])
        out["dataset"] = ds
    if isinstance(out.get(EVALUATION), Mapping):
        out[EVALUATION] = public_evaluation(out[EVALUATION], name, {**config, "metadata": out})
    return out


def training_elements(config: Mapping, source: Optional[str] = None, cache_dir=None) -> list:
    """Sorted atomic numbers of a model's training data (the split and limit its training record names),
    read from the prepared dataset (prepared from `source` if needed)."""
    import numpy as np

    from zoo.data import DataError, load_dataset

    ds = (config.get("metadata") or {}).get("dataset") or {}
    if not ds.get("name"):
        raise ReleaseError(
            f"{config.get('name')}: its config.json records no training dataset, so its elements cannot be computed"
        )
    try:
        dataset = load_dataset(
            str(ds["name"]), cache_dir=cache_dir, prepare=True, **({"source": str(source)} if source else {})
        )
    except DataError as exc:
        raise ReleaseError(
            f"dataset {ds['name']} (to record the elements of the training data): {exc}; pass --source PATH"
        ) from None
    train = dataset.split(str((ds.get("splits") or {}).get("train") or "train"))
    limit = (ds.get("limits") or {}).get("train")
    if limit is not None:
        train = train.subset(np.arange(min(int(limit), len(train))))
    return train.elements()


def evaluate_release(model_dir: Union[str, Path], name: str, data: str, *, source: Optional[str] = None, splits: Sequence[str] = ("val", "test"),
                     limits: Optional[Mapping[str, Optional[int]]] = None, cache_dir=None, progress: bool = False) -> dict:  # fmt: skip
    """Evaluate a model directory exactly as `equizoo eval` does (eager, CPU, the model's dtype) and return
    the `metadata.evaluation` record: data spec, commands and one result per split and quantity."""
    from zoo.use.evaluate import open_dataset, run_evaluation

    limits = dict(limits or {})
    opened = open_dataset(data, source=source, cache_dir=cache_dir)
    results, commands = [], []
    for split in splits:
        if split not in opened.split_names:
            raise ReleaseError(
                f"dataset {data} has no split {split!r} (it has {', '.join(opened.split_names)}); choose --split from those"
            )
        total = len(opened.split(split))
        limit = limits.get(split)
        ev = run_evaluation(
            opened, model_dir, split=split, limit=limit, device="cpu", backend="eager", progress=progress
        )
        label = split_label(split, limit, total)
        commands.append(_eval_command(name, data, source, split, limit if label != split else None))
        for row in ev.metrics.to_dict(orient="records"):
            ref, pred, _ = ev.pairs.get(row["quantity"]) or next(iter(ev.pairs.values()))
            tolerance = roundoff_tolerance(row["metric"], row["value"], ref, pred, ev.info["dtype"])
            results.append({"split": label, "quantity": row["quantity"], "metric": row["metric"], "unit": row["unit"], "value": float(row["value"]),
                            "n": int(row["n"]), "split_size": total, "roundoff": tolerance})  # fmt: skip
    return {
        "data": data,
        "source": source,
        "backend": "eager",
        "device": "cpu",
        "dtype": ev.info["dtype"],
        "commands": commands,
        "results": results,
    }


def data_elements(data: str, *, source: Optional[str] = None, cache_dir=None) -> list:
    """Sorted atomic numbers of the training structures of a dataset spec (every split if it has no
    `train` split): what a model trained on it has seen, recorded as config `metadata.elements`."""
    from zoo.use.evaluate import open_dataset

    opened = open_dataset(data, source=source, cache_dir=cache_dir)
    splits = ["train"] if "train" in opened.split_names else list(opened.split_names)
    found: set = set()
    for split in splits:
        structures = opened.split(split)
        if hasattr(structures, "elements"):
            found.update(structures.elements())
        else:
            for s in structures:
                found.update(int(z) for z in s.species)
    return sorted(found)


def _meaning(name: str, config: Mapping) -> dict:
    from zoo.registry import fields_from_config, in_catalogue

    return {} if in_catalogue(name) else fields_from_config(config)


def release_model(
    model: Union[str, Path],
    name: str,
    *,
    data: Optional[str] = None,
    source: Optional[str] = None,
    splits: Sequence[str] = ("val", "test"),
    limits: Optional[Mapping[str, Optional[int]]] = None,
    formats: Union[str, Sequence[str]] = ("torchscript", "onnx"),
    onnx_optimize: bool = True,
    note: Optional[str] = None,
    hardware_note: Optional[str] = None,
    releases: Union[str, Path, None] = None,
    registry_file: Union[str, Path, None] = None,
    cache_dir=None,
    overwrite: bool = False,
    progress: bool = True,
) -> Release:
    """Make `releases/<name>/` from a model or training-run directory (see the module doc).

    `data`/`source`: the `equizoo eval` dataset spec and raw files (default: the model's training dataset);
    `limits`: {split: first N} (default: the limits it was trained with); `onnx_optimize`: shrink the ONNX
    graph with onnxscript's optimizer (minutes, checked against eager like every export); `note` / `hardware_note`: text
    for the card that the training record cannot carry. Nothing is left behind on error:
    the folder appears in one rename after evaluation and export checks passed."""
    from zoo.export import export_model
    from zoo.hub import model_dir_of

    root, out = _release_folder(releases, name, overwrite)
    src = model_dir_of(model)
    config = read_config(src)
    if not (src / WEIGHTS).is_file():
        raise ReleaseError(f"{src} has no {WEIGHTS}; release a trained model directory or training run")
    metadata = dict(config.get("metadata") or {})
    data = data or default_data(config)
    if not metadata.get("elements"):
        metadata["elements"] = _release_elements(config, metadata, data, source, cache_dir)
    if limits is None:
        recorded = (metadata.get("dataset") or {}).get("limits") or {}
        limits = {s: recorded.get(s) for s in splits}
    notes = {key: text for key, text in (("note", note), ("hardware_note", hardware_note)) if text}
    exports: dict = {}
    evaluation: dict = {}

    def write(tmp: Path) -> None:
        nonlocal exports, evaluation
        for file in (CONFIG, WEIGHTS):
            shutil.copyfile(src / file, tmp / file)
        measured = evaluate_release(
            tmp, name, data, source=source, splits=splits, limits=limits, cache_dir=cache_dir, progress=progress
        )
        public = public_metadata({**metadata, EVALUATION: measured, "registry_name": name, **notes}, name, config)
        evaluation = public[EVALUATION]
        (tmp / CONFIG).write_text(
            json.dumps({**config, "name": name, "metadata": public}, indent=1, ensure_ascii=False) + "\n"
        )
        if formats:
            done = export_model(tmp, formats, progress=progress, onnx_optimize=onnx_optimize)
            exports = {k: v.to_dict() for k, v in done.items()}

    root.mkdir(parents=True, exist_ok=True)
    atomic_write_dir(out, write, overwrite=overwrite)
    entry = _register_and_card(out, name, registry_file)
    return Release(out, entry, evaluation, exports)


def _release_folder(releases: Union[str, Path, None], name: str, overwrite: bool) -> tuple[Path, Path]:
    """The releases root and the release's folder in it (refused if it exists and `overwrite` is off)."""
    if not _NAME.match(name):
        raise ReleaseError(
            f"release name {name!r} must be lowercase letters, digits, '.', '_' or '-' (e.g. equiformer-md17-aspirin-l2)"
        )
    root = Path(releases) if releases is not None else releases_dir()
    if root is None:
        raise ReleaseError(
            "no releases folder: pass --releases-dir DIR or set EQUIZOO_RELEASES (only a source checkout has releases/ of its own)"
        )
    out = root / name
    if out.exists() and not overwrite:
        raise ReleaseError(f"{out} already exists; pass --overwrite to replace that release")
    return root, out


def _release_elements(config: dict, metadata: dict, data: str, source: Optional[str], cache_dir) -> list:
    """The elements of the training data, for a model whose config does not record them: from its recorded
    training dataset, else from the evaluation dataset."""
    if (metadata.get("dataset") or {}).get("name"):
        return training_elements(config, source or (data if is_local_path(data) else None), cache_dir)
    return data_elements(data, source=source, cache_dir=cache_dir)


def _register_and_card(out: Path, name: str, registry_file) -> object:
    """Register the folder's files, render the card from config + registry, register again (the card
    changed) and write the manifest: the one sequence every release record goes through."""
    from zoo.cards import write_card
    from zoo.hub import hash_files
    from zoo.hub.manifest import write_manifest
    from zoo.registry import metrics_from_config, register

    final = read_config(out)
    meaning = _meaning(name, final)
    metrics = metrics_from_config(final)
    entry = register(name, hash_files(out), release=name, metrics=metrics, registry_file=registry_file, **meaning)
    write_card(out, entry)
    entry = register(name, hash_files(out), release=name, metrics=metrics, registry_file=registry_file, **meaning)
    write_manifest(out, name)
    _readable(out)
    return entry


def restate_release(
    name: str,
    *,
    source: Optional[str] = None,
    hardware_model: Optional[str] = None,
    hardware_note: Optional[str] = None,
    releases: Union[str, Path, None] = None,
    registry_file: Union[str, Path, None] = None,
    cache_dir=None,
) -> Release:
    """Rewrite the public record of an existing release in place: `metadata.elements` from its training
    data (prepared from `source` if needed), no machine paths (`public_metadata`), the CPU model and a
    hardware note if given; then the card, registry hashes and manifest. Weights, exports and measured
    numbers stay as they are (the files are verified first)."""
    from zoo.hub import pull

    root = Path(releases) if releases is not None else releases_dir()
    if root is None or not (root / name).is_dir():
        raise ReleaseError(f"no release folder {name} in {root}; pass --releases-dir DIR or set EQUIZOO_RELEASES")
    out = root / name
    pull(name)  # verifies every file against the registry before anything is rewritten
    config = read_config(out)
    metadata = dict(config.get("metadata") or {})
    metadata["elements"] = training_elements(config, source, cache_dir)
    if hardware_model:
        metadata["hardware"] = {**(metadata.get("hardware") or {}), "cpu_model": hardware_model}
    if hardware_note:
        metadata["hardware_note"] = hardware_note
    text = (
        json.dumps({**config, "metadata": public_metadata(metadata, name, config)}, indent=1, ensure_ascii=False) + "\n"
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG}.", dir=out)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out / CONFIG)
    entry = _register_and_card(out, name, registry_file)
    record = read_config(out)["metadata"].get(EVALUATION) or {}
    return Release(out, entry, record, {})


def _readable(folder: Path) -> None:
    """Temp files are created private (0600/0700); a release is read by everyone who installs it."""
    folder.chmod(0o755)
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(0o644)


def check_release(name: str, *, data: Optional[str] = None, source: Optional[str] = None, cache_dir=None, rtol: float = 1e-9,
                  progress: bool = False) -> Dict[str, tuple]:  # fmt: skip
    """Re-run the evaluation recorded in a release and compare it with its card and registry entry.

    `data` / `source` replace the recorded dataset spec / raw files (the same data found elsewhere).
    Returns {"split/quantity": (recorded, measured, tolerance)}. ReleaseError if a re-measured number
    differs from the recorded one by more than the round-off of its dtype allows (`roundoff_tolerance`:
    the same on any CPU), or if the card, registry and config (copies of one number) differ beyond rtol."""
    from zoo.cards import CARD, card_metrics
    from zoo.hub import pull
    from zoo.registry import get_model

    entry = get_model(name)
    folder = pull(name)
    config = read_config(folder)
    record = (config.get("metadata") or {}).get(EVALUATION)
    if not record:
        raise ReleaseError(f"{name} has no recorded evaluation in its config.json; release it with `equizoo release`")
    card = {(m["dataset_split"], m["metric_name"]): float(m["metric_value"]) for m in card_metrics(folder / CARD)}
    registered = {(m.split, m.target): m.value for m in entry.metrics}
    splits = [base_split(s) for s in dict.fromkeys(r["split"] for r in record["results"])]
    limits = {
        base_split(r["split"]): (r["n"] if r["split"] != base_split(r["split"]) else None) for r in record["results"]
    }
    if (
        data is None
        and source is not None
        and record["data"].partition(":")[0] not in ("qm9", "md17", "rmd17", "oc20", "oc20-is2re")
    ):
        data, source = source, None  # the recorded dataset is a local folder: `source` is that folder found elsewhere
    fresh = evaluate_release(folder, name, data or record["data"], source=source if source is not None else record.get("source"),
                             splits=splits, limits=limits, cache_dir=cache_dir, progress=progress)  # fmt: skip
    measured = {(r["split"], r["quantity"]): r["value"] for r in fresh["results"]}
    tolerances = {(r["split"], r["quantity"]): r["roundoff"] for r in fresh["results"]}
    dtype = fresh["dtype"]
    atol = 1e-12
    out = {}
    for r in record["results"]:
        key = (r["split"], r["quantity"])
        value = measured.get(key)
        if value is None:
            raise ReleaseError(
                f"{name}: {r['split']} {r['quantity']} {r['metric']} is recorded but `equizoo eval` measures no such number"
            )
        tolerance = tolerances[key]
        if abs(value - r["value"]) > tolerance:
            raise ReleaseError(
                f"{name}: {r['split']} {r['quantity']} {r['metric']} recorded {r['value']:.6g} {r['unit']}, `equizoo eval` gives {value:.6g}: "
                f"they differ by {abs(value - r['value']):.3g}, more than the {dtype} round-off bound {tolerance:.3g} {r['unit']} "
                f"(one unit in the last place of every prediction, averaged into the metric, plus {NETWORK_ULPS} units relative to it); "
                "the data evaluated now is not the recorded data, or the code computes differently"
            )
        if abs(registered.get(key, float("nan")) - r["value"]) > atol + rtol * abs(r["value"]):
            raise ReleaseError(
                f"{name}: the registry's {key} metric {registered.get(key)} differs from config.json's {r['value']}"
            )
        label = f"{r['quantity']} {r['metric']} ({r['unit']})"
        if abs(card.get((r["split"], label), float("nan")) - r["value"]) > atol + rtol * abs(r["value"]):
            raise ReleaseError(
                f"{name}: the card's {r['split']} {label} {card.get((r['split'], label))} differs from config.json's {r['value']}"
            )
        out[f"{r['split']}/{r['quantity']}"] = (r["value"], value, tolerance)
    return out


def local_releases() -> list:
    """Registry entries whose files are a local release folder."""
    from zoo.registry import list_models

    return [m for m in list_models() if m.release and not m.repo_id]


__all__ = ["EVALUATION", "Release", "ReleaseError", "base_split", "check_release", "data_elements", "default_data", "evaluate_release", "local_releases",
           "public_metadata", "release_model", "restate_release", "roundoff_tolerance", "source_placeholder", "split_label", "training_elements"]  # fmt: skip
