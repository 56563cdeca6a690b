"""Model cards: `README.md` of a model directory, rendered from `cards/model_card.md` with huggingface_hub's
`ModelCard` / `ModelCardData` / `EvalResult`.

The YAML front matter carries library_name (equizoo), license, tags, datasets and a `model-index` with the
measured metrics per split; the body says what the model predicts (units), how it was trained (dataset,
recipe, hardware, time), its measured results next to the paper's numbers, its exports and how far each
deviates from eager, intended use and limits, how to load it from Python, C++ and LAMMPS, and the
citation. Everything comes from `config.json` (its `metadata`), `exports.json` and the registry entry:
nothing is claimed that is not recorded there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Union

TEMPLATE = Path(__file__).resolve().parents[1] / "cards" / "model_card.md"
CARD = "README.md"
LIBRARY = "equizoo"

_TO_PAPER = {("eV", "meV"): 1000.0, ("eV/Å", "meV/Å"): 1000.0, ("eV/A", "meV/Å"): 1000.0}


class CardError(ValueError):
    """A model card cannot be rendered (missing template or model files)."""


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _convert(value: float, unit: str, to: str) -> Optional[float]:
    if unit == to:
        return value
    factor = _TO_PAPER.get((unit, to))
    return value * factor if factor is not None else None


def _param_count(model_dir: Path) -> Optional[int]:
    from safetensors import safe_open

    path = model_dir / "model.safetensors"
    if not path.is_file():
        return None
    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def _targets(config: dict) -> List[dict]:
    rows = []
    for t in config["targets"]:
        net = config["networks"][t["name"]]
        what = t.get("description") or ("per-structure prediction" if net.get("output") != "energy" else "energy per structure")
        rows.append({"name": t["name"], "unit": t["unit"], "what": what})
        rows.append({"name": f"atomic_{t['name']}", "unit": t["unit"], "what": f"per-atom contributions to `{t['name']}`"})
        if net.get("forces"):
            symbol = "E" if t["name"] == "energy" else t["name"]
            rows.append({"name": "forces", "unit": t.get("forces_unit") or f"{t['unit']}/Å", "what": f"-d{symbol}/dx (autograd of the energy)"})
        if net.get("aux_head"):
            rows.append({"name": "aux_displacement", "unit": "Å", "what": "IS2RS auxiliary head: predicted displacement towards the relaxed structure"})
    return rows


def _elements(types: List[str]) -> str:
    if len(types) <= 12:
        return ", ".join(types)
    return f"{len(types)} element types ({types[0]} ... {types[-1]}, in atomic-number order)"


def _training(metadata: dict) -> List[tuple]:
    rows: List[tuple] = []
    ds = metadata.get("dataset") or {}
    if isinstance(ds, dict) and ds:
        text = str(ds.get("name") or "")
        if ds.get("target"):
            text += f", target {ds['target']}" + (f" [{ds['unit']}]" if ds.get("unit") else "")
        sizes = ds.get("sizes") or {}
        if sizes:
            text += "; " + ", ".join(f"{v:,} {k}" for k, v in sizes.items() if isinstance(v, int))
        if ds.get("split_rule"):
            text += f"; split: {ds['split_rule']}"
        if ds.get("source"):
            text += f"; source: {ds['source']}"
        rows.append(("data", text.strip(", ")))
    recipe = metadata.get("recipe") or {}
    if isinstance(recipe, dict) and recipe:
        optim = recipe.get("optim") or {}
        bits = [f"task {recipe['task']}"] if recipe.get("task") else []
        for key, label in (("optimizer", "optimizer"), ("lr", "lr"), ("weight_decay", "weight decay"), ("batch_size", "batch"), ("max_epochs", "epochs")):
            if key in optim:
                bits.append(f"{label} {optim[key]}")
        rows.append(("recipe", "; ".join(bits) + " (the full recipe is in config.json, metadata.recipe)"))
    metrics = metadata.get("metrics") or {}
    if isinstance(metrics, dict) and metrics.get("final_weights"):
        epoch = metrics.get("weights_epoch")
        rows.append(("weights", f"{metrics['final_weights']}" + (f" (epoch {epoch:g})" if isinstance(epoch, (int, float)) else "")))
    hw = metadata.get("hardware") or {}
    if isinstance(hw, dict) and hw:
        text = f"{hw.get('processes', 1)} x {hw.get('cpu_model') if hw.get('device_type') == 'cpu' and hw.get('cpu_model') else hw.get('device_name') or hw.get('device_type', '?')}"
        if hw.get("device_type") == "cpu":
            text += f" (CPU only, {hw.get('cpu_count', '?')} cores, {hw.get('torch_threads', '?')} torch thread(s))"
        rows.append(("hardware", text))
    if isinstance(metadata.get("wall_time_s"), (int, float)):
        s = float(metadata["wall_time_s"])
        rows.append(("training time", f"{s / 3600:.2f} h ({s:,.0f} s wall clock)"))
    env = metadata.get("environment") or {}
    if isinstance(env, dict) and env:
        rows.append(("software", ", ".join(f"{k} {env[k]}" for k in ("equizoo", "torch", "e3nn", "cuda") if env.get(k))))
    if metadata.get("hardware_note"):
        rows.append(("hardware note", str(metadata["hardware_note"])))
    if metadata.get("source"):
        rows.append(("source", str(metadata["source"]) + (f" ({metadata['checkpoint']})" if metadata.get("checkpoint") else "")))
    return rows


def _results(measured, paper) -> tuple:
    rows = []
    from zoo.release import base_split

    paper_by = {(m.split, m.target): m for m in paper}
    seen = set()
    for m in measured:
        p = paper_by.get((base_split(m.split), m.target))
        text = f"{_fmt(m.value)} {m.unit}"
        if p is not None:
            conv = _convert(m.value, m.unit, p.unit)
            if conv is not None and p.unit != m.unit:
                text += f" ({_fmt(conv)} {p.unit})"
            seen.add((p.split, p.target))
        rows.append({"split": m.split, "target": m.target, "metric": m.metric, "measured": text, "paper": f"{_fmt(p.value)} {p.unit}" if p else "—"})
    for p in paper:
        if (p.split, p.target) not in seen:
            rows.append({"split": p.split, "target": p.target, "metric": p.metric, "measured": "—", "paper": f"{_fmt(p.value)} {p.unit}"})
    sources = sorted({p.source for p in paper if p.source})
    return rows, "; ".join(sources)


def _limits(config: dict, entry, measured: list, dataset: str) -> List[str]:
    first = next(iter(config["networks"].values()))
    task = entry.task if entry is not None else ""
    out = []
    if dataset:
        out.append(f"Made for {dataset}: structures unlike those (other elements, bonding, sizes or conditions) are extrapolation, and nothing here measures how well it does there.")
    if task == "qm9":
        out.append("QM9 domain: small organic molecules (H, C, N, O, F; up to 9 heavy atoms) at their DFT equilibrium geometries; one network per property.")
    if task == "md17":
        out.append("A force field for the one molecule it was trained on (MD17 trajectories of that molecule); it does not transfer to other molecules.")
    if task == "oc20" or first.get("periodic"):
        out.append("IS2RE: predicts the relaxed adsorption energy from the initial structure of an OC20-style adsorbate + slab in a periodic cell; it gives no forces and does not relax structures.")
    if not measured:
        out.append("No metrics are recorded for this model: evaluate it (`equizoo eval`) before relying on its predictions.")
    layers = max(n.get("num_layers", 1) for n in config["networks"].values())
    out.append(
        f"Neighbours within r_max = {first['r_max']:g} Å; the receptive field is (layers + 1) x r_max = {(layers + 1) * first['r_max']:g} Å, "
        "which LAMMPS runs on several MPI ranks must cover with ghost atoms (`graph ghosts`)."
    )
    out.append("Exports run in the dtype they were exported in; float32 outputs differ from float64 ones at the 1e-5 relative level.")
    return out


def card_context(model_dir: Union[str, Path], entry=None) -> tuple:
    """(ModelCardData, template variables) for a model directory; `entry` a registry entry or name."""
    from huggingface_hub import EvalResult, ModelCardData

    from zoo.artifact import read_config
    from zoo.export.report import read_exports
    from zoo.registry import get_model, metrics_from_config

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    metadata = config.get("metadata") or {}
    if isinstance(entry, str):
        entry = get_model(entry)
    if entry is None and metadata.get("registry_name"):
        entry = get_model(str(metadata["registry_name"]))
    measured = metrics_from_config(config)
    first = next(iter(config["networks"].values()))
    ds_meta = metadata.get("dataset") or {}
    dataset = entry.dataset if entry is not None else (str(ds_meta.get("name") or "") if isinstance(ds_meta, dict) else "")
    name = entry.name if entry is not None else str(config.get("name") or model_dir.name)
    dataset_id = dataset.lower().replace(" ", "-").replace("/", "-") or "unknown"
    eval_results = [
        EvalResult(
            task_type="graph-ml", task_name=f"{m.target} prediction", dataset_type=dataset_id, dataset_name=dataset or "unknown",
            dataset_split=m.split, metric_type=m.metric.lower(), metric_name=f"{m.target} {m.metric} ({m.unit})", metric_value=m.value,
        )  # fmt: skip
        for m in measured
    ]
    tags = ["equiformer", "equivariant", "e3nn", "graph-neural-network", "atomistic", "pytorch"] + list(entry.tags if entry is not None else [])
    card_data = ModelCardData(
        library_name=LIBRARY, license=entry.license if entry is not None else "mit", tags=list(dict.fromkeys(tags)),
        datasets=[dataset] if dataset else None, model_name=name, eval_results=eval_results or None,
    )  # fmt: skip
    rows, paper_source = _results(measured, entry.paper if entry is not None else ())
    from zoo.models.config import EquiformerConfig

    types = EquiformerConfig.from_dict(first).type_names
    exports = []
    for rec in read_exports(model_dir).values():
        if (model_dir / rec.get("path", "")).is_file():
            exports.append({**rec, "max_abs_error": f"{rec['max_abs_error']:.1e}", "tolerance": f"{rec['tolerance']:.0e}"})
    params = _param_count(model_dir)
    evaluation = metadata.get("evaluation") if isinstance(metadata.get("evaluation"), dict) else {}
    lammps = "C H O" if {"C", "H", "O"} <= set(types) else " ".join(types[:3])
    load_spec = entry.name if entry is not None and entry.published else (entry.hub_id if entry is not None and entry.hub_id else str(model_dir))
    variables = {
        "title": name,
        "description": entry.description if entry is not None else str(first.get("description") or ""),
        "note": str(metadata.get("note") or ""),
        "reproduce": list(evaluation.get("commands") or []),
        "targets": _targets(config),
        "elements": _elements(types),
        "r_max": f"{first['r_max']:g}",
        "periodic": bool(first.get("periodic")),
        "needs_tags": int(first.get("num_tags", 0)) > 0,
        "variant": entry.variant if entry is not None else ", ".join(sorted({n["name"] for n in config["networks"].values()})),
        "num_layers": max(n["num_layers"] for n in config["networks"].values()),
        "params": f"{params:,}" if params is not None else "unknown",
        "dtype": config.get("dtype", "float32"),
        "trained": bool(_training(metadata)),
        "training": _training(metadata),
        "results": rows,
        "paper_source": paper_source,
        "exports": exports,
        "limits": _limits(config, entry, measured, dataset),
        "load_spec": load_spec,
        "lammps_elements": lammps + "   # one element per LAMMPS atom type",
    }
    return card_data, variables


def render_card(model_dir: Union[str, Path], entry=None, template: Union[str, Path, None] = None):
    """The model card (a huggingface_hub.ModelCard) of a model directory."""
    from huggingface_hub import ModelCard

    template = Path(template) if template is not None else TEMPLATE
    if not template.is_file():
        raise CardError(f"model card template {template} is missing; it ships in the repository's cards/ folder")
    card_data, variables = card_context(model_dir, entry)
    return ModelCard.from_template(card_data, template_path=str(template), **variables)


def write_card(model_dir: Union[str, Path], entry=None, template: Union[str, Path, None] = None) -> Path:
    """Render the card into `model_dir/README.md` atomically."""
    model_dir = Path(model_dir)
    text = str(render_card(model_dir, entry, template))
    from zoo.io import atomic_write_text

    atomic_write_text(model_dir / CARD, text if text.endswith("\n") else text + "\n")
    return model_dir / CARD


def card_metrics(path: Union[str, Path]) -> List[dict]:
    """The model-index metrics of a rendered card, parsed back with huggingface_hub."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(path))
    return [json.loads(json.dumps(r.__dict__, default=str)) for r in (card.data.eval_results or [])]
