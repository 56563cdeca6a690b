"""Losses, metrics and checkpoint selection of the three tasks, as the reference trains them.

Losses are sums over this process's share divided by the global count (structures, atoms or free atoms
of the whole global batch) and multiplied by the world size: DDP averages gradients over processes, so
every process count gives the gradient of the global-batch mean, the single-process loss of the reference.
This is OCP's DDPLoss; it is also what the reference's plain means give when every GPU holds an equal share.

- qm9: L1 on standardised targets, |raw - (y - mean)/std|, mean over structures.
- md17: w_E mean|raw_E - (E - mean)/std| + w_F mean over atoms of ||raw_F - F/std||_2 (L2MAE).
- oc20: mean|raw_E - (y - mean)/std| + w_aux * (sum over free atoms (tags > 0) and xyz of
  |aux - (pos_relaxed - pos)/aux_position_std|) / #free atoms, with w_aux decaying linearly from
  loss.aux_weight to loss.aux_min_weight over all training steps (w evaluated at the 1-based step).

Metrics are mean absolute errors in the dataset's physical units (forces: over components).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from zoo import keys
from zoo.train.dist import DistEnv


class Objective:
    """Loss, metric sums and the validation score (lower is better) of one task."""

    def __init__(
        self, recipe: Mapping, target: str, mean: float, std: float, output_key: str, total_steps: int, env: DistEnv
    ) -> None:
        self.task = recipe["task"]
        self.target = target
        self.mean, self.std = float(mean), float(std)
        self.output_key = output_key
        self.loss_cfg = recipe["loss"]
        self.total_steps = max(int(total_steps), 1)
        self.env = env
        self.aux = self.task == "oc20" and self.loss_cfg["aux_weight"] is not None

    @property
    def metric_names(self) -> list[str]:
        return {"qm9": ["mae"], "md17": ["energy_mae", "force_mae"], "oc20": ["energy_mae"]}[self.task]

    @property
    def loss_names(self) -> list[str]:
        return {
            "qm9": ["loss"],
            "md17": ["loss", "loss_energy", "loss_force"],
            "oc20": ["loss", "loss_energy", "loss_aux", "aux_weight"] if self.aux else ["loss"],
        }[self.task]

    def aux_weight(self, step: int) -> float:
        """The auxiliary-loss weight at 0-based step ``step`` (the reference uses the 1-based step)."""
        start, low = self.loss_cfg["aux_weight"], self.loss_cfg["aux_min_weight"]
        return start - max(0.0, start - low) * min(1.0, (step + 1.0) / self.total_steps)

    def _global_counts(self, counts: list[torch.Tensor]) -> torch.Tensor:
        local = torch.stack([c.to(torch.float64) for c in counts])
        return self.env.sum(local).clamp(min=1.0)

    def loss(
        self, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict]:
        """The loss to backpropagate on this process and its parts (detached; their mean over processes is the
        global-batch value)."""
        world = float(self.env.world)
        raw = _full(out[self.output_key])
        y = ((batch[self.target].double() - self.mean) / self.std).to(raw.dtype)
        energy_sum = (raw - y).abs().sum()
        graphs = torch.tensor(float(raw.shape[0]), device=raw.device)
        if self.task == "qm9":
            (n_graphs,) = self._global_counts([graphs])
            loss = energy_sum / n_graphs
            return loss * world, {"loss": loss.detach() * world}
        if self.task == "md17":
            force_err = _full(out[keys.FORCES]) - (batch[keys.FORCES].double() / self.std).to(raw.dtype)
            force_sum = torch.linalg.vector_norm(force_err, dim=-1).sum()
            atoms = torch.tensor(float(force_err.shape[0]), device=raw.device)
            n_graphs, n_atoms = self._global_counts([graphs, atoms])
            e, f = energy_sum / n_graphs, force_sum / n_atoms
            loss = self.loss_cfg["energy_weight"] * e + self.loss_cfg["force_weight"] * f
            return loss * world, {
                "loss": loss.detach() * world,
                "loss_energy": e.detach() * world,
                "loss_force": f.detach() * world,
            }
        if not self.aux:
            (n_graphs,) = self._global_counts([graphs])
            loss = energy_sum / n_graphs
            return loss * world, {"loss": loss.detach() * world}
        free = batch[keys.TAGS] > 0
        delta = (
            (batch[keys.POS_RELAXED].double() - batch[keys.POSITIONS].double()) / self.loss_cfg["aux_position_std"]
        ).to(raw.dtype)
        aux_sum = (_full(out[keys.AUX_DISPLACEMENT])[free] - delta[free]).abs().sum()
        n_graphs, n_free = self._global_counts([graphs, free.sum()])
        weight = self.aux_weight(step)
        e, a = energy_sum / n_graphs, aux_sum / n_free
        loss = e + weight * a
        parts = {"loss": loss.detach() * world, "loss_energy": e.detach() * world, "loss_aux": a.detach() * world,
                 "aux_weight": torch.tensor(weight, device=raw.device)}  # fmt: skip
        return loss * world, parts

    def metric_sums(
        self, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """{metric: [sum of absolute errors, count]} in physical units, float64 on the batch's device."""
        pred = out[self.output_key].detach().double() * self.std + self.mean
        err = (pred - batch[self.target].double()).abs()
        name = "mae" if self.task == "qm9" else "energy_mae"
        sums = {
            name: torch.stack([err.sum(), torch.tensor(float(err.numel()), dtype=torch.float64, device=err.device)])
        }
        if self.task == "md17":
            ferr = (out[keys.FORCES].detach().double() * self.std - batch[keys.FORCES].double()).abs()
            sums["force_mae"] = torch.stack(
                [ferr.sum(), torch.tensor(float(ferr.numel()), dtype=torch.float64, device=ferr.device)]
            )
        return sums

    def score(self, metrics: Mapping[str, float]) -> float:
        """Checkpoint selection on validation: QM9/OC20 the MAE, MD17 w_E * energy MAE + w_F * force MAE."""
        if self.task == "md17":
            return (
                self.loss_cfg["energy_weight"] * metrics["energy_mae"]
                + self.loss_cfg["force_weight"] * metrics["force_mae"]
            )
        return metrics[self.metric_names[0]]


def _full(t: torch.Tensor) -> torch.Tensor:
    """Losses are taken in at least float32 (bf16 autocast outputs are promoted)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def reduce_sums(sums: Mapping[str, torch.Tensor], env: DistEnv) -> dict[str, float]:
    """All-reduce {name: [sum, count]} and return the means (NaN where the count is 0)."""
    if not sums:
        return {}
    names = sorted(sums)
    stacked = env.sum(torch.stack([sums[n] for n in names]))
    return {
        n: (float(s) / float(c)) if float(c) > 0 else float("nan") for n, (s, c) in zip(names, stacked.cpu().tolist())
    }


def add_sums(total: dict | None, new: Mapping[str, torch.Tensor]) -> dict:
    total = {} if total is None else total
    for k, v in new.items():
        total[k] = total[k] + v if k in total else v.clone()
    return total
