"""Artifacts end to end: a small trained-shape model -> model directory -> every export (checked against
eager) -> publish to a local Hub (the real huggingface_hub client against zoo.hub.server) -> pull into an
empty Hugging Face cache -> load -> identical outputs on real molecules; offline pulls, a corrupted cache
blob, unknown / unpublished names and a missing revision.

One AOTInductor build for the whole file (module fixture, `equizoo export` in a subprocess, small model,
scalar code via cpp.simdlen=1 to keep the build short); float64, so the tolerances are tight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from clihelpers import run_cli
from structures import qm9_molecule

from zoo import keys
from zoo.artifact import load_model_dir, save_model_dir
from zoo.graph import radius_graph
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel

REPO = Path(__file__).resolve().parents[1]
# md17-l2 shrunk so that the exporters' graphs (and the AOTInductor build) stay small
SMALL = dict(num_layers=1, irreps_sh="1x0e+1x1e", irreps_node_embedding="16x0e+8x1e", irreps_head="8x0e+4x1e", num_heads=2,
             irreps_mlp_mid="32x0e+16x1e", irreps_feature="32x0e", num_basis=8, radial_hidden=(16, 16))  # fmt: skip
NAME = "equiformer-test-tiny-md17"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, env={"PYTHONWARNINGS": "ignore", **(env or {})}, timeout=900)


def _molecules(dtype=torch.float64) -> list[dict]:
    """Forward kwargs: one QM9 molecule, and a batch of two (different sizes exercise dynamic shapes)."""
    z1, p1 = qm9_molecule(5000)
    z2, p2 = qm9_molecule(100001)
    one = {"pos": p1.to(dtype), "species": z1, "batch": torch.zeros(len(z1), dtype=torch.long), "num_graphs": 1}
    pos = torch.cat([p1, p2]).to(dtype)
    batch = torch.cat([torch.zeros(len(z1)), torch.ones(len(z2))]).long()
    two = {"pos": pos, "species": torch.cat([z1, z2]), "batch": batch, "num_graphs": 2}
    for kw in (one, two):
        kw["edge_index"] = radius_graph(kw["pos"], kw["batch"], 5.0)
    return [one, two]


def _eager(model, kwargs) -> dict:
    with torch.enable_grad():
        return {k: v.detach() for k, v in model(**kwargs).items()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved small model (float64) with training-like metadata, exported by `equizoo export` to all formats."""
    torch.manual_seed(7)
    net = build_model("md17-l2", **SMALL)
    model = ZooModel(
        {"energy": net},
        [
            TargetInfo(
                "energy",
                "eV",
                mean=-17000.0,
                std=0.3,
                description="potential energy (md17/aspirin)",
                forces_unit="eV/Å",
            )
        ],
    )
    metadata = {
        "metrics": {"val": {"energy_mae": 0.011, "force_mae": 0.021}, "test": {"energy_mae": 0.0123, "force_mae": 0.0234},
                    "units": {"energy_mae": "eV", "force_mae": "eV/Å"}, "final_weights": "last", "weights_epoch": 2.0},
        "dataset": {"name": "md17/aspirin", "target": "energy", "unit": "eV", "sizes": {"train": 950, "val": 50, "test": 1000}},
        "recipe": {"task": "md17", "optim": {"lr": 5e-4, "max_epochs": 2, "batch_size": 8}},
        "hardware": {"processes": 1, "device_type": "cpu", "device_name": "test cpu"},
        "wall_time_s": 12.5,
    }  # fmt: skip
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    save_model_dir(model.double(), out, metadata=metadata, name="tiny-aspirin")
    result = _cli("export", str(out), "--format", "torchscript,onnx,aoti", "--aoti-option", "cpp.simdlen=1")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


# ------------------------------------------------------------------------------------------ exports
def test_export_wrote_every_format_within_tolerance(model_dir):
    from zoo.export import FILES, read_exports

    records = read_exports(model_dir)
    assert set(records) == {"torchscript", "onnx", "aoti"}
    for fmt, rec in records.items():
        assert (model_dir / FILES[fmt]).is_file()
        assert rec["dtype"] == "float64" and rec["device"] == "cpu"
        assert rec["max_abs_error"] <= rec["tolerance"] <= 1e-9
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")], "staging files left behind"


