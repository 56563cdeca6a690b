"""The registry of pretrained equizoo models (timm style): one frozen `PretrainedModel` per name, saying
what the model means (dataset, targets and units, network variant, the paper's numbers and measured
metrics) and where its files are (a Hub repo at a pinned 40-hex revision, or a local release folder
`releases/<name>/`), with the sha256 of every file.

The catalogue below defines the names and their meaning; where the files are comes from registry JSON
files: the packaged `zoo/hub/published.json`, then every file in `$EQUIZOO_REGISTRY` (os.pathsep-separated;
a file that does not exist yet counts as empty).
Publishing a trained model is a data change: `equizoo publish RUN_DIR --repo ORG/NAME --register NAME`
writes an entry like

    {"format": "equizoo-registry/1", "models": {"equiformer-md17-aspirin-l2": {
        "repo_id": "ORG/equiformer-md17-aspirin-l2", "revision": "<40 hex>",
        "files": {"model.safetensors": {"sha256": "<64 hex>", "size": 123}, "config.json": {...}, ...},
        "metrics": [{"split": "test", "target": "energy", "metric": "MAE", "value": 0.0052, "unit": "eV"}]}}}

(`"release": "<folder name>"` instead of repo_id/revision for a local release; any catalogue
field may be given too, which defines a new name). Names without files say "not published yet".

Where a release's files are found, in order (`release_sources`): the Hub (an entry with repo_id +
revision), the installed model distribution `equizoo-models` (package `equizoo_models`, one folder per
name), the folder `$EQUIZOO_RELEASES/<name>`, and in a source checkout of equizoo its `releases/` folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

from zoo import paper
from zoo.data.qm9 import QM9_UNITS
from zoo.errors import ZooError
from zoo.paths import RELEASES_ENV, checkout_releases_dir, releases_dir  # noqa: F401 - releases_dir: the registry's view of it

REGISTRY_FORMAT = "equizoo-registry/1"
PACKAGED_REGISTRY = Path(__file__).resolve().parent / "hub" / "published.json"
REGISTRY_ENV = "EQUIZOO_REGISTRY"
MODELS_PACKAGE = "equizoo_models"  # import name of the model distribution `equizoo-models`
MODELS_DISTRIBUTION = "equizoo-models"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
FILE_NAME = re.compile(
    r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"
)  # a file of a model directory: no '/', '..', absolute or hidden path
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

NOT_PUBLISHED = "not published yet"
_SLICE = re.compile(r"\[[^\]]*\]$")


def base_split(label: str) -> str:
    """The split a metric's label names: `test[:1000]` -> `test`."""
    return _SLICE.sub("", label)


class RegistryError(ZooError, LookupError):
    """A registry name is unknown or unusable, or a registry file is malformed."""


@dataclass(frozen=True)
class FileHash:
    """One file of a pretrained model: path inside the model directory, sha256 and size in bytes."""

    path: str
    sha256: str
    size: int = -1


@dataclass(frozen=True)
class Metric:
    """One number: `metric` (e.g. MAE) of `target` on `split`, in `unit`; `source` says where it is from."""

    split: str
    target: str
    value: float
    unit: str
    metric: str = "MAE"
    source: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> Metric:
        try:
            return cls(split=str(d["split"]), target=str(d["target"]), value=float(d["value"]), unit=str(d.get("unit", "")),
                       metric=str(d.get("metric", "MAE")), source=str(d.get("source", "")))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(
                f"{where}: a metric needs split, target and a numeric value ({exc}): {dict(d)}"
            ) from None


