"""Evaluation: the paper's metrics of a model on a dataset split, with the paper's number beside each.

Datasets (`DATASET` of `equizoo eval`):
- `qm9`, `qm9:TARGET[,TARGET...]`: MAE per target in the paper's units (meV for HOMO, LUMO, gap, ZPVE,
  U0, U, H, G; D, a0^3, a0^2, cal/mol K for the others); default split `test`;
- `md17:MOLECULE`, `rmd17:MOLECULE`: energy MAE (meV) and force MAE (meV/Å, mean over all force
  components, as the reference computes it); default split `test`;
- `oc20-is2re`: energy MAE (eV), MSE (eV^2) and EwT (%, share of structures with |error| < 0.02 eV)
  against the relaxed adsorption energy; splits `val_id`, `val_ood_ads`, `val_ood_cat`, `val_ood_both`;
- a local path in one of these layouts: a prepared dataset folder (`equizoo data prepare`), an
  MDBENCHGNN MD17 folder (train/val/test.npz), an MD npz file, OC20 LMDB files or a folder of them, or a
  folder of QM9 `dsgdb9nsd_*.xyz` files (split `all`).

Registered names are opened through zoo.data (`load_dataset`; `source` prepares them from a local copy).
The paper's numbers are those of docs/equiformer-spec.md §3 (paper Tables 1 and 2, the OC20 validation
ablation); a dash where the paper has none (rMD17, OC20 MSE and EwT, which the spec marks unverified).

`zoo.evaluate(...)` is this module's `evaluate` (the module is callable).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from zoo import keys, paper
from zoo._version import __version__
from zoo.data import DataError, Structure
from zoo.data.units import energy_factor
from zoo.errors import UseError
from zoo.io import atomic_write
from zoo.spec import ModelSpec
from zoo.use.inputs import Item
from zoo.use.predict import DEFAULT_BATCH_SIZE, DEFAULT_MAX_ATOMS, run_items
from zoo.use.runner import Runner, load_runner

QM9_ENERGY_TARGETS = ("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G")
EWT_THRESHOLD = 0.02  # eV
DEFAULT_SPLITS = {"qm9": "test", "md17": "test", "oc20": "val_id"}

METRIC_COLUMNS = ("dataset", "split", "quantity", "metric", "unit", "value", "paper", "paper_source", "n")


# ---------------------------------------------------------------------------------------------- datasets
@dataclasses.dataclass
class EvalData:
    """A dataset opened for evaluation: its kind, display name and how to get a split's structures."""

    kind: str  # qm9 | md17 | oc20
    name: str
    molecule: str
    targets: tuple[str, ...]  # QM9 targets asked for ("" = all the model has)
    split_names: list[str]
    get: object  # split name -> sequence of Structure

    def split(self, name: str) -> Sequence[Structure]:
        if name not in self.split_names:
            raise UseError(f"dataset {self.name} has no split {name!r}; available: {', '.join(self.split_names)}")
        return self.get(name)


def _prepared(dataset, kind: str, name: str, molecule: str = "", targets: tuple = ()) -> EvalData:
    return EvalData(kind, name, molecule, targets, dataset.split_names, dataset.split)


def _in_memory(kind: str, name: str, splits: dict, molecule: str = "", targets: tuple = ()) -> EvalData:
    return EvalData(kind, name, molecule, targets, list(splits), lambda s: splits[s])


def _kind_of_manifest(manifest: dict) -> str:
    kind = manifest.get("dataset", {}).get("kind", "custom")
    if kind == "qm9":
        return "qm9"
    if kind == "oc20" or keys.Y_RELAXED in manifest.get("targets", {}):
        return "oc20"
    if keys.ENERGY in manifest.get("targets", {}):
        return "md17"
    raise UseError(
        f"prepared dataset {manifest.get('name')}: cannot tell how to evaluate it (kind {kind!r}, targets {list(manifest.get('targets', {}))})"
    )


