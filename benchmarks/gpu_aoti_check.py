"""GPU check of the AOTInductor path: export a CUDA `.pt2` of a small float64 force field, compare it with the
eager model (CPU float64 and on the GPU) on the real check structures, write an xyz for the C++ example.

Usage: python benchmarks/gpu_aoti_check.py OUT_DIR      (run by benchmarks/gpu-aoti-check.sh)
Writes OUT_DIR/model-cuda.pt2, OUT_DIR/check.xyz, OUT_DIR/python.json (energies, forces, deviations, timings).
"""

from __future__ import annotations

import faulthandler
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.export.aoti import export_aoti, load_aoti
from zoo.export.trace import ExportError, check_inputs, eager_outputs
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel

# md17-l2 with 2 blocks, l <= 1 and narrow irreps (the model of tests/test_deploy_aoti.py): a short build
TINY = dict(irreps_sh="1x0e+1x1e", irreps_node_embedding="16x0e+8x1e", irreps_head="8x0e+4x1e", num_heads=2,
            irreps_mlp_mid="32x0e+16x1e", irreps_feature="32x0e", num_basis=8, radial_hidden=(16, 16))  # fmt: skip


def stage(name: str) -> None:
    """Print the step about to run, flushed, so that a crash in native code still shows where it happened."""
    print(f"stage: {name}", flush=True)


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    faulthandler.enable()  # a segfault in compiled code prints the Python stack of the crashing step
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "device_name": None}
    if not torch.cuda.is_available():
        report["error"] = "CUDA is not available"
        (out / "python.json").write_text(json.dumps(report, indent=2))
        print(report["error"])
        return 1
    report["device_name"] = torch.cuda.get_device_name(0)
    torch.manual_seed(1)
    net = build_model("md17-l2", num_layers=2, **TINY)
    model = ZooModel({"energy": net}, [TargetInfo("energy", "eV", -17000.0, 0.5, forces_unit="eV/Å")]).double().eval()
    stage("eager on the CPU")
    cpu_checks = check_inputs(model, torch.float64, torch.device("cpu"))
    cpu_ref = [eager_outputs(model, c) for c in cpu_checks]

    stage("export and check on the GPU")
    start = time.perf_counter()
    result = export_aoti(model.to("cuda"), out / "model-cuda.pt2", "cuda")  # checks against eager on the GPU
    report["export_seconds"] = round(time.perf_counter() - start, 1)
    report["max_abs_error_vs_gpu_eager"] = result.max_abs_error
    report["tolerance"] = result.tolerance

    stage("load the package again and compare with CPU eager")
    runner = load_aoti(out / "model-cuda.pt2", "cuda")
    worst = {}
    for c, ref in zip(cpu_checks, cpu_ref):
        got = runner(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in c.items()})
        for key in ("energy", "forces"):
            rel = ((got[key].cpu() - ref[key]).abs().max() / ref[key].abs().max()).item()
            worst[key] = max(worst.get(key, 0.0), rel)
    report["max_rel_error_vs_cpu_eager"] = worst
    stage("refusal on the CPU")
    try:
        load_aoti(out / "model-cuda.pt2", "cpu")
        report["refused_on_cpu"] = False
    except ExportError as exc:
        report["refused_on_cpu"] = "built for cuda" in str(exc)
        report["cpu_refusal"] = str(exc)

    # one structure for the C++ example: the first check structure, with its CPU eager energy and forces
    symbol = dict(zip(model.type_numbers, net.config.type_names))  # the names the C++ example matches
    first, ref = cpu_checks[0], cpu_ref[0]
    pos, z = first["pos"].tolist(), first["species"].tolist()
    lines = [str(len(z)), "check structure 0"] + [
        f"{symbol[int(a)]} {p[0]!r} {p[1]!r} {p[2]!r}" for a, p in zip(z, pos)
    ]
    (out / "check.xyz").write_text("\n".join(lines) + "\n")
    report["check_xyz_energy"] = ref["energy"][0].item()
    report["check_xyz_forces"] = ref["forces"].tolist()
    ok = worst["energy"] <= 1e-9 and worst["forces"] <= 1e-9 and report["refused_on_cpu"]
    report["ok"] = bool(ok)
    (out / "python.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("check_xyz_forces", "cpu_refusal")}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-aoti-check")))