@dataclass(frozen=True)
class PretrainedModel:
    """A registry entry: meaning (dataset, task, targets with units, variant, paper numbers) and location
    (Hub repo + pinned revision, or a local release folder) with the sha256 of every file."""

    name: str
    description: str
    dataset: str
    task: str
    variant: str
    targets: Tuple[Tuple[str, str], ...]  # (output name, unit)
    paper: Tuple[Metric, ...] = ()
    metrics: Tuple[Metric, ...] = ()
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    release: Optional[str] = None
    files: Tuple[FileHash, ...] = ()
    license: str = "mit"
    tags: Tuple[str, ...] = ()
    source: str = "catalogue"

    @property
    def status(self) -> str:
        if self.files and self.repo_id and self.revision:
            return "published"
        if self.files and self.release:
            return "local release"
        return NOT_PUBLISHED

    @property
    def published(self) -> bool:
        return self.status != NOT_PUBLISHED

    @property
    def hub_id(self) -> Optional[str]:
        return f"hf-hub:{self.repo_id}@{self.revision}" if self.repo_id and self.revision else None

    def unit(self, target: str) -> str:
        return dict(self.targets).get(target, "")

    def file_hashes(self) -> Dict[str, str]:
        return {f.path: f.sha256 for f in self.files}

    def release_dir(self) -> Optional[Path]:
        """The first local folder of this release that exists (see `release_sources`), else None."""
        return next((folder for _, folder in release_sources(self) if folder is not None and folder.is_dir()), None)

    def to_dict(self) -> dict:
        d = {
            "name": self.name, "description": self.description, "dataset": self.dataset, "task": self.task, "variant": self.variant,
            "targets": dict(self.targets), "status": self.status, "repo_id": self.repo_id, "revision": self.revision,
            "release": self.release, "files": {f.path: {"sha256": f.sha256, "size": f.size} for f in self.files},
            "metrics": [m.to_dict() for m in self.metrics], "paper": [m.to_dict() for m in self.paper],
            "license": self.license, "tags": list(self.tags), "source": self.source,
        }  # fmt: skip
        return d


# ------------------------------------------------------------------------------------------ catalogue
_PAPER_QM9 = "paper Table 1 (test MAE)"
_PAPER_MD17 = "paper Table 2 (test MAE)"


def _catalogue() -> Dict[str, PretrainedModel]:
    out: Dict[str, PretrainedModel] = {}
    out["equiformer-qm9-l2"] = PretrainedModel(
        name="equiformer-qm9-l2",
        description="QM9, all 12 properties: one Equiformer (Lmax=2) per target, bundled so one model predicts them all",
        dataset="QM9",
        task="qm9",
        variant="qm9-l2 (mu, alpha, homo, lumo, gap, Cv); qm9-l2-bessel (zpve); qm9-l2-bessel-drop01 (r2); qm9-l2-bessel-drop0 (U0, U, H, G)",
        targets=tuple(QM9_UNITS.items()),
        paper=tuple(Metric("test", t, float(v), u, source=_PAPER_QM9) for t, (v, u) in paper.QM9.items()),
        tags=("qm9", "molecules", "property-prediction"),
    )
    for mol in paper.MD17["l2"]:
        for lmax in (2, 3):
            e, f = paper.MD17[f"l{lmax}"][mol]
            name = f"equiformer-md17-{mol}-l{lmax}"
            out[name] = PretrainedModel(
                name=name,
                description=f"MD17 {mol.replace('_', ' ')} force field, Equiformer Lmax={lmax}: energy and forces = -dE/dx",
                dataset=f"MD17/{mol}",
                task="md17",
                variant=f"md17-l{lmax}",
                targets=(("energy", "eV"), ("forces", "eV/Å")),
                paper=(
                    Metric("test", "energy", e, "meV", source=_PAPER_MD17),
                    Metric("test", "forces", f, "meV/Å", source=_PAPER_MD17),
                ),
                tags=("md17", "force-field", "molecular-dynamics"),
            )
    out["equiformer-oc20-is2re-l1"] = PretrainedModel(
        name="equiformer-oc20-is2re-l1",
        description="OC20 IS2RE, Equiformer Lmax=1, 6 blocks, trained on IS2RE only: relaxed adsorption energy from the initial structure",
        dataset="OC20 IS2RE (all)",
        task="oc20",
        variant="oc20-l1",
        targets=(("energy", "eV"),),
        paper=tuple(
            Metric(s, "energy", v, "eV", source="paper, OC20 IS2RE trained on IS2RE only (energy MAE)")
            for s, v in paper.OC20["oc20-l1"].items()
        ),
        tags=("oc20", "catalysis", "is2re", "periodic"),
    )
    aux = paper.OC20["oc20-l1-aux18"]
    out["equiformer-oc20-is2re-aux18-l1"] = PretrainedModel(
        name="equiformer-oc20-is2re-aux18-l1",
        description="OC20 IS2RE, Equiformer Lmax=1, 18 blocks, IS2RS auxiliary head + Noisy Nodes (the paper's best OC20 model)",
        dataset="OC20 IS2RE (all)",
        task="oc20",
        variant="oc20-l1-aux18",
        targets=(("energy", "eV"), ("aux_displacement", "Å")),
        paper=(Metric("val_id", "energy", aux["val_id"], "eV", source="reference README (val ID)"),)
        + tuple(
            Metric(s, "energy", aux[s], "eV", source="paper, IS2RE + IS2RS auxiliary + Noisy Nodes (test energy MAE)")
            for s in paper.OC20_TEST_SPLITS
        ),
        tags=("oc20", "catalysis", "is2re", "periodic", "noisy-nodes"),
    )
    out.update(_cpu_catalogue(out))
    return out


