"""The run's records: metrics per evaluation as CSV and the learning curves as a PNG (matplotlib Agg)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from zoo.io import atomic_write, atomic_write_text


def history_columns(history: Sequence[dict]) -> list[str]:
    columns: list[str] = []
    for row in history:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def write_csv(history: Sequence[dict], path: Path) -> None:
    """All rows (one per evaluation), rewritten atomically."""
    buffer = io.StringIO()
    columns = history_columns(history)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def plot_curves(history: Sequence[dict], path: Path, title: str, units: Mapping[str, str]) -> None:
    """Train loss, each metric of ``units`` (train/val/test) and the learning rate against the epoch, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = history_columns(history)
    panels = [("loss", [c for c in columns if c.startswith("train_loss")])]
    panels += [(m, [f"{s}_{m}" for s in ("train", "val", "test")]) for m in units] + [("lr", ["lr"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    epochs = [row.get("epoch") for row in history]
    for ax, (name, series) in zip(axes[0], panels):
        for column in series:
            points = [(e, row.get(column)) for e, row in zip(epochs, history) if _positive(row.get(column))]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=column)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} [{units[name]}]" if units.get(name) else name)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
