"""Report figures from runs' metrics.jsonl: every run's loss curves on one figure, and each
ternary run's health over training. x is tokens seen, so runs with different batches line up."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bittern.monitor.plot import metric_series

Records = list[dict[str, Any]]

# the overall health stats bittern.monitor.health logs, in the order they are drawn
HEALTH_STATS = ("zero_frac", "flip_frac", "gamma_drift", "weight_clip_frac", "act_clip_frac")
LOG_SCALE = {"flip_frac", "gamma_drift"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state; imported here as it is slow

    return Figure(figsize=(width, height), layout="constrained")


def _tokens(steps: list[int], tokens_per_step: int) -> list[float]:
    return [s * tokens_per_step for s in steps]


def plot_loss_curves(runs: dict[str, tuple[Records, int]], out: Path) -> Path | None:
    """Training loss (solid) and validation loss (dashed, dots) of every run, one colour per run.

    `runs` maps a label to (metrics records, tokens per optimizer step). None if no run logged a loss.
    """
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    drawn = False
    for i, (label, (records, tokens_per_step)) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        steps, values = metric_series(records, "loss")
        if steps:
            ax.plot(_tokens(steps, tokens_per_step), values, color=colour, label=f"{label} train", lw=1)
        val_steps, val_values = metric_series(records, "val_loss")
        if val_steps:
            x = _tokens(val_steps, tokens_per_step)
            ax.plot(x, val_values, color=colour, ls="--", marker="o", ms=3, label=f"{label} val")
        drawn = drawn or bool(steps or val_steps)
    if not drawn:
        return None
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out, dpi=100)
    return out


def plot_health(label: str, records: Records, tokens_per_step: int, out: Path) -> Path | None:
    """One panel per overall ternary-health stat found in `records`; None if there is none."""
    stats = [(s, metric_series(records, f"health/{s}")) for s in HEALTH_STATS]
    stats = [(s, series) for s, series in stats if series[0]]
    if not stats:
        return None
    cols = min(3, len(stats))
    rows = -(-len(stats) // cols)
    fig = _figure(4 * cols, 3 * rows)
    fig.suptitle(f"ternary health: {label}")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes[len(stats) :]:
        ax.remove()
    for ax, (stat, (steps, values)) in zip(axes, stats, strict=False):
        ax.plot(_tokens(steps, tokens_per_step), values, marker="o" if len(steps) < 30 else None, ms=3)
        if stat in LOG_SCALE and all(v > 0 for v in values if not math.isnan(v)):
            ax.set_yscale("log")
        ax.set_title(stat.replace("_", " "))
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
    fig.savefig(out, dpi=100)
    return out