def test_torchscript_loads_in_a_process_that_never_imports_zoo(model_dir, tmp_path):
    model = load_model_dir(model_dir)
    kwargs = _molecules()[1]
    expected = _eager(model, kwargs)
    torch.save(
        {"inputs": {k: v for k, v in kwargs.items() if k != "num_graphs"}, "expected": expected}, tmp_path / "io.pt"
    )
    script = textwrap.dedent(f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        import torch
        data = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        extra = {{"r_max": "", "type_names": "", "model_dtype": "", "targets": "", "units": "", "energy_target": "", "config_json": ""}}
        module = torch.jit.load({str(model_dir / "model.torchscript.pt")!r}, _extra_files=extra)
        out = module(**data["inputs"], num_graphs=2)
        for key, ref in data["expected"].items():
            assert torch.allclose(out[key], ref, rtol=1e-10, atol=1e-10), key
        assert "zoo" not in sys.modules
        meta = {{k: (v.decode() if isinstance(v, bytes) else v) for k, v in extra.items()}}
        print(meta["r_max"], meta["model_dtype"], meta["targets"], meta["units"], meta["energy_target"], len(meta["type_names"].split(",")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5.0", "float64", "energy", "eV", "energy", "64"]


def test_onnx_runs_in_onnxruntime_and_matches_eager(model_dir):
    from zoo.export.onnx import load_onnx

    model = load_model_dir(model_dir)
    runner = load_onnx(model_dir / "model.onnx")
    assert runner.dtype == torch.float64 and set(runner.signature.outputs) == {"energy", "atomic_energy", "forces"}
    for kwargs in _molecules():
        ref, got = _eager(model, kwargs), runner(**kwargs)
        assert set(got) == set(ref)
        for key in ref:
            assert got[key].dtype == torch.float64
            torch.testing.assert_close(got[key], ref[key], rtol=1e-9, atol=1e-9)  # float64 ONNX: measured ~1e-14


def test_onnx_sums_are_exact_on_every_thread_count(model_dir):
    """index_add is exported as ScatterElements(add): onnxruntime's ScatterND(add) races between threads."""
    import onnx
    import onnxruntime as ort

    from zoo.export.onnx import load_onnx

    graph = onnx.load(str(model_dir / "model.onnx")).graph
    racy = [
        n.name
        for n in graph.node
        if n.op_type == "ScatterND" and any(a.name == "reduction" and a.s != b"none" for a in n.attribute)
    ]
    assert racy == [] and any(n.op_type == "ScatterElements" for n in graph.node)
    runner = load_onnx(model_dir / "model.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 4
    options.log_severity_level = 3
    runner.session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    kwargs = _molecules()[1]
    first = runner(**kwargs)
    for _ in range(4):
        again = runner(**kwargs)
        assert all(torch.equal(again[k], first[k]) for k in first)


def test_aoti_package_loads_and_matches_eager(model_dir):
    from zoo.export.aoti import load_aoti

    model = load_model_dir(model_dir)
    runner = load_aoti(model_dir / "model.pt2", device="cpu")
    assert runner.metadata["device"] == "cpu" and runner.metadata["r_max"] == "5.0"
    for kwargs in _molecules():
        ref, got = _eager(model, kwargs), runner(**kwargs)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-9, atol=1e-9)  # float64 AOTInductor: measured ~1e-15
    # float32 inputs are cast to the package's dtype
    got = runner(**{**_molecules()[0], "pos": _molecules()[0]["pos"].float()})
    assert got[keys.FORCES].dtype == torch.float64


def test_runners_refuse_what_they_cannot_run(model_dir, tmp_path):
    from zoo.export import ExportError
    from zoo.export.aoti import load_aoti
    from zoo.export.onnx import load_onnx

    with pytest.raises(ExportError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ExportError, match="CUDA is not available|built for cpu"):
        load_aoti(model_dir / "model.pt2", device="cuda")
    lonely = {
        "pos": torch.zeros(1, 3, dtype=torch.float64),
        "species": torch.tensor([6]),
        "edge_index": torch.zeros(2, 0, dtype=torch.long),
        "batch": torch.zeros(1, dtype=torch.long),
    }
    with pytest.raises(ExportError, match="no edges"):
        load_onnx(model_dir / "model.onnx")(**lonely)


def test_a_mismatching_export_writes_nothing(model_dir, tmp_path, monkeypatch):
    import shutil

    import zoo.export.trace as trace
    from zoo.export import ExportMismatch, export_model

    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    (copy / "model.torchscript.pt").unlink()
    before = sorted(p.name for p in copy.iterdir())
    real = trace.eager_outputs
    monkeypatch.setattr(trace, "eager_outputs", lambda m, kw: {k: v + 1e-3 for k, v in real(m, kw).items()})
    with pytest.raises(ExportMismatch, match="differs from eager"):
        export_model(copy, "torchscript", progress=False)
    assert sorted(p.name for p in copy.iterdir()) == before


def test_cli_export_errors_are_one_clear_line(model_dir, tmp_path):
    bad = _cli("export", str(model_dir), "--format", "tflite")
    assert bad.returncode == 2 and "unknown export format" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("export", str(tmp_path / "nothing"), "--format", "torchscript")
    assert missing.returncode == 2 and "nothing" in missing.stderr
    name = _cli("export", "equiformer-qm9-l2", "--format", "torchscript")
    assert name.returncode == 2 and "--out" in name.stderr


# ------------------------------------------------------------------------------------- publish / pull
def _publish(model_dir: Path) -> dict:
    result = _cli("publish", str(model_dir), "--repo", "equizoo-test/tiny-aspirin", "--register", NAME)
    assert result.returncode == 0, result.stdout + result.stderr
    entry = json.loads(Path(os.environ["EQUIZOO_REGISTRY"]).read_text())["models"][NAME]
    return entry


def test_publish_pull_load_round_trip(model_dir, hub, monkeypatch):
    import zoo
    from zoo.export.aoti import load_aoti
    from zoo.export.onnx import load_onnx
    from zoo.hub import pull
    from zoo.registry import get_model

    entry = _publish(model_dir)
    assert len(entry["revision"]) == 40
    assert set(entry["files"]) >= {
        "model.safetensors",
        "config.json",
        "README.md",
        "model.onnx",
        "model.pt2",
        "model.torchscript.pt",
        "exports.json",
        "manifest.json",
    }
    registered = get_model(NAME)
    assert registered.status == "published" and registered.repo_id == "equizoo-test/tiny-aspirin"
    assert {m.target for m in registered.metrics} == {"energy", "forces"}

    path = pull(NAME)
    assert Path(os.environ["HF_HOME"]) in path.parents and entry["revision"] in str(path)
    original = load_model_dir(model_dir)
    loaded = zoo.load(NAME)
    for kwargs in _molecules():
        ref, got = _eager(original, kwargs), _eager(loaded, kwargs)
        for key in ref:
            assert torch.equal(got[key], ref[key]), key
        onnx_out, aoti_out = load_onnx(path / "model.onnx")(**kwargs), load_aoti(path / "model.pt2")(**kwargs)
        for key in ref:
            torch.testing.assert_close(onnx_out[key], ref[key], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(aoti_out[key], ref[key], rtol=1e-9, atol=1e-9)
    assert zoo.load(f"hf-hub:equizoo-test/tiny-aspirin@{entry['revision']}").target("energy").unit == "eV"

    # the same pull offline, in a fresh process, from the cache only (server stopped)
    hub.stop()
    offline = _cli("pull", NAME, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()) == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pull(NAME) == path

    # a corrupted blob in the cache: the pull fails naming the file
    blob = (path / "model.safetensors").resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    corrupted = _cli("pull", NAME, env={"HF_HUB_OFFLINE": "1"})
    assert corrupted.returncode == 2
    assert "sha256 mismatch for model.safetensors" in corrupted.stderr and "Traceback" not in corrupted.stderr


def test_pull_errors_are_clear(model_dir, hub):
    from zoo.hub import HubError, pull
    from zoo.registry import RegistryError

    with pytest.raises(
        RegistryError, match="unknown model name 'equiformer-md17-aspirn-l2'.*did you mean equiformer-md17-aspirin-l2"
    ):
        pull("equiformer-md17-aspirn-l2")
    with pytest.raises(RegistryError, match="not published yet"):
        pull("equiformer-qm9-l2")
    entry = _publish(model_dir)
    missing = "0" * 40
    with pytest.raises(HubError, match="revision does not exist"):
        pull(f"hf-hub:equizoo-test/tiny-aspirin@{missing}")
    with pytest.raises(HubError, match="repository not found"):
        pull(f"hf-hub:equizoo-test/no-such-model@{entry['revision']}")
    for spec, text in (("equiformer-nope", "unknown model name"), ("equiformer-oc20-is2re-l1", "not published yet"),
                       (f"hf-hub:equizoo-test/tiny-aspirin@{missing}", "revision does not exist")):  # fmt: skip
        result = _cli("pull", spec)
        assert result.returncode == 2, result.stdout
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert text in result.stderr and "Traceback" not in result.stderr and lines[0].startswith("error:"), (
            result.stderr
        )