def _open_path(path: Path, targets: tuple) -> EvalData:
    from zoo.data import PreparedDataset, find_oc20_splits, iter_qm9_figshare, read_md_npz, read_mdbenchgnn
    from zoo.data.oc20 import iter_lmdb_any

    if (path / "manifest.json").is_file():
        dataset = PreparedDataset(path)
        kind = _kind_of_manifest(dataset.manifest)
        return _prepared(dataset, kind, dataset.name, dataset.name.split("-", 1)[-1] if kind == "md17" else "", targets)
    if path.is_dir() and (path / "train.npz").is_file():
        return _in_memory("md17", str(path), read_mdbenchgnn(path), path.name)
    if path.suffix == ".npz":
        return _in_memory("md17", str(path), {"all": read_md_npz(path)}, path.stem)
    if (path.is_dir() and any(path.glob("dsgdb9nsd_*.xyz"))) or path.name.endswith((".tar.bz2", ".tar")):
        return _in_memory("qm9", str(path), {"all": list(iter_qm9_figshare(path))}, targets=targets)
    if path.suffix in (".lmdb", ".aselmdb") or path.is_dir():
        files = find_oc20_splits(path)
        splits = {split: [s for f in fs for s in iter_lmdb_any(f)] for split, fs in files.items()}
        return _in_memory("oc20", str(path), splits)
    raise UseError(
        f"{path}: not a dataset layout equizoo evaluates (a prepared folder, MDBENCHGNN folder, MD npz, OC20 LMDB or QM9 xyz folder)"
    )


def open_dataset(
    spec: Union[str, os.PathLike],
    source=None,
    cache_dir=None,
    target: Optional[str] = None,
    energy_unit: Optional[str] = None,
) -> EvalData:
    """Open `qm9[:targets]`, `md17:MOL`, `rmd17:MOL`, `oc20-is2re` or a local path for evaluation.

    `source` prepares a registered dataset from a local copy; `energy_unit` states the unit of an extxyz
    source (e.g. `meV` for the rMD17 exports)."""
    from zoo.data import load_dataset
    from zoo.data.md17 import MD17_FILES, RMD17_FILES

    text = os.fspath(spec)
    targets: tuple = tuple(t for t in (target or "").split(",") if t)
    path = Path(text).expanduser()
    if path.exists():
        return _open_path(path, targets)
    head, _, tail = text.partition(":")
    if Path(head).expanduser().exists() and tail:
        return _open_path(Path(head).expanduser(), targets or tuple(t for t in tail.split(",") if t))
    options = {"source": os.fspath(source)} if source is not None else {}
    if energy_unit is not None:
        options["energy_unit"] = energy_unit
    if head == "qm9":
        targets = targets or tuple(t for t in tail.split(",") if t)
        from zoo.data import QM9_TARGETS

        unknown = [t for t in targets if t not in QM9_TARGETS]
        if unknown:
            raise UseError(f"{text}: unknown QM9 target(s) {unknown}; known: {', '.join(QM9_TARGETS)}")
        name, kind, molecule = "qm9", "qm9", ""
    elif head in ("md17", "rmd17"):
        known = MD17_FILES if head == "md17" else RMD17_FILES
        if tail not in known:
            raise UseError(
                f"{text}: unknown {head} molecule {tail!r}; known: {', '.join(known)} (write {head}:MOLECULE)"
            )
        name, kind, molecule = f"{head}-{tail}", "md17", tail
    elif head in ("oc20-is2re", "oc20") and not tail:
        name, kind, molecule = "oc20-is2re", "oc20", ""
        from zoo.extras import MissingExtra, require

        try:
            require("lmdb", what="the OC20 dataset (LMDB files)")
        except MissingExtra as exc:
            raise UseError(str(exc)) from None
    else:
        raise UseError(
            f"{text}: unknown dataset; use qm9[:TARGET], md17:MOLECULE, rmd17:MOLECULE, oc20-is2re or a local dataset path"
        )
    try:
        dataset = load_dataset(name, cache_dir=cache_dir, **options)
    except DataError as exc:
        raise UseError(
            f"dataset {name} is not prepared and cannot be prepared without its files ({exc}); pass --source PATH "
            f"(a local copy) or run `equizoo data prepare {name} --source PATH` (or --download) first"
        ) from None
    return _prepared(dataset, kind, name, molecule, targets)