_CPU_MD17 = ("aspirin", "ethanol", "naphthalene", "salicylic_acid")
_CPU_QM9 = ("gap", "homo", "lumo")


def _cpu_catalogue(full: Mapping[str, PretrainedModel]) -> Dict[str, PretrainedModel]:
    """Models trained on a 2-core CPU while no GPU was available: the reduced network of recipes/cpu/
    (2 blocks, about a third of the channels) trained for minutes, not the paper's models."""
    reduced = "reduced Equiformer (2 blocks, 48x0e+12x1e+6x2e, ~175k parameters) trained briefly on a 2-core CPU"
    out: Dict[str, PretrainedModel] = {}
    for target in _CPU_QM9:
        name = f"equiformer-qm9-{target}-small-cpu"
        out[name] = PretrainedModel(
            name=name,
            description=f"QM9 {target}: a {reduced} on 4,000 molecules; far less accurate than the paper's equiformer-qm9-l2",
            dataset="QM9",
            task="qm9",
            variant="qm9-l2, reduced (recipes/cpu/base-small-network.yml)",
            targets=((target, "eV"),),
            paper=tuple(m for m in full["equiformer-qm9-l2"].paper if m.target == target),
            tags=("qm9", "molecules", "property-prediction", "cpu-trained"),
        )
    for mol in _CPU_MD17:
        name = f"equiformer-md17-{mol}-l2-small-cpu"
        base = full[f"equiformer-md17-{mol}-l2"]
        out[name] = PretrainedModel(
            name=name,
            description=f"MD17 {mol.replace('_', ' ')} force field: a {reduced}; far less accurate than the paper's {base.name}",
            dataset=f"MD17/{mol}",
            task="md17",
            variant="md17-l2, reduced (recipes/cpu/base-small-network.yml)",
            targets=base.targets,
            paper=base.paper,
            tags=base.tags + ("cpu-trained",),
        )
    return out


# ------------------------------------------------------------------------------------- registry files
def models_package_dir() -> Optional[Path]:
    """The folder of the installed model distribution (`pip install equizoo-models`), else None."""
    try:
        spec = importlib.util.find_spec(MODELS_PACKAGE)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def release_sources(entry: PretrainedModel) -> List[Tuple[str, Optional[Path]]]:
    """The local places a release's files may be, in the order they are tried after the Hub:
    [(label, folder or None if that source is absent)]."""
    name = entry.release or entry.name
    package = models_package_dir()
    env = os.environ.get(RELEASES_ENV, "").strip()
    checkout = checkout_releases_dir()
    out: List[Tuple[str, Optional[Path]]] = [
        (
            f"installed model distribution {MODELS_DISTRIBUTION}" + ("" if package else " (not installed)"),
            package / name if package else None,
        ),
        (f"${RELEASES_ENV}" + (f"={env}" if env else " (not set)"), Path(env).expanduser() / name if env else None),
    ]
    if checkout is not None:
        out.append((f"source checkout {checkout}", checkout / name))
    return out


def registry_files() -> List[Path]:
    """Registry JSON files in merge order (later ones override earlier ones)."""
    files = [PACKAGED_REGISTRY]
    for item in os.environ.get(REGISTRY_ENV, "").split(os.pathsep):
        if item.strip():
            files.append(Path(item.strip()).expanduser())
    return files


