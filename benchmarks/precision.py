"""What lower-precision arithmetic costs in accuracy: energies and forces of a trained model on real
MD17 frames under bf16 autocast and (on CUDA) TF32 matrix products, against the same model in float32
and float64; and a short training-loss comparison of float32 against bf16 autocast (TF32 on CUDA).

Usage: python benchmarks/precision.py [--model DIR] [--frames FILE] [--device auto] [--train-steps 30]
       [--output precision.json]
Defaults: the trained release equiformer-md17-aspirin-l2-small-cpu on the aspirin frames of
examples/aspirin_md17.extxyz. The switches under test are the ones training uses (zoo.train:
optim.amp = bf16 autocast, optim.tf32 = TF32 matrix products).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from zoo.data import read_structures  # noqa: E402
from zoo.train.trainer import tf32_matmuls  # noqa: E402
from zoo.use.bench import machine  # noqa: E402
from zoo.use.predict import model_inputs  # noqa: E402
from zoo.use.runner import load_runner  # noqa: E402

DEFAULT_MODEL = REPO / "releases" / "equiformer-md17-aspirin-l2-small-cpu"
DEFAULT_FRAMES = REPO / "examples" / "aspirin_md17.extxyz"


def _outputs(model, inputs: dict, n: int, mode: str) -> dict:
    """energy [G] and forces [N, 3] in float64, with the arithmetic of `mode`."""
    device = inputs["pos"].device
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    with tf32_matmuls(mode == "tf32"), amp, torch.enable_grad():
        out = model(**inputs, num_graphs=n)
    return {k: out[k].detach().double() for k in ("energy", "forces")}


def deviations(model_dir: Path, frames: Path, device: torch.device, modes: list[str]) -> dict:
    """Max and mean |Δ| of energy (meV) and force components (meV/Å) of each mode vs float32 (and float32 vs float64)."""
    structures = read_structures(frames)
    ref64 = load_runner(model_dir, device=device, dtype="float64")
    run32 = load_runner(model_dir, device=device, dtype="float32")
    in64, n = model_inputs(structures, ref64.info, device, torch.float64)
    in32, _ = model_inputs(structures, run32.info, device, torch.float32)
    base = _outputs(run32.module, in32, n, "fp32")
    results = {"float32 vs float64": _compare(base, _outputs(ref64.module, in64, n, "fp32"))}
    for mode in modes:
        results[f"{mode} vs float32"] = _compare(_outputs(run32.module, in32, n, mode), base)
    return {
        "model": str(model_dir),
        "frames": f"{frames} ({len(structures)} structures, {sum(s.n_atoms for s in structures)} atoms)",
        "energy_unit": "meV",
        "force_unit": "meV/Å",
        "deviations": results,
    }


def _compare(a: dict, b: dict) -> dict:
    de = (a["energy"] - b["energy"]).abs() * 1000
    df = (a["forces"] - b["forces"]).abs() * 1000
    return {
        "energy_max": float(de.max()),
        "energy_mean": float(de.mean()),
        "force_max": float(df.max()),
        "force_mean": float(df.mean()),
    }


def train_losses(
    model_dir: Path, frames: Path, device: torch.device, mode: str, steps: int, seed: int = 0
) -> list[float]:
    """Loss of `steps` AdamW steps in `mode` of a freshly initialised network of the model's configuration,
    learning the trained model's float64 energies and forces on perturbed frames (energy + force L1 in
    the model's normalised units); the same start, data and seed for every mode."""
    from zoo.models import build_model
    from zoo.models.zoo_model import ZooModel

    runner = load_runner(model_dir, device=device, dtype="float64")
    structures = read_structures(frames)
    inputs, n = model_inputs(structures, runner.info, device, torch.float64)
    inputs["pos"] = inputs["pos"] + 0.05 * torch.randn(
        inputs["pos"].shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).to(device)
    with torch.enable_grad():
        label = {k: v.detach() for k, v in runner.module(**inputs, num_graphs=n).items()}
    inputs = {k: (v.float() if v.is_floating_point() else v) for k, v in inputs.items()}
    target = runner.module.target(runner.module.energy_target)
    torch.manual_seed(seed)
    net = build_model(runner.module.networks[target.name].config)
    model = ZooModel({target.name: net}, [target]).to(device=device, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    std = target.std
    losses = []
    amp = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if mode == "bf16"
        else contextlib.nullcontext
    )
    with tf32_matmuls(mode == "tf32"):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with amp():
                out = model(**inputs, num_graphs=n)
                loss = (
                    (out["energy"].double() - label["energy"]).abs().mean()
                    + (out["forces"].double() - label["forces"]).abs().mean()
                ) / std
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--frames", type=Path, default=DEFAULT_FRAMES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    from zoo.device import pick_device

    device = pick_device(args.device)
    modes = ["bf16"] + (["tf32"] if device.type == "cuda" else [])
    start = time.perf_counter()
    report = {"machine": machine(), "device": str(device), **deviations(args.model, args.frames, device, modes)}
    for name, d in report["deviations"].items():
        print(
            f"{name:20s} energy max {d['energy_max']:.4g} mean {d['energy_mean']:.4g} meV; force max {d['force_max']:.4g} mean {d['force_mean']:.4g} meV/Å"
        )
    if args.train_steps > 0:
        curves = {
            mode: train_losses(args.model, args.frames, device, mode, args.train_steps) for mode in ["fp32"] + modes
        }
        report["train_losses"] = curves
        for mode, losses in curves.items():
            print(
                f"train {mode:5s} loss step 1 {losses[0]:.5g}, step {len(losses)} {losses[-1]:.5g} (float32 at the end: {curves['fp32'][-1]:.5g})"
            )
    report["seconds"] = round(time.perf_counter() - start, 1)
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
