"""Model cards: `README.md` of a model directory, rendered from the packaged template
`zoo/templates/model_card.md` with huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult`.

The YAML front matter carries library_name (equizoo), license, tags, datasets and a `model-index` with the
measured metrics per split; the body says what the model predicts (units), its training data (level of
theory, elements covered and what happens outside them, the data's licence and citation), how it was
trained (recipe, hardware, time), its measured results next to the paper's numbers, precision and cutoff,
every file with its size and sha256, its exports and how far each deviates from eager, licences, intended
use and limits, how to load it from Python, C++ and LAMMPS, and the citations. Everything comes from
`config.json` (its `metadata`), `exports.json`, the files themselves, the registry entry and the dataset
facts below: nothing is claimed that is not recorded there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from zoo.artifact import CARD, read_config
from zoo.errors import ZooError
from zoo.export.report import read_exports
from zoo.hub.frontmatter import FrontMatterError, load_front_matter
from zoo.hub.manifest import MANIFEST, hash_files
from zoo.io import atomic_write_text
from zoo.models.config import EquiformerConfig
from zoo.registry import base_split, get_model, metrics_from_config

TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
LIBRARY = "equizoo"
UNSEEN_FLAG = "--allow-unseen-elements"


@dataclass(frozen=True)
class DatasetFacts:
    """What a card states about a training dataset: its public name and where to get it, the level of
    theory of its labels, its licence and how to cite it."""

    title: str
    level_of_theory: str
    licence: str
    source: str
    citation: str


_CHMIELA2017 = r"""@article{chmiela2017machine,
  title   = {Machine learning of accurate energy-conserving molecular force fields},
  author  = {Chmiela, Stefan and Tkatchenko, Alexandre and Sauceda, Huziel E. and Poltavsky, Igor and Sch{\"u}tt, Kristof T. and M{\"u}ller, Klaus-Robert},
  journal = {Science Advances},
  volume  = {3},
  number  = {5},
  pages   = {e1603015},
  year    = {2017},
  doi     = {10.1126/sciadv.1603015}
}"""
_QM9 = """@article{ramakrishnan2014quantum,
  title   = {Quantum chemistry structures and properties of 134 kilo molecules},
  author  = {Ramakrishnan, Raghunathan and Dral, Pavlo O. and Rupp, Matthias and von Lilienfeld, O. Anatole},
  journal = {Scientific Data},
  volume  = {1},
  pages   = {140022},
  year    = {2014},
  doi     = {10.1038/sdata.2014.22}
}
@article{ruddigkeit2012enumeration,
  title   = {Enumeration of 166 Billion Organic Small Molecules in the Chemical Universe Database GDB-17},
  author  = {Ruddigkeit, Lars and van Deursen, Ruud and Blum, Lorenz C. and Reymond, Jean-Louis},
  journal = {Journal of Chemical Information and Modeling},
  volume  = {52},
  number  = {11},
  pages   = {2864--2875},
  year    = {2012},
  doi     = {10.1021/ci300415d}
}"""
_RMD17 = """@article{christensen2020role,
  title   = {On the role of gradients for machine learning of molecular energies and forces},
  author  = {Christensen, Anders S. and von Lilienfeld, O. Anatole},
  journal = {Machine Learning: Science and Technology},
  volume  = {1},
  number  = {4},
  pages   = {045018},
  year    = {2020},
  doi     = {10.1088/2632-2153/abba6f}
}"""
_OC20 = """@article{chanussot2021open,
  title   = {Open Catalyst 2020 (OC20) Dataset and Community Challenges},
  author  = {Chanussot, Lowik and Das, Abhishek and Goyal, Siddharth and Lavril, Thibaut and Shuaibi, Muhammed and Riviere, Morgane and Tran, Kevin and Heras-Domingo, Javier and Ho, Caleb and Hu, Weihua and Palizhati, Aini and Sriram, Anuroop and Wood, Brandon and Yoon, Junwoong and Parikh, Devi and Zitnick, C. Lawrence and Ulissi, Zachary},
  journal = {ACS Catalysis},
  volume  = {11},
  number  = {10},
  pages   = {6059--6072},
  year    = {2021},
  doi     = {10.1021/acscatal.0c04525}
}"""
DATASETS = {
    "qm9": DatasetFacts(
        "QM9 (Ramakrishnan et al. 2014), 130,831 characterised molecules of GDB-17 with up to 9 heavy atoms (C, N, O, F)",
        "DFT B3LYP/6-31G(2df,p) (Gaussian 09), geometries relaxed at the same level",
        "CC0 1.0 (the authors' figshare deposit); read here through the PyPI package qm9pack 1.0.3 (MIT)",
        "figshare doi:10.6084/m9.figshare.c.978904, or `pip install qm9pack==1.0.3`",
        _QM9,
    ),
    "md17": DatasetFacts(
        "MD17 (Chmiela et al. 2017), molecular-dynamics trajectories of small organic molecules at 500 K",
        "DFT PBE+vdW-TS (FHI-aims)",
        "no licence is stated by its distributors (sgdml.org, quantum-machine.org) nor by MDBENCHGNN, whose split files were used; "
        "cite the authors",
        "md17_MOLECULE.npz from sgdml.org; the train/val/test split files (train.npz, val.npz, test.npz) of MDBENCHGNN, "
        "github.com/M3RG-IITD/MDBENCHGNN, folder Datasets/md17/MOLECULE",
        _CHMIELA2017,
    ),
    "rmd17": DatasetFacts(
        "revised MD17 (Christensen & von Lilienfeld 2020): 100,000 MD17 geometries per molecule recomputed",
        "DFT PBE/def2-SVP (ORCA)",
        "as stated on its figshare deposit (doi:10.6084/m9.figshare.12672038)",
        "figshare doi:10.6084/m9.figshare.12672038",
        _RMD17,
    ),
    "oc20": DatasetFacts(
        "Open Catalyst 2020 (OC20), adsorbates on inorganic catalyst slabs",
        "DFT RPBE (VASP, PAW)",
        "CC BY 4.0",
        "fairchem's DATASET.md (is2res_train_val_test_lmdbs.tar.gz)",
        _OC20,
    ),
}


def is_local_path(text: object) -> bool:
    """Whether a recorded string names a path of some machine (which a public card must not show)."""
    return isinstance(text, str) and (os.path.isabs(text) or text.startswith(("./", "../", "~")))


def dataset_kind(name: str) -> Optional[str]:
    """The DATASETS key of a prepared dataset's name (qm9, md17-aspirin, rmd17-ethanol, oc20-is2re)."""
    head = str(name or "").lower().split("-", 1)[0].split(":", 1)[0]
    return head if head in DATASETS else ("oc20" if head.startswith("oc20") else None)


def dataset_facts(metadata: dict) -> Optional[DatasetFacts]:
    ds = metadata.get("dataset") if isinstance(metadata.get("dataset"), dict) else {}
    kind = dataset_kind(str(ds.get("name") or ""))
    if kind is None:
        return None
    facts = DATASETS[kind]
    molecule = (
        str(ds.get("name", "")).split("-", 1)[1]
        if kind in ("md17", "rmd17") and "-" in str(ds.get("name", ""))
        else None
    )
    if molecule:
        facts = DatasetFacts(
            facts.title,
            facts.level_of_theory,
            facts.licence,
            facts.source.replace("MOLECULE", molecule),
            facts.citation,
        )
    return facts


def code_licence() -> str:
    """The licence of equizoo's code, as its installed distribution states it."""
    from importlib import metadata

    try:
        meta = metadata.metadata("equizoo")
    except metadata.PackageNotFoundError:
        return "unknown (equizoo is not installed as a distribution)"
    return str(meta.get("License-Expression") or meta.get("License") or "MIT")


_TO_PAPER = {("eV", "meV"): 1000.0, ("eV/Å", "meV/Å"): 1000.0, ("eV/A", "meV/Å"): 1000.0}


class CardError(ZooError, ValueError):
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
        what = t.get("description") or (
            "per-structure prediction" if net.get("output") != "energy" else "energy per structure"
        )
        rows.append({"name": t["name"], "unit": t["unit"], "what": what})
        rows.append(
            {"name": f"atomic_{t['name']}", "unit": t["unit"], "what": f"per-atom contributions to `{t['name']}`"}
        )
        if net.get("forces"):
            symbol = "E" if t["name"] == "energy" else t["name"]
            rows.append(
                {
                    "name": "forces",
                    "unit": t.get("forces_unit") or f"{t['unit']}/Å",
                    "what": f"-d{symbol}/dx (autograd of the energy)",
                }
            )
        if net.get("aux_head"):
            rows.append(
                {
                    "name": "aux_displacement",
                    "unit": "Å",
                    "what": "IS2RS auxiliary head: predicted displacement towards the relaxed structure",
                }
            )
    return rows


def _elements(types: List[str]) -> str:
    if len(types) <= 12:
        return ", ".join(types)
    return f"{len(types)} element types ({types[0]} ... {types[-1]}, in atomic-number order)"


def _covered(metadata: dict) -> Optional[str]:
    """'H, C, O (Z = 1, 6, 8)' from metadata.elements (atomic numbers seen in the training data)."""
    from ase.data import chemical_symbols

    numbers = metadata.get("elements")
    if (
        not isinstance(numbers, list)
        or not numbers
        or not all(isinstance(z, int) and 0 < z < len(chemical_symbols) for z in numbers)
    ):
        return None
    numbers = sorted(numbers)
    return f"{', '.join(chemical_symbols[z] for z in numbers)} (Z = {', '.join(str(z) for z in numbers)})"


def _files(model_dir: Path) -> List[dict]:
    """Size and sha256 of every file of the directory but the card itself and the manifest (which hash it)."""

    return [
        {"path": name, "size": f"{info['size']:,}", "sha256": info["sha256"]}
        for name, info in hash_files(model_dir).items()
        if name not in (CARD, MANIFEST)
    ]


def _precision(config: dict, exports: List[dict]) -> List[tuple]:
    first = next(iter(config["networks"].values()))
    cap = first.get("max_neighbors")
    layers = max(n.get("num_layers", 1) for n in config["networks"].values())
    rows = [("weights (`model.safetensors`)", str(config.get("dtype", "float32")))]
    rows += [(f"export `{e['path']}` ({e['format']}, {e['device']})", str(e["dtype"])) for e in exports]
    rows += [
        ("cutoff r_max", f"{first['r_max']:g} Å"),
        (
            "neighbour cap",
            f"the {cap} nearest neighbours within r_max" if cap else "none: every neighbour within r_max",
        ),
        ("receptive field", f"(layers + 1) x r_max = {(layers + 1) * first['r_max']:g} Å"),
    ]
    return rows


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
        if ds.get("source") and not is_local_path(ds["source"]):
            text += f"; source: {ds['source']}"
        rows.append(("data", text.strip(", ")))
    recipe = metadata.get("recipe") or {}
    if isinstance(recipe, dict) and recipe:
        optim = recipe.get("optim") or {}
        bits = [f"task {recipe['task']}"] if recipe.get("task") else []
        for key, label in (
            ("optimizer", "optimizer"),
            ("lr", "lr"),
            ("weight_decay", "weight decay"),
            ("batch_size", "batch"),
            ("max_epochs", "epochs"),
        ):
            if key in optim:
                bits.append(f"{label} {optim[key]}")
        rows.append(("recipe", "; ".join(bits) + " (the full recipe is in config.json, metadata.recipe)"))
    metrics = metadata.get("metrics") or {}
    if isinstance(metrics, dict) and metrics.get("final_weights"):
        epoch = metrics.get("weights_epoch")
        rows.append(
            (
                "weights",
                f"{metrics['final_weights']}" + (f" (epoch {epoch:g})" if isinstance(epoch, (int, float)) else ""),
            )
        )
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
        rows.append(
            ("software", ", ".join(f"{k} {env[k]}" for k in ("equizoo", "torch", "e3nn", "cuda") if env.get(k)))
        )
    if metadata.get("hardware_note"):
        rows.append(("hardware note", str(metadata["hardware_note"])))
    if metadata.get("source"):
        rows.append(
            ("source", str(metadata["source"]) + (f" ({metadata['checkpoint']})" if metadata.get("checkpoint") else ""))
        )
    return rows


def _results(measured, paper) -> tuple:
    rows = []

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
        rows.append(
            {
                "split": m.split,
                "target": m.target,
                "metric": m.metric,
                "measured": text,
                "paper": f"{_fmt(p.value)} {p.unit}" if p else "—",
            }
        )
    for p in paper:
        if (p.split, p.target) not in seen:
            rows.append(
                {
                    "split": p.split,
                    "target": p.target,
                    "metric": p.metric,
                    "measured": "—",
                    "paper": f"{_fmt(p.value)} {p.unit}",
                }
            )
    sources = sorted({p.source for p in paper if p.source})
    return rows, "; ".join(sources)


def _limits(config: dict, entry, measured: list, dataset: str) -> List[str]:
    first = next(iter(config["networks"].values()))
    task = entry.task if entry is not None else ""
    out = []
    if dataset:
        out.append(
            f"Made for {dataset}: structures unlike those (other elements, bonding, sizes or conditions) are extrapolation, and nothing here measures how well it does there."
        )
    if task == "qm9":
        out.append(
            "QM9 domain: small organic molecules (H, C, N, O, F; up to 9 heavy atoms) at their DFT equilibrium geometries; one network per property."
        )
    if task == "md17":
        out.append(
            "A force field for the one molecule it was trained on (MD17 trajectories of that molecule); it does not transfer to other molecules."
        )
    if task == "oc20" or first.get("periodic"):
        out.append(
            "IS2RE: predicts the relaxed adsorption energy from the initial structure of an OC20-style adsorbate + slab in a periodic cell; it gives no forces and does not relax structures."
        )
    if not measured:
        out.append(
            "No metrics are recorded for this model: evaluate it (`equizoo eval`) before relying on its predictions."
        )
    layers = max(n.get("num_layers", 1) for n in config["networks"].values())
    out.append(
        f"Neighbours within r_max = {first['r_max']:g} Å; the receptive field is (layers + 1) x r_max = {(layers + 1) * first['r_max']:g} Å, "
        "which LAMMPS runs on several MPI ranks must cover with ghost atoms (`graph ghosts`)."
    )
    covered = _covered(config.get("metadata") or {})
    if covered:
        out.append(f"Elements: trained on {covered} only. Structures with any other element are refused unless {UNSEEN_FLAG} is given, "
                   "and what it predicts for them then is untested extrapolation.")  # fmt: skip
    out.append(
        "Exports run in the dtype they were exported in; float32 outputs differ from float64 ones at the 1e-5 relative level."
    )
    return out


def _registry_entry(entry, metadata: dict):
    """The registry entry the card speaks for: the one given (or named), else the one the model records."""
    if isinstance(entry, str):
        return get_model(entry)
    if entry is None and metadata.get("registry_name"):
        return get_model(str(metadata["registry_name"]))
    return entry


def _card_data(entry, name: str, dataset: str, measured: list):
    """The card's YAML header (huggingface_hub.ModelCardData): library, licence, tags, dataset, eval results."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id = dataset.lower().replace(" ", "-").replace("/", "-") or "unknown"
    eval_results = [
        EvalResult(
            task_type="graph-ml",
            task_name=f"{m.target} prediction",
            dataset_type=dataset_id,
            dataset_name=dataset or "unknown",
            dataset_split=m.split,
            metric_type=m.metric.lower(),
            metric_name=f"{m.target} {m.metric} ({m.unit})",
            metric_value=m.value,
        )  # fmt: skip
        for m in measured
    ]
    tags = ["equiformer", "equivariant", "e3nn", "graph-neural-network", "atomistic", "pytorch"] + list(
        entry.tags if entry is not None else []
    )
    return ModelCardData(
        library_name=LIBRARY, license=entry.license if entry is not None else "mit", tags=list(dict.fromkeys(tags)),
        datasets=[dataset] if dataset else None, model_name=name, eval_results=eval_results or None,
    )  # fmt: skip


def _present_exports(model_dir: Path) -> list:
    """The export records whose file is in the model directory, with their errors formatted for the card."""
    exports = []
    for rec in read_exports(model_dir).values():
        if (model_dir / rec.get("path", "")).is_file():
            exports.append(
                {**rec, "max_abs_error": f"{rec['max_abs_error']:.1e}", "tolerance": f"{rec['tolerance']:.0e}"}
            )
    return exports


def card_context(model_dir: Union[str, Path], entry=None) -> tuple:
    """(ModelCardData, template variables) for a model directory; `entry` a registry entry or name."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    metadata = config.get("metadata") or {}
    entry = _registry_entry(entry, metadata)
    measured = metrics_from_config(config)
    first = next(iter(config["networks"].values()))
    ds_meta = metadata.get("dataset") or {}
    dataset = (
        entry.dataset if entry is not None else (str(ds_meta.get("name") or "") if isinstance(ds_meta, dict) else "")
    )
    name = entry.name if entry is not None else str(config.get("name") or model_dir.name)
    card_data = _card_data(entry, name, dataset, measured)
    rows, paper_source = _results(measured, entry.paper if entry is not None else ())
    types = EquiformerConfig.from_dict(first).type_names
    exports = _present_exports(model_dir)
    params = _param_count(model_dir)
    evaluation = metadata.get("evaluation") if isinstance(metadata.get("evaluation"), dict) else {}
    facts = dataset_facts(metadata)
    lammps = "C H O" if {"C", "H", "O"} <= set(types) else " ".join(types[:3])
    load_spec = (
        entry.name
        if entry is not None and entry.published
        else (entry.hub_id if entry is not None and entry.hub_id else str(model_dir))
    )
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
        "variant": entry.variant
        if entry is not None
        else ", ".join(sorted({n["name"] for n in config["networks"].values()})),
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
        "data": facts,
        "covered": _covered(metadata),
        "unseen_flag": UNSEEN_FLAG,
        "placeholder": evaluation.get("source_placeholder"),
        "precision": _precision(config, exports),
        "files": _files(model_dir),
        "code_licence": code_licence(),
        "weights_licence": card_data.license,
    }
    return card_data, variables


def render_card(model_dir: Union[str, Path], entry=None, template: Union[str, Path, None] = None):
    """The model card (a huggingface_hub.ModelCard) of a model directory."""
    from huggingface_hub import ModelCard

    template = Path(template) if template is not None else TEMPLATE
    if not template.is_file():
        raise CardError(
            f"model card template {template} is missing; it ships inside the zoo package (zoo/templates/); reinstall equizoo"
        )
    card_data, variables = card_context(model_dir, entry)
    return ModelCard.from_template(card_data, template_path=str(template), **variables)


def write_card(model_dir: Union[str, Path], entry=None, template: Union[str, Path, None] = None) -> Path:
    """Render the card into `model_dir/README.md` atomically."""
    model_dir = Path(model_dir)
    text = str(render_card(model_dir, entry, template))

    atomic_write_text(model_dir / CARD, text if text.endswith("\n") else text + "\n")
    return model_dir / CARD


def card_metrics(path: Union[str, Path]) -> List[dict]:
    """The model-index metrics of a rendered card, parsed back with huggingface_hub (after the front
    matter passed zoo.hub.frontmatter: no YAML anchors or aliases, bounded size)."""
    from huggingface_hub import ModelCard

    try:
        load_front_matter(Path(path).read_text(encoding="utf-8", errors="replace"), str(path))
    except FrontMatterError as exc:
        raise CardError(str(exc)) from None
    card = ModelCard.load(str(path))
    return [json.loads(json.dumps(r.__dict__, default=str)) for r in (card.data.eval_results or [])]