def _read_registry(path: Path) -> Dict[str, dict]:
    if not path.is_file():
        return {}  # nothing registered there yet (`publish --register` creates it)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registry file {path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(doc, dict) or doc.get("format") != REGISTRY_FORMAT or not isinstance(doc.get("models"), dict):
        raise RegistryError(
            f"registry file {path} must be a JSON object with format {REGISTRY_FORMAT!r} and a 'models' mapping"
        )
    return doc["models"]


def _entry(name: str, data: Mapping, base: Optional[PretrainedModel], where: str) -> PretrainedModel:
    where = f"{where}: entry {name!r}"
    known = {f.name for f in dataclasses.fields(PretrainedModel)} - {"name", "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RegistryError(f"{where} has unknown keys {unknown}; known: {sorted(known)}")
    if base is None:
        missing = [k for k in ("description", "dataset", "task", "variant", "targets") if k not in data]
        if missing:
            raise RegistryError(f"{where} is not in the catalogue, so it must define {missing}")
        base = PretrainedModel(name=name, description="", dataset="", task="", variant="", targets=())
    changes: dict = {"source": where.split(": entry")[0]}
    for key in ("description", "dataset", "task", "variant", "license", "repo_id", "revision", "release"):
        if key in data:
            changes[key] = None if data[key] is None else str(data[key])
    if "targets" in data:
        changes["targets"] = tuple((str(k), str(v)) for k, v in dict(data["targets"]).items())
    if "tags" in data:
        changes["tags"] = tuple(str(t) for t in data["tags"])
    for key in ("metrics", "paper"):
        if key in data:
            changes[key] = tuple(Metric.from_dict(m, where) for m in data[key])
    if "files" in data:
        files = []
        for path, info in dict(data["files"]).items():
            if not FILE_NAME.match(str(path)):
                raise RegistryError(
                    f"{where}: file {path!r} must be a plain file name of the model directory (no '/', '..' or absolute path)"
                )
            info = {"sha256": info} if isinstance(info, str) else dict(info)
            digest = str(info.get("sha256", "")).lower()
            if not _SHA256.match(digest):
                raise RegistryError(f"{where}: file {path!r} needs a 64-hex sha256, got {info.get('sha256')!r}")
            files.append(FileHash(str(path), digest, int(info.get("size", -1))))
        changes["files"] = tuple(sorted(files, key=lambda f: f.path))
    entry = dataclasses.replace(base, **changes)
    if entry.revision is not None and not _REVISION.match(entry.revision):
        raise RegistryError(f"{where}: revision must be a full 40-hex commit sha (pinned), got {entry.revision!r}")
    if entry.repo_id is not None and not _REPO_ID.match(entry.repo_id):
        raise RegistryError(f"{where}: repo_id must look like ORG/NAME, got {entry.repo_id!r}")
    if entry.files and not ((entry.repo_id and entry.revision) or entry.release):
        raise RegistryError(f"{where} lists files but neither repo_id + revision nor release says where they are")
    if (entry.repo_id or entry.release) and not entry.files:
        raise RegistryError(f"{where} gives a location but no files with sha256; publish with --register to write them")
    return entry


@lru_cache(maxsize=8)
def _load(files: Tuple[str, ...], stamps: Tuple[float, ...]) -> Dict[str, PretrainedModel]:
    models = _catalogue()
    for path in files:
        for name, data in _read_registry(Path(path)).items():
            if not isinstance(data, Mapping):
                raise RegistryError(f"{path}: entry {name!r} must be a JSON object")
            models[name] = _entry(name, data, models.get(name), str(path))
    return models


def _models() -> Dict[str, PretrainedModel]:
    files = registry_files()
    stamps = tuple(p.stat().st_mtime_ns if p.is_file() else -1 for p in files)
    return _load(tuple(str(p) for p in files), stamps)


def list_models(pattern: str = "*", published_only: bool = False) -> List[PretrainedModel]:
    """Registry entries whose names match a shell-style wildcard, in catalogue order."""
    return [m for n, m in _models().items() if fnmatch.fnmatchcase(n, pattern) and (m.published or not published_only)]


def get_model(name: str) -> PretrainedModel:
    """The registry entry `name`; RegistryError with suggestions if unknown."""
    models = _models()
    if name in models:
        return models[name]
    close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise RegistryError(f"unknown model name {name!r}{hint} (`equizoo list` shows every registered model)")


def is_registry_name(spec: str) -> bool:
    return spec in _models()


def in_catalogue(name: str) -> bool:
    """Whether `name` is one of the built-in names (whose meaning the registry already knows)."""
    return name in _catalogue()


def register(
    name: str,
    files: Mapping[str, Mapping],
    repo_id: Optional[str] = None,
    revision: Optional[str] = None,
    release: Optional[str] = None,
    metrics: Iterable[Metric] = (),
    registry_file: Union[str, Path, None] = None,
    **fields,
) -> PretrainedModel:
    """Add or replace the entry `name` in a registry JSON file (default: the last of $EQUIZOO_REGISTRY,
    else the packaged one), atomically; returns the merged, validated entry."""
    path = Path(registry_file) if registry_file is not None else registry_files()[-1]
    data: dict = {"files": {p: dict(v) for p, v in files.items()}}
    if repo_id is not None:
        data.update(repo_id=repo_id, revision=revision)
    if release is not None:
        data["release"] = release
    metrics = list(metrics)
    if metrics:
        data["metrics"] = [m.to_dict() for m in metrics]
    data.update(fields)
    base = _catalogue().get(name)
    entry = _entry(name, data, base, str(path))
    models = _read_registry(path) if path.is_file() else {}
    models[name] = data
    doc = {"format": REGISTRY_FORMAT, "models": dict(sorted(models.items()))}
    from zoo.io import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return entry


def fields_from_config(config: Mapping) -> dict:
    """Registry fields describing a model directory's config.json, for names outside the catalogue."""
    metadata = config.get("metadata") or {}
    dataset = metadata.get("dataset") if isinstance(metadata.get("dataset"), Mapping) else {}
    recipe = metadata.get("recipe") if isinstance(metadata.get("recipe"), Mapping) else {}
    networks = config.get("networks", {})
    targets: dict = {}
    for t in config.get("targets", []):
        targets[t["name"]] = t["unit"]
        if networks.get(t["name"], {}).get("forces"):
            targets["forces"] = t.get("forces_unit") or f"{t['unit']}/Å"
    first = next(iter(networks.values()), {})
    return {
        "description": str(first.get("description") or config.get("name", "")),
        "dataset": str(dataset.get("name") or "unknown"),
        "task": str(recipe.get("task") or ""),
        "variant": ", ".join(sorted({str(n.get("name", "")) for n in networks.values()})),
        "targets": targets,
    }


def metrics_from_config(config: Mapping) -> List[Metric]:
    """Measured metrics recorded in a model's config.json metadata (none if absent).

    A release's `metadata.evaluation` (numbers `equizoo eval` reproduces) comes first; otherwise the
    training record `metadata.metrics` = {"val": {...}, "test": {...}, "units": {...}} (one target) or
    {target: that} (bundles); metric names `mae`, `energy_mae`, `force_mae`."""
    metadata = config.get("metadata") or {}
    evaluation = metadata.get("evaluation") or {}
    if isinstance(evaluation, Mapping) and evaluation.get("results"):
        return [Metric(str(r["split"]), str(r["quantity"]), float(r["value"]), str(r["unit"]), str(r.get("metric", "MAE")), "measured with `equizoo eval`")
                for r in evaluation["results"]]  # fmt: skip
    metrics = metadata.get("metrics") or {}
    targets = [t["name"] for t in config.get("targets", [])]
    blocks = (
        {targets[0]: metrics}
        if targets and ("val" in metrics or "test" in metrics)
        else {k: v for k, v in metrics.items() if k in targets}
    )
    out = []
    for target, block in blocks.items():
        if not isinstance(block, Mapping):
            continue
        units = block.get("units") or {}
        for split in ("val", "test"):
            for key, value in (block.get(split) or {}).items():
                if not isinstance(value, (int, float)) or math.isnan(value):
                    continue
                name = {"mae": target, "energy_mae": target, "force_mae": "forces"}.get(key)
                if name is None:
                    continue
                out.append(
                    Metric(split, name, float(value), str(units.get(key, "")), "MAE", "measured (config.json metadata)")
                )
    return out