# ---------------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass
class Evaluation:
    """Metrics of one evaluation, the (reference, predicted) pairs behind them and what was evaluated."""

    metrics: object  # pandas DataFrame with METRIC_COLUMNS
    pairs: dict  # quantity -> (reference, predicted, unit), in the metric's display unit
    info: dict

    def to_json(self) -> dict:
        rows = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in self.metrics.to_dict(orient="records")
        ]
        return {**self.info, "equizoo_version": __version__, "metrics": rows}

    def write_json(self, path: Union[str, os.PathLike]) -> Path:
        return atomic_write(
            path, lambda tmp: Path(tmp).write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
        )

    def panels(self, max_points: int = 20000) -> list[dict]:
        """What each parity-plot panel shows: its title carries the metric of the whole split (as in the
        table), the points are at most `max_points` of the pairs (a fixed random subset), and total
        energies are drawn relative to the reference mean (absolute values of thousands of eV hide the spread)."""
        rng = np.random.default_rng(0)
        out = []
        for name, (ref, pred, unit) in self.pairs.items():
            rows = self.metrics[(self.metrics["quantity"] == name) & (self.metrics["metric"] == "MAE")]
            mae = float(rows["value"].iloc[0]) if len(rows) else float(np.mean(np.abs(pred - ref)))
            label = "reference"
            if name == keys.ENERGY:  # MD17 total energies (OC20 pairs are "adsorption energy")
                shift = float(np.mean(ref))
                ref, pred = ref - shift, pred - shift
                label = f"reference - mean ({shift:.6g} {unit})"
            if ref.size > max_points:
                pick = rng.choice(ref.size, max_points, replace=False)
                ref, pred = ref[pick], pred[pick]
            shown = (
                f" ({ref.size:,} of {self.pairs[name][0].size:,} points shown)"
                if ref.size < self.pairs[name][0].size
                else ""
            )
            out.append({"name": name, "ref": ref, "pred": pred, "unit": unit, "title": f"{name}: MAE {mae:.4g} {unit}{shown}",
                        "xlabel": f"{label} [{unit}]", "ylabel": f"{'predicted - mean' if label != 'reference' else 'predicted'} [{unit}]"})  # fmt: skip
        return out

    def plot(self, path: Union[str, os.PathLike], max_points: int = 20000) -> Path:
        """Parity plot (predicted against reference, one panel per quantity, see `panels`) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = self.panels(max_points)
        names = [p["name"] for p in panels]
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            ref, pred = panel["ref"], panel["pred"]
            ax.scatter(ref, pred, s=14 if ref.size < 500 else 4, alpha=0.6, linewidths=0)
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
            ax.set_title(panel["title"], fontsize=9)
            ax.set_xlabel(panel["xlabel"])
            ax.set_ylabel(panel["ylabel"])
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.suptitle(
            f"{self.info['model']} on {self.info['dataset']} ({self.info['split']}, n={self.info['n_structures']})",
            fontsize=11,
        )
        fig.tight_layout()

        def save(tmp: str) -> None:
            fig.savefig(tmp, format="png", dpi=110)

        try:
            return atomic_write(path, save)
        finally:
            plt.close(fig)


def _convert(value: np.ndarray, unit: str, to: str) -> np.ndarray:
    if unit == to:
        return value
    try:
        return value * (energy_factor(unit) / energy_factor(to))
    except DataError:
        raise UseError(f"cannot convert {unit!r} to {to!r}; the model and the dataset disagree on units") from None


def _paper_md17(info: ModelSpec, molecule: str, dataset: str) -> tuple[Optional[tuple], str]:
    if dataset.startswith("rmd17"):
        return None, ""
    variant = info.variants[0]
    row = paper.MD17["l3" if variant.startswith("md17-l3") else "l2"]
    return row.get(molecule), paper.SOURCES["md17"] if molecule in row else ""


def _row(
    data: EvalData, split: str, quantity: str, metric: str, unit: str, value: float, paper, source: str, n: int
) -> dict:
    return dict(dataset=data.name, split=split, quantity=quantity, metric=metric, unit=unit, value=float(value),
                paper=float(paper) if paper is not None else math.nan, paper_source=source if paper is not None else "", n=int(n))  # fmt: skip


def _qm9_metrics(data: EvalData, split: str, info: ModelSpec, items: list[Item]) -> tuple[list, dict]:
    from zoo.data import QM9_TARGETS, QM9_UNITS

    model_targets = [t.name for t in info.targets if t.name in QM9_TARGETS]
    targets = list(data.targets) or model_targets
    missing = [t for t in targets if t not in model_targets]
    if missing or not targets:
        raise UseError(
            f"model {info.name} does not predict QM9 target(s) {missing or '(none)'}; it predicts {[t.name for t in info.targets]}"
        )
    ablation = paper.QM9_ABLATION.get(info.variants[0])
    rows, pairs = [], {}
    for name in targets:
        ref_unit = items[0].structure.units.get(name, QM9_UNITS[name])
        ref = np.array([item.structure.targets[name] for item in items], dtype=np.float64)
        pred = _convert(np.array([item.values[name] for item in items]), info.target(name).unit, ref_unit)
        unit = ref_unit
        if name in QM9_ENERGY_TARGETS:
            ref, pred, unit = _convert(ref, ref_unit, "meV"), _convert(pred, ref_unit, "meV"), "meV"
        reported = ablation.get(name) if ablation else paper.QM9[name][0]
        source = paper.SOURCES["qm9-ablation" if ablation else "qm9"]
        rows.append(_row(data, split, name, "MAE", unit, np.mean(np.abs(pred - ref)), reported, source, len(items)))
        pairs[name] = (ref, pred, unit)
    return rows, pairs


def _md17_metrics(data: EvalData, split: str, info: ModelSpec, items: list[Item]) -> tuple[list, dict]:
    if not info.energy_target:
        raise UseError(f"model {info.name} predicts no energy with forces; MD17 evaluation needs a force-field model")
    t = info.target(info.energy_target)
    force_unit = t.forces_unit or f"{t.unit}/Å"
    e_ref = np.array([item.structure.targets[keys.ENERGY] for item in items])
    e_pred = _convert(np.array([item.values[t.name] for item in items]), t.unit, "eV")
    f_ref = np.concatenate([item.structure.targets[keys.FORCES].reshape(-1) for item in items])
    f_pred = _convert(
        np.concatenate([item.per_atom[keys.FORCES].reshape(-1) for item in items]), force_unit.rsplit("/", 1)[0], "eV"
    )
    e_ref, e_pred, f_ref, f_pred = (_convert(x, "eV", "meV") for x in (e_ref, e_pred, f_ref, f_pred))
    reported, source = _paper_md17(info, data.molecule, data.name)
    rows = [
        _row(
            data,
            split,
            "energy",
            "MAE",
            "meV",
            np.mean(np.abs(e_pred - e_ref)),
            reported[0] if reported else None,
            source,
            len(items),
        ),
        _row(
            data,
            split,
            "forces",
            "MAE",
            "meV/Å",
            np.mean(np.abs(f_pred - f_ref)),
            reported[1] if reported else None,
            source,
            len(items),
        ),
    ]
    return rows, {"energy": (e_ref, e_pred, "meV"), "forces": (f_ref, f_pred, "meV/Å")}


def _oc20_target(info: ModelSpec) -> str:
    names = [t.name for t in info.targets]
    if keys.Y_RELAXED in names:
        return keys.Y_RELAXED
    energies = [t.name for t in info.targets if t.unit in ("eV", "meV")]
    if len(energies) != 1:
        raise UseError(f"model {info.name}: cannot tell which output is the relaxed adsorption energy among {names}")
    return energies[0]


def _oc20_metrics(data: EvalData, split: str, info: ModelSpec, items: list[Item]) -> tuple[list, dict]:
    name = _oc20_target(info)
    ref = np.array([item.structure.targets[keys.Y_RELAXED] for item in items])
    pred = _convert(np.array([item.values[name] for item in items]), info.target(name).unit, "eV")
    err = pred - ref
    variant = info.variants[0]
    reported = paper.OC20.get(variant, {}).get(split) if split in paper.OC20_VAL_SPLITS else None
    source = paper.SOURCES.get(variant, paper.SOURCES["oc20"])
    rows = [
        _row(data, split, "energy", "MAE", "eV", np.mean(np.abs(err)), reported, source, len(items)),
        _row(data, split, "energy", "MSE", "eV^2", np.mean(err**2), None, "", len(items)),
        _row(
            data,
            split,
            "energy",
            f"EwT@{EWT_THRESHOLD:g}eV",
            "%",
            100.0 * np.mean(np.abs(err) < EWT_THRESHOLD),
            None,
            "",
            len(items),
        ),
    ]
    return rows, {"adsorption energy": (ref, pred, "eV")}


_METRICS = {"qm9": _qm9_metrics, "md17": _md17_metrics, "oc20": _oc20_metrics}
_KIND_OF_NAME = {"qm9": "qm9", "md17": "md17", "rmd17": "md17", "oc20-is2re": "oc20", "oc20": "oc20"}
EXISTING = "`equizoo list --published` shows the models that exist"


def kind_of_spec(spec) -> Optional[str]:
    """qm9 / md17 / oc20 for a registered dataset spec, None for a local path (known only once opened)."""
    text = os.fspath(spec)
    if Path(text).expanduser().exists():
        return None
    return _KIND_OF_NAME.get(text.partition(":")[0])


def check_model_fits(kind: str, info: ModelSpec, name: str, targets: Sequence[str] = ()) -> None:
    """UseError, before anything is computed, when the model cannot be evaluated on a dataset of `kind`."""
    predicts = ", ".join(t.name for t in info.targets)
    if kind == "md17" and not info.energy_target:
        raise UseError(f"model {info.name} predicts {predicts} without forces; {name} needs a force-field model (energy and forces), e.g. "
                       f"--model equiformer-md17-ethanol-l2-small-cpu; {EXISTING}")  # fmt: skip
    if kind == "qm9":
        from zoo.data import QM9_TARGETS

        have = [t.name for t in info.targets if t.name in QM9_TARGETS]
        missing = [t for t in targets if t not in have]
        if missing or not have:
            raise UseError(f"model {info.name} predicts {predicts}, not the QM9 target(s) {', '.join(missing) or 'of ' + name}; "
                           f"choose a QM9 model, e.g. --model equiformer-qm9-gap-small-cpu; {EXISTING}")  # fmt: skip
    if kind == "oc20":
        if info.energy_target or not info.periodic:
            raise UseError(f"model {info.name} predicts {predicts}, not the relaxed adsorption energy of a periodic slab; {name} needs an OC20 "
                           f"model and equizoo has none trained yet; {EXISTING}")  # fmt: skip
        _oc20_target(info)


_REQUIRED = {"qm9": (), "md17": (keys.ENERGY, keys.FORCES), "oc20": (keys.Y_RELAXED,)}


def run_evaluation(
    dataset,
    model=None,
    *,
    split: Optional[str] = None,
    limit: Optional[int] = None,
    target: Optional[str] = None,
    source=None,
    cache_dir=None,
    energy_unit: Optional[str] = None,
    backend: str = "eager",
    device="auto",
    dtype=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    progress: bool = False,
    allow_unseen_elements: bool = False,
) -> Evaluation:
    """Predict a split (its first `limit` structures if given) and compute the official metrics.

    The model is loaded and matched against the dataset before the dataset is opened (or prepared)."""
    runner: Runner = load_runner(
        model, backend=backend, device=device, dtype=dtype, allow_unseen_elements=allow_unseen_elements
    )
    asked = tuple(t for t in (target or "").split(",") if t)
    if isinstance(dataset, EvalData):
        data = dataset
    else:
        kind = kind_of_spec(dataset)
        if kind is not None:
            spec_targets = (
                asked or tuple(t for t in os.fspath(dataset).partition(":")[2].split(",") if t) if kind == "qm9" else ()
            )
            check_model_fits(kind, runner.info, os.fspath(dataset), spec_targets)
        data = open_dataset(dataset, source=source, cache_dir=cache_dir, target=target, energy_unit=energy_unit)
    check_model_fits(data.kind, runner.info, data.name, data.targets)
    if split is None:
        default = DEFAULT_SPLITS[data.kind]
        if default not in data.split_names and len(data.split_names) != 1:
            raise UseError(
                f"dataset {data.name} has no {default!r} split; choose one with --split: {', '.join(data.split_names)}"
            )
        split = default if default in data.split_names else data.split_names[0]
    structures = data.split(split)
    count = len(structures) if limit is None else min(int(limit), len(structures))
    if count <= 0:
        raise UseError(f"dataset {data.name} split {split}: no structures to evaluate (limit {limit})")
    items = [Item(data.name, i, structures[i], n_atoms=structures[i].n_atoms) for i in range(count)]
    for item in items:
        lacking = [k for k in _REQUIRED[data.kind] if k not in item.structure.targets]
        if lacking:
            raise UseError(
                f"dataset {data.name} split {split}: structure {item.structure.label} has no {', '.join(lacking)} label; it cannot be evaluated"
            )
    run_items(runner, items, batch_size=batch_size, max_atoms=max_atoms, progress=progress)
    failed = [item for item in items if not item.ok]
    if failed:
        first = failed[0]
        raise UseError(
            f"{len(failed)} of {count} structures of {data.name}/{split} cannot be evaluated with {runner.info.name}; first, #{first.frame} ({first.structure.label}): {first.error}"
        )
    rows, pairs = _METRICS[data.kind](data, split, runner.info, items)
    import pandas as pd

    info = {
        "dataset": data.name, "split": split, "n_structures": count, "model": runner.info.name,
        "model_source": runner.info.source, "variants": list(runner.info.variants), "backend": runner.backend,
        "device": str(runner.device), "dtype": str(runner.dtype).replace("torch.", ""),
    }  # fmt: skip
    return Evaluation(pd.DataFrame(rows, columns=list(METRIC_COLUMNS)), pairs, info)


def evaluate(dataset, model=None, *, output=None, plot=None, **options):
    """Official metrics of `model` (None: the embedded default) on `dataset` (see the module doc) as a
    DataFrame with columns dataset, split, quantity, metric, unit, value, paper, paper_source, n.
    `output` writes the JSON, `plot` a parity-plot PNG. Options: split, limit, target, source, cache_dir,
    energy_unit, backend, device, dtype, batch_size, max_atoms, progress."""
    result = run_evaluation(dataset, model, **options)
    if output is not None:
        result.write_json(output)
    if plot is not None:
        result.plot(plot)
    return result.metrics
