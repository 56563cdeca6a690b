"""Wall-clock budgets: how many steps fit a time limit, the schedule compressed onto them (re-planned when the
step time drifts), and SIGTERM/SIGINT turned into a clean stop after the last finished step.

A budgeted run (``budget.wall_time`` or ``equizoo train --budget 9m``) trains ``budget.measure_steps`` steps,
validates once and writes a checkpoint, timing all three. From then on it knows the cost of a step, of a
validation, of a checkpoint, of the final test evaluation (the validation time scaled by the number of test
batches) and of writing the model, and sets the step count T so that the steps, ``budget.evals``
validations spread over the run, the periodic checkpoints and the end all finish ``budget.margin`` of the
budget before the deadline. The recipe's schedule is taken over the progress p in [0, 1] (warm-up over the
first ``budget.warmup_fraction``, then the cosine), so the learning rate reaches its minimum at step T.
Every few seconds the step time of the recent steps is measured again; when T no longer fits (a loaded
machine) or could grow by more than 2 %, T changes and the progress runs linearly from where it is to 1 at
the new last step, so the learning rate stays continuous and still ends at its minimum. If the deadline
comes anyway, the run stops after the step in flight and ends normally.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
from collections.abc import Mapping

from zoo.train.schedule import LRSchedule

GROW = 1.02  # a re-plan lengthens the run only when this much more fits (no churn from timing noise)
END_SAFETY = 1.1  # the final evaluation and writing are estimated from one measurement each: keep a tenth more


def warmup_fraction(recipe: Mapping) -> float:
    """The share of a budgeted run spent warming up: budget.warmup_fraction, else the recipe's proportion
    schedule.warmup_epochs / optim.max_epochs."""
    chosen = recipe["budget"]["warmup_fraction"]
    if chosen is not None:
        return float(chosen)
    return min(float(recipe["schedule"]["warmup_epochs"]) / float(recipe["optim"]["max_epochs"]), 0.5)


class CompressedSchedule:
    """lr(step) of a run whose length may change: the progress runs linearly from the last re-plan point
    (step a, progress p_a) to 1 at step ``total - 1`` and the recipe's schedule is taken at that progress."""

    def __init__(self, base: LRSchedule, warmup: float, total: int, anchor: tuple[int, float] = (0, 0.0)) -> None:
        self.base, self.warmup, self.total = base, float(warmup), int(total)
        self.anchor = (int(anchor[0]), float(anchor[1]))

    def progress(self, step: int) -> float:
        a, pa = self.anchor
        last = self.total - 1
        if step >= last:
            return 1.0
        return min(1.0, max(0.0, pa + (step - a) * (1.0 - pa) / max(last - a, 1)))

    def __call__(self, step: int) -> float:
        return self.base.at_progress(self.progress(step), self.warmup)

    def replan(self, step: int, total: int) -> None:
        """From ``step`` on, end at ``total`` steps (the learning rate at ``step`` does not change)."""
        self.anchor = (int(step), self.progress(step))
        self.total = int(total)

    def to_state(self) -> dict:
        return {"total": self.total, "anchor": list(self.anchor)}


@dataclasses.dataclass
class Costs:
    """Seconds measured (or, for the test evaluation, scaled from a measurement) on this run."""

    step: float = 0.0
    val: float = 0.0
    test: float = 0.0
    checkpoint: float = 0.0
    plot: float = 0.0

    @property
    def end(self) -> float:
        """The last validation, the test evaluation, the last checkpoint and the model directory (about one
        checkpoint) with its plot."""
        return END_SAFETY * (self.val + self.test + 2.0 * self.checkpoint + self.plot)


class Budget:
    """The deadline of a run and the step count that fits it."""

    def __init__(self, seconds: float, origin: float, margin: float, evals: int, measure_steps: int, cap: int,
                 checkpoint_every: int, plot_every: float | None) -> None:  # fmt: skip
        self.seconds = float(seconds)
        self.deadline = origin + self.seconds
        self.margin = max(2.0, margin * self.seconds)
        self.evals, self.measure_steps, self.cap = int(evals), int(measure_steps), int(cap)
        self.checkpoint_every, self.plot_every = int(checkpoint_every), plot_every
        self.costs = Costs()
        self.measured = False
        self.check_every = max(2.0, self.seconds / 100.0)
        self.span = max(5.0, self.seconds / 30.0)  # the step time is measured over at least this much recent training
        self.last_check = -math.inf
        self.other = 0.0  # seconds spent outside training steps (evaluations, checkpoints, plots)
        self.samples: list[tuple[int, float]] = []  # (step, training seconds so far) at each check

    def left(self, now: float) -> float:
        return self.deadline - now

    def exclude(self, seconds: float) -> None:
        """Time spent on evaluations, checkpoints and plots: not step time."""
        self.other += seconds

    def sample(self, step: int, now: float) -> None:
        """Record where the training clock stands at ``step`` (older samples than needed are dropped)."""
        clock = now - self.other
        self.samples.append((step, clock))
        while len(self.samples) > 2 and clock - self.samples[1][1] >= self.span:
            self.samples.pop(0)

    def step_time(self, step: int, now: float) -> float | None:
        """Seconds per training step since the newest sample at least ``span`` of training ago (else the
        oldest); None before any step after the first sample."""
        clock = now - self.other
        base = None
        for s, t in reversed(self.samples):
            if s < step:
                base = (s, t)
                if clock - t >= self.span:
                    break
        if base is None:
            return None
        return max((clock - base[1]) / (step - base[0]), 1e-6)

    def per_step(self) -> float:
        """A training step with its share of the periodic checkpoints and plots."""
        c = self.costs
        out = c.step + c.checkpoint / self.checkpoint_every
        if self.plot_every:
            out += c.plot * c.step / self.plot_every
        return out

    def steps_that_fit(self, step: int, now: float, evals_left: int) -> int:
        """The total step count that ends before the deadline, at most ``cap``."""
        room = self.deadline - self.margin - now - self.costs.end - evals_left * self.costs.val
        return min(self.cap, step + max(0, int(room // self.per_step())))

    def behind(self, now: float, step: int, total: int, evals_left: int) -> bool:
        """Whether the plan of ``total`` steps, at the current costs, now ends within half the margin of the deadline."""
        end = now + (total - step) * self.per_step() + evals_left * self.costs.val + self.costs.end
        return end > self.deadline - 0.5 * self.margin

    def expired(self, now: float) -> bool:
        """Whether one more step would leave too little time to end the run before the deadline."""
        return now + self.costs.step + self.costs.end > self.deadline

    def due(self, now: float) -> bool:
        return now - self.last_check >= self.check_every


def describe_seconds(seconds: float) -> str:
    """90 -> '1m30s', 3600 -> '1h', 42.5 -> '42.5s'."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)


def process_age() -> float:
    """Seconds since this command started (Linux /proc; 0 elsewhere): a budget given on the command line counts
    from there, interpreter and imports included. Under torchrun the command is the launcher, this
    process's parent."""
    pid = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else os.getpid()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class StopSignals:
    """While inside: the first SIGTERM or SIGINT is recorded (the run stops after the step in flight and writes
    its checkpoint and model directory); a second one interrupts at once. Only the main thread can listen."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self.number = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without writing the model")
        self.received, self.number = signal.Signals(signum).name, int(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
