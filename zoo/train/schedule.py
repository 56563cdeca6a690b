"""Learning-rate schedules of the reference, as pure functions of the optimizer step.

- ``epoch_cosine`` (QM9, MD17; timm 0.4.12 ``CosineLRScheduler`` as the reference creates it, stepped with
  ``lr_scheduler.step(epoch)`` at the start of every epoch): constant within an epoch t,
  t < warmup: warmup_lr + t (lr - warmup_lr) / warmup; else min_lr + (lr - min_lr)(1 + cos(pi t / epochs)) / 2
  (t counted from 0, not from the end of the warmup); t >= epochs: min_lr.
- ``step_cosine`` (OC20; ``LambdaLR`` stepped after every optimizer step): with k the number of steps
  done, W = warmup_epochs * steps_per_epoch and T = max_epochs * steps_per_epoch,
  k <= W: f = warmup_factor (1 - k/W) + k/W; k >= T: f = lr_min_factor;
  else f = lr_min_factor + (1 - lr_min_factor)(1 + cos(pi k / T)) / 2; lr = lr_initial f.
- ``constant``: lr.

A wall-clock budget (zoo.train.budget) runs the same shapes over the training progress p in [0, 1]
instead of epochs or steps (:meth:`LRSchedule.at_progress`): a warm-up over the first ``w`` of the
progress, then the cosine of pi p, so the learning rate reaches its minimum exactly at p = 1, the last step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class LRSchedule:
    """lr(step) for step = 0, 1, ... (the number of optimizer steps done before the one being taken)."""

    def __init__(self, kind: str, lr: float, max_epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                 warmup_lr: float | None = None, min_lr: float | None = None, warmup_factor: float | None = None,
                 lr_min_factor: float | None = None) -> None:  # fmt: skip
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.kind = kind
        self.lr = float(lr)
        self.max_epochs = int(max_epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.warmup_factor = warmup_factor
        self.lr_min_factor = lr_min_factor

    @classmethod
    def from_recipe(cls, recipe: Mapping, steps_per_epoch: int) -> LRSchedule:
        s, o = recipe["schedule"], recipe["optim"]
        return cls(s["kind"], o["lr"], o["max_epochs"], steps_per_epoch, s["warmup_epochs"], s["warmup_lr"], s["min_lr"],
                   s["warmup_factor"], s["lr_min_factor"])  # fmt: skip

    def epoch_lr(self, epoch: int) -> float:
        """timm cosine with warmup at integer epoch ``epoch``."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr + epoch * (self.lr - self.warmup_lr) / self.warmup_epochs
        if epoch >= self.max_epochs:
            return self.min_lr
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * epoch / self.max_epochs))

    def step_factor(self, step: int) -> float:
        """The OC20 LambdaLR factor after ``step`` scheduler steps."""
        warmup = self.warmup_epochs * self.steps_per_epoch
        total = self.max_epochs * self.steps_per_epoch
        if step <= warmup:
            alpha = step / float(warmup) if warmup > 0 else 1.0
            return self.warmup_factor * (1.0 - alpha) + alpha
        if step >= total:
            return self.lr_min_factor
        return self.lr_min_factor + 0.5 * (1.0 - self.lr_min_factor) * (1.0 + math.cos(math.pi * (step / total)))

    def at_progress(self, p: float, warmup: float) -> float:
        """The schedule compressed onto progress ``p`` in [0, 1] with a warm-up over the first ``warmup`` of it
        (epoch_cosine: warmup_lr -> lr, then min_lr + (lr - min_lr)(1 + cos(pi p)) / 2; step_cosine: factor
        warmup_factor -> 1, then lr_min_factor + (1 - lr_min_factor)(1 + cos(pi p)) / 2; constant: lr)."""
        p = min(max(float(p), 0.0), 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * p))
        if self.kind == "epoch_cosine":
            if p < warmup:
                return self.warmup_lr + (p / warmup) * (self.lr - self.warmup_lr)
            return self.min_lr + (self.lr - self.min_lr) * cosine
        if self.kind == "step_cosine":
            if p < warmup:
                return self.lr * (self.warmup_factor * (1.0 - p / warmup) + p / warmup)
            return self.lr * (self.lr_min_factor + (1.0 - self.lr_min_factor) * cosine)
        return self.lr

    @property
    def floor(self) -> float:
        """The schedule's minimum learning rate (reached at the end of a budgeted run)."""
        if self.kind == "epoch_cosine":
            return float(self.min_lr)
        if self.kind == "step_cosine":
            return self.lr * self.lr_min_factor
        return self.lr

    def __call__(self, step: int) -> float:
        if self.kind == "epoch_cosine":
            return self.epoch_lr(step // self.steps_per_epoch)
        if self.kind == "step_cosine":
            return self.lr * self.step_factor(step)
        return self.lr
